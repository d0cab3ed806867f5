#!/usr/bin/env bash
# Boot a throw-away Kubernetes control plane (etcd, kube-apiserver,
# kube-scheduler, kube-controller-manager) on 127.0.0.1. No kubelets.
#
# Usage: tests/cluster/up.sh [--foreground] <state-dir>
#
#   <state-dir>   created if missing; must be empty or hold an earlier cluster
#                 of this script (its contents are then replaced).
#   --foreground  stay attached; stop the cluster on exit, Ctrl-C, TERM or when
#                 a component dies.
#
# Every port is picked free at boot, so several clusters can run at once.
# Writes into <state-dir>:
#   kubeconfig         admin kubeconfig (client cert in group system:masters)
#   env                KEY=VALUE lines (see README.md), usable with `set -a; . env`
#   pids               "<component> <pid> <starttime>" lines, read by down.sh
#   logs/<component>.log
#   pki/, etcd/, kubeconfigs/
# The last line on stdout is the path of the env file; progress goes to stderr.
#
# Binaries come from $DOWSER_K8S_BIN, else from build-binaries.sh (cached).
# Optional environment:
#   DOWSER_CLUSTER_TIMEOUT     seconds to wait for each boot stage (default 120)
#   DOWSER_ETCD_ARGS, DOWSER_APISERVER_ARGS, DOWSER_SCHEDULER_ARGS,
#   DOWSER_CONTROLLER_MANAGER_ARGS   extra flags, split on whitespace, appended
#   DOWSER_CONTROLLERS         --controllers of kube-controller-manager
#                              (default "*,-nodelifecycle")
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
SA_ISSUER=https://kubernetes.default.svc.cluster.local
TIMEOUT=${DOWSER_CLUSTER_TIMEOUT:-120}
MARKER=.dowser-cluster

LOG_TAG=up
# shellcheck source=tests/cluster/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; }

T0=$(now_us)

FOREGROUND=0
STATE=""
while (($#)); do
  case "$1" in
    -f | --foreground) FOREGROUND=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) usage; die "unknown option: $1" ;;
    *) [[ -z "${STATE}" ]] || die "only one state directory, please"; STATE=$1 ;;
  esac
  shift
done
[[ -n "${STATE}" ]] || { usage; die "missing <state-dir>"; }
# Paths end up unquoted in the env file and in flags: keep them plain.
[[ "${STATE}" =~ ^[A-Za-z0-9._/+@:,=~-]+$ ]] || die "state dir '${STATE}' has characters other than [A-Za-z0-9._/+@:,=~-]"

for tool in openssl base64 flock find; do
  command -v "${tool}" >/dev/null 2>&1 || die "${tool} is not on PATH"
done

mkdir -p "${STATE}"
STATE=$(cd "${STATE}" && pwd -P)
[[ "${STATE}" =~ ^[A-Za-z0-9._/+@:,=~-]+$ ]] || die "state dir '${STATE}' has characters other than [A-Za-z0-9._/+@:,=~-]"

# ---- process bookkeeping ----------------------------------------------------
alive_from_pids_file() { # prints "name pid" of live processes listed in $1
  local name pid start
  [[ -f "$1" ]] || return 0
  while read -r name pid start; do
    [[ -n "${pid:-}" && -e "/proc/${pid}/stat" ]] || continue
    [[ "$(proc_starttime "${pid}" 2>/dev/null || true)" == "${start}" ]] || continue
    printf '%s %s\n' "${name}" "${pid}"
  done <"$1"
}

if [[ -n "$(ls -A "${STATE}")" ]]; then
  [[ -f "${STATE}/${MARKER}" ]] || die "${STATE} is not empty and was not made by up.sh; refusing to touch it"
  running=$(alive_from_pids_file "${STATE}/pids")
  [[ -z "${running}" ]] || die "a cluster is still running in ${STATE} (run down.sh first): $(echo "${running}" | tr '\n' ' ')"
  rm -rf "${STATE:?}/pki" "${STATE:?}/etcd" "${STATE:?}/logs" "${STATE:?}/kubeconfigs" \
    "${STATE:?}/kubeconfig" "${STATE:?}/env" "${STATE:?}/pids"
fi
touch "${STATE}/${MARKER}"
PKI="${STATE}/pki"
LOGS="${STATE}/logs"
KCS="${STATE}/kubeconfigs"
PIDS_FILE="${STATE}/pids"
mkdir -p "${PKI}" "${LOGS}" "${KCS}" "${STATE}/etcd"
chmod 700 "${PKI}" "${STATE}/etcd"
: >"${PIDS_FILE}"

# ---- binaries ---------------------------------------------------------------------
if [[ -n "${DOWSER_K8S_BIN:-}" ]]; then
  BIN=${DOWSER_K8S_BIN}
else
  BIN=$("${HERE}/build-binaries.sh" | tail -n1)
fi
for b in etcd kube-apiserver kube-scheduler kube-controller-manager kubectl; do
  [[ -x "${BIN}/${b}" ]] || die "${BIN}/${b} missing (set DOWSER_K8S_BIN or run build-binaries.sh)"
done
K8S_VERSION=$("${BIN}/kube-apiserver" --version | awk '{print $2}')

# ---- cleanup on failure / foreground exit -------------------------------------------
RES_DIR="${TMPDIR:-/tmp}/dowser-cluster-ports"
MY_RES=() # port reservation files of this run (see pick_port)
release_ports() { ((${#MY_RES[@]} == 0)) || rm -f "${MY_RES[@]}"; MY_RES=(); }
BOOTED=0
on_exit() {
  local rc=$?
  trap - EXIT INT TERM HUP
  release_ports
  if ((FOREGROUND || !BOOTED)); then
    ((BOOTED)) || log "boot failed (exit ${rc}); stopping what was started; logs in ${LOGS}"
    "${HERE}/down.sh" "${STATE}" || true
  fi
  exit "${rc}"
}
trap_exit

# ---- ports ----------------------------------------------------------------------------
# All TCP ports in use on the machine (any state, IPv4 and IPv6).
used_ports() {
  local f sl local_addr
  for f in /proc/net/tcp /proc/net/tcp6; do
    [[ -r "${f}" ]] || continue
    while read -r sl local_addr _; do
      [[ "${sl}" == "sl" ]] && continue
      printf '%d\n' "0x${local_addr##*:}"
    done <"${f}"
  done
}
port_listening() { # <port>
  local f local_addr st hex
  hex=$(printf '%04X' "$1")
  for f in /proc/net/tcp /proc/net/tcp6; do
    [[ -r "${f}" ]] || continue
    while read -r _ local_addr _ st _; do
      [[ "${local_addr##*:}" == "${hex}" && "${st}" == "0A" ]] && return 0
    done <"${f}"
  done
  return 1
}
read -r EPH_LO EPH_HI </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { EPH_LO=32768; EPH_HI=60999; }
# Ports are picked at random outside the ephemeral range, skipping ports in
# use and ports that a concurrent up.sh reserved but has not bound yet (files
# in RES_DIR, made under a lock, removed once the components listen; files
# older than 10 minutes are leftovers of a killed run and are ignored).
declare -A TAKEN=()
pick_port() { # <variable name>: sets it to a free port and reserves that port
  local p tries=0
  while ((tries++ < 1000)); do
    p=$((10000 + ${SRANDOM:-$((RANDOM * 32768 + RANDOM))} % 55000))
    ((p >= EPH_LO && p <= EPH_HI)) && continue
    [[ -z "${TAKEN[${p}]:-}" ]] || continue
    TAKEN[${p}]=1
    : >"${RES_DIR}/${p}"
    MY_RES+=("${RES_DIR}/${p}")
    printf -v "$1" '%s' "${p}"
    return 0
  done
  die "could not find a free port"
}
mkdir -p "${RES_DIR}"
exec 8>>"${RES_DIR}/.lock"
flock -w "${TIMEOUT}" 8 || die "timed out waiting for the lock ${RES_DIR}/.lock"
find "${RES_DIR}" -maxdepth 1 -type f -name '[0-9]*' -mmin +10 -delete 2>/dev/null || true
while read -r p; do TAKEN[${p}]=1; done < <(used_ports)
while read -r p; do TAKEN[${p##*/}]=1; done < <(find "${RES_DIR}" -maxdepth 1 -type f -name '[0-9]*')
pick_port ETCD_PORT
pick_port ETCD_PEER_PORT
pick_port API_PORT
pick_port SCHED_PORT
pick_port CM_PORT
flock -u 8
exec 8>&-
API_URL="https://127.0.0.1:${API_PORT}"
ETCD_URL="http://127.0.0.1:${ETCD_PORT}"

# ---- PKI --------------------------------------------------------------------------------
T_PKI=$(now_us)
new_key() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; chmod 600 "$1"; }
# new_cert <name> <subject> <extensions...>: key + cert signed by the cluster CA.
new_cert() {
  local name=$1 subj=$2 ext
  shift 2
  new_key "${PKI}/${name}.key"
  ext="${PKI}/${name}.ext"
  {
    printf 'basicConstraints = critical, CA:FALSE\n'
    printf 'keyUsage = critical, digitalSignature, keyEncipherment\n'
    printf 'subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n'
    printf '%s\n' "$@"
  } >"${ext}"
  openssl req -new -key "${PKI}/${name}.key" -subj "${subj}" -config "${REQ_CNF}" -out "${PKI}/${name}.csr" 2>/dev/null
  openssl x509 -req -in "${PKI}/${name}.csr" -CA "${PKI}/ca.crt" -CAkey "${PKI}/ca.key" \
    -CAserial "${PKI}/ca.srl" -CAcreateserial -days 3650 -sha256 -extfile "${ext}" \
    -out "${PKI}/${name}.crt" 2>/dev/null
  rm -f "${PKI}/${name}.csr" "${ext}"
}
# A self-contained openssl config, so the system's openssl.cnf does not matter.
REQ_CNF="${PKI}/req.cnf"
cat >"${REQ_CNF}" <<'EOF'
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
new_key "${PKI}/ca.key"
openssl req -x509 -new -key "${PKI}/ca.key" -subj "/CN=dowser-test-ca-$(basename "${STATE}")" -days 3650 -sha256 \
  -config "${REQ_CNF}" -extensions ca -out "${PKI}/ca.crt" 2>/dev/null
new_cert apiserver "/CN=kube-apiserver" "extendedKeyUsage = serverAuth" \
  "subjectAltName = DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, IP:127.0.0.1, IP:${SERVICE_IP}"
new_cert admin "/O=system:masters/CN=dowser-admin" "extendedKeyUsage = clientAuth"
new_cert scheduler "/CN=system:kube-scheduler" "extendedKeyUsage = clientAuth"
new_cert controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage = clientAuth"
new_key "${PKI}/sa.key"
openssl pkey -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub" 2>/dev/null
rm -f "${REQ_CNF}" "${PKI}/ca.srl"
log "PKI ready in $(fmt_secs $(($(now_us) - T_PKI)))"

b64() { base64 -w0 <"$1"; }
write_kubeconfig() { # <file> <user> <cert> <key>
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dowser
  cluster:
    server: ${API_URL}
    certificate-authority-data: $(b64 "${PKI}/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$3")
    client-key-data: $(b64 "$4")
contexts:
- name: dowser
  context:
    cluster: dowser
    user: $2
current-context: dowser
EOF
  chmod 600 "$1"
}
KUBECONFIG_ADMIN="${STATE}/kubeconfig"
write_kubeconfig "${KUBECONFIG_ADMIN}" dowser-admin "${PKI}/admin.crt" "${PKI}/admin.key"
write_kubeconfig "${KCS}/scheduler.kubeconfig" system:kube-scheduler "${PKI}/scheduler.crt" "${PKI}/scheduler.key"
write_kubeconfig "${KCS}/controller-manager.kubeconfig" system:kube-controller-manager \
  "${PKI}/controller-manager.crt" "${PKI}/controller-manager.key"

# ---- components ---------------------------------------------------------------------
declare -A PID=()
start() { # <name> <binary> <args...>
  local name=$1 pid start_time
  shift
  # nohup: survive the hang-up of a terminal up.sh was started from.
  nohup "$@" </dev/null >"${LOGS}/${name}.log" 2>&1 8>&- &
  pid=$!
  start_time=$(proc_starttime "${pid}") || die "${name} exited at once; see ${LOGS}/${name}.log"
  printf '%s %s %s\n' "${name}" "${pid}" "${start_time}" >>"${PIDS_FILE}"
  PID[${name}]=${pid}
  log "started ${name} (pid ${pid})"
}
check_alive() { # <name>
  local pid=${PID[$1]}
  if ! kill -0 "${pid}" 2>/dev/null || [[ "$(awk '{print $3}' "/proc/${pid}/stat" 2>/dev/null)" == Z ]]; then
    log "$1 exited; last lines of ${LOGS}/$1.log:"
    tail -n 25 "${LOGS}/$1.log" >&2 || true
    die "$1 died during boot"
  fi
}
# wait_until <what> <component> <command...>: poll until the command succeeds.
wait_until() {
  local what=$1 comp=$2 deadline
  shift 2
  deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    check_alive "${comp}"
    ((SECONDS < deadline)) || die "timed out after ${TIMEOUT}s waiting for ${what}; see ${LOGS}/${comp}.log"
    sleep 0.2
  done
}
# Extra flags from the environment, split on whitespace.
read -r -a EXTRA_ETCD <<<"${DOWSER_ETCD_ARGS:-}"
read -r -a EXTRA_API <<<"${DOWSER_APISERVER_ARGS:-}"
read -r -a EXTRA_SCHED <<<"${DOWSER_SCHEDULER_ARGS:-}"
read -r -a EXTRA_CM <<<"${DOWSER_CONTROLLER_MANAGER_ARGS:-}"

start etcd "${BIN}/etcd" \
  --name=dowser \
  --data-dir="${STATE}/etcd" \
  --listen-client-urls="${ETCD_URL}" \
  --advertise-client-urls="${ETCD_URL}" \
  --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-cluster="dowser=http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-cluster-state=new \
  --unsafe-no-fsync \
  "${EXTRA_ETCD[@]}"

# --endpoint-reconciler-type=none: Endpoints may not hold a loopback address, so
# the default reconciler would fail forever; the kubernetes Service is still made.
start kube-apiserver "${BIN}/kube-apiserver" \
  --etcd-servers="${ETCD_URL}" \
  --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 \
  --secure-port="${API_PORT}" \
  --tls-cert-file="${PKI}/apiserver.crt" \
  --tls-private-key-file="${PKI}/apiserver.key" \
  --client-ca-file="${PKI}/ca.crt" \
  --authorization-mode=Node,RBAC \
  --service-account-issuer="${SA_ISSUER}" \
  --service-account-key-file="${PKI}/sa.pub" \
  --service-account-signing-key-file="${PKI}/sa.key" \
  --service-cluster-ip-range="${SERVICE_CIDR}" \
  --allow-privileged=true \
  --endpoint-reconciler-type=none \
  "${EXTRA_API[@]}"

wait_until "etcd to listen on ${ETCD_PORT}" etcd port_listening "${ETCD_PORT}"
wait_until "kube-apiserver to listen on ${API_PORT}" kube-apiserver port_listening "${API_PORT}"

kctl() { "${BIN}/kubectl" --kubeconfig="${KUBECONFIG_ADMIN}" --request-timeout=5s "$@"; }
readyz() { [[ "$(kctl get --raw=/readyz 2>/dev/null)" == ok ]]; }
# The scheduler and controller-manager exit if the default RBAC policy is not
# there yet, so they start once the apiserver is ready.
wait_until "kube-apiserver /readyz" kube-apiserver readyz

# --authentication-skip-lookup: the apiserver has no front-proxy (requestheader)
# CA; without it they would keep asking for one. Their ports take client certs.
start kube-scheduler "${BIN}/kube-scheduler" \
  --kubeconfig="${KCS}/scheduler.kubeconfig" \
  --authentication-kubeconfig="${KCS}/scheduler.kubeconfig" \
  --authorization-kubeconfig="${KCS}/scheduler.kubeconfig" \
  --authentication-skip-lookup=true \
  --client-ca-file="${PKI}/ca.crt" \
  --bind-address=127.0.0.1 \
  --secure-port="${SCHED_PORT}" \
  --leader-elect=false \
  "${EXTRA_SCHED[@]}"

start kube-controller-manager "${BIN}/kube-controller-manager" \
  --kubeconfig="${KCS}/controller-manager.kubeconfig" \
  --authentication-kubeconfig="${KCS}/controller-manager.kubeconfig" \
  --authorization-kubeconfig="${KCS}/controller-manager.kubeconfig" \
  --authentication-skip-lookup=true \
  --client-ca-file="${PKI}/ca.crt" \
  --bind-address=127.0.0.1 \
  --secure-port="${CM_PORT}" \
  --leader-elect=false \
  --cluster-name=dowser \
  --service-cluster-ip-range="${SERVICE_CIDR}" \
  --service-account-private-key-file="${PKI}/sa.key" \
  --root-ca-file="${PKI}/ca.crt" \
  --cluster-signing-cert-file="${PKI}/ca.crt" \
  --cluster-signing-key-file="${PKI}/ca.key" \
  --use-service-account-credentials=true \
  --controllers="${DOWSER_CONTROLLERS:-*,-nodelifecycle}" \
  "${EXTRA_CM[@]}"

wait_until "kube-scheduler to listen on ${SCHED_PORT}" kube-scheduler port_listening "${SCHED_PORT}"
wait_until "kube-controller-manager to listen on ${CM_PORT}" kube-controller-manager port_listening "${CM_PORT}"
release_ports
wait_until "namespace default" kube-apiserver kctl get namespace default
wait_until "service account default/default" kube-controller-manager kctl -n default get serviceaccount default
for c in etcd kube-apiserver kube-scheduler kube-controller-manager; do check_alive "${c}"; done

ENV_FILE="${STATE}/env"
cat >"${ENV_FILE}.tmp" <<EOF
DOWSER_CLUSTER_DIR=${STATE}
KUBECONFIG=${KUBECONFIG_ADMIN}
APISERVER_URL=${API_URL}
APISERVER_PORT=${API_PORT}
ETCD_URL=${ETCD_URL}
SCHEDULER_URL=https://127.0.0.1:${SCHED_PORT}
CONTROLLER_MANAGER_URL=https://127.0.0.1:${CM_PORT}
CA_CERT=${PKI}/ca.crt
CA_KEY=${PKI}/ca.key
ADMIN_CERT=${PKI}/admin.crt
ADMIN_KEY=${PKI}/admin.key
SERVICE_CLUSTER_IP_RANGE=${SERVICE_CIDR}
K8S_VERSION=${K8S_VERSION}
K8S_BIN=${BIN}
KUBECTL=${BIN}/kubectl
HELM=${BIN}/helm
EOF
mv "${ENV_FILE}.tmp" "${ENV_FILE}"
BOOTED=1
log "cluster ${K8S_VERSION} up in $(fmt_secs $(($(now_us) - T0))): ${API_URL}"
log "  export KUBECONFIG=${KUBECONFIG_ADMIN}    (or: set -a; . ${ENV_FILE}; set +a)"
printf '%s\n' "${ENV_FILE}"

if ((FOREGROUND)); then
  log "foreground: Ctrl-C stops the cluster"
  # Returns when a component exits, or when a trapped signal arrives.
  died=""
  wait -n -p died "${PID[@]}" || true
  for c in "${!PID[@]}"; do
    [[ "${PID[${c}]}" == "${died}" ]] && log "${c} exited; last lines of ${LOGS}/${c}.log:" &&
      { tail -n 25 "${LOGS}/${c}.log" >&2 || true; }
  done
  exit 1
else
  log "stop with: ${HERE}/down.sh ${STATE}"
fi
