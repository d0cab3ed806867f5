# Prerequisites shared by tests/test.sh and scripts/bench: sourced, not run. Installs what is
# missing (as root on a fresh machine, without asking) and caches it outside the repository in
# ${DOWSER_CACHE:-~/.cache/dowser}.

cache=${DOWSER_CACHE:-$HOME/.cache/dowser}
mkdir -p "$cache"

# Each step says when it starts, in seconds since the script began, so a slow run shows where.
step() { printf '\n==> [%ss] %s\n' "$SECONDS" "$*" >&2; }
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

# Rust with clippy and rustfmt, Python with venv.
need_toolchain() {
  step "checking the toolchain"
  command -v cargo >/dev/null || fail "cargo is missing: install Rust 1.89 or newer (rustup)"
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
  command -v python3 >/dev/null || apt_install python3
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
}

# The third-party protocol peers (tests/peers/requirements.txt) in a cached venv; exports
# DOWSER_PYTHON.
peers_venv() {
  step "third-party protocol peers (tests/peers/requirements.txt)"
  local req=tests/peers/requirements.txt venv
  venv="$cache/peers-$(sha256sum "$req" | cut -c1-12)"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pymodbus, asyncua, zeroconf, wsdiscovery, bacpypes3, grpc, grpc_tools, yaml' 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  fi
  export DOWSER_PYTHON="$venv/bin/python"
  "$DOWSER_PYTHON" -c 'import pymodbus, asyncua, zeroconf; print("pymodbus", pymodbus.__version__, "asyncua", asyncua.__version__, "zeroconf", zeroconf.__version__)' >&2
}

# The local Kubernetes control plane's binaries (built from Go modules, cached); exports
# DOWSER_K8S_BIN.
k8s_binaries() {
  step "local Kubernetes control plane binaries (built from Go modules, cached)"
  command -v go >/dev/null || fail "go is missing: the control plane is built from the Kubernetes Go modules"
  command -v openssl >/dev/null || apt_install openssl
  DOWSER_K8S_BIN=$(tests/cluster/build-binaries.sh | tail -n 1)
  export DOWSER_K8S_BIN
  "$DOWSER_K8S_BIN/kube-apiserver" --version >&2
}

# promtool (Prometheus' rule checker and rule unit tester, built from Go modules, cached) for
# tests/monitoring.rs; exports DOWSER_PROMTOOL.
promtool_binary() {
  step "promtool (built from Go modules, cached)"
  command -v go >/dev/null || fail "go is missing: promtool is built from the Prometheus Go modules"
  DOWSER_PROMTOOL="$(tests/cluster/build-promtool.sh | tail -n 1)/promtool"
  export DOWSER_PROMTOOL
  "$DOWSER_PROMTOOL" --version 2>&1 | head -n 1 >&2
}

# Real nodes (tests/node/): runc and the CNI plugins from Debian (a Go-built runc refuses seccomp
# profiles on some hosts), iptables for kube-proxy, busybox-static and a static C compiler for
# the local test images; kubelet, kube-proxy and containerd 2.x built from Go modules (cached).
# Needs root (namespaces, cgroups, mounts). Exports DOWSER_NODE_BIN.
node_prereqs() {
  step "real-node prerequisites: runc, CNI plugins, iptables (apt); kubelet, kube-proxy, containerd (Go modules, cached)"
  [ "$(id -u)" = 0 ] || fail "the real-node tests need root (network and mount namespaces, cgroups)"
  command -v go >/dev/null || fail "go is missing: the node binaries are built from Go modules"
  apt_install runc containernetworking-plugins iptables busybox-static gcc libc6-dev util-linux iproute2 mount openssl
  DOWSER_NODE_BIN=$(tests/node/build-binaries.sh | tail -n 1)
  export DOWSER_NODE_BIN
  "$DOWSER_NODE_BIN/kubelet" --version >&2
  "$DOWSER_NODE_BIN/containerd" --version >&2
  runc --version | head -n 1 >&2
}
