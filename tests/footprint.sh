#!/usr/bin/env bash
# The footprint part of tests/bench.sh alone, for profiling: boots the local control plane,
# a fake kubelet (node edge-1) and 50 simulated Modbus devices × 2 units, applies
# deploy/examples/ and a Configuration finding the 100 units, starts the agent, waits for the
# 100 Instances, then prints the agent's memory (status, smaps_rollup, resident memory by
# mapping) and its CPU over an idle window. With --controller it then creates 1,000 Instances
# (status.nodes set) and prints the same for a controller.
#
# Usage: tests/footprint.sh [--idle SECONDS] [--controller] [--keep DIR]
#                           [--variant LABEL 'ENV=VALUE ...' BINARY]...
# Each --variant runs one more agent after the first (on the same control plane, adopting
# the 100 Instances), with the given environment and binary, and reports it the same way.
# Environment: DOWSER_BIN (default target/release/dowser), DOWSER_SIM_BIN and
# DOWSER_FAKE_KUBELET (default target/debug/...), DOWSER_WRAP (a command put before the agent,
# such as "heaptrack -o /tmp/agent"), DOWSER_CONTROLLER_ENV (assignments for the controller,
# such as MALLOC_ARENA_MAX=1), DOWSER_K8S_BIN (else built by tests/prereqs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/prereqs.sh
idle=60 controller=0 keep=""
variants=()
while (($#)); do
  case "$1" in
    --variant) variants+=("$2" "$3" "$4"); shift 3 ;;
    --idle) idle=$2; shift ;;
    --controller) controller=1 ;;
    --keep) keep=$2; shift ;;
    *) fail "unknown argument $1" ;;
  esac
  shift
done
bin=${DOWSER_BIN:-target/release/dowser}
sim_bin=${DOWSER_SIM_BIN:-target/debug/dowser-sim}
kubelet_bin=${DOWSER_FAKE_KUBELET:-target/debug/fake-kubelet}
for b in "$bin" "$sim_bin" "$kubelet_bin"; do [ -x "$b" ] || fail "$b is not built"; done
[ -n "${DOWSER_K8S_BIN:-}" ] || k8s_binaries
kubectl() { "$DOWSER_K8S_BIN/kubectl" "$@"; }

work=${keep:-$(mktemp -d)}
mkdir -p "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  tests/cluster/down.sh --purge "$work/cluster" >/dev/null 2>&1 || true
  [ -n "$keep" ] || rm -rf "$work"
}
trap cleanup EXIT

# Memory and CPU of a process: /proc status lines, smaps_rollup, and the resident KiB of
# each kind of mapping (the binary's own pages, shared libraries, heap, stacks, other anon).
report() { # <pid> <what>
  local pid=$1
  step "$2 (pid $pid)"
  grep -E '^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem|Threads):' "/proc/$pid/status" >&2
  grep -E '^(Rss|Pss|Pss_Anon|Pss_File|Private_Clean|Private_Dirty|Shared_Clean|Anonymous):' "/proc/$pid/smaps_rollup" >&2
  awk -v exe="$(readlink "/proc/$pid/exe")" '
    /^[0-9a-f]+-[0-9a-f]+ / {
      perm = $2; name = $6
      if (name == exe) kind = "binary " perm
      else if (name ~ /\.so/) kind = "shared libraries"
      else if (name == "[heap]") kind = "[heap] (brk)"
      else if (name ~ /^\[stack/) kind = "[stack] (main thread)"
      else if (name ~ /^\[/) kind = name
      else if (name == "") kind = "anonymous mappings (mmap arenas, thread stacks, large allocations)"
      else kind = name
      next
    }
    /^Rss:/ { rss[kind] += $2 }
    END { for (k in rss) if (rss[k] > 0) printf "  %7d KiB  %s\n", rss[k], k }
  ' "/proc/$pid/smaps" | sort -rn >&2
}
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
idle_cpu() { # <pid> <seconds>: % of one core
  local a b
  a=$(ticks "$1"); sleep "$2"; b=$(ticks "$1")
  awk -v a="$a" -v b="$b" -v s="$2" 'BEGIN { printf "%.2f\n", (b - a) / 100 / s * 100 }'
}

step "control plane"
tests/cluster/up.sh "$work/cluster" >/dev/null 2>"$work/up.log" || { cat "$work/up.log" >&2; fail "cluster"; }
export KUBECONFIG="$work/cluster/kubeconfig"
kubectl apply -f crds/ >/dev/null

mkdir -p "$work/edge-1"
"$kubelet_bin" --kubeconfig "$KUBECONFIG" --node-name edge-1 --root-dir "$work/edge-1" 2>"$work/kubelet.log" &
pids+=($!)
cat >"$work/fleet.yaml" <<'EOF'
modbus:
  - listen: 127.91.0.1:5020
    count: 50
    units:
      - {id: 1, vendorName: Acme, productCode: PLC, revision: "1.0"}
      - {id: 2, vendorName: Acme, productCode: IO, revision: "1.0"}
EOF
"$sim_bin" -f "$work/fleet.yaml" >"$work/sim.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do grep -q '^ready$' "$work/sim.log" && [ -S "$work/edge-1/device-plugins/kubelet.sock" ] && break; sleep 0.05; done
kubectl apply -f deploy/examples/ >/dev/null
printf 'apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {name: hundred, namespace: default}\nspec:\n  discovery: {modbus: {targets: ["127.91.0.1-127.91.0.50"], ports: [5020], unitIds: ["1-2"], intervalSeconds: 30}}\n' |
  kubectl apply -f - >/dev/null

start_agent() { # <binary> [ENV=VALUE...]: sets $agent
  local b=$1
  shift
  # shellcheck disable=SC2086 # DOWSER_WRAP is a command line
  env NODE_NAME=edge-1 DOWSER_LOG=warn "$@" ${DOWSER_WRAP:-} "$b" agent \
    --device-plugin-dir "$work/edge-1/device-plugins" \
    --pod-resources-socket "$work/edge-1/pod-resources/kubelet.sock" \
    --health-addr 127.0.0.1:0 ${DOWSER_AGENT_ARGS:-} 2>>"$work/agent.log" &
  pids+=($!)
  agent=$!
}

step "agent: $bin ${DOWSER_WRAP:-}"
start_agent "$bin"
t0=$(date +%s.%N)
for _ in $(seq 600); do
  n=$(kubectl get instances -l dowser.dev/configuration=hundred -o name | wc -l)
  [ "$n" = 100 ] && break
  sleep 0.2
done
[ "$n" = 100 ] || { cat "$work/agent.log" >&2; fail "only $n of 100 Instances"; }
printf '100 Instances after %.1f s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" >&2
# With a wrapper (heaptrack) the agent is its child.
[ -z "${DOWSER_WRAP:-}" ] || agent=$(pgrep -n -f "^$bin agent")
sleep 5
cpu=$(idle_cpu "$agent" "$idle")
report "$agent" "agent, 100 Instances, after ${idle}s idle"
echo "agent idle CPU over ${idle} s: ${cpu} % of a core" >&2
# Under heaptrack, what is still allocated when the agent is killed is what it holds.
[ -z "${DOWSER_WRAP:-}" ] || { kill -KILL "$agent"; sleep 3; }

for ((v = 0; v < ${#variants[@]}; v += 3)); do
  kill -INT "$agent"; wait "$agent" 2>/dev/null || true
  # shellcheck disable=SC2086 # the variant's environment is a list of assignments
  start_agent "${variants[v + 2]}" ${variants[v + 1]}
  sleep 10
  cpu=$(idle_cpu "$agent" "$idle")
  report "$agent" "variant ${variants[v]} (${variants[v + 1]}; ${variants[v + 2]}), after ${idle}s idle"
  echo "agent idle CPU over ${idle} s: ${cpu} % of a core" >&2
done

if [ "$controller" = 1 ]; then
  kill "$agent" 2>/dev/null || true
  # shellcheck disable=SC2086 # DOWSER_CONTROLLER_ENV is a list of assignments
  env NODE_NAME=edge-1 DOWSER_LOG=warn ${DOWSER_CONTROLLER_ENV:-} ${DOWSER_WRAP:-} "$bin" controller --health-addr 127.0.0.1:0 --instance-name footprint 2>"$work/controller.log" &
  pids+=($!)
  ctl=$!
  step "1,000 Instances"
  printf 'apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {name: scale, namespace: default}\nspec:\n  discovery: {modbus: {targets: ["127.0.0.1:1"]}}\n' | kubectl apply -f - >/dev/null
  for i in $(seq 0 999); do
    printf -- '---\napiVersion: dowser.dev/v1alpha1\nkind: Instance\nmetadata: {name: scale-%04d, namespace: default, labels: {dowser.dev/configuration: scale}}\nspec: {configurationName: scale, deviceId: "modbus+tcp://10.1.%d.%d:502/1", shared: true, capacity: 1}\n' \
      "$i" $((i / 250)) $((i % 250 + 1))
  done >"$work/instances.yaml"
  kubectl create -f "$work/instances.yaml" >/dev/null
  seq -f 'scale-%04g' 0 999 | xargs -P 4 -I{} "$DOWSER_K8S_BIN/kubectl" patch instance {} \
    --subresource=status --type merge -p '{"status":{"nodes":["edge-1"]}}' >/dev/null
  sleep 30
  [ -z "${DOWSER_WRAP:-}" ] || ctl=$(pgrep -n -f "^$bin controller")
  report "$ctl" "controller, 1,000 Instances"
  [ -z "${DOWSER_WRAP:-}" ] || { kill -KILL "$ctl"; sleep 3; }
fi
