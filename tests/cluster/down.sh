#!/usr/bin/env bash
# Stop a control plane started by up.sh.
#
# Usage: tests/cluster/down.sh [--purge] <state-dir>
#
# Signals exactly the processes listed in <state-dir>/pids (a pid counts only
# if its start time still matches, so a reused pid is never touched): TERM
# first, KILL after $DOWSER_DOWN_TIMEOUT seconds (default 10). The control
# plane goes down before etcd. Logs stay; --purge also deletes <state-dir>.
# Stopping a stopped cluster is not an error.
set -euo pipefail

TIMEOUT=${DOWSER_DOWN_TIMEOUT:-10}
MARKER=.dowser-cluster

LOG_TAG=down
# shellcheck source=tests/cluster/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

parse_down_args "$@"
[[ -d "${STATE}" ]] || { log "${STATE} does not exist; nothing to stop"; exit 0; }
[[ -f "${STATE}/${MARKER}" ]] || die "${STATE} was not made by up.sh"
PIDS_FILE="${STATE}/pids"

NAMES=()
PIDS=()
STARTS=()
if [[ -f "${PIDS_FILE}" ]]; then
  while read -r name pid start; do
    [[ -n "${start:-}" ]] || continue
    NAMES+=("${name}")
    PIDS+=("${pid}")
    STARTS+=("${start}")
  done <"${PIDS_FILE}"
fi

# stop_group <indices...>: TERM, wait, KILL, wait.
stop_group() {
  local i deadline left
  for i in "$@"; do
    if proc_running "${PIDS[i]}" "${STARTS[i]}"; then
      kill -TERM "${PIDS[i]}" 2>/dev/null || true
    fi
  done
  deadline=$((SECONDS + TIMEOUT))
  while :; do
    left=()
    for i in "$@"; do
      if proc_running "${PIDS[i]}" "${STARTS[i]}"; then left+=("${i}"); fi
    done
    ((${#left[@]})) || return 0
    if ((SECONDS >= deadline)); then
      for i in "${left[@]}"; do
        log "${NAMES[i]} (pid ${PIDS[i]}) ignored TERM for ${TIMEOUT}s; sending KILL"
        kill -KILL "${PIDS[i]}" 2>/dev/null || true
      done
      deadline=$((SECONDS + 5))
      while :; do
        left=()
        for i in "$@"; do
          if proc_running "${PIDS[i]}" "${STARTS[i]}"; then left+=("${i}"); fi
        done
        ((${#left[@]})) || return 0
        if ((SECONDS >= deadline)); then
          for i in "${left[@]}"; do log "${NAMES[i]} (pid ${PIDS[i]}) survived KILL"; done
          die "could not stop every process of ${STATE}"
        fi
        sleep 0.1
      done
    fi
    sleep 0.1
  done
}

T0=${EPOCHREALTIME/./}
first=()
last=()
running=0
for i in "${!PIDS[@]}"; do
  proc_running "${PIDS[i]}" "${STARTS[i]}" || continue
  running=$((running + 1))
  if [[ "${NAMES[i]}" == etcd ]]; then last+=("${i}"); else first+=("${i}"); fi
done
if ((running)); then
  ((${#first[@]} == 0)) || stop_group "${first[@]}"
  ((${#last[@]} == 0)) || stop_group "${last[@]}"
  us=$((${EPOCHREALTIME/./} - T0))
  log "stopped ${running} process(es) of ${STATE} in $((us / 1000000)).$(((us % 1000000) / 100000))s"
else
  log "nothing running in ${STATE}"
fi
rm -f "${PIDS_FILE}"

if ((PURGE)); then
  rm -rf "${STATE:?}"
  log "removed ${STATE}"
fi
