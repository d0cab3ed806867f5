#!/usr/bin/env bash
# Smoke test of tests/node/: boots a control plane with real nodes, then on
# every node
#   - a pod from a locally made image (busybox, never pulled) runs to completion
#     and its log is read back with `kubectl logs` (API server -> kubelet);
#   - a pod and a host-network pod reach the API server through the `kubernetes`
#     Service (kube-proxy) and authenticate with their service account;
# then stops everything and checks that no process, cgroup, interface or mount
# of it is left. Needs root.
#
# Usage: tests/node/smoke-test.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[node-smoke] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
now_us() { printf '%s' "${EPOCHREALTIME/./}"; }
T0=$(now_us)

# The smoke test needs only its own small images (tests/node/test-images.sh).
export DOWSER_NODE_IMAGES=${DOWSER_NODE_IMAGES:-none}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dowser-node-smoke.XXXXXX")
STATE="${WORK}/state"
cleanup() {
  local rc=$?
  if [[ -d "${STATE}" ]]; then "${HERE}/down.sh" "${STATE}" >/dev/null 2>&1 || true; fi
  if ((rc == 0)); then rm -rf "${WORK}"; else log "state and logs kept in ${STATE}"; fi
}
trap cleanup EXIT

"${HERE}/up.sh" "${STATE}" >"${WORK}/up.out" || fail "up.sh (logs in ${STATE})"
[[ "$(tail -n1 "${WORK}/up.out")" == "${STATE}/env" ]] || fail "up.sh did not print the env file path"
set -a
# shellcheck disable=SC1091
. "${STATE}/env"
set +a
# shellcheck disable=SC1091
. "${STATE}/net"
k() { "${KUBECTL}" --kubeconfig="${KUBECONFIG}" --request-timeout=20s "$@"; }

wait_phase() { # <pod> <phase> <seconds>
  local deadline=$((SECONDS + $3)) phase
  while :; do
    phase=$(k get pod "$1" -o 'jsonpath={.status.phase}' 2>/dev/null || true)
    [[ "${phase}" == "$2" ]] && return 0
    if [[ "${phase}" == Failed || "${phase}" == Succeeded ]] || ((SECONDS >= deadline)); then
      k describe pod "$1" >&2 || true
      k logs "$1" >&2 || true
      fail "pod $1 is '${phase}', expected $2"
    fi
    sleep 0.5
  done
}

IFS=, read -r -a NODE_LIST <<<"${NODE_NAMES}"
[[ "${#NODE_LIST[@]}" == "${NODE_COUNT}" ]] || fail "NODE_NAMES does not list NODE_COUNT nodes"
KUBECTL_IMAGE=localhost/dowser-test/kubectl:1
for node in "${NODE_LIST[@]}"; do
  k get node "${node}" -o 'jsonpath={.status.nodeInfo.containerRuntimeVersion} {.status.nodeInfo.kubeletVersion}{"\n"}' >&2
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: hello-${node}}
spec:
  nodeSelector: {kubernetes.io/hostname: ${node}}
  restartPolicy: Never
  containers:
  - name: hello
    image: localhost/dowser-test/busybox:1
    imagePullPolicy: Never
    command: [sh, -c, 'echo "hello from \$(hostname) on \${NODE}"']
    env:
    - name: NODE
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
---
apiVersion: v1
kind: Pod
metadata: {name: api-${node}}
spec:
  nodeSelector: {kubernetes.io/hostname: ${node}}
  restartPolicy: Never
  containers:
  - name: whoami
    image: ${KUBECTL_IMAGE}
    imagePullPolicy: Never
    args: [auth, whoami, -o, 'jsonpath={.status.userInfo.username}']
---
apiVersion: v1
kind: Pod
metadata: {name: api-hostnet-${node}}
spec:
  nodeSelector: {kubernetes.io/hostname: ${node}}
  hostNetwork: true
  restartPolicy: Never
  containers:
  - name: whoami
    image: ${KUBECTL_IMAGE}
    imagePullPolicy: Never
    args: [auth, whoami, -o, 'jsonpath={.status.userInfo.username}']
EOF
done
for node in "${NODE_LIST[@]}"; do
  wait_phase "hello-${node}" Succeeded 120
  got=$(k logs "hello-${node}")
  [[ "${got}" == "hello from hello-${node} on ${node}" ]] || fail "kubectl logs hello-${node}: '${got}'"
  log "${node}: kubectl logs: ${got}"
  ip=$(k get pod "hello-${node}" -o 'jsonpath={.status.podIP}')
  cidr=$(sed -n 's/^N_POD_CIDR=//p' "${STATE}/nodes/${node}/node.env")
  [[ "${ip%.*}.0/24" == "${cidr}" ]] || fail "pod IP ${ip} is not in ${node}'s pod range ${cidr}"
  for p in api api-hostnet; do
    wait_phase "${p}-${node}" Succeeded 120
    got=$(k logs "${p}-${node}")
    [[ "${got}" == system:serviceaccount:default:default ]] || fail "${p}-${node} reached the API server as '${got}'"
    log "${node}: ${p} pod reached the API server through the kubernetes Service as ${got}"
  done
done
k delete pod --all --wait=true --timeout=60s >/dev/null

SLOT_CGROUPS="dowser-node-${SLOT}-"
"${HERE}/down.sh" "${STATE}" 2>"${WORK}/down.err" || { cat "${WORK}/down.err" >&2; fail "down.sh"; }
sleep 0.5
if pgrep -f "${STATE}/" >/dev/null; then
  pgrep -af "${STATE}/" >&2
  fail "processes left behind"
fi
[[ ! -e "/sys/class/net/${BRIDGE}" ]] || fail "bridge ${BRIDGE} left behind"
if ip -o link show | grep -q "dw${SLOT}n"; then fail "veth left behind: $(ip -o link show | grep "dw${SLOT}n")"; fi
if find /sys/fs/cgroup -maxdepth 2 -type d -name "${SLOT_CGROUPS}*" | grep -q .; then
  fail "cgroups left behind: $(find /sys/fs/cgroup -maxdepth 2 -type d -name "${SLOT_CGROUPS}*" | tr '\n' ' ')"
fi
if grep -q "${STATE}/" /proc/self/mountinfo; then fail "mounts left behind: $(grep "${STATE}/" /proc/self/mountinfo)"; fi
if ip route | grep -q "${BRIDGE}"; then fail "routes left behind: $(ip route | grep "${BRIDGE}")"; fi
us=$(($(now_us) - T0))
log "PASS ($((us / 1000000)).$(((us % 1000000) / 100000))s)"
