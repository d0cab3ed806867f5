#!/usr/bin/env bash
# Build promtool (the rule checker and rule unit tester of Prometheus) from Go
# modules, for tests/monitoring.rs: `promtool check rules` and `promtool test
# rules` on the chart's PrometheusRule groups.
#
# Usage: tests/cluster/build-promtool.sh
#
# The binary lands in
#   ${DOWSER_CACHE:-$HOME/.cache/dowser}/promtool/<prometheus>/bin/promtool
# and the last line printed on stdout is that directory, so callers can do
#   BIN=$(tests/cluster/build-promtool.sh)
# Progress and timings go to stderr. When the cache is complete the script
# returns at once. Like tests/cluster/build-binaries.sh, the build is done in a
# temporary directory that is renamed into place only after promtool built and
# answered `--version`, so an interrupted build never leaves a half-filled cache.
set -euo pipefail

# ---- pinned versions --------------------------------------------------------
# Prometheus 3.x is published as the Go module github.com/prometheus/prometheus
# v0.3MM.P for release 3.MM.P.
PROMETHEUS_VERSION=v3.16.0
PROMETHEUS_MODULE_VERSION=v0.316.0
# Bump when the way the binary is built changes; a cache whose stamp carries
# another recipe number is rebuilt.
RECIPE=1

ALL_BINARIES=(promtool)

LOG_TAG=build-promtool
# shellcheck source=tests/cluster/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

CACHE_ROOT=${DOWSER_CACHE:-$HOME/.cache/dowser}
NAME="${PROMETHEUS_VERSION}"
PARENT="${CACHE_ROOT}/promtool"
FINAL="${PARENT}/${NAME}"
STAMP_HEAD="dowser-promtool recipe=${RECIPE} prometheus=${PROMETHEUS_VERSION} module=${PROMETHEUS_MODULE_VERSION}"

# ---- fast path ----------------------------------------------------------------
exit_if_cached

command -v go >/dev/null 2>&1 || die "go is not on PATH (Go >= 1.26 is needed)"
build_begin
log "building promtool ${PROMETHEUS_VERSION} into ${FINAL} (go $(go env GOVERSION), -p ${GO_P})"
log "Go build cache: $(go env GOCACHE); module cache: $(go env GOMODCACHE)"

# ---- promtool ----------------------------------------------------------------
# A wrapper module requiring Prometheus, as for etcd and helm: the language
# version comes from upstream's go.mod and the dependency versions are upstream's.
PROM_MODPATH=github.com/prometheus/prometheus
PROM_MOD="${WORK}/mod/prometheus"
mkdir -p "${PROM_MOD}"
PROM_GOMOD=$(module_gomod "${PROM_MODPATH}@${PROMETHEUS_MODULE_VERSION}")
PROM_GO_LINE=$(go_line "${PROM_GOMOD}")
printf 'module dowser.local/promtool-binary\n\n%s\n\nrequire %s %s\n' \
  "${PROM_GO_LINE}" "${PROM_MODPATH}" "${PROMETHEUS_MODULE_VERSION}" >"${PROM_MOD}/go.mod"
step_begin "resolving and downloading modules for promtool"
run nice -n 10 go list -C "${PROM_MOD}" -deps "${PROM_MODPATH}/cmd/promtool" >/dev/null
step_end

BUILD_DATE=$(date -u +%Y%m%d-%H:%M:%S)
VERSION_PKG=github.com/prometheus/common/version
step_begin "go build promtool"
run nice -n 10 go build -C "${PROM_MOD}" -p "${GO_P}" -trimpath \
  -ldflags "-s -w -X ${VERSION_PKG}.Version=${PROMETHEUS_VERSION#v} -X ${VERSION_PKG}.Revision=go-module-${PROMETHEUS_MODULE_VERSION} -X ${VERSION_PKG}.Branch=go-module -X ${VERSION_PKG}.BuildUser=dowser -X ${VERSION_PKG}.BuildDate=${BUILD_DATE}" \
  -o "${OUT}/bin/promtool" "${PROM_MODPATH}/cmd/promtool"
step_end

# ---- check and publish ---------------------------------------------------------
step_begin "checking the version"
{
  printf '%s\n' "${STAMP_HEAD}"
  printf 'built=%s go=%s\n' "${BUILD_DATE}" "$(go env GOVERSION)"
  expect_version "promtool, version ${PROMETHEUS_VERSION#v}" "${OUT}/bin/promtool" --version
} >"${WORK}/stamp.tmp"
step_end

build_publish
