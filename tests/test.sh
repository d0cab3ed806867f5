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
# a time (everything but HEAVY), and the HEAVY binaries, each booting many control planes
# with fake kubelets, run alone afterwards. A new test file joins the first stream.
heavy="controller agent faults nodes reliability"
real="real_node"
light=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
skip = set(sys.argv[1].split())
root = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "dowser"][0]
print(" ".join(sorted(t["name"] for t in root["targets"]
                      if "test" in t["kind"] and t["name"] not in skip)))' "$heavy $real")
as_tests() { for t in $1; do printf -- '--test %s ' "$t"; done; }
set +e   # a failing test must still reach the summary below
real_log="$cache/last-test-real-node.log"
cargo test --no-fail-fast -p dowser $(as_tests "$real") >"$real_log" 2>&1 &
real_pid=$!
{
  cargo test --workspace --exclude dowser --no-fail-fast
  echo "test stream exit $?"
  cargo test -p dowser --no-fail-fast --lib --bins $(as_tests "$light")
  echo "test stream exit $?"
  cargo test -p dowser --no-fail-fast --doc
  echo "test stream exit $?"
} 2>&1 | tee "$cache/last-test.log"
wait "$real_pid"
echo "test stream exit $?" >>"$real_log"
cat "$real_log"
cargo test -p dowser --no-fail-fast $(as_tests "$heavy") 2>&1 | tee -a "$cache/last-test.log"
echo "test stream exit ${PIPESTATUS[0]}" >>"$cache/last-test.log"
cat "$real_log" >>"$cache/last-test.log"
set -e
status=0
grep -q "^test stream exit [1-9]" "$cache/last-test.log" && status=1

passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$cache/last-test.log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$cache/last-test.log" | awk '{s+=$1} END {print s+0}')
printf '\ndowser tests finished in %ss\n' "$(( $(date +%s) - started ))" >&2
echo "${passed} passed, ${failed} failed"
exit "$status"
