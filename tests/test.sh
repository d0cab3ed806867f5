#!/usr/bin/env bash
# The whole dowser test suite: lint, unit, protocol (dowser-sim and third-party peers),
# CLI, the CRDs on a real local control plane (built from the Kubernetes Go modules), and real
# nodes (kubelet, containerd and kube-proxy from Go modules, in namespaces of this host).
# Installs what it needs (as root on a fresh machine, without asking; see tests/prereqs.sh)
# and caches it outside the repository in ${DOWSER_CACHE:-~/.cache/dowser}.
# Usage: tests/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
. tests/prereqs.sh

need_toolchain
command -v socat >/dev/null || apt_install socat   # pty pairs for Modbus RTU against pymodbus
peers_venv

step "private network namespaces for the mDNS tests (unshare --net, loopback only)"
command -v unshare >/dev/null || apt_install util-linux
command -v ip >/dev/null || apt_install iproute2
unshare --net -- sh -c 'ip link set lo up' ||
  fail "cannot make a private network namespace (unshare --net): the mDNS tests need root or unprivileged user namespaces"

step "OS-level test doubles: umockdev (USB serial), python-dbusmock's BlueZ on a private D-Bus (BLE)"
apt_install umockdev gir1.2-umockdev-1.0 python3-gi dbus-daemon python3-dbusmock
/usr/bin/python3 -c 'import gi; gi.require_version("UMockdev", "1.0")' \
  || fail "the umockdev Python binding (gir1.2-umockdev-1.0, python3-gi) does not load"
/usr/bin/python3 -c 'import dbusmock.templates.bluez5' \
  || fail "python-dbusmock's bluez5 template (python3-dbusmock) does not load"

k8s_binaries
promtool_binary
node_prereqs

# The smoke tests mostly wait (for boots, pods, stops): they run while the lints and builds
# below use the cores, and their verdict is read before the first test that needs them.
step "smoke tests in the background: local control plane (two clusters at once, scheduling, clean stop), then real nodes (kubelet + containerd + kube-proxy in namespaces of this host: pods, logs, the kubernetes Service, clean stop)"
smoke_log=$(mktemp)
# In a session of its own, so that a lint failing below stops the smoke tests' processes too
# (their own traps then stop what they booted).
setsid bash -c 'tests/cluster/smoke-test.sh && tests/node/smoke-test.sh' >"$smoke_log" 2>&1 &
smoke=$!
trap 'kill -TERM -- -"$smoke" 2>/dev/null || true; wait "$smoke" 2>/dev/null || true' EXIT

step "formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "slim agent builds (one handler feature each; the CLI tests run the modbus one)"
cargo build --quiet -p dowser --no-default-features --features modbus --target-dir "$cache/slim-target"
export DOWSER_SLIM_BIN="$cache/slim-target/debug/dowser"
cargo check --quiet -p dowser --no-default-features --features mdns
cargo check --quiet -p dowser --no-default-features --features serial
cargo check --quiet -p dowser --no-default-features --features ble
cargo check --quiet -p dowser --no-default-features --features udev
cargo check --quiet -p dowser --no-default-features --features onvif
cargo check --quiet -p dowser --no-default-features --features bacnet
cargo check --quiet -p dowser --no-default-features --features external

step "test tools: fake-kubelet"
cargo build --quiet -p fake-kubelet

step "smoke tests: waiting for their verdict"
if ! wait "$smoke"; then
  cat "$smoke_log" >&2
  fail "a smoke test failed (above): the local control plane or the real node does not work on this machine"
fi
trap - EXIT
grep PASS "$smoke_log" >&2 || true
rm -f "$smoke_log"

step "tests: unit, protocol (dowser-sim, pymodbus, asyncua), CRDs and scheduling on a real control plane with fake kubelets, validation catalogue, CLI; real nodes"
# Built once, for every stream below.
cargo test --workspace --no-run --quiet
# Two streams. The real-node tests (tests/real_node.rs) mostly wait for the kubelet and
# containerd: they run beside the tests that boot no more than one small control plane at
# a time (everything below but HEAVY; a new test file joins them). Then the HEAVY binaries,
# each booting one control plane with three fake kubelets and agents per test (its tests
# one at a time, the next one's control plane booting meanwhile): two streams of two, then
# tests/reliability.rs alone, whose flapping device is timed against its grace period.
heavy_a="controller nodes"
heavy_b="agent faults"
alone="reliability"
real="real_node"
light=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
skip = set(sys.argv[1].split())
root = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "dowser"][0]
print(" ".join(sorted(t["name"] for t in root["targets"]
                      if "test" in t["kind"] and t["name"] not in skip)))' "$heavy_a $heavy_b $alone $real")
as_tests() { for t in $1; do printf -- '--test %s ' "$t"; done; }
log="$cache/last-test.log"
beside="$cache/last-test-beside.log"
# `cargo test` in the background, its output kept in $beside until it is printed.
in_background() {
  { cargo test -p dowser --no-fail-fast "$@"; echo "test stream exit $?"; } >"$beside" 2>&1 &
  beside_pid=$!
}
background_done() {
  wait "$beside_pid"
  tee -a "$log" <"$beside"
}
set +e   # a failing test must still reach the summary below
in_background $(as_tests "$real")
{
  cargo test --workspace --exclude dowser --no-fail-fast
  echo "test stream exit $?"
  cargo test -p dowser --no-fail-fast --lib --bins $(as_tests "$light")
  echo "test stream exit $?"
  cargo test -p dowser --no-fail-fast --doc
  echo "test stream exit $?"
} 2>&1 | tee "$log"
background_done
in_background $(as_tests "$heavy_a")
{
  cargo test -p dowser --no-fail-fast $(as_tests "$heavy_b")
  echo "test stream exit $?"
} 2>&1 | tee -a "$log"
background_done
{
  cargo test -p dowser --no-fail-fast $(as_tests "$alone")
  echo "test stream exit $?"
} 2>&1 | tee -a "$log"
set -e
status=0
grep -q "^test stream exit [1-9]" "$log" && status=1

passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
printf '\ndowser tests finished in %ss\n' "$(( $(date +%s) - started ))" >&2
echo "${passed} passed, ${failed} failed"
exit "$status"
