# shellcheck shell=bash disable=SC2034
# Shared by tests/node/{up,down,node}.sh: sourced, not run.
#
# A real test node is a kubelet, a containerd and a kube-proxy running in the
# node's own namespaces and cgroup, all on this one host:
#   - network namespace: `eth0` (a veth on the cluster's bridge in the host
#     namespace) with the node IP, a CNI bridge `cni0` for its pods, its own
#     iptables (kube-proxy's rules live and die there). No default route: the
#     node reaches the host's bridge address, the other nodes and their pods,
#     and nothing else.
#   - mount namespace: the fixed paths of a node (/var/lib/kubelet with its
#     device-plugins directory, /var/log/pods, /run/containerd, /etc/cni/net.d,
#     /var/lib/cni, CDI directories, ...) are bind mounts of directories under
#     STATE/nodes/<node>/fs, so two nodes never share them, and every mount the
#     node makes (container root filesystems, volumes) goes away with it.
#   - cgroup `/dowser-node-<slot>-<index>`: node daemons in `daemons/`, pods in
#     the kubelet's `kubepods/` (kubelet cgroupRoot). Stopping a node kills
#     everything in that cgroup.
# A "holder" process (sleep) keeps the namespaces between daemon restarts.

NODE_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "${NODE_LIB_DIR}/../.." && pwd)
MARKER=.dowser-node
SERVICE_CIDR=10.96.0.0/16
# Fixed paths of a node, bind-mounted from STATE/nodes/<node>/fs/<name>.
# <name>:<path>[:volatile]  (volatile = emptied when the node boots, like a tmpfs)
NODE_MOUNTS=(
  kubelet:/var/lib/kubelet
  log-pods:/var/log/pods
  log-containers:/var/log/containers
  containerd:/var/lib/containerd
  containerd-run:/run/containerd:volatile
  containerd-etc:/etc/containerd
  cni-conf:/etc/cni/net.d
  cni-lib:/var/lib/cni
  cdi-etc:/etc/cdi
  cdi-run:/var/run/cdi:volatile
  kube-proxy:/var/lib/kube-proxy
)

LOG_TAG=${LOG_TAG:-node}
# log, die, now_us, fmt_secs, proc_starttime, proc_running, parse_down_args, trap_exit
# shellcheck source=tests/cluster/lib.sh
. "${REPO_DIR}/tests/cluster/lib.sh"

# ---- cgroups ------------------------------------------------------------------
# Mount points of every cgroup hierarchy (v1 controllers and the v2 tree).
cg_mounts() {
  awk '{for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) == "cgroup" || $(i+1) == "cgroup2") print $5; break }}' \
    /proc/self/mountinfo | sort -u
}
cg_unified() { [[ -f /sys/fs/cgroup/cgroup.controllers ]]; }
# The hierarchy whose cgroup.procs lists every process of a node: the v2 tree on
# a cgroup v2 host; on v1, a controller that runc joins for every container.
cg_kill_root() {
  if cg_unified; then printf '/sys/fs/cgroup\n'; return; fi
  local c
  for c in pids memory freezer cpu; do
    [[ -f "/sys/fs/cgroup/${c}/cgroup.procs" ]] && { printf '/sys/fs/cgroup/%s\n' "${c}"; return; }
  done
  die "no cgroup v1 hierarchy (pids, memory, freezer, cpu) under /sys/fs/cgroup"
}
cg_create() { # <cgroup path, e.g. /dowser-node-0-1/daemons>
  local m dir part acc=""
  while read -r m; do
    acc=""
    for part in ${1//\// }; do
      acc+="/${part}"
      dir="${m}${acc}"
      [[ -d "${dir}" ]] || mkdir "${dir}" || die "cannot create cgroup ${dir}"
      # cgroup v1 cpuset: a new cgroup has no CPUs or memory nodes until given its parent's.
      # (On cgroup v2 an empty cpuset.cpus means the parent's.)
      if ! cg_unified && [[ -f "${dir}/cpuset.cpus" && -z "$(cat "${dir}/cpuset.cpus")" ]]; then
        cat "$(dirname "${dir}")/cpuset.cpus" >"${dir}/cpuset.cpus"
        cat "$(dirname "${dir}")/cpuset.mems" >"${dir}/cpuset.mems"
      fi
    done
  done < <(cg_mounts)
}
cg_join() { # <cgroup path> <pid>: into that cgroup in every hierarchy
  local m
  while read -r m; do
    [[ -f "${m}$1/cgroup.procs" ]] && printf '%s\n' "$2" >"${m}$1/cgroup.procs"
  done < <(cg_mounts)
  return 0
}
cg_procs() { # <cgroup path>: every pid in it and below
  local root
  root="$(cg_kill_root)$1"
  [[ -d "${root}" ]] || return 0
  find "${root}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un
}
# Kill every process in a cgroup subtree (repeatedly, so forks cannot escape),
# then remove the subtree from every hierarchy.
cg_destroy() { # <cgroup path>
  local pids round m
  for round in $(seq 1 100); do
    pids=$(cg_procs "$1")
    [[ -n "${pids}" ]] || break
    if cg_unified && [[ -f "/sys/fs/cgroup$1/cgroup.kill" ]]; then
      printf '1\n' >"/sys/fs/cgroup$1/cgroup.kill" 2>/dev/null || true
    fi
    # shellcheck disable=SC2086
    kill -KILL ${pids} 2>/dev/null || true
    sleep 0.1
  done
  [[ -z "$(cg_procs "$1")" ]] || log "warning: processes left in cgroup $1: $(cg_procs "$1" | tr '\n' ' ')"
  while read -r m; do
    [[ -d "${m}$1" ]] || continue
    for _ in $(seq 1 50); do
      find "${m}$1" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d "${m}$1" ]] || break
      sleep 0.1
    done
    [[ ! -d "${m}$1" ]] || log "warning: could not remove cgroup ${m}$1"
  done < <(cg_mounts)
}

# ---- per-node facts -------------------------------------------------------------
# node_load <state> <node>: sets N_* variables from STATE/nodes/<node>/node.env
node_load() {
  local env_file="$1/nodes/$2/node.env"
  [[ -f "${env_file}" ]] || die "no node $2 in $1"
  # shellcheck disable=SC1090
  . "${env_file}"
}
