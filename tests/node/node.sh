#!/usr/bin/env bash
# Operate one real node of a cluster made by tests/node/up.sh.
#
# Usage: tests/node/node.sh <command> <state-dir> <node> [args...]
#
#   boot   <state> <node> [--no-images]  namespaces, network, mounts; containerd
#                                       (images loaded), kubelet, kube-proxy
#   halt   <state> <node>               power off: daemons get TERM (5 s), then
#                                       every process in the node's cgroup
#                                       (containers too) is killed; namespaces,
#                                       mounts and iptables rules go with them
#   reboot <state> <node>               halt, then boot without reloading images;
#                                       /run/containerd and /var/run/cdi start
#                                       empty, /var/lib/{kubelet,containerd,cni} stay
#   stop   <state> <node> <component>   TERM (KILL after 10 s) one daemon:
#                                       kubelet, containerd or kube-proxy; its
#                                       containers keep running
#   start  <state> <node> <component>   start a stopped daemon again
#   status <state> <node>               "<component> <pid>" of running daemons
#   exec   <state> <node> <command...>  run a command in the node's network and
#                                       mount namespaces (PATH has the node's
#                                       binaries: ctr, crictl-free CRI via ctr)
#   load   <state> <node> <tar...>      import image tars into containerd (k8s.io)
set -euo pipefail
LOG_TAG=node
# shellcheck source=tests/node/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; }
(($# >= 3)) || { usage; exit 2; }
CMD=$1
STATE=$(cd "$2" && pwd -P)
NODE=$3
shift 3
[[ -f "${STATE}/${MARKER}" ]] || die "${STATE} was not made by tests/node/up.sh"
# shellcheck disable=SC1091
. "${STATE}/net"
node_load "${STATE}" "${NODE}"
LOG_TAG="node ${NODE}"
DIR=${N_DIR}
PIDS="${DIR}/pids"
HOLDER="${DIR}/holder"
NODE_PATH="${NODE_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

holder_running() {
  local pid start
  [[ -f "${HOLDER}" ]] || return 1
  read -r pid start <"${HOLDER}" || return 1
  proc_running "${pid}" "${start}"
}
holder_pid() { local pid _s; read -r pid _s <"${HOLDER}"; printf '%s\n' "${pid}"; }

comp_cmd() { # <component>: sets CMDLINE
  case "$1" in
    containerd) CMDLINE=("${NODE_BIN}/containerd" --config "${DIR}/containerd.toml") ;;
    kubelet)
      CMDLINE=("${NODE_BIN}/kubelet" --config "${DIR}/kubelet.yaml" --kubeconfig "${DIR}/kubelet.kubeconfig"
        --hostname-override "${N_NAME}" --node-ip "${N_IP}" --v "${DOWSER_KUBELET_VERBOSITY:-1}")
      ;;
    kube-proxy) CMDLINE=("${NODE_BIN}/kube-proxy" --config "${DIR}/kube-proxy.yaml" --v "${DOWSER_KUBE_PROXY_VERBOSITY:-1}") ;;
    *) die "unknown component '$1' (kubelet, containerd, kube-proxy)" ;;
  esac
}
comp_pid() { # <component>: prints the pid if running
  local name pid start
  [[ -f "${PIDS}" ]] || return 1
  while read -r name pid start; do
    [[ "${name}" == "$1" ]] || continue
    proc_running "${pid}" "${start}" && { printf '%s\n' "${pid}"; return 0; }
  done <"${PIDS}"
  return 1
}
comp_forget() { # <component>
  [[ -f "${PIDS}" ]] || return 0
  grep -v "^$1 " "${PIDS}" >"${PIDS}.tmp" || true
  mv "${PIDS}.tmp" "${PIDS}"
}
comp_start() { # <component>
  local comp=$1 pid start hp
  holder_running || die "node is not booted"
  ! comp_pid "${comp}" >/dev/null || die "${comp} is already running"
  comp_cmd "${comp}"
  hp=$(holder_pid)
  mkdir -p "${DIR}/logs"
  printf '==== %s start %s\n' "$(date -u +%FT%TZ)" "${comp}" >>"${DIR}/logs/${comp}.log"
  # The subshell joins the node's cgroup, then becomes the daemon (nsenter execs it).
  (
    cg_join "${N_CGROUP}/daemons" "${BASHPID}"
    exec nsenter -t "${hp}" --net --mount -- env PATH="${NODE_PATH}" "${CMDLINE[@]}"
  ) </dev/null >>"${DIR}/logs/${comp}.log" 2>&1 &
  pid=$!
  start=$(proc_starttime "${pid}") || die "${comp} exited at once; see ${DIR}/logs/${comp}.log"
  comp_forget "${comp}"
  printf '%s %s %s\n' "${comp}" "${pid}" "${start}" >>"${PIDS}"
  log "started ${comp} (pid ${pid})"
}
comp_stop() { # <component> [timeout]
  local comp=$1 timeout=${2:-10} pid start deadline
  pid=$(comp_pid "${comp}") || { log "${comp} is not running"; comp_forget "${comp}"; return 0; }
  start=$(proc_starttime "${pid}")
  kill -TERM "${pid}" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while proc_running "${pid}" "${start}"; do
    if ((SECONDS >= deadline)); then
      log "${comp} (pid ${pid}) ignored TERM for ${timeout}s; sending KILL"
      kill -KILL "${pid}" 2>/dev/null || true
      deadline=$((SECONDS + 10))
    fi
    sleep 0.1
  done
  comp_forget "${comp}"
  log "stopped ${comp} (pid ${pid})"
}

in_node() { nsenter -t "$(holder_pid)" --net --mount -- env PATH="${NODE_PATH}" "$@"; }

wait_for() { # <seconds> <what> <command...>
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after $1s waiting for ${what}"
    sleep 0.2
  done
}
ctr_ready() { in_node ctr --address /run/containerd/containerd.sock version; }

load_images() { # <tar...>
  local t out
  for t in "$@"; do
    [[ -f "${t}" ]] || die "no image tar ${t}"
    out=$(in_node ctr --address /run/containerd/containerd.sock -n k8s.io images import "${t}" 2>&1) ||
      die "ctr images import ${t} failed: ${out}"
  done
}

node_boot() {
  local no_images=0 t0 hp m name path flags other oip ocidr
  [[ "${1:-}" == --no-images ]] && no_images=1
  t0=$(now_us)
  ! holder_running || die "node is already booted (halt it first)"
  # Leftovers of a node that died without a halt.
  cg_destroy "${N_CGROUP}"
  ip link del "${N_VETH}" 2>/dev/null || true
  : >"${PIDS}"
  cg_create "${N_CGROUP}/daemons"
  for m in "${NODE_MOUNTS[@]}"; do
    IFS=: read -r name path flags <<<"${m}"
    if [[ "${flags}" == volatile ]]; then rm -rf "${DIR}/fs/${name:?}"; fi
    mkdir -p "${DIR}/fs/${name}"
  done
  mkdir -p "${DIR}/logs"

  # The holder: the node's network and mount namespaces live as long as it does.
  (
    cg_join "${N_CGROUP}/daemons" "${BASHPID}"
    exec unshare --net --mount --propagation private -- sleep infinity
  ) </dev/null >/dev/null 2>&1 &
  hp=$!
  local self_net
  self_net=$(readlink /proc/self/ns/net)
  for _ in $(seq 1 100); do
    [[ "$(readlink "/proc/${hp}/ns/net" 2>/dev/null)" != "${self_net}" ]] && break
    sleep 0.05
  done
  [[ "$(readlink "/proc/${hp}/ns/net" 2>/dev/null)" != "${self_net}" ]] || die "the holder did not enter new namespaces"
  printf '%s %s\n' "${hp}" "$(proc_starttime "${hp}")" >"${HOLDER}"

  # Network: eth0 on the cluster bridge; pods on cni0 (CNI bridge plugin); the
  # service range routed to an empty bridge so that a service IP is routable
  # before kube-proxy's DNAT and dropped when no rule matches.
  ip link add "${N_VETH}" type veth peer name "${N_VETH}p"
  ip link set "${N_VETH}p" netns "${hp}"
  ip link set "${N_VETH}" master "${BRIDGE}"
  ip link set "${N_VETH}" up
  # shellcheck disable=SC2016
  in_node sh -euc '
    ip link set lo up
    ip link set "$1" name eth0
    ip addr add "$2/24" dev eth0
    ip link set eth0 up
    ip link add kube-svc type bridge
    ip link set kube-svc up
    ip route add "$3" dev kube-svc
    sysctl -qw net.ipv4.ip_forward=1
    sysctl -qw net.ipv6.conf.all.disable_ipv6=1
  ' sh "${N_VETH}p" "${N_IP}" "${SERVICE_CIDR}"
  for other in ${NODES:?}; do
    [[ "${other}" == "${NODE}" ]] && continue
    oip=$(sed -n 's/^N_IP=//p' "${STATE}/nodes/${other}/node.env")
    ocidr=$(sed -n 's/^N_POD_CIDR=//p' "${STATE}/nodes/${other}/node.env")
    in_node ip route add "${ocidr}" via "${oip}" dev eth0
  done

  # Mounts: the node's own copy of each fixed path.
  for m in "${NODE_MOUNTS[@]}"; do
    IFS=: read -r name path flags <<<"${m}"
    mkdir -p "${path}"
    in_node mount --bind "${DIR}/fs/${name}" "${path}"
  done
  cp "${DIR}/cni.conflist" "${DIR}/fs/cni-conf/10-dowser.conflist"
  # The kubelet sets these host-wide sysctls to the values below when they
  # differ (kernel.panic_on_oops=1 among them); a test node must leave the
  # host's kernel alone, so it reads them from files with those values.
  mkdir -p "${DIR}/sysctl"
  local kv key val
  for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
    kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
    key=${kv%%=*}
    val=${kv#*=}
    printf '%s\n' "${val}" >"${DIR}/sysctl/${key//\//.}"
    in_node mount --bind -o ro "${DIR}/sysctl/${key//\//.}" "/proc/sys/${key}"
  done

  comp_start containerd
  wait_for 60 "containerd" ctr_ready
  if ((!no_images)); then
    local tars=()
    mapfile -t tars <"${STATE}/images.list"
    ((${#tars[@]} == 0)) || load_images "${tars[@]}"
    log "loaded ${#tars[@]} image(s)"
  fi
  comp_start kubelet
  comp_start kube-proxy
  log "booted in $(fmt_secs $(($(now_us) - t0))) (kubelet and kube-proxy starting)"
}

node_halt() {
  local pid start c
  if holder_running; then
    for c in kubelet kube-proxy containerd; do comp_stop "${c}" 5 || true; done
    # Everything else but the holder first, while the network is still there,
    # so that peers (the API server) see the connections close.
    local hp left
    hp=$(holder_pid)
    for _ in $(seq 1 50); do
      left=$(cg_procs "${N_CGROUP}" | grep -vx "${hp}" || true)
      [[ -n "${left}" ]] || break
      # shellcheck disable=SC2086
      kill -KILL ${left} 2>/dev/null || true
      sleep 0.1
    done
    sleep 0.3
  fi
  cg_destroy "${N_CGROUP}"
  if [[ -f "${HOLDER}" ]] && read -r pid start <"${HOLDER}"; then
    while proc_running "${pid}" "${start}"; do sleep 0.1; done
  fi
  rm -f "${HOLDER}" "${PIDS}"
  # The veth pair goes with the network namespace; be sure.
  ip link del "${N_VETH}" 2>/dev/null || true
  log "halted"
}

case "${CMD}" in
  boot) node_boot "$@" ;;
  halt) node_halt ;;
  reboot) node_halt; node_boot --no-images ;;
  stop) (($# == 1)) || die "stop needs a component"; comp_stop "$1" ;;
  start) (($# == 1)) || die "start needs a component"; comp_start "$1" ;;
  status)
    for c in containerd kubelet kube-proxy; do
      if p=$(comp_pid "${c}"); then printf '%s %s\n' "${c}" "${p}"; fi
    done
    ;;
  exec)
    (($#)) || die "exec needs a command"
    holder_running || die "node is not booted"
    exec nsenter -t "$(holder_pid)" --net --mount -- env PATH="${NODE_PATH}" "$@"
    ;;
  load) holder_running || die "node is not booted"; load_images "$@" ;;
  *) usage; die "unknown command ${CMD}" ;;
esac
