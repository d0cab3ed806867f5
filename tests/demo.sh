#!/usr/bin/env bash
# The dowser demo: a simulated plant on loopback, and `dowser discover` finding it.
# Usage: tests/demo.sh            (from anywhere; builds what it needs)
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "error: cargo (Rust 1.89 or newer) is needed: https://rustup.rs" >&2; exit 1; }
. tests/prereqs.sh

echo "==> building dowser and dowser-sim" >&2
cargo build --quiet -p dowser --bin dowser
cargo build --quiet -p dowser-sim --bin dowser-sim
bin=target/debug

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
