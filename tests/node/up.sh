#!/usr/bin/env bash
# Boot a throw-away Kubernetes cluster with real nodes on this host: the local
# control plane of tests/cluster/ (reachable from pods), and kubelet +
# containerd + kube-proxy nodes, each in its own network and mount namespaces
# and cgroup (see lib.sh). Needs root.
#
# Usage: tests/node/up.sh <state-dir>
#
# Returns when every node is Ready, untainted, and its kube-proxy routes the
# `kubernetes` Service. The last stdout line is the path of <state-dir>/env.
#
# Environment:
#   DOWSER_NODE_COUNT      number of nodes (default 2)
#   DOWSER_NODE_IMAGES     directory of image tars (docker-archive or OCI) to
#                          load into every node; default: the directory printed
#                          by tests/node/build-images.sh if that exists;
#                          `none`: only the small test images
#   DOWSER_PAUSE_IMAGE     sandbox image (must be in the tars); default the
#                          local localhost/dowser-test/pause:1
#   DOWSER_K8S_BIN         control-plane binaries (else tests/cluster/build-binaries.sh)
#   DOWSER_NODE_BIN        node binaries (else tests/node/build-binaries.sh)
#   DOWSER_NODE_STATUS_UPDATE_FREQUENCY   kubelet nodeStatusUpdateFrequency (default 10s)
#   DOWSER_NODE_TIMEOUT    seconds to wait for the nodes (default 180)
#   DOWSER_APISERVER_ARGS, DOWSER_CONTROLLER_MANAGER_ARGS, ... as for tests/cluster/up.sh
set -euo pipefail
LOG_TAG=node-up
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/node/lib.sh
. "${HERE}/lib.sh"
T0=$(now_us)

if (($# != 1)) || [[ "$1" == -* ]]; then
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
fi
STATE=$1
[[ "${STATE}" =~ ^[A-Za-z0-9._/+@:,=~-]+$ ]] || die "state dir '${STATE}' has characters other than [A-Za-z0-9._/+@:,=~-]"
(($(id -u) == 0)) || die "a real node needs root (namespaces, cgroups, mounts)"
COUNT=${DOWSER_NODE_COUNT:-2}
[[ "${COUNT}" =~ ^[1-9]$ ]] || die "DOWSER_NODE_COUNT must be 1..9"
TIMEOUT=${DOWSER_NODE_TIMEOUT:-180}

for tool in ip nsenter unshare iptables openssl flock mount; do
  command -v "${tool}" >/dev/null 2>&1 || die "${tool} is not on PATH (see tests/node/README.md)"
done
RUNC=$(command -v runc || true)
[[ -n "${RUNC}" ]] || die "runc is not on PATH (apt-get install runc)"
CNI_BIN_DIR=/usr/lib/cni
for p in bridge host-local loopback portmap; do
  [[ -x "${CNI_BIN_DIR}/${p}" ]] || die "${CNI_BIN_DIR}/${p} missing (apt-get install containernetworking-plugins)"
done

mkdir -p "${STATE}"
STATE=$(cd "${STATE}" && pwd -P)
if [[ -n "$(ls -A "${STATE}")" ]]; then
  [[ -f "${STATE}/${MARKER}" ]] || die "${STATE} is not empty and was not made by tests/node/up.sh"
  [[ ! -f "${STATE}/net" ]] || die "a cluster may still run in ${STATE} (run tests/node/down.sh first)"
  rm -rf "${STATE:?}/cluster" "${STATE:?}/nodes" "${STATE:?}/pki" "${STATE:?}/env" "${STATE:?}/images.list"
fi
touch "${STATE}/${MARKER}"

BOOTED=0
on_exit() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if ((!BOOTED)); then
    log "boot failed (exit ${rc}); stopping what was started"
    "${HERE}/down.sh" "${STATE}" || true
  fi
  exit "${rc}"
}
trap_exit

# ---- binaries and images -----------------------------------------------------------
K8S_BIN=${DOWSER_K8S_BIN:-$("${REPO_DIR}/tests/cluster/build-binaries.sh" | tail -n1)}
NODE_BIN=${DOWSER_NODE_BIN:-$("${HERE}/build-binaries.sh" | tail -n1)}
for b in kubelet kube-proxy containerd containerd-shim-runc-v2 ctr; do
  [[ -x "${NODE_BIN}/${b}" ]] || die "${NODE_BIN}/${b} missing (set DOWSER_NODE_BIN or run tests/node/build-binaries.sh)"
done
TEST_IMAGES=$("${HERE}/test-images.sh" "${K8S_BIN}/kubectl" | tail -n1)
IMAGE_DIRS=("${TEST_IMAGES}")
NODE_IMAGES=${DOWSER_NODE_IMAGES:-}
if [[ "${NODE_IMAGES}" == none ]]; then
  NODE_IMAGES=""
elif [[ -z "${NODE_IMAGES}" && -x "${HERE}/build-images.sh" ]]; then
  log "building the project's images (tests/node/build-images.sh)"
  NODE_IMAGES=$("${HERE}/build-images.sh" | tail -n1)
fi
if [[ -n "${NODE_IMAGES}" ]]; then
  [[ -d "${NODE_IMAGES}" ]] || die "DOWSER_NODE_IMAGES=${NODE_IMAGES} is not a directory"
  IMAGE_DIRS+=("${NODE_IMAGES}")
fi
find "${IMAGE_DIRS[@]}" -maxdepth 1 -type f -name '*.tar' | sort >"${STATE}/images.list"
PAUSE_IMAGE=${DOWSER_PAUSE_IMAGE:-localhost/dowser-test/pause:1}
log "images: $(wc -l <"${STATE}/images.list") tar(s) from ${IMAGE_DIRS[*]}; sandbox image ${PAUSE_IMAGE}"

# ---- the cluster network: a bridge in the host namespace ----------------------------
# Slot s (0..63) gives bridge dwbr<s> with 10.250.<s>.0/24 (host .1, node i .(10+i)),
# cluster pod range 10.(100+s).0.0/16 (node i: 10.(100+s).i.0/24). Taken under a lock;
# an existing bridge marks a slot as used.
LOCK_DIR=/run/dowser-node
mkdir -p "${LOCK_DIR}"
exec 8>"${LOCK_DIR}/lock"
flock -w 60 8 || die "timed out waiting for ${LOCK_DIR}/lock"
SLOT=""
for s in $(seq 0 63); do
  if [[ ! -e "/sys/class/net/dwbr${s}" ]]; then SLOT=${s}; break; fi
done
[[ -n "${SLOT}" ]] || die "all 64 network slots are in use (bridges dwbr0..dwbr63)"
BRIDGE="dwbr${SLOT}"
HOST_IP="10.250.${SLOT}.1"
CLUSTER_CIDR="10.$((100 + SLOT)).0.0/16"
ip link add "${BRIDGE}" type bridge
flock -u 8
exec 8>&-
NODES=""
for i in $(seq 1 "${COUNT}"); do NODES+="${NODES:+ }node-${i}"; done
# Written at once: down.sh (also on a failed boot) removes what it names.
cat >"${STATE}/net" <<EOF
SLOT=${SLOT}
BRIDGE=${BRIDGE}
HOST_IP=${HOST_IP}
CLUSTER_CIDR=${CLUSTER_CIDR}
NODES="${NODES}"
NODE_BIN=${NODE_BIN}
K8S_BIN=${K8S_BIN}
EOF
# No IPv6 on it (no router solicitations, nothing but the cluster's IPv4).
sysctl -qw "net.ipv6.conf.${BRIDGE}.disable_ipv6=1" 2>/dev/null || true
ip addr add "${HOST_IP}/24" dev "${BRIDGE}"
ip link set "${BRIDGE}" up
log "network slot ${SLOT}: bridge ${BRIDGE} ${HOST_IP}/24, pods ${CLUSTER_CIDR}"

# ---- control plane ----------------------------------------------------------------------
# Reachable from the nodes and pods at HOST_IP (the apiserver listens on every
# address of the host namespace; only loopback and the bridge lead to it here).
# The lease reconciler gives the `kubernetes` Service the endpoint HOST_IP:port;
# the node lifecycle controller removes the not-ready taint of real nodes.
CP="${STATE}/cluster"
API_ARGS="--bind-address=0.0.0.0 --advertise-address=${HOST_IP} --endpoint-reconciler-type=lease"
API_ARGS+=" --kubelet-preferred-address-types=InternalIP,Hostname"
API_ARGS+=" --kubelet-client-certificate=${CP}/pki/admin.crt --kubelet-client-key=${CP}/pki/admin.key"
API_ARGS+=" --enable-aggregator-routing=true"
DOWSER_APISERVER_ARGS="${API_ARGS} ${DOWSER_APISERVER_ARGS:-}" \
  DOWSER_CONTROLLERS="${DOWSER_CONTROLLERS:-*}" DOWSER_K8S_BIN="${K8S_BIN}" \
  "${REPO_DIR}/tests/cluster/up.sh" "${CP}" >/dev/null
# shellcheck disable=SC1091
. "${CP}/env"
kctl() { "${K8S_BIN}/kubectl" --kubeconfig="${CP}/kubeconfig" --request-timeout=10s "$@"; }

# ---- node PKI and kubeconfigs ---------------------------------------------------------
PKI="${STATE}/pki"
mkdir -p "${PKI}"
chmod 700 "${PKI}"
REQ_CNF="${PKI}/req.cnf"
printf '[req]\ndistinguished_name = dn\n[dn]\n' >"${REQ_CNF}"
new_cert() { # <name> <subject>
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "${PKI}/$1.key" 2>/dev/null
  chmod 600 "${PKI}/$1.key"
  printf 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = clientAuth\n' >"${PKI}/$1.ext"
  openssl req -new -key "${PKI}/$1.key" -subj "$2" -config "${REQ_CNF}" -out "${PKI}/$1.csr" 2>/dev/null
  openssl x509 -req -in "${PKI}/$1.csr" -CA "${CA_CERT}" -CAkey "${CA_KEY}" -CAserial "${PKI}/ca.srl" \
    -CAcreateserial -days 3650 -sha256 -extfile "${PKI}/$1.ext" -out "${PKI}/$1.crt" 2>/dev/null
  rm -f "${PKI}/$1.csr" "${PKI}/$1.ext"
}
write_kubeconfig() { # <file> <user> <cert> <key>
  # The serving certificate names `kubernetes`, not HOST_IP.
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dowser
  cluster:
    server: https://${HOST_IP}:${APISERVER_PORT}
    tls-server-name: kubernetes
    certificate-authority-data: $(base64 -w0 <"${CA_CERT}")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 <"$3")
    client-key-data: $(base64 -w0 <"$4")
contexts:
- name: dowser
  context: {cluster: dowser, user: $2}
current-context: dowser
EOF
  chmod 600 "$1"
}
new_cert kube-proxy "/CN=system:kube-proxy"

# ---- per-node configuration -------------------------------------------------------------
STATUS_FREQ=${DOWSER_NODE_STATUS_UPDATE_FREQUENCY:-10s}
for i in $(seq 1 "${COUNT}"); do
  name="node-${i}"
  dir="${STATE}/nodes/${name}"
  mkdir -p "${dir}/logs" "${dir}/fs"
  ip="10.250.${SLOT}.$((10 + i))"
  pod_cidr="10.$((100 + SLOT)).${i}.0/24"
  cat >"${dir}/node.env" <<EOF
N_NAME=${name}
N_INDEX=${i}
N_IP=${ip}
N_POD_CIDR=${pod_cidr}
N_CGROUP=/dowser-node-${SLOT}-${i}
N_VETH=dw${SLOT}n${i}
N_DIR=${dir}
EOF
  new_cert "${name}" "/O=system:nodes/CN=system:node:${name}"
  write_kubeconfig "${dir}/kubelet.kubeconfig" "system:node:${name}" "${PKI}/${name}.crt" "${PKI}/${name}.key"
  write_kubeconfig "${dir}/kube-proxy.kubeconfig" system:kube-proxy "${PKI}/kube-proxy.crt" "${PKI}/kube-proxy.key"
  # Pods resolve nothing: no cluster DNS here, and the host's resolver is not theirs to use.
  printf 'options ndots:1\n' >"${dir}/resolv.conf"

  cat >"${dir}/containerd.toml" <<EOF
# containerd of ${name}; /var/lib/containerd and /run/containerd are the node's own (bind mounts).
version = 4
root = "/var/lib/containerd"
state = "/run/containerd"
# Its default imports /etc/containerd/conf.d/*.toml: the node's own, empty /etc/containerd.
disabled_plugins = ["io.containerd.internal.v1.opt"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]
  [plugins.'io.containerd.cri.v1.runtime']
    # The kubelet gives sandboxes oom_score_adj -998; root in some VMs and
    # containers may not lower it, and runc then fails to create any sandbox.
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    cdi_spec_dirs = ["/etc/cdi", "/var/run/cdi"]
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["${CNI_BIN_DIR}"]
      conf_dir = "/etc/cni/net.d"
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "${RUNC}"
          SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.images']
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "${PAUSE_IMAGE}"
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
EOF

  cat >"${dir}/cni.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "dowser",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "${pod_cidr}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  cat >"${dir}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Kubernetes 1.35 refuses cgroup v1 unless told otherwise; harmless on cgroup v2.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /dowser-node-${SLOT}-${i}
failSwapOn: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
# A test node: the API server (client certificate of the cluster CA) and
# anything on the node network may call it.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
  x509: {clientCAFile: ${CA_CERT}}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
enforceNodeAllocatable: []
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
# Images are loaded, not pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ${dir}/resolv.conf
nodeStatusUpdateFrequency: ${STATUS_FREQ}
rotateCertificates: false
serverTLSBootstrap: false
EOF

  cat >"${dir}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: ${name}
clusterCIDR: ${CLUSTER_CIDR}
clientConnection:
  kubeconfig: ${dir}/kube-proxy.kubeconfig
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the conntrack sysctls alone (most are not the node's own to set).
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  # The host reaches the node's pods through the node (the apiserver calls pods
  # for webhooks and aggregated APIs).
  ip route add "${pod_cidr}" via "${ip}" dev "${BRIDGE}"
done
rm -f "${REQ_CNF}" "${PKI}/ca.srl"

# ---- boot the nodes --------------------------------------------------------------------
# In parallel: they share nothing but the bridge.
BOOT_PIDS=()
for name in ${NODES}; do
  "${HERE}/node.sh" boot "${STATE}" "${name}" &
  BOOT_PIDS+=($!)
done
failed=0
for p in "${BOOT_PIDS[@]}"; do wait "${p}" || failed=1; done
((!failed)) || die "a node did not boot (logs in ${STATE}/nodes/*/logs)"

# ---- wait for Ready --------------------------------------------------------------------
node_ready() {
  [[ "$(kctl get node "$1" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]] || return 1
  [[ "$(kctl get node "$1" -o 'jsonpath={.spec.taints}' 2>/dev/null)" != *not-ready* ]]
}
proxy_ready() { # kube-proxy has programmed the kubernetes Service on the node
  "${HERE}/node.sh" exec "${STATE}" "$1" iptables -t nat -S KUBE-SERVICES 2>/dev/null | grep -q 'default/kubernetes:https'
}
deadline=$((SECONDS + TIMEOUT))
for name in ${NODES}; do
  until node_ready "${name}" && proxy_ready "${name}"; do
    if ((SECONDS >= deadline)); then
      for f in kubelet containerd kube-proxy; do
        log "last lines of ${STATE}/nodes/${name}/logs/${f}.log:"
        tail -n 15 "${STATE}/nodes/${name}/logs/${f}.log" >&2 || true
      done
      die "node ${name} not Ready after ${TIMEOUT}s"
    fi
    sleep 0.5
  done
  log "${name} Ready"
done

# ---- env -----------------------------------------------------------------------------------
ENV_FILE="${STATE}/env"
{
  cat "${CP}/env"
  printf 'DOWSER_NODE_DIR=%s\n' "${STATE}"
  printf 'NODE_NAMES=%s\n' "${NODES// /,}"
  printf 'NODE_COUNT=%s\n' "${COUNT}"
  printf 'NODE_HOST_IP=%s\n' "${HOST_IP}"
  printf 'NODE_CLUSTER_CIDR=%s\n' "${CLUSTER_CIDR}"
  printf 'NODE_BIN=%s\n' "${NODE_BIN}"
  printf 'NODE_SCRIPT=%s\n' "${HERE}/node.sh"
  printf 'NODE_PAUSE_IMAGE=%s\n' "${PAUSE_IMAGE}"
  printf 'NODE_TEST_IMAGES=%s\n' "${TEST_IMAGES}"
  printf 'NODE_IMAGES=%s\n' "${NODE_IMAGES}"
  for name in ${NODES}; do
    # shellcheck disable=SC1090
    . "${STATE}/nodes/${name}/node.env"
    key="NODE_${N_INDEX}"
    printf '%s_NAME=%s\n' "${key}" "${N_NAME}"
    printf '%s_IP=%s\n' "${key}" "${N_IP}"
    printf '%s_POD_CIDR=%s\n' "${key}" "${N_POD_CIDR}"
    printf '%s_KUBELET_DIR=%s\n' "${key}" "${N_DIR}/fs/kubelet"
    printf '%s_LOG_DIR=%s\n' "${key}" "${N_DIR}/logs"
  done
} >"${ENV_FILE}.tmp"
mv "${ENV_FILE}.tmp" "${ENV_FILE}"
BOOTED=1
log "${COUNT} node(s) Ready in $(fmt_secs $(($(now_us) - T0))); stop with: ${HERE}/down.sh ${STATE}"
printf '%s\n' "${ENV_FILE}"
