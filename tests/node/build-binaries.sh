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

LOG_TAG=node-binaries
# shellcheck source=tests/cluster/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../cluster/lib.sh"

CACHE_ROOT=${DOWSER_CACHE:-$HOME/.cache/dowser}
NAME="${K8S_VERSION}-containerd${CONTAINERD_VERSION}"
PARENT="${CACHE_ROOT}/node"
FINAL="${PARENT}/${NAME}"
STAMP_HEAD="dowser-node-binaries recipe=${RECIPE} kubernetes=${K8S_VERSION} containerd=${CONTAINERD_VERSION}"

exit_if_cached

command -v go >/dev/null 2>&1 || die "go is not on PATH (Go >= 1.26.6 is needed by containerd ${CONTAINERD_VERSION})"
build_begin
log "building ${NAME} into ${FINAL} (go $(go env GOVERSION), -p ${GO_P})"

# ---- Kubernetes: the wrapper module of tests/cluster/build-binaries.sh -----------
build_k8s

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
{
  printf '%s\n' "${STAMP_HEAD}"
  printf 'built=%s go=%s\n' "${BUILD_DATE}" "$(go env GOVERSION)"
  expect_version "Kubernetes ${K8S_VERSION}" "${OUT}/bin/kubelet" --version
  expect_version "Kubernetes ${K8S_VERSION}" "${OUT}/bin/kube-proxy" --version
  expect_version "${CONTAINERD_VERSION}" "${OUT}/bin/containerd" --version
  expect_version "${CONTAINERD_VERSION}" "${OUT}/bin/ctr" --version
  expect_version "${CONTAINERD_VERSION}" "${OUT}/bin/containerd-shim-runc-v2" -v
} >"${WORK}/stamp.tmp"
build_publish
