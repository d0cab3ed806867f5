#!/usr/bin/env bash
# Build the binaries of a real test node from Go modules: kubelet and kube-proxy
# (k8s.io/kubernetes, same version and wrapper-module recipe as
# tests/cluster/build-binaries.sh, so the Go build cache it warmed is reused),
# and containerd 2.x with its runc shim and ctr (github.com/containerd/containerd/v2).
# runc and the CNI plugins come from Debian packages (see README.md).
#
# Usage: tests/node/build-binaries.sh
#
# The binaries land in
#   ${DOWSER_CACHE:-$HOME/.cache/dowser}/node/<k8s>-containerd<containerd>/bin/
# and the last line printed on stdout is that directory. Progress goes to
# stderr. A complete cache returns at once; a build happens in a temporary
# directory renamed into place only once every binary answered `--version`.
set -euo pipefail

# ---- pinned versions --------------------------------------------------------
K8S_VERSION=v1.35.8        # as in tests/cluster/build-binaries.sh
CONTAINERD_VERSION=v2.4.2  # github.com/containerd/containerd/v2 (CDI support, config version 3)
# Bump when the way the binaries are built changes.
RECIPE=1

K8S_BINARIES=(kubelet kube-proxy)
CONTAINERD_BINARIES=(containerd containerd-shim-runc-v2 ctr)
ALL_BINARIES=("${K8S_BINARIES[@]}" "${CONTAINERD_BINARIES[@]}")

log() { printf '[node-binaries] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now_us() { printf '%s' "${EPOCHREALTIME/./}"; }
fmt_secs() { printf '%d.%01ds' $(($1 / 1000000)) $((($1 % 1000000) / 100000)); }

CACHE_ROOT=${DOWSER_CACHE:-$HOME/.cache/dowser}
NAME="${K8S_VERSION}-containerd${CONTAINERD_VERSION}"
PARENT="${CACHE_ROOT}/node"
FINAL="${PARENT}/${NAME}"
STAMP_HEAD="dowser-node-binaries recipe=${RECIPE} kubernetes=${K8S_VERSION} containerd=${CONTAINERD_VERSION}"

cache_complete() {
  [[ -f "${FINAL}/stamp" ]] || return 1
  [[ "$(head -n1 "${FINAL}/stamp")" == "${STAMP_HEAD}" ]] || return 1
  local b
  for b in "${ALL_BINARIES[@]}"; do [[ -x "${FINAL}/bin/${b}" ]] || return 1; done
}
if cache_complete; then
  log "cached: ${FINAL}/bin"
  printf '%s\n' "${FINAL}/bin"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "go is not on PATH (Go >= 1.26.6 is needed by containerd ${CONTAINERD_VERSION})"
command -v flock >/dev/null 2>&1 || die "flock (util-linux) is not on PATH"
mkdir -p "${PARENT}"
exec 9>"${PARENT}/.${NAME}.lock"
if ! flock -n 9; then
  log "another build of ${NAME} is running; waiting for it"
  flock 9
fi
if cache_complete; then
  log "cached: ${FINAL}/bin"
  printf '%s\n' "${FINAL}/bin"
  exit 0
fi

find "${PARENT}" -maxdepth 1 -type d -name ".${NAME}.tmp.*" -exec rm -rf {} + 2>/dev/null || true
WORK=$(mktemp -d "${PARENT}/.${NAME}.tmp.XXXXXX")
trap 'rm -rf "${WORK}"' EXIT
CHILD=""
run() {
  local rc=0
  "$@" &
  CHILD=$!
  wait "${CHILD}" || rc=$?
  CHILD=""
  return "${rc}"
}
on_signal() {
  trap - INT TERM HUP
  if [[ -n "${CHILD}" ]]; then
    kill -TERM "${CHILD}" 2>/dev/null || true
    wait "${CHILD}" 2>/dev/null || true
  fi
  log "interrupted; nothing was added to the cache"
  exit "$1"
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP
OUT="${WORK}/result"
mkdir -p "${OUT}/bin" "${WORK}/mod"

export GOFLAGS=-mod=mod
export GOWORK=off
export CGO_ENABLED=0
GO_P=${DOWSER_BUILD_JOBS:-2}

module_gomod() {
  local gomod
  gomod=$(cd "${WORK}" && go mod download -json "$1" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [[ -n "${gomod}" && -f "${gomod}" ]] || die "could not download $1 from $(go env GOPROXY)"
  printf '%s\n' "${gomod}"
}
go_line() { grep -m1 '^go ' "$1" || printf 'go 1.25.0\n'; }

TOTAL_START=$(now_us)
STEP_START=0
step_begin() { STEP_START=$(now_us); log "$*"; }
step_end() { log "  done in $(fmt_secs $(($(now_us) - STEP_START)))"; }
log "building ${NAME} into ${FINAL} (go $(go env GOVERSION), -p ${GO_P})"

# ---- Kubernetes: the wrapper module of tests/cluster/build-binaries.sh -----------
# Same go.mod (module name, go/godebug lines, staging replaces) so that the
# packages shared with the control plane come out of the Go build cache.
K8S_MINOR=${K8S_VERSION#v1.}
K8S_MINOR=${K8S_MINOR%%.*}
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
K8S_GOMOD=$(module_gomod "k8s.io/kubernetes@${K8S_VERSION}")
mapfile -t STAGING < <(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/src/.*#\1#p' "${K8S_GOMOD}" | sort -u)
mapfile -t AT_ZERO < <(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]\{1,\}v0\.0\.0\([[:space:]].*\)\{0,1\}$#\1#p' "${K8S_GOMOD}" | sort -u)
((${#STAGING[@]} > 0)) || die "no staging replaces found in ${K8S_GOMOD}"
for m in "${AT_ZERO[@]}"; do
  found=0
  for s in "${STAGING[@]}"; do [[ "$m" == "$s" ]] && found=1 && break; done
  ((found)) || die "${m} is required at v0.0.0 but not replaced by a staging directory in ${K8S_GOMOD}"
done
K8S_GO_LINE=$(go_line "${K8S_GOMOD}")
K8S_GODEBUG_LINE=$(grep -m1 '^godebug ' "${K8S_GOMOD}" || true)
K8S_MOD="${WORK}/mod/k8s"
mkdir -p "${K8S_MOD}"
{
  printf 'module dowser.local/k8s-binaries\n\n%s\n' "${K8S_GO_LINE}"
  if [[ -n "${K8S_GODEBUG_LINE}" ]]; then printf '\n%s\n' "${K8S_GODEBUG_LINE}"; fi
  printf '\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "${K8S_VERSION}"
  for s in "${STAGING[@]}"; do printf '\t%s => %s %s\n' "$s" "$s" "${STAGING_VERSION}"; done
  printf ')\n'
} >"${K8S_MOD}/go.mod"

K8S_PKGS=()
for b in "${K8S_BINARIES[@]}"; do K8S_PKGS+=("k8s.io/kubernetes/cmd/${b}"); done
step_begin "resolving and downloading modules for ${K8S_BINARIES[*]}"
run nice -n 10 go list -C "${K8S_MOD}" -deps "${K8S_PKGS[@]}" >/dev/null
step_end

BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
  K8S_LDFLAGS+=" -X ${pkg}.gitMajor=1"
  K8S_LDFLAGS+=" -X ${pkg}.gitMinor=${K8S_MINOR}"
  K8S_LDFLAGS+=" -X ${pkg}.buildDate=${BUILD_DATE}"
done
for b in "${K8S_BINARIES[@]}"; do
  step_begin "go build ${b}"
  run nice -n 10 go build -C "${K8S_MOD}" -p "${GO_P}" -trimpath -ldflags "${K8S_LDFLAGS}" \
    -o "${OUT}/bin/${b}" "k8s.io/kubernetes/cmd/${b}"
  step_end
done

# ---- containerd ------------------------------------------------------------------
# The build tags of containerd's Makefile, minus the snapshotters that need cgo
# or kernel features a test node does not use (btrfs, devmapper, zfs); the shim
# without gRPC, as upstream builds it.
CTRD_MODPATH=github.com/containerd/containerd/v2
CTRD_MOD="${WORK}/mod/containerd"
mkdir -p "${CTRD_MOD}"
CTRD_GOMOD=$(module_gomod "${CTRD_MODPATH}@${CONTAINERD_VERSION}")
printf 'module dowser.local/containerd-binaries\n\n%s\n\nrequire %s %s\n' \
  "$(go_line "${CTRD_GOMOD}")" "${CTRD_MODPATH}" "${CONTAINERD_VERSION}" >"${CTRD_MOD}/go.mod"
CTRD_TAGS="urfave_cli_no_docs no_btrfs no_devmapper no_zfs"
CTRD_LDFLAGS="-s -w -X ${CTRD_MODPATH}/version.Version=${CONTAINERD_VERSION} -X ${CTRD_MODPATH}/version.Revision=go-module-${CONTAINERD_VERSION}"
step_begin "resolving and downloading modules for containerd"
run nice -n 10 go list -C "${CTRD_MOD}" -tags "${CTRD_TAGS}" -deps \
  "${CTRD_MODPATH}/cmd/containerd" "${CTRD_MODPATH}/cmd/ctr" "${CTRD_MODPATH}/cmd/containerd-shim-runc-v2" >/dev/null
step_end
for b in "${CONTAINERD_BINARIES[@]}"; do
  tags=${CTRD_TAGS}
  [[ "${b}" == containerd-shim-runc-v2 ]] && tags+=" no_grpc"
  step_begin "go build ${b}"
  run nice -n 10 go build -C "${CTRD_MOD}" -p "${GO_P}" -trimpath -tags "${tags}" -ldflags "${CTRD_LDFLAGS}" \
    -o "${OUT}/bin/${b}" "${CTRD_MODPATH}/cmd/${b}"
  step_end
done

# ---- check and publish ---------------------------------------------------------
expect_version() { # <expected substring> <command...>
  local want=$1 got
  shift
  got=$("$@" 2>&1) || die "'$*' failed: ${got}"
  [[ "${got}" == *"${want}"* ]] || die "'$*' printed '${got}', expected it to contain '${want}'"
  printf '%s\n' "${got}" | head -n1
}
{
  printf '%s\n' "${STAMP_HEAD}"
  printf 'built=%s go=%s\n' "${BUILD_DATE}" "$(go env GOVERSION)"
  expect_version "Kubernetes ${K8S_VERSION}" "${OUT}/bin/kubelet" --version
  expect_version "Kubernetes ${K8S_VERSION}" "${OUT}/bin/kube-proxy" --version
  expect_version "${CONTAINERD_VERSION}" "${OUT}/bin/containerd" --version
  expect_version "${CONTAINERD_VERSION}" "${OUT}/bin/ctr" --version
  expect_version "${CONTAINERD_VERSION}" "${OUT}/bin/containerd-shim-runc-v2" -v
} >"${WORK}/stamp.tmp"
mv "${WORK}/stamp.tmp" "${OUT}/stamp"
if [[ -e "${FINAL}" ]]; then mv "${FINAL}" "${WORK}/old"; fi
mv "${OUT}" "${FINAL}"
log "total build time: $(fmt_secs $(($(now_us) - TOTAL_START)))"
(cd "${FINAL}/bin" && du -h -- "${ALL_BINARIES[@]}") | sed 's/^/[node-binaries]   /' >&2
printf '%s\n' "${FINAL}/bin"
