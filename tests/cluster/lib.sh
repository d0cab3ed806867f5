# shellcheck shell=bash disable=SC2034
# Shared by tests/cluster/*.sh and tests/node/*.sh: sourced, not run.
# Set LOG_TAG before sourcing (or after: log reads it on every call).

log() { printf '[%s] %s\n' "${LOG_TAG}" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now_us() { printf '%s' "${EPOCHREALTIME/./}"; }
fmt_secs() { # microseconds -> "12.3s"
  printf '%d.%01ds' $(($1 / 1000000)) $((($1 % 1000000) / 100000))
}

# ---- process bookkeeping ----------------------------------------------------
# starttime (clock ticks since boot, field 22 of /proc/<pid>/stat) tells a
# process apart from a later one that reuses its pid.
proc_starttime() {
  local stat rest
  local -a f
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  rest=${stat##*) }
  read -r -a f <<<"${rest}"
  printf '%s\n' "${f[19]}"
}
proc_state() {
  local stat rest
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  rest=${stat##*) }
  printf '%s\n' "${rest%% *}"
}
# Still that process and not yet exited (a zombie has exited; its parent reaps it).
proc_running() { # <pid> <starttime>
  local st
  [[ "$(proc_starttime "$1" 2>/dev/null || true)" == "$2" ]] || return 1
  st=$(proc_state "$1" 2>/dev/null) || return 1
  [[ "${st}" != Z && "${st}" != X ]]
}

# The arguments of a down.sh: `[--purge] <state-dir>`; sets PURGE and STATE.
# `-h` prints the calling script's header comment.
parse_down_args() {
  PURGE=0
  STATE=""
  while (($#)); do
    case "$1" in
      --purge) PURGE=1 ;;
      -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 0 ;;
      -*) die "unknown option: $1" ;;
      *) [[ -z "${STATE}" ]] || die "only one state directory, please"; STATE=$1 ;;
    esac
    shift
  done
  [[ -n "${STATE}" ]] || die "usage: down.sh [--purge] <state-dir>"
}

# The EXIT and signal traps of an up.sh: on_exit (defined by the caller) runs
# on every exit, a signal exits with 128 + its number.
trap_exit() {
  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}

# ---- binary builds (tests/cluster/build-binaries.sh, tests/node/build-binaries.sh) ----
# The caller sets NAME, PARENT, FINAL (= PARENT/NAME), STAMP_HEAD (first line
# of FINAL/stamp) and ALL_BINARIES (what FINAL/bin must hold).

cache_complete() {
  [[ -f "${FINAL}/stamp" ]] || return 1
  [[ "$(head -n1 "${FINAL}/stamp")" == "${STAMP_HEAD}" ]] || return 1
  local b
  for b in "${ALL_BINARIES[@]}"; do
    [[ -x "${FINAL}/bin/${b}" ]] || return 1
  done
}
# Prints FINAL/bin and exits when the cache is complete.
exit_if_cached() {
  if cache_complete; then
    log "cached: ${FINAL}/bin"
    printf '%s\n' "${FINAL}/bin"
    exit 0
  fi
}

# Takes the build lock of NAME (one build per version set at a time; a second
# caller waits, then finds the cache), makes the temporary directory WORK (with
# OUT=WORK/result and WORK/mod), removed on exit, and sets up the Go build.
build_begin() {
  command -v flock >/dev/null 2>&1 || die "flock (util-linux) is not on PATH"
  mkdir -p "${PARENT}"
  exec 9>"${PARENT}/.${NAME}.lock"
  if ! flock -n 9; then
    log "another build of ${NAME} is running; waiting for it"
    flock 9
  fi
  exit_if_cached
  # Holding the lock, any temporary directory left here is from a killed build.
  find "${PARENT}" -maxdepth 1 -type d -name ".${NAME}.tmp.*" -exec rm -rf {} + 2>/dev/null || true
  WORK=$(mktemp -d "${PARENT}/.${NAME}.tmp.XXXXXX")
  trap 'rm -rf "${WORK}"' EXIT
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
  TOTAL_START=$(now_us)
  STEP_START=0
}
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
step_begin() { STEP_START=$(now_us); log "$*"; }
step_end() { log "  done in $(fmt_secs $(($(now_us) - STEP_START)))"; }

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

# Builds K8S_BINARIES (commands of k8s.io/kubernetes@K8S_VERSION) into OUT/bin
# from the wrapper module WORK/mod/k8s. The control plane and the node binaries
# use the same wrapper module, so their shared packages come out of the Go
# build cache. Sets BUILD_DATE.
build_k8s() {
  local m s b found pkg
  local -a staging at_zero pkgs
  K8S_MINOR=${K8S_VERSION#v1.}
  K8S_MINOR=${K8S_MINOR%%.*}
  local staging_version="v0.${K8S_VERSION#v1.}"

  step_begin "fetching k8s.io/kubernetes@${K8S_VERSION} go.mod"
  local gomod
  gomod=$(module_gomod "k8s.io/kubernetes@${K8S_VERSION}")
  step_end

  # Every module that k8s.io/kubernetes replaces with ./staging/src/k8s.io/<m>.
  mapfile -t staging < <(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/src/.*#\1#p' "${gomod}" | sort -u)
  # Every k8s.io module it requires at v0.0.0: each must be one of the above.
  mapfile -t at_zero < <(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]\{1,\}v0\.0\.0\([[:space:]].*\)\{0,1\}$#\1#p' "${gomod}" | sort -u)
  ((${#staging[@]} > 0)) || die "no staging replaces found in ${gomod}"
  ((${#at_zero[@]} > 0)) || die "no v0.0.0 requirements found in ${gomod}"
  for m in "${at_zero[@]}"; do
    found=0
    for s in "${staging[@]}"; do [[ "$m" == "$s" ]] && found=1 && break; done
    ((found)) || die "${m} is required at v0.0.0 but not replaced by a staging directory in ${gomod}"
  done
  log "k8s.io/kubernetes ${K8S_VERSION}: ${#at_zero[@]} staging modules required at v0.0.0, ${#staging[@]} replaced; mapping all to ${staging_version}"

  # Keep the language version and GODEBUG defaults of upstream's main module.
  local go_l godebug_l mod="${WORK}/mod/k8s"
  go_l=$(go_line "${gomod}")
  godebug_l=$(grep -m1 '^godebug ' "${gomod}" || true)
  mkdir -p "${mod}"
  {
    printf 'module dowser.local/k8s-binaries\n\n%s\n' "${go_l}"
    if [[ -n "${godebug_l}" ]]; then printf '\n%s\n' "${godebug_l}"; fi
    printf '\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "${K8S_VERSION}"
    for s in "${staging[@]}"; do printf '\t%s => %s %s\n' "$s" "$s" "${staging_version}"; done
    printf ')\n'
  } >"${mod}/go.mod"

  pkgs=()
  for b in "${K8S_BINARIES[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${b}"); done
  step_begin "resolving and downloading modules for ${K8S_BINARIES[*]}"
  run nice -n 10 go list -C "${mod}" -deps "${pkgs[@]}" >/dev/null
  step_end

  BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
    ldflags+=" -X ${pkg}.gitMajor=1"
    ldflags+=" -X ${pkg}.gitMinor=${K8S_MINOR}"
    ldflags+=" -X ${pkg}.buildDate=${BUILD_DATE}"
  done
  for b in "${K8S_BINARIES[@]}"; do
    step_begin "go build ${b}"
    run nice -n 10 go build -C "${mod}" -p "${GO_P}" -trimpath -ldflags "${ldflags}" \
      -o "${OUT}/bin/${b}" "k8s.io/kubernetes/cmd/${b}"
    step_end
  done
}

expect_version() { # <expected substring> <command...>
  local want=$1 got
  shift
  got=$("$@" 2>&1) || die "'$*' failed: ${got}"
  [[ "${got}" == *"${want}"* ]] || die "'$*' printed '${got}', expected it to contain '${want}'"
  printf '%s\n' "${got}" | head -n1
}

# Moves OUT into place as FINAL once WORK/stamp.tmp is written, and prints
# FINAL/bin. The stamp goes in last: its presence marks a complete cache.
build_publish() {
  mv "${WORK}/stamp.tmp" "${OUT}/stamp"
  if [[ -e "${FINAL}" ]]; then
    # An incomplete or outdated cache from an older recipe: move it aside first.
    mv "${FINAL}" "${WORK}/old"
  fi
  mv "${OUT}" "${FINAL}"
  log "total build time: $(fmt_secs $(($(now_us) - TOTAL_START)))"
  (cd "${FINAL}/bin" && du -h -- "${ALL_BINARIES[@]}") | sed "s/^/[${LOG_TAG}]   /" >&2
  printf '%s\n' "${FINAL}/bin"
}
