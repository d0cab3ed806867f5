#!/usr/bin/env bash
# dowser's benchmarks, side by side with what users would run instead, measured in the same
# run on the same machine (absolute times drift between machines; ratios hold).
# Prints one Markdown table and writes it to ${1:-target/bench.md}.
# Installs its peers itself (nmap from apt; pymodbus, asyncua from PyPI) like tests/test.sh.
# Usage: tests/bench.sh [OUT.md]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bench.md}
. tests/prereqs.sh
started=$(date +%s)

need_toolchain
apt_install nmap socat libdbus-1-dev pkg-config
# OS-level doubles for the event-driven handlers, as tests/test.sh installs them.
apt_install umockdev gir1.2-umockdev-1.0 python3-gi dbus-daemon python3-dbusmock
peers_venv
k8s_binaries

step "release builds (slim: the modbus feature only; then everything)"
cargo build --release --quiet -p dowser --no-default-features --features modbus
mkdir -p target/bench
cp target/release/dowser target/bench/dowser-slim
cargo build --release --quiet -p dowser -p dowser-sim -p fake-kubelet
cargo build --release --quiet -p dowser --example bench_e2e --example bench_scale
# The serial and BLE latency target (test = false: not part of `cargo test`); it runs the
# release dowser given by DOWSER_BIN against umockdev and python-dbusmock.
cargo test --quiet --test latency --no-run
cargo build --release --quiet -p dowser-mdns --example appear_latency
bin=target/release

rows=()
row() { rows+=("| $1 | $2 | $3 | $4 |"); printf '  %s: dowser %s, %s %s\n' "$1" "$2" "$3" "$4" >&2; }
now() { printf '%s' "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
ratio() { awk -v d="$1" -v p="$2" 'BEGIN { if (d > 0) printf "%.1f×", p / d; else print "-" }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
devices_in_output() { "$DOWSER_PYTHON" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$work/out"; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${state:-}" ] && tests/cluster/down.sh --purge "$state" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Starts dowser-sim with a fleet file and waits for "ready".
sim() {
  "$bin/dowser-sim" -f "$1" >"$work/sim.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do grep -q '^ready$' "$work/sim.log" && return 0; sleep 0.05; done
  cat "$work/sim.log" >&2; fail "dowser-sim did not start"
}
stop_sims() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }

# A Configuration file for `dowser discover`.
config() { # <file> <discovery yaml (one line)>
  printf 'apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {name: bench}\nspec:\n  discovery: %s\n' "$2" >"$1"
}
# Median of 3 wall-clock runs of a command whose stdout is discarded; $expect checked by $check.
time3() {
  local t=() a b
  for _ in 1 2 3; do a=$(now); "$@" >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; fail "$* failed"; }; b=$(now); t+=("$(secs "$a" "$b")"); done
  printf '%s\n' "${t[@]}" | median
}

step "Modbus TCP sweep: 127.90.0.0/24 × port 502, 5 live devices — dowser vs nmap modbus-discover"
cat >"$work/sweep.yaml" <<'EOF'
modbus:
  - {listen: 127.90.0.10:502, units: [{id: 1, vendorName: Acme, productCode: PLC, revision: "1"}]}
  - {listen: 127.90.0.60:502, units: [{id: 1, vendorName: Acme, productCode: PLC, revision: "1"}]}
  - {listen: 127.90.0.110:502, units: [{id: 1, vendorName: Acme, productCode: PLC, revision: "1"}]}
  - {listen: 127.90.0.160:502, units: [{id: 1, vendorName: Acme, productCode: PLC, revision: "1"}]}
  - {listen: 127.90.0.210:502, units: [{id: 1, vendorName: Acme, productCode: PLC, revision: "1"}]}
EOF
sim "$work/sweep.yaml"
config "$work/sweep-config.yaml" '{modbus: {targets: ["127.90.0.0/24"], requestTimeoutMs: 1000}}'
d=$(time3 "$bin/dowser" discover -f "$work/sweep-config.yaml" -o json)
found=$(devices_in_output)
[ "$found" = 5 ] || fail "dowser found $found of 5 devices in the sweep"
p=$(time3 nmap -n -Pn -p 502 --script modbus-discover 127.90.0.0/24)
found=$(grep -c 'modbus-discover' "$work/out" || true)
[ "$found" = 5 ] || fail "nmap found $found of 5 devices in the sweep"
row "Modbus TCP sweep, /24 × port 502, 5 devices (s, median of 3; dowser's default 500 connections/s)" "$d" "nmap --script modbus-discover: $p" "$(ratio "$d" "$p")"
config "$work/sweep-fast.yaml" '{modbus: {targets: ["127.90.0.0/24"], requestTimeoutMs: 1000, maxConnectionsPerSecond: 100000}}'
d=$(time3 "$bin/dowser" discover -f "$work/sweep-fast.yaml" -o json)
row "same, maxConnectionsPerSecond 100000" "$d" "nmap --script modbus-discover: $p" "$(ratio "$d" "$p")"
stop_sims

step "Modbus identification of 100 units (50 devices × 2) — dowser vs a pymodbus script"
cat >"$work/ident.yaml" <<'EOF'
modbus:
  - listen: 127.90.1.1:5020
    count: 50
    units:
      - {id: 1, vendorName: Acme, productCode: PLC, revision: "1"}
      - {id: 2, vendorName: Acme, productCode: IO, revision: "1"}
EOF
sim "$work/ident.yaml"
config "$work/ident-config.yaml" '{modbus: {targets: ["127.90.1.1-127.90.1.50"], ports: [5020], unitIds: ["1-2"]}}'
d=$(time3 "$bin/dowser" discover -f "$work/ident-config.yaml" -o json)
found=$(devices_in_output)
[ "$found" = 100 ] || fail "dowser identified $found of 100 units"
p=$(time3 "$DOWSER_PYTHON" tests/peers/bench_modbus_identify.py --hosts 127.90.1.1-50 --port 5020 --units 1-2)
read -r found _ <"$work/out"
[ "$found" = 100 ] || fail "the pymodbus script identified $found of 100 units"
row "Modbus identification, 100 units (s, median of 3)" "$d" "pymodbus script: $p" "$(ratio "$d" "$p")"
stop_sims

step "OPC UA: 20 servers behind a discovery server — dowser vs an asyncua script"
cat >"$work/opcua.yaml" <<'EOF'
opcua:
  - {listen: 127.90.2.1:4840, kind: discovery, applicationName: LDS, applicationUri: "urn:bench:lds"}
  - listen: 127.90.2.2:4841
    count: 20
    applicationName: "Bench {n}"
    applicationUri: "urn:bench:{n}"
    endpoints: [None, Basic256Sha256/SignAndEncrypt]
EOF
sim "$work/opcua.yaml"
config "$work/opcua-config.yaml" '{opcua: {discoveryUrls: ["opc.tcp://127.90.2.1:4840/"]}}'
d=$(time3 "$bin/dowser" discover -f "$work/opcua-config.yaml" -o json)
found=$(devices_in_output)
[ "$found" = 20 ] || fail "dowser found $found of 20 OPC UA servers"
p=$(time3 "$DOWSER_PYTHON" tests/peers/bench_opcua_discover.py opc.tcp://127.90.2.1:4840/)
read -r found _ <"$work/out"
[ "$found" = 20 ] || fail "the asyncua script described $found of 20 servers"
row "OPC UA, 20 servers via an LDS (s, median of 3)" "$d" "asyncua script: $p" "$(ratio "$d" "$p")"
stop_sims

step "mDNS: a python-zeroconf responder announces → dowser's snapshot vs a python-zeroconf browser"
# Both in a private network namespace on loopback; the same instant (the responder's register
# call returning, announcements starting) starts both clocks.
d=$(target/release/examples/appear_latency 10 | grep '^| python-zeroconf announces' | awk -F'|' '{ split($3, a, " "); print a[1] }')
p=$(unshare --net sh -c "ip link set lo up && '$DOWSER_PYTHON' tests/peers/bench_mdns_browse.py 10")
row "mDNS, service announced → seen (ms, median of 10)" "$d" "python-zeroconf browser: $p" "$(ratio "$d" "$p")"

step "binary size"
full=$(stat -c %s "$bin/dowser"); slim=$(stat -c %s target/bench/dowser-slim)
row "binary size, all handlers / modbus only (MiB)" \
  "$(awk -v a="$full" -v b="$slim" 'BEGIN { printf "%.1f / %.1f", a / 1048576, b / 1048576 }')" "-" "-"

step "long fuzzing: every property test with \${PROPTEST_CASES:-5000} cases (CI runs 256)"
# Debug builds: overflow checks stay on, as they found the bugs the property tests caught.
fuzz_cases=${PROPTEST_CASES:-5000}
t0=$(now)
PROPTEST_CASES=$fuzz_cases cargo test --quiet --test properties \
  -p dowser -p dowser-discovery-api -p dowser-modbus -p dowser-mdns -p dowser-opcua >&2
row "property tests (5 targets, $fuzz_cases cases per property), all passed (s)" "$(secs "$t0" "$(now)")" "-" "-"

step "local control plane with an apiserver audit log"
state="$work/cluster"
# The API server's audit log counts the agent's requests (its user agent is dowser-agent/...).
printf 'apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n' >"$work/audit-policy.yaml"
export DOWSER_AUDIT_LOG="$work/audit.log"
DOWSER_APISERVER_ARGS="--audit-policy-file=$work/audit-policy.yaml --audit-log-path=$DOWSER_AUDIT_LOG" \
  tests/cluster/up.sh "$state" >/dev/null
export KUBECONFIG="$state/kubeconfig"
"$DOWSER_K8S_BIN/kubectl" apply -f crds/ >/dev/null
export DOWSER_BIN="$bin/dowser" DOWSER_SIM_BIN="$bin/dowser-sim" DOWSER_FAKE_KUBELET="$bin/fake-kubelet"
take_rows() { while IFS= read -r line; do rows+=("$line"); printf '  %s\n' "$line" >&2; done <"$1"; }

step "USB serial (umockdev) and BLE (python-dbusmock) → snapshot; BLE device → Instance end to end"
cargo test --quiet --test latency -- --cluster --rows "$work/latency.rows" >/dev/null
take_rows "$work/latency.rows"
"$DOWSER_K8S_BIN/kubectl" delete configurations --all >/dev/null

step "agent footprint and end to end (Modbus) on the local control plane"
"$bin/examples/bench_e2e" --work "$work/e2e" --rows "$work/e2e.rows"
take_rows "$work/e2e.rows"
"$DOWSER_K8S_BIN/kubectl" delete configurations,instances --all >/dev/null

step "scale: 1,000 devices on one node, then 10,000 Instances on 10 nodes (${DOWSER_SCALE_DEVICES:-1000} devices per node)"
"$bin/examples/bench_scale" --work "$work/scale" --rows "$work/scale.rows" \
  --nodes "${DOWSER_SCALE_NODES:-10}" --devices-per-node "${DOWSER_SCALE_DEVICES:-1000}"
take_rows "$work/scale.rows"

mkdir -p "$(dirname "$out")"
{
  echo "| benchmark | dowser | peer (same run) | peer / dowser |"
  echo "|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Measured by \`tests/bench.sh\` on $(nproc) cores, $(date -u +%Y-%m-%d), in $(( $(date +%s) - started )) s."
} | tee "$out"
