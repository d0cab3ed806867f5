#!/usr/bin/env bash
# The whole dowser test suite: lint, unit, protocol (dowser-sim and third-party peers),
# CLI, and the CRDs on a real local control plane (built from the Kubernetes Go modules). Installs what it needs (as root on a fresh machine, without asking) and caches it
# outside the repository in ${DOWSER_CACHE:-~/.cache/dowser}.
# Usage: tests/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
cache=${DOWSER_CACHE:-$HOME/.cache/dowser}
mkdir -p "$cache"

step() { printf '\n==> %s\n' "$*" >&2; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  step "installing ${missing[*]} (apt)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

step "checking the toolchain"
command -v cargo >/dev/null || fail "cargo is missing: install Rust 1.89 or newer (rustup)"
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
command -v python3 >/dev/null || apt_install python3
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv

step "third-party protocol peers (tests/peers/requirements.txt)"
req=tests/peers/requirements.txt
venv="$cache/peers-$(sha256sum "$req" | cut -c1-12)"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pymodbus' 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
fi
export DOWSER_PYTHON="$venv/bin/python"
"$DOWSER_PYTHON" -c 'import pymodbus; print("pymodbus", pymodbus.__version__)' >&2

step "build dependencies: libdbus (BLE discovery talks to BlueZ over D-Bus)"
apt_install pkg-config libdbus-1-dev

step "OS-level test doubles: umockdev (USB serial), python-dbusmock's BlueZ on a private D-Bus (BLE)"
apt_install umockdev gir1.2-umockdev-1.0 python3-gi dbus-daemon python3-dbusmock
/usr/bin/python3 -c 'import gi; gi.require_version("UMockdev", "1.0")' \
  || fail "the umockdev Python binding (gir1.2-umockdev-1.0, python3-gi) does not load"
/usr/bin/python3 -c 'import dbusmock.templates.bluez5' \
  || fail "python-dbusmock's bluez5 template (python3-dbusmock) does not load"

step "local Kubernetes control plane binaries (built from Go modules, cached)"
command -v go >/dev/null || fail "go is missing: the control plane is built from the Kubernetes Go modules"
command -v openssl >/dev/null || apt_install openssl
DOWSER_K8S_BIN=$(tests/cluster/build-binaries.sh | tail -n 1)
export DOWSER_K8S_BIN
"$DOWSER_K8S_BIN/kube-apiserver" --version >&2

step "local control plane smoke test (two clusters at once, scheduling, clean stop)"
tests/cluster/smoke-test.sh >&2

step "formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "slim agent build (one handler feature)"
cargo check --quiet -p dowser --no-default-features --features modbus

step "test tools: fake-kubelet"
cargo build --quiet -p fake-kubelet

step "tests: unit, protocol (dowser-sim, pymodbus), CRDs and scheduling on a real control plane with fake kubelets, validation catalogue, CLI"
cargo test --workspace --no-fail-fast 2>&1 | tee "$cache/last-test.log"
status=${PIPESTATUS[0]}

passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$cache/last-test.log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$cache/last-test.log" | awk '{s+=$1} END {print s+0}')
printf '\ndowser tests finished in %ss\n' "$(( $(date +%s) - started ))" >&2
echo "${passed} passed, ${failed} failed"
exit "$status"
