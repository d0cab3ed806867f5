#!/usr/bin/env bash
# The dowser demo: a simulated plant on loopback, and `dowser discover` finding it.
# Usage: tests/demo.sh            (from anywhere; builds what it needs)
#        tests/demo.sh --cluster [--keep]
#   --cluster  the whole job on real nodes of this host (needs root and Go, like tests/test.sh):
#              a local control plane and two kubelet + containerd nodes (tests/node/up.sh), the
#              images built here, dowser installed with the README's `helm install`, a simulated
#              plant on the nodes' network, the example broker's Configuration; shows the
#              Configurations, Instances and broker pods, and a broker's log reading its PLC.
#              Stops everything on exit (also on Ctrl-C or failure).
#   --keep     leaves the cluster and the plant running, and says how to use and stop them.
# Environment (--cluster): DOWSER_NODE_COUNT (default 2), DOWSER_DEMO_STATE (state directory,
# default a new one under /tmp), DOWSER_CACHE (as tests/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=0 keep=0 args=()
for a in "$@"; do
  case "$a" in
    --cluster) cluster=1 ;;
    --keep) keep=1 ;;
    *) args+=("$a") ;;
  esac
done
set -- ${args[@]+"${args[@]}"}
((cluster || !keep)) || { echo "error: --keep goes with --cluster" >&2; exit 2; }
((!cluster || $# == 0)) || { echo "error: --cluster takes no other arguments (got: $*)" >&2; exit 2; }

command -v cargo >/dev/null || { echo "error: cargo (Rust 1.89 or newer) is needed: https://rustup.rs" >&2; exit 1; }
. tests/prereqs.sh

if ((!cluster)); then
  echo "==> building dowser and dowser-sim" >&2
  cargo build --quiet -p dowser --bin dowser
  cargo build --quiet -p dowser-sim --bin dowser-sim
  bin=${CARGO_TARGET_DIR:-target}/debug

  log=$(mktemp)
  "$bin/dowser-sim" -f tests/sim/demo-fleet.yaml >"$log" 2>&1 &
  sim=$!
  trap 'kill $sim 2>/dev/null || true; wait $sim 2>/dev/null || true; rm -f "$log"' EXIT
  for _ in $(seq 100); do
    grep -q '^ready$' "$log" && break
    kill -0 $sim 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  grep -q '^ready$' "$log" || { echo "error: dowser-sim did not start" >&2; cat "$log" >&2; exit 1; }

  echo "==> dowser-sim serves:" >&2
  grep -v '^ready$' "$log" | sed 's/^/    /' >&2
  echo >&2
  echo "==> dowser discover -f deploy/examples/modbus-tcp.yaml" >&2
  "$bin/dowser" discover -f deploy/examples/modbus-tcp.yaml "$@"
  echo >&2
  echo "==> dowser discover -f deploy/examples/opcua.yaml --property USERNAME=operator --property PASSWORD=..." >&2
  "$bin/dowser" discover -f deploy/examples/opcua.yaml \
    --property USERNAME=operator --property PASSWORD=demo-only "$@"
  exit 0
fi

# ---- --cluster ---------------------------------------------------------------------------------
started=$(date +%s)
elapsed() { echo "$(($(date +%s) - started)) s"; }
[ "$(id -u)" = 0 ] || fail "--cluster needs root (the nodes' namespaces, cgroups and mounts)"

k8s_binaries
node_prereqs

step "the project's images (tests/node/build-images.sh: buildah, a Debian base by mmdebstrap)"
images_out=$(tests/node/build-images.sh)
images=$(tail -n 1 <<<"$images_out")
pause=$(sed -n 's/^DOWSER_PAUSE_IMAGE=//p' <<<"$images_out")

step "dowser-sim (the simulated plant)"
cargo build --quiet -p dowser-sim --bin dowser-sim
sim_bin=${CARGO_TARGET_DIR:-target}/debug/dowser-sim

made_state=0
if [ -n "${DOWSER_DEMO_STATE:-}" ]; then
  state=$DOWSER_DEMO_STATE
else
  state=$(mktemp -d /tmp/dowser-demo.XXXXXX)
  made_state=1
fi
sim=""
finish() {
  local rc=$?
  trap '' INT TERM HUP   # a second Ctrl-C must not stop the clean-up half way
  trap - EXIT
  if ((keep && rc == 0)); then exit 0; fi
  if [ -n "$sim" ]; then kill "$sim" 2>/dev/null || true; wait "$sim" 2>/dev/null || true; fi
  if [ -f "$state/.dowser-node" ]; then   # tests/node/up.sh's marker
    step "stopping the cluster (tests/node/down.sh)"
    tests/node/down.sh "$state" || true
    if [ ! -f "$state/net" ]; then   # stopped: nothing of it runs or is mounted any more
      if ((made_state && (rc == 0 || rc > 128))); then
        rm -rf --one-file-system "$state"
      elif ((rc != 0)); then
        # A failure: keep the logs and configuration, not the nodes' images and containers.
        rm -rf --one-file-system "$state"/nodes/*/fs "$state/cluster/etcd"
        echo "logs: $state/nodes/*/logs, $state/cluster/logs, $state/dowser-sim.log (remove $state when done)" >&2
      fi
    fi
  elif ((made_state)); then
    rm -rf --one-file-system "$state"
  fi
  if ((rc > 128)); then
    echo "tests/demo.sh --cluster: stopped by a signal after $(elapsed), and the cluster with it" >&2
  elif ((rc != 0)); then
    echo "error: tests/demo.sh --cluster failed (exit $rc) after $(elapsed)" >&2
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

step "a control plane and ${DOWSER_NODE_COUNT:-2} real nodes (tests/node/up.sh $state)"
DOWSER_NODE_COUNT=${DOWSER_NODE_COUNT:-2} DOWSER_NODE_IMAGES=$images DOWSER_PAUSE_IMAGE=$pause \
  tests/node/up.sh "$state" >/dev/null
set -a
# shellcheck disable=SC1091
. "$state/env"
set +a
PATH=$(dirname "$KUBECTL"):$(dirname "$HELM"):$PATH
export PATH

# The README's Helm command, exactly as written there.
helm_block=$(awk '/^## Install$/ {s = 1; next} s && /^## / {exit}
  s && /^```sh$/ {b = 1; t = ""; next} b && /^```$/ {b = 0; if (t ~ /^helm install/) {printf "%s", t; exit}; next}
  b {t = t $0 "\n"}' README.md)
[ -n "$helm_block" ] || fail "the README's Install section has no block starting with helm install"
step "installing dowser as the README says"
printf '$ %s\n' "$helm_block" >&2
bash -euo pipefail -c "$helm_block" >&2

step "the simulated plant on $NODE_HOST_IP (tests/sim/demo-cluster-fleet.yaml)"
fleet=$state/demo-fleet.yaml
sed "s/\${NODE_HOST_IP}/$NODE_HOST_IP/g" tests/sim/demo-cluster-fleet.yaml >"$fleet"
sim_log=$state/dowser-sim.log
if ((keep)); then
  setsid "$sim_bin" -f "$fleet" >"$sim_log" 2>&1 </dev/null &
else
  "$sim_bin" -f "$fleet" >"$sim_log" 2>&1 </dev/null &
fi
sim=$!
echo "$sim" >"$state/dowser-sim.pid"
for _ in $(seq 100); do
  grep -q '^ready$' "$sim_log" && break
  kill -0 "$sim" 2>/dev/null || { cat "$sim_log" >&2; fail "dowser-sim stopped"; }
  sleep 0.1
done
grep -q '^ready$' "$sim_log" || { cat "$sim_log" >&2; fail "dowser-sim did not start"; }
grep -v '^ready$' "$sim_log" | sed 's/^/    /' >&2
ports=$(grep -o "^ *- listen: .*:[0-9]*" "$fleet" | sed 's/.*://' | paste -sd, - | sed 's/,/, /g')
devices=$(grep -c '{id: ' "$fleet")

# deploy/examples/modbus-tcp.yaml, pointed at the plant: the host's address and the PLCs' ports.
config=$state/plc-line3.yaml
sed -e "s|targets: \[\"127.77.0.0/28\"\]|targets: [\"$NODE_HOST_IP/32\"]|" \
  -e "s|ports: \[5020\] *|ports: [$ports]  |" deploy/examples/modbus-tcp.yaml >"$config"
{ grep -q "\"$NODE_HOST_IP/32\"" "$config" && grep -q "ports: \[$ports\]" "$config"; } ||
  fail "deploy/examples/modbus-tcp.yaml changed: its targets or ports line is not the one this demo rewrites"
step "the example Configuration, pointed at the plant"
diff deploy/examples/modbus-tcp.yaml "$config" | grep '^[<>]' >&2 || true
kubectl apply -f "$config" >&2

step "waiting for $devices brokers Running (one per PLC unit found)"
label=dowser.dev/configuration=plc-line3
deadline=$((SECONDS + 300))
while :; do
  phases=$(kubectl get pods -n default -l "$label" -o 'jsonpath={range .items[*]}{.status.phase}{"\n"}{end}' 2>/dev/null || true)
  running=$(grep -c '^Running$' <<<"$phases" || true)
  [ "$running" -ge "$devices" ] && break
  ((SECONDS < deadline)) || { kubectl get dwc,dwi,pods -o wide >&2 || true; fail "$running of $devices brokers Running after 300 s"; }
  sleep 1
done

broker=$(kubectl get pods -n default -l "$label" -o 'jsonpath={.items[0].metadata.name}')
deadline=$((SECONDS + 60))
until kubectl logs -n default "$broker" 2>/dev/null | grep -q 'holding\[0\.\.10\]='; do
  ((SECONDS < deadline)) || { kubectl logs -n default "$broker" >&2 || true; fail "no read in $broker's log after 60 s"; }
  sleep 1
done

echo
echo "\$ kubectl get dwc,dwi,pods -o wide"
kubectl get dwc,dwi,pods -o wide
echo
echo "\$ kubectl -n dowser-system get pods -o wide"
kubectl -n dowser-system get pods -o wide
echo
echo "\$ kubectl logs $broker | head -n 5"
kubectl logs -n default "$broker" | head -n 5
echo
echo "dowser ran $devices brokers on real nodes in $(elapsed)" >&2

if ((keep)); then
  cat >&2 <<EOF

The cluster and the plant keep running. Use them with:
  export KUBECONFIG=$KUBECONFIG PATH=$(dirname "$KUBECTL"):\$PATH
  kubectl get dwc,dwi,pods -o wide
Stop them with:
  kill $sim; $PWD/tests/node/down.sh --purge $state
EOF
fi
