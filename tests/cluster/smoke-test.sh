#!/usr/bin/env bash
# Smoke test of up.sh / down.sh: boots two clusters at once, checks the API,
# that a pod stays Pending/Unschedulable without nodes and is bound once a
# hand-made Node exists, stops both and checks that no process is left.
#
# Usage: tests/cluster/smoke-test.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[smoke] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

BIN=${DOWSER_K8S_BIN:-$("${HERE}/build-binaries.sh" | tail -n1)}
export DOWSER_K8S_BIN=${BIN}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dowser-smoke.XXXXXX")
CLUSTERS=("${WORK}/a" "${WORK}/b")
cleanup() {
  local c
  for c in "${CLUSTERS[@]}"; do
    if [[ -d "${c}" ]]; then "${HERE}/down.sh" "${c}" 2>/dev/null || true; fi
  done
  rm -rf "${WORK}"
}
trap cleanup EXIT

log "booting two clusters in ${WORK}"
pids=()
for c in "${CLUSTERS[@]}"; do
  "${HERE}/up.sh" "${c}" >"${c}.out" 2>"${c}.err" &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[i]}" || { cat "${CLUSTERS[i]}.err" >&2; fail "up.sh ${CLUSTERS[i]}"; }
  [[ "$(tail -n1 "${CLUSTERS[i]}.out")" == "${CLUSTERS[i]}/env" ]] || fail "up.sh did not print the env file path"
  grep 'up in' "${CLUSTERS[i]}.err" >&2
done

wait_for() { # <seconds> <description> <command...>
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    ((SECONDS < deadline)) || fail "timed out: ${what}"
    sleep 0.5
  done
}

k() { "${KUBECTL}" --kubeconfig="${KUBECONFIG}" "$@"; }
unschedulable() {
  [[ "$(k get pod p1 -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].reason}')" == Unschedulable ]]
}
bound() { [[ "$(k get pod p1 -o jsonpath='{.spec.nodeName}')" == fake-node ]]; }

check_cluster() { # <state-dir>; run in a subshell (it sources the env file)
  local c=$1
  set -a
  # shellcheck disable=SC1091
  . "${c}/env"
  set +a
  log "${c}: ${APISERVER_URL}"
  k get namespaces default kube-system >/dev/null || fail "get ns"
  k version | grep -q "Server Version: ${K8S_VERSION}" || fail "kubectl version"
  # Each cluster is its own: a namespace made here is not in the other one.
  k create namespace "only-in-${c##*/}" >/dev/null

  k run p1 --image=registry.invalid/none --restart=Never >/dev/null
  wait_for 30 "p1 Unschedulable" unschedulable
  log "${c}: without nodes p1 is $(k get pod p1 -o jsonpath='{.status.phase}'): $(k get pod p1 -o jsonpath='{.status.conditions[0].message}')"

  k apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Node
metadata:
  name: fake-node
  labels: {kubernetes.io/hostname: fake-node}
status:
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
  allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
EOF
  # The TaintNodesByCondition admission plugin taints every new Node not-ready.
  k taint node fake-node node.kubernetes.io/not-ready:NoSchedule- >/dev/null
  wait_for 30 "p1 bound to fake-node" bound
  log "${c}: p1 bound to $(k get pod p1 -o jsonpath='{.spec.nodeName}')"
}

for c in "${CLUSTERS[@]}"; do
  (check_cluster "${c}")
done
for c in "${CLUSTERS[@]}"; do
  other=${CLUSTERS[0]}
  [[ "${other}" == "${c}" ]] && other=${CLUSTERS[1]}
  if "${BIN}/kubectl" --kubeconfig="${c}/kubeconfig" get namespace "only-in-${other##*/}" >/dev/null 2>&1; then
    fail "clusters share state"
  fi
done

for c in "${CLUSTERS[@]}"; do "${HERE}/down.sh" "${c}"; done
sleep 0.5
if pgrep -f "${WORK}/" >/dev/null; then
  pgrep -af "${WORK}/" >&2
  fail "processes left behind"
fi
log "PASS"
