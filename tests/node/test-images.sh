#!/usr/bin/env bash
# Small images for the real-node tests, made locally from Debian packages (no
# registry): a pause (sandbox) image, busybox, and kubectl.
#
# Usage: tests/node/test-images.sh [<kubectl>]
#
# Writes docker-archive tars (loadable with `ctr images import`) into
#   ${DOWSER_CACHE:-$HOME/.cache/dowser}/node/test-images-<recipe>/
# and prints that directory as the last stdout line. Images:
#   localhost/dowser-test/pause:1      a static C program that sleeps until a signal
#   localhost/dowser-test/busybox:1    Debian's busybox-static, /bin/<applet> links (Cmd sh)
#   localhost/dowser-test/kubectl:1    the kubectl next to the control plane (if given)
set -euo pipefail

RECIPE=2
log() { printf '[test-images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

KUBECTL_BIN=${1:-}
CACHE_ROOT=${DOWSER_CACHE:-$HOME/.cache/dowser}
OUT="${CACHE_ROOT}/node/test-images-${RECIPE}"
mkdir -p "${OUT}"

# make_image <out.tar> <name:tag> <rootfs dir> <Entrypoint|Cmd> <JSON array>
make_image() {
  local out=$1 ref=$2 root=$3 key=$4 entry=$5 tmp layer_sha cfg cfg_sha
  tmp=$(mktemp -d)
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "${root}" -cf "${tmp}/layer.tar" .
  layer_sha=$(sha256sum "${tmp}/layer.tar" | cut -d' ' -f1)
  mkdir -p "${tmp}/img/${layer_sha}"
  mv "${tmp}/layer.tar" "${tmp}/img/${layer_sha}/layer.tar"
  cfg=$(printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"%s":%s,"Env":["PATH=/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"tests/node/test-images.sh"}]}' "${key}" "${entry}" "${layer_sha}")
  cfg_sha=$(printf '%s' "${cfg}" | sha256sum | cut -d' ' -f1)
  printf '%s' "${cfg}" >"${tmp}/img/${cfg_sha}.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "${cfg_sha}" "${ref}" "${layer_sha}" >"${tmp}/img/manifest.json"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "${tmp}/img" -cf "${out}.tmp" .
  mv "${out}.tmp" "${out}"
  rm -rf "${tmp}"
  log "${ref}: ${out} ($(du -h "${out}" | cut -f1))"
}

if [[ ! -f "${OUT}/pause.tar" ]]; then
  command -v gcc >/dev/null 2>&1 || die "gcc is needed for the pause image (apt-get install gcc libc6-dev)"
  work=$(mktemp -d)
  cat >"${work}/pause.c" <<'C'
/* The sandbox's PID 1: holds the pod's namespaces until told to stop. */
#include <signal.h>
#include <unistd.h>
#include <stdlib.h>
#include <sys/wait.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, stop);
  signal(SIGTERM, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
C
  mkdir -p "${work}/root"
  gcc -static -Os -s -o "${work}/root/pause" "${work}/pause.c" || die "gcc -static failed (libc6-dev installed?)"
  make_image "${OUT}/pause.tar" localhost/dowser-test/pause:1 "${work}/root" Entrypoint '["/pause"]'
  rm -rf "${work}"
fi

if [[ ! -f "${OUT}/busybox.tar" ]]; then
  [[ -x /bin/busybox ]] || die "/bin/busybox missing (apt-get install busybox-static)"
  # Debian's `busybox` package is linked dynamically; the image has no libraries.
  if ldd /bin/busybox >/dev/null 2>&1; then die "/bin/busybox is not static (apt-get install busybox-static)"; fi
  work=$(mktemp -d)
  mkdir -p "${work}/root/bin" "${work}/root/tmp" "${work}/root/etc"
  cp /bin/busybox "${work}/root/bin/busybox"
  for a in $(/bin/busybox --list); do
    [[ "${a}" == busybox ]] || ln -s busybox "${work}/root/bin/${a}"
  done
  chmod 1777 "${work}/root/tmp"
  make_image "${OUT}/busybox.tar" localhost/dowser-test/busybox:1 "${work}/root" Cmd '["/bin/sh"]'
  rm -rf "${work}"
fi

if [[ -n "${KUBECTL_BIN}" ]]; then
  want="kubectl-$("${KUBECTL_BIN}" version --client 2>/dev/null | sed -n 's/^Client Version: //p')"
  if [[ ! -f "${OUT}/${want}.tar" ]]; then
    work=$(mktemp -d)
    mkdir -p "${work}/root/bin" "${work}/root/tmp"
    chmod 1777 "${work}/root/tmp"
    cp "${KUBECTL_BIN}" "${work}/root/bin/kubectl"
    make_image "${OUT}/${want}.tar" localhost/dowser-test/kubectl:1 "${work}/root" Entrypoint '["/bin/kubectl"]'
    for old in "${OUT}"/kubectl-*.tar; do [[ "${old}" == "${OUT}/${want}.tar" ]] || rm -f "${old}"; done
    rm -rf "${work}"
  fi
fi
printf '%s\n' "${OUT}"
