#!/usr/bin/env bash
# Build the binaries of a local Kubernetes control plane from Go modules:
# kube-apiserver, kube-scheduler, kube-controller-manager, kubectl, etcd, helm.
#
# Usage: tests/cluster/build-binaries.sh
#
# The binaries land in
#   ${DOWSER_CACHE:-$HOME/.cache/dowser}/k8s/<k8s>-etcd<etcd>-helm<helm>/bin/
# and the last line printed on stdout is that directory, so callers can do
#   BIN=$(tests/cluster/build-binaries.sh)
# Progress and timings go to stderr. When the cache is complete the script
# returns at once. A build is done in a temporary directory that is renamed
# into place only after every binary built and answered `--version`, so an
# interrupted build never leaves a half-filled cache.
set -euo pipefail

# ---- pinned versions --------------------------------------------------------
K8S_VERSION=v1.35.8   # k8s.io/kubernetes; staging modules k8s.io/* at v0.35.8
ETCD_VERSION=v3.6.6   # what kubeadm v1.35 uses (DefaultEtcdVersion 3.6.6-0)
HELM_VERSION=v4.3.2   # helm.sh/helm/v4
# Bump when the way the binaries are built changes; a cache whose stamp
# carries another recipe number is rebuilt.
RECIPE=1

K8S_BINARIES=(kube-apiserver kube-scheduler kube-controller-manager kubectl)
ALL_BINARIES=("${K8S_BINARIES[@]}" etcd helm)

log() { printf '[build-binaries] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

now_us() { printf '%s' "${EPOCHREALTIME/./}"; }
fmt_secs() { # microseconds -> "12.3s"
  local us=$1
  printf '%d.%01ds' $((us / 1000000)) $(((us % 1000000) / 100000))
}

CACHE_ROOT=${DOWSER_CACHE:-$HOME/.cache/dowser}
NAME="${K8S_VERSION}-etcd${ETCD_VERSION}-helm${HELM_VERSION}"
PARENT="${CACHE_ROOT}/k8s"
FINAL="${PARENT}/${NAME}"
STAMP_HEAD="dowser-k8s-binaries recipe=${RECIPE} kubernetes=${K8S_VERSION} etcd=${ETCD_VERSION} helm=${HELM_VERSION}"

cache_complete() {
  [[ -f "${FINAL}/stamp" ]] || return 1
  [[ "$(head -n1 "${FINAL}/stamp")" == "${STAMP_HEAD}" ]] || return 1
  local b
  for b in "${ALL_BINARIES[@]}"; do
    [[ -x "${FINAL}/bin/${b}" ]] || return 1
  done
}

# ---- fast path ----------------------------------------------------------------
if cache_complete; then
  log "cached: ${FINAL}/bin"
  printf '%s\n' "${FINAL}/bin"
  exit 0
fi

command -v go >/dev/null 2>&1 || die "go is not on PATH (Go >= 1.25 is needed)"
command -v flock >/dev/null 2>&1 || die "flock (util-linux) is not on PATH"

mkdir -p "${PARENT}"
# One build per version set at a time; a second caller waits, then finds the cache.
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

# Holding the lock, any temporary directory left here is from a killed build.
find "${PARENT}" -maxdepth 1 -type d -name ".${NAME}.tmp.*" -exec rm -rf {} + 2>/dev/null || true
WORK=$(mktemp -d "${PARENT}/.${NAME}.tmp.XXXXXX")
cleanup() { rm -rf "${WORK}"; }
trap cleanup EXIT
# Long steps run in the background so a signal is handled at once: the step
# is stopped, the temporary directory removed, and the cache left as it was.
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
# Two parallel compile jobs at most: keeps memory use of a build in the low GBs.
GO_P=${DOWSER_BUILD_JOBS:-2}

# Path of the go.mod of <module>@<version> in the module cache (downloads it).
module_gomod() {
  local gomod
  gomod=$(cd "${WORK}" && go mod download -json "$1" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [[ -n "${gomod}" && -f "${gomod}" ]] || die "could not download $1 from $(go env GOPROXY)"
  printf '%s\n' "${gomod}"
}
# The `go` line of a go.mod (the wrapper modules copy it, so the language
# version and GODEBUG defaults are those upstream builds with).
go_line() { grep -m1 '^go ' "$1" || printf 'go 1.25.0\n'; }

TOTAL_START=$(now_us)
STEP_START=0
step_begin() { STEP_START=$(now_us); log "$*"; }
step_end() { log "  done in $(fmt_secs $(($(now_us) - STEP_START)))"; }

log "building ${NAME} into ${FINAL} (go $(go env GOVERSION), -p ${GO_P})"
log "Go build cache: $(go env GOCACHE); module cache: $(go env GOMODCACHE)"

# ---- Kubernetes wrapper module ---------------------------------------------
K8S_MINOR=${K8S_VERSION#v1.}
K8S_MINOR=${K8S_MINOR%%.*}
STAGING_VERSION="v0.${K8S_VERSION#v1.}"

step_begin "fetching k8s.io/kubernetes@${K8S_VERSION} go.mod"
K8S_GOMOD=$(module_gomod "k8s.io/kubernetes@${K8S_VERSION}")
step_end

# Every module that k8s.io/kubernetes replaces with ./staging/src/k8s.io/<m>.
mapfile -t STAGING < <(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/src/.*#\1#p' "${K8S_GOMOD}" | sort -u)
# Every k8s.io module it requires at v0.0.0: each must be one of the above.
mapfile -t AT_ZERO < <(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]\{1,\}v0\.0\.0\([[:space:]].*\)\{0,1\}$#\1#p' "${K8S_GOMOD}" | sort -u)
((${#STAGING[@]} > 0)) || die "no staging replaces found in ${K8S_GOMOD}"
((${#AT_ZERO[@]} > 0)) || die "no v0.0.0 requirements found in ${K8S_GOMOD}"
for m in "${AT_ZERO[@]}"; do
  found=0
  for s in "${STAGING[@]}"; do [[ "$m" == "$s" ]] && found=1 && break; done
  ((found)) || die "${m} is required at v0.0.0 but not replaced by a staging directory in ${K8S_GOMOD}"
done
log "k8s.io/kubernetes ${K8S_VERSION}: ${#AT_ZERO[@]} staging modules required at v0.0.0, ${#STAGING[@]} replaced; mapping all to ${STAGING_VERSION}"

# Keep the language version and GODEBUG defaults of upstream's main module.
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

step_begin "resolving and downloading modules for Kubernetes"
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

# ---- etcd --------------------------------------------------------------------
# go.etcd.io/etcd/server/v3 has local replaces in its go.mod, so `go install
# ...@version` refuses it; a wrapper module requiring it works.
ETCD_MOD="${WORK}/mod/etcd"
mkdir -p "${ETCD_MOD}"
ETCD_GOMOD=$(module_gomod "go.etcd.io/etcd/server/v3@${ETCD_VERSION}")
ETCD_GO_LINE=$(go_line "${ETCD_GOMOD}")
printf 'module dowser.local/etcd-binary\n\n%s\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
  "${ETCD_GO_LINE}" "${ETCD_VERSION}" >"${ETCD_MOD}/go.mod"
step_begin "resolving and downloading modules for etcd"
run nice -n 10 go list -C "${ETCD_MOD}" -deps go.etcd.io/etcd/server/v3 >/dev/null
step_end
step_begin "go build etcd"
run nice -n 10 go build -C "${ETCD_MOD}" -p "${GO_P}" -trimpath \
  -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=go-module-${ETCD_VERSION}" \
  -o "${OUT}/bin/etcd" go.etcd.io/etcd/server/v3
step_end

# ---- helm ----------------------------------------------------------------------
HELM_MAJOR=${HELM_VERSION%%.*}
HELM_MODPATH="helm.sh/helm/${HELM_MAJOR}"
HELM_MOD="${WORK}/mod/helm"
mkdir -p "${HELM_MOD}"
HELM_GOMOD=$(module_gomod "${HELM_MODPATH}@${HELM_VERSION}")
HELM_GO_LINE=$(go_line "${HELM_GOMOD}")
printf 'module dowser.local/helm-binary\n\n%s\n\nrequire %s %s\n' \
  "${HELM_GO_LINE}" "${HELM_MODPATH}" "${HELM_VERSION}" >"${HELM_MOD}/go.mod"
step_begin "resolving and downloading modules for helm"
run nice -n 10 go list -C "${HELM_MOD}" -deps "${HELM_MODPATH}/cmd/helm" >/dev/null
step_end
step_begin "go build helm"
run nice -n 10 go build -C "${HELM_MOD}" -p "${GO_P}" -trimpath \
  -ldflags "-s -w -X ${HELM_MODPATH}/internal/version.version=${HELM_VERSION}" \
  -o "${OUT}/bin/helm" "${HELM_MODPATH}/cmd/helm"
step_end

# ---- check and publish ---------------------------------------------------------
step_begin "checking versions"
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
  expect_version "Kubernetes ${K8S_VERSION}" "${OUT}/bin/kube-apiserver" --version
  expect_version "Kubernetes ${K8S_VERSION}" "${OUT}/bin/kube-scheduler" --version
  expect_version "Kubernetes ${K8S_VERSION}" "${OUT}/bin/kube-controller-manager" --version
  expect_version "Client Version: ${K8S_VERSION}" "${OUT}/bin/kubectl" version --client
  expect_version "etcd Version: ${ETCD_VERSION#v}" "${OUT}/bin/etcd" --version
  expect_version "${HELM_VERSION}" "${OUT}/bin/helm" version --short
} >"${WORK}/stamp.tmp"
step_end

# The stamp goes in last: its presence marks a complete cache.
mv "${WORK}/stamp.tmp" "${OUT}/stamp"
if [[ -e "${FINAL}" ]]; then
  # An incomplete or outdated cache from an older recipe: move it aside first.
  mv "${FINAL}" "${WORK}/old"
fi
mv "${OUT}" "${FINAL}"

log "total build time: $(fmt_secs $(($(now_us) - TOTAL_START)))"
(cd "${FINAL}/bin" && du -h -- "${ALL_BINARIES[@]}") | sed 's/^/[build-binaries]   /' >&2
printf '%s\n' "${FINAL}/bin"
