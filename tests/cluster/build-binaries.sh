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

LOG_TAG=build-binaries
# shellcheck source=tests/cluster/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

CACHE_ROOT=${DOWSER_CACHE:-$HOME/.cache/dowser}
NAME="${K8S_VERSION}-etcd${ETCD_VERSION}-helm${HELM_VERSION}"
PARENT="${CACHE_ROOT}/k8s"
FINAL="${PARENT}/${NAME}"
STAMP_HEAD="dowser-k8s-binaries recipe=${RECIPE} kubernetes=${K8S_VERSION} etcd=${ETCD_VERSION} helm=${HELM_VERSION}"

# ---- fast path ----------------------------------------------------------------
exit_if_cached

command -v go >/dev/null 2>&1 || die "go is not on PATH (Go >= 1.25 is needed)"
build_begin
log "building ${NAME} into ${FINAL} (go $(go env GOVERSION), -p ${GO_P})"
log "Go build cache: $(go env GOCACHE); module cache: $(go env GOMODCACHE)"

# ---- Kubernetes wrapper module ---------------------------------------------
build_k8s

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

build_publish
