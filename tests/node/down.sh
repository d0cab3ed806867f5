#!/usr/bin/env bash
# Stop a cluster started by tests/node/up.sh: every node (each process in the
# node's cgroup, containers included, is killed; its namespaces, mounts and
# iptables rules go with it; its cgroups are removed), the bridge and routes
# in the host namespace, then the control plane.
#
# Usage: tests/node/down.sh [--purge] <state-dir>
#
# Logs stay in <state-dir>/nodes/<node>/logs and <state-dir>/cluster/logs;
# --purge deletes <state-dir>. Stopping a stopped cluster is not an error.
set -euo pipefail
LOG_TAG=node-down
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/node/lib.sh
. "${HERE}/lib.sh"

parse_down_args "$@"
[[ -d "${STATE}" ]] || { log "${STATE} does not exist; nothing to stop"; exit 0; }
STATE=$(cd "${STATE}" && pwd -P)
[[ -f "${STATE}/${MARKER}" ]] || die "${STATE} was not made by tests/node/up.sh"
T0=$(now_us)

if [[ -f "${STATE}/net" ]]; then
  # shellcheck disable=SC1091
  . "${STATE}/net"
  for name in ${NODES}; do
    [[ -f "${STATE}/nodes/${name}/node.env" ]] || continue
    "${HERE}/node.sh" halt "${STATE}" "${name}" || log "warning: halting ${name} failed"
  done
  # Routes through the bridge go with it.
  ip link del "${BRIDGE}" 2>/dev/null || true
fi
# The API server drains its clients' connections on TERM; the nodes' last
# connections keep it waiting, so it gets KILL after 3 s (a throw-away cluster).
if [[ -d "${STATE}/cluster" && -f "${STATE}/cluster/.dowser-cluster" ]]; then
  DOWSER_DOWN_TIMEOUT=${DOWSER_DOWN_TIMEOUT:-3} "${REPO_DIR}/tests/cluster/down.sh" "${STATE}/cluster" \
    2> >(grep -v 'ignored TERM' >&2)
fi
rm -f "${STATE}/net"
log "stopped in $(fmt_secs $(($(now_us) - T0)))"
if ((PURGE)); then
  rm -rf "${STATE:?}"
  log "removed ${STATE}"
fi
