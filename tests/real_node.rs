//! End to end on a real node: a kubelet and containerd (`tests/node/up.sh`), the images built
//! here without a registry (`tests/node/build-images.sh`), dowser installed with the README's
//! own commands, the simulated plant (dowser-sim) on the host, and the example broker
//! (`examples/brokers/modbus`) really running in a container and reading the PLC.
//!
//! One node is booted for the whole test binary (on first use) and stopped with
//! `tests/node/down.sh` when the binary exits; the tests take turns on it, each leaving the
//! cluster without dowser. Needs root (namespaces, cgroups) and what tests/test.sh installs.
//! `DOWSER_REAL_NODE_STATE` keeps the node's state directory there (and the node running
//! after the tests, for a look at it).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Mutex, MutexGuard, OnceLock},
    time::{Duration, Instant},
};

use serde_json::Value;

mod common;

use common::{
    cluster::{kubectl_output, repo, stdout_of_success},
    readme::block as readme_block,
};

const DOWSER_IMAGE: &str = "ghcr.io/dowser-dev/dowser:0.1.0";
const BROKER_IMAGE: &str = "ghcr.io/dowser-dev/modbus-broker:0.1.0";
const NAMESPACE: &str = "dowser-system";

/// The booted node: its state directory and `<state>/env`.
struct RealNode {
    state: PathBuf,
    env: BTreeMap<String, String>,
}

static NODE: OnceLock<Result<RealNode, String>> = OnceLock::new();
static STATE_TO_STOP: Mutex<Option<PathBuf>> = Mutex::new(None);
static TURN: Mutex<()> = Mutex::new(());

extern "C" fn down_at_exit() {
    let state = STATE_TO_STOP.lock().ok().and_then(|mut s| s.take());
    if let Some(state) = state {
        let _ = Command::new(repo().join("tests/node/down.sh"))
            .arg(&state)
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&state);
    }
}

/// Runs a script and returns its stdout, or an error with the end of its stderr.
fn script(path: &str, args: &[&str], env: &[(&str, String)]) -> Result<String, String> {
    let out = Command::new(repo().join(path))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(repo())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .map_err(|e| format!("{path}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(40).collect();
        return Err(format!(
            "{path} {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn boot() -> Result<RealNode, String> {
    // The binaries `cargo test` built: the dowser binary of this build, and the broker beside
    // the test binaries (`cargo test --workspace` builds every member's binaries); else
    // build-images.sh builds them.
    let mut env = vec![(
        "DOWSER_IMAGE_DOWSER_BIN",
        env!("CARGO_BIN_EXE_dowser").to_string(),
    )];
    let broker = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("modbus-broker")))
        .filter(|p| p.exists());
    if let Some(broker) = broker {
        env.push(("DOWSER_IMAGE_BROKER_BIN", broker.display().to_string()));
    }
    let out = script("tests/node/build-images.sh", &[], &env)?;
    let lines: Vec<&str> = out.lines().collect();
    let images = lines
        .last()
        .ok_or("build-images.sh printed nothing")?
        .to_string();
    let pause = lines
        .iter()
        .find_map(|l| l.strip_prefix("DOWSER_PAUSE_IMAGE="))
        .ok_or("build-images.sh named no pause image")?
        .to_string();

    let state = match std::env::var("DOWSER_REAL_NODE_STATE") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => {
            let dir = tempfile::Builder::new()
                .prefix("dowser-real-node-")
                .tempdir()
                .map_err(|e| e.to_string())?
                .keep();
            *STATE_TO_STOP.lock().unwrap() = Some(dir.clone());
            // SAFETY: registers a plain extern "C" function, run once at process exit.
            unsafe { libc::atexit(down_at_exit) };
            dir
        }
    };
    let state_arg = state.display().to_string();
    script(
        "tests/node/up.sh",
        &[&state_arg],
        &[
            ("DOWSER_NODE_COUNT", "1".into()),
            ("DOWSER_NODE_IMAGES", images),
            ("DOWSER_PAUSE_IMAGE", pause),
        ],
    )?;
    let env = std::fs::read_to_string(state.join("env"))
        .map_err(|e| format!("{}/env: {e}", state.display()))?
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect();
    Ok(RealNode { state, env })
}

/// The shared node (booted by the first test that asks) and this test's turn on it.
fn node() -> (&'static RealNode, MutexGuard<'static, ()>) {
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    match NODE.get_or_init(boot) {
        Ok(node) => (node, turn),
        Err(e) => panic!("no real node: {e}"),
    }
}

impl RealNode {
    fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from {}/env", self.state.display()))
    }

    fn name(&self) -> &str {
        self.var("NODE_1_NAME")
    }

    fn host_ip(&self) -> IpAddr {
        self.var("NODE_HOST_IP").parse().expect("NODE_HOST_IP")
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.var("KUBECTL"))
            .args(args)
            .env("KUBECONFIG", self.var("KUBECONFIG"))
            .current_dir(repo())
            .output()
            .expect("run kubectl")
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        stdout_of_success(args, self.kubectl(args))
    }

    fn kubectl_stdin(&self, args: &[&str], stdin: &str) {
        let mut command = Command::new(self.var("KUBECTL"));
        command.args(args).env("KUBECONFIG", self.var("KUBECONFIG"));
        let out = kubectl_output(&mut command, stdin);
        assert!(
            out.status.success(),
            "kubectl {}: {}\n{stdin}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&all)).expect("kubectl printed JSON")
    }

    /// `tests/node/node.sh <command> <state> <node> args...`
    fn node_sh(&self, command: &str, args: &[&str]) -> String {
        let state = self.state.display().to_string();
        let mut all = vec![command, &state, self.name()];
        all.extend(args);
        script("tests/node/node.sh", &all, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs a README block with bash, as a user would, with kubectl and helm on PATH.
    fn run_readme_block(&self, block: &str) {
        common::readme::run_with(
            Path::new(self.var("KUBECTL")),
            Path::new(self.var("HELM")),
            Path::new(self.var("KUBECONFIG")),
            block,
            None,
        );
    }

    /// The Node's `status.<field>` (capacity, allocatable) entry for `resource`.
    fn node_resource(&self, field: &str, resource: &str) -> Option<String> {
        let node = self.json(&["get", "node", self.name()]);
        node["status"][field][resource].as_str().map(String::from)
    }

    /// The kubelet's device-plugin directory of the node, seen from the host.
    fn plugin_dir(&self) -> PathBuf {
        PathBuf::from(self.var("NODE_1_KUBELET_DIR")).join("device-plugins")
    }

    /// Plugin sockets other than the kubelet's own, with their inodes.
    fn plugin_sockets(&self) -> BTreeMap<String, u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(self.plugin_dir())
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| {
                        let name = e.file_name();
                        name != "kubelet.sock" && name.to_string_lossy().ends_with(".sock")
                    })
                    .filter_map(|e| {
                        let meta = e.metadata().ok()?;
                        Some((e.file_name().to_string_lossy().into_owned(), meta.ino()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Leaves the cluster as a user who never installed dowser would find it (a test that
    /// failed halfway may have left an install behind).
    fn clean(&self) {
        let _ = self.kubectl(&[
            "delete",
            "configurations.dowser.dev,instances.dowser.dev",
            "--all",
            "--all-namespaces",
            "--wait=false",
        ]);
        let _ = self.kubectl(&[
            "delete",
            "pods,jobs,services",
            "--all-namespaces",
            "-l",
            "dowser.dev/configuration",
            "--grace-period=1",
        ]);
        let _ = Command::new(self.var("HELM"))
            .args(["uninstall", "dowser", "-n", NAMESPACE, "--wait"])
            .env("KUBECONFIG", self.var("KUBECONFIG"))
            .output();
        let _ = self.kubectl(&[
            "delete",
            "pods",
            "-n",
            "default",
            "reader-1",
            "reader-2",
            "reader-3",
            "reader-none",
            "--ignore-not-found",
            "--grace-period=1",
        ]);
        let _ = self.kubectl(&["delete", "resourceclaims", "-n", "default", "--all"]);
        let _ = self.kubectl(&["delete", "-k", "deploy-dra/", "--ignore-not-found"]);
        let _ = self.kubectl(&["delete", "-k", "deploy/", "--ignore-not-found"]);
        let _ = self.kubectl(&[
            "-n",
            "default",
            "delete",
            "rolebinding",
            "dowser-agent-properties",
            "--ignore-not-found",
        ]);
        let _ = self.kubectl(&[
            "-n",
            "default",
            "delete",
            "secret",
            "plc-login",
            "--ignore-not-found",
        ]);
    }
}

/// Polls `probe` every 500 ms until it gives a value; panics after `limit` with `what` and the
/// last thing `probe` reported.
fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let last = match probe() {
            Ok(v) => return v,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {} s; last seen: {last}",
            limit.as_secs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

const MINUTES: fn(u64) -> Duration = |m| Duration::from_secs(m * 60);

/// A simulated PLC (dowser-sim) on the host's address on the node network, in a runtime of
/// its own: dropping it closes its port and every connection, as a device that goes away.
struct Plant {
    runtime: Option<tokio::runtime::Runtime>,
    _listeners: Vec<dowser_sim::modbus::RunningListener>,
    addr: SocketAddr,
}

impl Plant {
    fn start(ip: IpAddr, registers: &[u16]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let unit = dowser_sim::modbus::UnitConfig {
            holding_registers: registers.to_vec(),
            ..dowser_sim::modbus::UnitConfig::identified(1, "Acme Automation", "PLC-3100", "4.2")
        };
        let listeners = runtime
            .block_on(dowser_sim::modbus::serve(
                &dowser_sim::modbus::ListenerConfig::device(SocketAddr::new(ip, 0), vec![unit]),
            ))
            .expect("dowser-sim listens on the host's node-network address");
        let addr = listeners[0].addr;
        Self {
            runtime: Some(runtime),
            _listeners: listeners,
            addr,
        }
    }
}

impl Drop for Plant {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

const REGISTERS: [u16; 10] = [4200, 4201, 4202, 4203, 4204, 4205, 4206, 4207, 4208, 4209];
const GRACE_SECONDS: u64 = 20;

/// A Configuration that finds the plant's PLC and runs the example broker for it.
fn configuration(name: &str, plant: &Plant) -> String {
    format!(
        r#"apiVersion: dowser.dev/v1alpha1
kind: Configuration
metadata:
  name: {name}
  namespace: default
spec:
  discovery:
    modbus:
      targets: ["{ip}/32"]
      ports: [{port}]
      unitIds: ["1"]
      connectTimeoutMs: 500
      requestTimeoutMs: 1000
      intervalSeconds: 2
  capacity: 1
  offlineGracePeriodSeconds: {GRACE_SECONDS}
  brokerSpec:
    brokerPodSpec:
      terminationGracePeriodSeconds: 30
      containers:
        - name: broker
          image: {BROKER_IMAGE}
          imagePullPolicy: Never
"#,
        ip = plant.addr.ip(),
        port = plant.addr.port()
    )
}

/// What a broker looks like from the API server.
#[derive(Debug, PartialEq, Eq)]
struct BrokerPod {
    name: String,
    uid: String,
    container_id: String,
    restarts: u64,
}

/// The list of `kind` objects in `default` that belong to `configuration`.
fn list_of(node: &RealNode, kind: &str, configuration: &str) -> Value {
    node.json(&[
        "get",
        kind,
        "-n",
        "default",
        "-l",
        &format!("dowser.dev/configuration={configuration}"),
    ])
}

/// Waits until no pod of `configuration` is left.
fn wait_pods_gone(node: &RealNode, what: &str, configuration: &str) {
    wait_for(what, MINUTES(2), || {
        let pods = list_of(node, "pods", configuration);
        match pods["items"].as_array().map(Vec::len) {
            Some(0) => Ok(()),
            _ => Err(format!("pods: {}", pods["items"])),
        }
    });
}

fn running_broker(node: &RealNode, configuration: &str) -> Result<BrokerPod, String> {
    let pods = list_of(node, "pods", configuration);
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    let [pod] = items.as_slice() else {
        return Err(format!("{} broker pods", items.len()));
    };
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    let status = &pod["status"]["containerStatuses"][0];
    if phase != "Running" || status["ready"] != true {
        return Err(format!("broker pod {phase}: {}", pod["status"]));
    }
    Ok(BrokerPod {
        name: pod["metadata"]["name"].as_str().unwrap().to_string(),
        uid: pod["metadata"]["uid"].as_str().unwrap().to_string(),
        container_id: status["containerID"].as_str().unwrap_or("").to_string(),
        restarts: status["restartCount"].as_u64().unwrap_or(0),
    })
}

fn instance_of(node: &RealNode, configuration: &str) -> Result<Value, String> {
    let list = list_of(node, "instances.dowser.dev", configuration);
    let items = list["items"].as_array().cloned().unwrap_or_default();
    match items.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(format!("{} Instances", other.len())),
    }
}

/// Installed dowser + the plant + a Configuration: waits until the broker reads the PLC and
/// returns the Instance's name and the broker.
fn broker_reads_the_plc(node: &RealNode, name: &str, plant: &Plant) -> (String, BrokerPod) {
    broker_of(node, name, plant, &configuration(name, plant))
}

/// [`broker_reads_the_plc`] with the Configuration `yaml`.
fn broker_of(node: &RealNode, name: &str, plant: &Plant, yaml: &str) -> (String, BrokerPod) {
    node.kubectl_stdin(&["apply", "-f", "-"], yaml);
    let instance = wait_for("an Instance for the simulated PLC", MINUTES(2), || {
        instance_of(node, name)
    });
    let instance = instance["metadata"]["name"].as_str().unwrap().to_string();
    let resource = dowser::naming::instance_resource("default", &instance);
    wait_for(
        &format!("{resource} allocatable on the real Node"),
        MINUTES(2),
        || match node.node_resource("allocatable", &resource) {
            Some(n) if n == "1" => Ok(()),
            other => Err(format!("allocatable {resource}: {other:?}")),
        },
    );
    let broker = wait_for("the broker pod Running", MINUTES(3), || {
        running_broker(node, name)
    });
    // The environment reached the container: the broker read the address dowser handed it.
    reads_the_plc(node, &broker.name, plant);
    (instance, broker)
}

/// Waits until the log of the pod `pod` in `default` shows the plant's registers, read at
/// the address dowser handed the example broker.
fn reads_the_plc(node: &RealNode, pod: &str, plant: &Plant) {
    let expected = format!("holding[0..10]={REGISTERS:?}");
    let address = format!("modbus+tcp://{}/1", plant.addr);
    wait_for(
        &format!("{pod}'s log showing the PLC's registers"),
        MINUTES(1),
        || {
            let logs = node.kubectl(&["logs", "-n", "default", pod]);
            let text = String::from_utf8_lossy(&logs.stdout);
            if text.contains(&expected) && text.contains(&address) {
                Ok(())
            } else {
                Err(format!(
                    "no line with {expected} from {address} in `kubectl logs {pod}`:\n{text}{}",
                    String::from_utf8_lossy(&logs.stderr)
                ))
            }
        },
    );
}

fn rollout(node: &RealNode) {
    node.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "daemonset/dowser-agent",
        "--timeout=180s",
    ]);
    node.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "deployment/dowser-controller",
        "--timeout=180s",
    ]);
    // The agent is the image's binary in a pod on the real node, not a process of the test.
    let agents = node.json(&[
        "-n",
        NAMESPACE,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=agent",
    ]);
    let agent = &agents["items"][0];
    assert_eq!(agent["spec"]["nodeName"], node.name(), "{agents}");
    assert_eq!(agent["spec"]["containers"][0]["image"], DOWSER_IMAGE);
}

/// The headline: the README's Helm install on a real node, a PLC on the plant network, and
/// a broker container that reads it; an external handler beside the agent gets one too; then
/// the PLC goes away and so do the brokers.
#[test]
fn helm_install_runs_a_broker_that_reads_the_plc_and_removes_it_with_the_device() {
    let (node, _turn) = node();
    node.clean();
    node.run_readme_block(&readme_block("helm install"));
    rollout(node);
    // A resource of a device gone long ago, as the kubelet leaves it for good once its device
    // manager has forgotten the plugin: 0 in capacity and allocatable.
    let forgotten = "dowser.dev/plc-gone-0123456789ab";
    node.kubectl_ok(&[
        "patch",
        "node",
        node.name(),
        "--subresource=status",
        "--type=merge",
        "-p",
        &serde_json::json!({"status": {
            "capacity": {forgotten: "0"},
            "allocatable": {forgotten: "0"},
        }})
        .to_string(),
    ]);

    let plant = Plant::start(node.host_ip(), &REGISTERS);
    // With a property from a Secret, which the broker's container gets from the kubelet.
    let password = "plc-Pw-41d3c9";
    node.kubectl_ok(&[
        "-n",
        "default",
        "create",
        "secret",
        "generic",
        "plc-login",
        &format!("--from-literal=password={password}"),
    ]);
    let yaml = configuration("plc-helm", &plant).replace(
        "  capacity: 1\n",
        "  capacity: 1\n  properties:\n    - name: PLC_PASSWORD\n      \
         valueFrom: {secretKeyRef: {name: plc-login, key: password}}\n",
    );
    let (instance, broker) = broker_of(node, "plc-helm", &plant, &yaml);
    let resource = dowser::naming::instance_resource("default", &instance);
    let container = broker.container_id.trim_start_matches("containerd://");
    let info: Value = serde_json::from_str(&node.node_sh(
        "exec",
        &["ctr", "-n", "k8s.io", "containers", "info", container],
    ))
    .expect("ctr containers info prints JSON");
    let env: Vec<&str> = info["Spec"]["process"]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let hash = instance.rsplit('-').next().unwrap().to_uppercase();
    for name in ["PLC_PASSWORD".to_string(), format!("PLC_PASSWORD_{hash}")] {
        let wanted = format!("{name}={password}");
        assert!(
            env.contains(&wanted.as_str()),
            "{name} in the broker's environment: {:?}",
            env.iter().map(|e| e.split('=').next()).collect::<Vec<_>>()
        );
    }
    // While the agent's sweep comes round: a handler in its own pod, beside the agent.
    an_external_handler_in_its_own_pod_gets_a_broker_that_reads_the_plc(node, &plant);
    // The agent removes it (its sweep runs every minute).
    wait_for(
        &format!("{forgotten} removed from the Node"),
        MINUTES(2),
        || match (
            node.node_resource("capacity", forgotten),
            node.node_resource("allocatable", forgotten),
        ) {
            (None, None) => Ok(()),
            other => Err(format!("capacity, allocatable: {other:?}")),
        },
    );

    // The device goes away: after the grace period the Instance and its broker go.
    drop(plant);
    wait_for(
        "the Instance gone after the offline grace period",
        Duration::from_secs(GRACE_SECONDS) + MINUTES(2),
        || match instance_of(node, "plc-helm") {
            Err(e) if e.starts_with("0 ") => Ok(()),
            Ok(i) => Err(format!("Instance still there: {}", i["status"])),
            Err(e) => Err(e),
        },
    );
    wait_pods_gone(node, "the broker pod gone", "plc-helm");
    wait_pods_gone(node, "the external handler's broker gone", "plc-external");
    // The real kubelet, once the plugin has stopped, offers none of the device (allocatable 0)
    // while it keeps the resource in its capacity for a while (5 minutes in its device
    // manager) before it reports 0 there too.
    wait_for(
        &format!("{resource} no longer allocatable"),
        MINUTES(1),
        || match node.node_resource("allocatable", &resource) {
            Some(n) if n == "0" => Ok(()),
            other => Err(format!("allocatable {other:?}")),
        },
    );
    let capacity = node.node_resource("capacity", &resource);
    assert_eq!(
        capacity.as_deref(),
        Some("1"),
        "the kubelet keeps a stopped plugin's capacity for its grace period"
    );
    // The kubelet posted its status since (allocatable 0 above) and did not write the removed
    // resource back: it writes only what its device manager tracks.
    assert_eq!(
        node.node_resource("capacity", forgotten),
        None,
        "a removed resource came back"
    );
    assert!(
        !node.plugin_sockets().keys().any(|s| s.contains(&instance)),
        "the plugin socket of a removed device stays: {:?}",
        node.plugin_sockets()
    );
    let _ = broker;

    node.kubectl_ok(&[
        "delete",
        "configuration.dowser.dev",
        "plc-helm",
        "plc-external",
        "-n",
        "default",
    ]);
    node.run_readme_block("helm uninstall dowser -n dowser-system");
    node.clean();
}

/// An external handler on the real node, beside the installed agent: the chart, upgraded
/// with `externalHandlers`, runs dowser's Modbus handler in a pod of its own; the agent finds
/// it through the registration socket in the hostPath directory both share, and a broker of
/// a Configuration selecting it reads the PLC. The handler's pod is then deleted: its
/// DaemonSet starts another, which registers again, and within the grace period nothing else
/// changes: the Instance and the broker stay.
fn an_external_handler_in_its_own_pod_gets_a_broker_that_reads_the_plc(
    node: &RealNode,
    plant: &Plant,
) {
    let upgraded = Command::new(node.var("HELM"))
        .args([
            "upgrade",
            "dowser",
            "deploy/helm/dowser",
            "-n",
            NAMESPACE,
            "--reuse-values",
        ])
        .args([
            "--set-json",
            r#"externalHandlers=[{"name":"plant-modbus","builtIn":"modbus","shared":true}]"#,
            "--wait",
            "--timeout",
            "180s",
        ])
        .current_dir(repo())
        .env("KUBECONFIG", node.var("KUBECONFIG"))
        .output()
        .expect("run helm");
    assert!(
        upgraded.status.success(),
        "helm upgrade with an external handler: {}",
        String::from_utf8_lossy(&upgraded.stderr)
    );
    node.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "daemonset/dowser-handler-plant-modbus",
        "--timeout=180s",
    ]);
    let modbus = configuration("plc-external", plant);
    let details_start = modbus.find("    modbus:\n").unwrap();
    let details_end = modbus.find("  capacity:").unwrap();
    let details: String = modbus[details_start..details_end]
        .lines()
        .skip(1)
        .map(|l| format!("        {}\n", l.trim_start()))
        .collect();
    let yaml = format!(
        "{}    external:\n      name: plant-modbus\n      details: |\n{details}{}",
        &modbus[..details_start],
        &modbus[details_end..]
    );
    let (instance, broker) = broker_of(node, "plc-external", plant, &yaml);
    let found = instance_of(node, "plc-external").unwrap();
    assert_eq!(found["spec"]["shared"], true, "as the handler registered");

    // The handler's pod goes; its replacement registers and finds the PLC again.
    node.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "delete",
        "pods",
        "-l",
        "dowser.dev/handler=plant-modbus",
        "--wait=true",
    ]);
    node.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "daemonset/dowser-handler-plant-modbus",
        "--timeout=180s",
    ]);
    wait_for("the node reporting the PLC again", MINUTES(1), || {
        let config = node.json(&[
            "get",
            "configuration.dowser.dev",
            "plc-external",
            "-n",
            "default",
        ]);
        let nodes = config["status"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match nodes.as_slice() {
            [n] if n["devices"] == 1 && n["problems"].as_array().is_none_or(Vec::is_empty) => {
                Ok(())
            }
            _ => Err(format!("status.nodes: {nodes:?}")),
        }
    });
    let after = instance_of(node, "plc-external").unwrap();
    assert_eq!(after["metadata"]["name"], instance.as_str());
    assert_eq!(running_broker(node, "plc-external").unwrap(), broker);
}

/// The slot claims of an Instance (`status.slots`).
fn slots(node: &RealNode, configuration: &str) -> Value {
    instance_of(node, configuration)
        .map(|i| i["status"]["slots"].clone())
        .unwrap_or(Value::Null)
}

/// A daemon of the node stopped and started again: the agent's plugins register again with
/// the kubelet, the broker keeps its container and its slot, the resource stays offered.
fn restart_keeps_the_broker(node: &RealNode, component: &str, instance: &str, before: &BrokerPod) {
    let resource = dowser::naming::instance_resource("default", instance);
    let slots_before = slots(node, "plc-kustomize");
    // The agent's log through the kubelet, which answers again once it is back.
    let registered = |resource: &str| -> Result<usize, String> {
        let out = node.kubectl(&[
            "logs",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/component=agent",
            "--tail=-1",
        ]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("registered with the kubelet") && l.contains(resource))
            .count())
    };
    let instance_resource = resource.clone();
    let registrations = registered(&instance_resource).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        registrations > 0,
        "the agent's log shows no registration of {resource} before the {component} restart"
    );
    node.node_sh("stop", &[component]);
    node.node_sh("start", &[component]);
    if component == "kubelet" {
        // A starting kubelet deletes every plugin socket; the agent binds new ones and
        // registers again.
        wait_for(
            "the device plugin registered again with the restarted kubelet",
            MINUTES(2),
            || match registered(&instance_resource)? {
                n if n > registrations => Ok(()),
                n => Err(format!(
                    "{n} registrations of {resource} in the agent's log"
                )),
            },
        );
    }
    wait_for(
        &format!("{resource} allocatable again after the {component} restart"),
        MINUTES(2),
        || match node.node_resource("allocatable", &resource) {
            Some(n) if n == "1" => Ok(()),
            other => Err(format!("allocatable {other:?}")),
        },
    );
    let after = wait_for(
        &format!("the broker Running after the {component} restart"),
        MINUTES(2),
        || running_broker(node, "plc-kustomize"),
    );
    assert_eq!(
        &after, before,
        "the broker lost its container in the {component} restart"
    );
    assert_eq!(
        slots(node, "plc-kustomize"),
        slots_before,
        "a slot claim changed in the {component} restart"
    );
    // Still reading: a line written after the restart.
    let expected = format!("holding[0..10]={REGISTERS:?}");
    wait_for(
        &format!("a fresh read in the broker's log after the {component} restart"),
        MINUTES(1),
        || {
            let out = node.kubectl(&["logs", "-n", "default", &after.name, "--since=3s"]);
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains(&expected) {
                Ok(())
            } else {
                Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
            }
        },
    );
}

/// `kubectl apply -k deploy/` as the README says; the broker survives a kubelet and a
/// containerd restart; the README's uninstall block leaves nothing of dowser, on the node
/// included.
#[test]
fn kustomize_install_survives_kubelet_and_containerd_restarts_and_uninstalls_cleanly() {
    let (node, _turn) = node();
    node.clean();
    node.run_readme_block(&readme_block("kubectl apply -k deploy/"));
    rollout(node);

    let plant = Plant::start(node.host_ip(), &REGISTERS);
    let (instance, broker) = broker_reads_the_plc(node, "plc-kustomize", &plant);
    assert_eq!(
        slots(node, "plc-kustomize"),
        serde_json::json!({"0": node.name()}),
        "the broker's slot is claimed by its node"
    );

    restart_keeps_the_broker(node, "kubelet", &instance, &broker);
    restart_keeps_the_broker(node, "containerd", &instance, &broker);

    // The README's uninstall, as written.
    node.run_readme_block(&readme_block(
        "kubectl delete configurations.dowser.dev,instances.dowser.dev",
    ));
    let crds = node.kubectl_ok(&["get", "crd", "-o", "name"]);
    assert!(!crds.contains("dowser.dev"), "CRDs left: {crds}");
    let namespaces = node.kubectl_ok(&["get", "namespaces", "-o", "name"]);
    assert!(
        !namespaces.contains(NAMESPACE),
        "namespace left: {namespaces}"
    );
    for kind in ["clusterroles", "clusterrolebindings"] {
        let left = node.kubectl_ok(&["get", kind, "-o", "name"]);
        assert!(!left.contains("dowser"), "{kind} left: {left}");
    }
    let rolebindings = node.kubectl_ok(&["get", "rolebindings", "-A", "-o", "name"]);
    assert!(!rolebindings.contains("dowser"), "{rolebindings}");
    wait_for("no broker pod left", MINUTES(2), || {
        let pods = node.kubectl_ok(&[
            "get",
            "pods",
            "-A",
            "-l",
            "dowser.dev/configuration",
            "-o",
            "name",
        ]);
        if pods.trim().is_empty() {
            Ok(())
        } else {
            Err(pods)
        }
    });
    // On the node: no plugin sockets, nothing offered, no container of dowser's images running.
    wait_for("the agent's plugin sockets removed", MINUTES(1), || {
        let sockets = node.plugin_sockets();
        if sockets.is_empty() {
            Ok(())
        } else {
            Err(format!("{sockets:?}"))
        }
    });
    wait_for("no dowser.dev resource allocatable", MINUTES(1), || {
        let node_obj = node.json(&["get", "node", node.name()]);
        let offered: Vec<String> = node_obj["status"]["allocatable"]
            .as_object()
            .map(|a| {
                a.iter()
                    .filter(|(k, v)| k.starts_with("dowser.dev/") && v.as_str() != Some("0"))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            })
            .unwrap_or_default();
        if offered.is_empty() {
            Ok(())
        } else {
            Err(offered.join(", "))
        }
    });
    wait_for(
        "no container of dowser's images running on the node",
        MINUTES(2),
        || {
            let running = running_containers(node);
            let ours: Vec<_> = running
                .iter()
                .filter(|(_, image)| image == DOWSER_IMAGE || image == BROKER_IMAGE)
                .collect();
            if ours.is_empty() {
                Ok(())
            } else {
                Err(format!("{ours:?}"))
            }
        },
    );
    drop(plant);
    node.clean();
}

/// Containers with a running task in the node's containerd: (id, image).
fn running_containers(node: &RealNode) -> Vec<(String, String)> {
    let tasks = node.node_sh("exec", &["ctr", "-n", "k8s.io", "tasks", "ls"]);
    let running: Vec<&str> = tasks
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(2) == Some("RUNNING"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let containers = node.node_sh("exec", &["ctr", "-n", "k8s.io", "containers", "ls"]);
    containers
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .filter(|(id, _)| running.contains(&id.as_str()))
        .collect()
}

const RTU_REGISTERS: [u16; 10] = [7000, 7001, 7002, 7003, 7004, 7005, 7006, 7007, 7008, 7009];

/// Pods of the Configuration the kubelet refused at admission (its Events).
fn admission_refusals(node: &RealNode) -> usize {
    let events = node.json(&[
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        "reason=UnexpectedAdmissionError",
    ]);
    events["items"].as_array().map_or(0, Vec::len)
}

/// A node "rebooted" (kubelet and containerd stopped, every container of the node killed,
/// both started again) with a local device: a Modbus RTU meter on a serial line (a pty of
/// dowser-sim) whose broker opens the line handed to its container. The broker comes back
/// reading the meter, after at most one admission refusal, and stays.
#[test]
fn a_rebooted_node_runs_the_broker_of_its_serial_device_again() {
    let (node, _turn) = node();
    node.clean();
    // Scanning a serial line needs a container that may open the node's device nodes.
    node.run_readme_block(
        "helm install dowser deploy/helm/dowser --namespace dowser-system --create-namespace \
         --set agent.privileged=true --wait --timeout 120s",
    );
    rollout(node);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _enter = runtime.enter();
    let line = dowser_sim::rtu::serve(&dowser_sim::rtu::LineConfig {
        mode: dowser_sim::modbus::Mode::Normal,
        units: vec![dowser_sim::modbus::UnitConfig {
            holding_registers: RTU_REGISTERS.to_vec(),
            ..dowser_sim::modbus::UnitConfig::identified(7, "Acme", "Meter-3", "2.1")
        }],
    })
    .expect("dowser-sim serves a pty");
    let path = line.path.display().to_string();
    node.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!(
            r#"apiVersion: dowser.dev/v1alpha1
kind: Configuration
metadata:
  name: meters
  namespace: default
spec:
  discovery:
    modbus:
      rtu:
        lines: [{{path: "{path}", baudRate: 9600}}]
      unitIds: ["7"]
      requestTimeoutMs: 1000
      intervalSeconds: 2
  capacity: 1
  offlineGracePeriodSeconds: 60
  brokerSpec:
    brokerPodSpec:
      # The pty belongs to root:tty, mode 620.
      securityContext: {{runAsUser: 0}}
      terminationGracePeriodSeconds: 5
      containers:
        - name: broker
          image: {BROKER_IMAGE}
          imagePullPolicy: Never
          volumeMounts: [{{name: pts, mountPath: /dev/pts}}]
      # A pty opens only through its own devpts (a device node made elsewhere gives EIO,
      # unlike a USB adapter's): the host's is mounted, and the device dowser hands the
      # container is what lets it open this one line (the device cgroup).
      volumes: [{{name: pts, hostPath: {{path: /dev/pts}}}}]
"#
        ),
    );
    let expected = format!("holding[0..10]={RTU_REGISTERS:?}");
    let reads = |pod: &str| {
        let out = node.kubectl(&["logs", "-n", "default", pod]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(&expected) {
            Ok(())
        } else {
            Err(format!(
                "no {expected} in the log of {pod}:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let before = wait_for("the meter's broker Running", MINUTES(3), || {
        running_broker(node, "meters")
    });
    wait_for(
        "the broker reading the meter over its serial line",
        MINUTES(1),
        || reads(&before.name),
    );
    let instance = instance_of(node, "meters").unwrap();
    let refused_before = admission_refusals(node);

    node.node_sh("reboot", &[]);

    // Its containers died with the node: the kubelet admits the broker again (the same pod if
    // the agent's plugin registered in time, else a replacement of the pod it refused).
    let after = wait_for(
        "the broker Running again after the reboot",
        MINUTES(4),
        || match running_broker(node, "meters")? {
            b if b.container_id != before.container_id => Ok(b),
            b => Err(format!("still the container from before the reboot: {b:?}")),
        },
    );
    wait_for(
        "the broker reading the meter after the reboot",
        MINUTES(1),
        || reads(&after.name),
    );
    let refused = admission_refusals(node) - refused_before;
    eprintln!("admission refusals of the broker after the reboot: {refused}");
    assert!(
        refused <= 1,
        "the kubelet refused the broker {refused} times after the reboot"
    );
    // No loop: the broker read the meter since, so it stayed admitted; it is the same pod
    // now, and the Instance survived.
    let now = running_broker(node, "meters").expect("the broker still Running");
    assert_eq!(now.uid, after.uid, "the broker was replaced again");
    let instance_now = instance_of(node, "meters").expect("the Instance after the reboot");
    assert_eq!(
        instance_now["metadata"]["uid"], instance["metadata"]["uid"],
        "the Instance was recreated"
    );

    node.kubectl_ok(&[
        "delete",
        "configuration.dowser.dev",
        "meters",
        "-n",
        "default",
    ]);
    wait_pods_gone(node, "the meter's broker gone", "meters");
    node.clean();
    drop(line);
}

/// A pod in `default` that reads the PLC with the example broker, given its device by the
/// ResourceClaim `claim`.
fn claim_reader(name: &str, claim: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
spec:
  terminationGracePeriodSeconds: 1
  resourceClaims:
    - name: plc
      resourceClaimName: {claim}
  containers:
    - name: reader
      image: {BROKER_IMAGE}
      imagePullPolicy: Never
      resources:
        claims: [{{name: plc}}]
"#
    )
}

/// The README's example claim with another name and CEL expression.
fn claim_like_readme(readme_claim: &str, name: &str, expression: &str) -> String {
    readme_claim
        .replace("name: acme-plc", &format!("name: {name}"))
        .replace(
            r#"device.attributes["dowser.dev"].vendorName == "Acme Automation""#,
            expression,
        )
}

fn pod_of(node: &RealNode, name: &str) -> Value {
    node.json(&["get", "pod", "-n", "default", name])
}

/// A Running pod's container id and restart count.
fn running(node: &RealNode, name: &str) -> Result<(String, u64), String> {
    let pod = pod_of(node, name);
    let status = &pod["status"]["containerStatuses"][0];
    if pod["status"]["phase"] != "Running" || status["ready"] != true {
        return Err(format!("{name}: {}", pod["status"]));
    }
    Ok((
        status["containerID"].as_str().unwrap_or("").to_string(),
        status["restartCount"].as_u64().unwrap_or(0),
    ))
}

/// The claims that have a CDI spec of driver dowser.dev on the node (their uids).
fn cdi_specs(node: &RealNode) -> Vec<String> {
    let dir = PathBuf::from(node.var("NODE_1_KUBELET_DIR"))
        .parent()
        .unwrap()
        .join("cdi-run");
    dowser::dra::cdi::claims_with_specs(&dir)
}

fn claim_uid(node: &RealNode, name: &str) -> String {
    node.json(&["get", "resourceclaim", "-n", "default", name])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The scheduler's reason for not placing a pod, once it has given one.
fn unschedulable(node: &RealNode, name: &str) -> Result<String, String> {
    let pod = pod_of(node, name);
    let conditions = pod["status"]["conditions"].as_array().cloned();
    conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
        .and_then(|c| c["message"].as_str().map(String::from))
        .ok_or_else(|| format!("{name}: {}", pod["status"]))
}

fn dowser_slices(node: &RealNode) -> Vec<Value> {
    node.json(&["get", "resourceslices"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s["spec"]["driver"] == "dowser.dev")
        .collect()
}

/// DRA on the real node with the control plane's scheduler: the README's DRA install, a
/// device published with its attributes, the README's claim by vendor name allocated one
/// of its devices and its pod reading the PLC with the environment of the claim's CDI
/// spec; capacity 2 is two claims and no third; a claim that matches nothing waits with the
/// scheduler's reason; kubelet and agent restarts keep the pods and specs, and a restarted
/// agent rewrites no slice; a released claim's spec goes and the waiting claim runs; a
/// Configuration's broker gets its device through a claim from its Instance's template and
/// reads the PLC; the device going removes it from the slices and the broker with it; the
/// README's uninstall leaves no slice, no CDI spec and no DeviceClass.
#[test]
fn dra_claims_by_attribute_run_pods_with_the_device_from_cdi() {
    let (node, _turn) = node();
    node.clean();
    let install = common::readme::section_blocks("Dynamic Resource Allocation", "sh");
    let readme_claim = common::readme::section_blocks("Dynamic Resource Allocation", "yaml")
        .into_iter()
        .find(|b| b.contains("kind: ResourceClaim"))
        .expect("the README's DRA section has an example claim");
    node.run_readme_block(&install[0]);
    rollout(node);

    let plant = Plant::start(node.host_ip(), &REGISTERS);
    let config = configuration("plc-dra", &plant);
    let config = config
        .split("  brokerSpec:")
        .next()
        .unwrap()
        .replace("capacity: 1", "capacity: 2")
        .replace(
            &format!("offlineGracePeriodSeconds: {GRACE_SECONDS}"),
            "offlineGracePeriodSeconds: 4",
        );
    node.kubectl_stdin(&["apply", "-f", "-"], &config);
    let instance = wait_for("an Instance for the simulated PLC", MINUTES(2), || {
        instance_of(node, "plc-dra")
    });
    let instance = instance["metadata"]["name"].as_str().unwrap().to_string();

    // Published: two devices (capacity 2) in the pool of the shared device (Modbus TCP is
    // reachable from every node that can route to it), for the nodes that see it, with the
    // PLC's identity.
    let devices = wait_for("the PLC's devices in a ResourceSlice", MINUTES(1), || {
        let slices = dowser_slices(node);
        let devices: Vec<Value> =
            slices
                .iter()
                .filter(|s| {
                    s["spec"]["pool"]["name"] == format!("shared/default/{instance}").as_str()
                        && s["spec"]["nodeSelector"]["nodeSelectorTerms"][0]["matchExpressions"][0]
                            ["values"]
                            == serde_json::json!([node.name()])
                })
                .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
                .filter(|d| d["attributes"]["instance"]["string"] == instance.as_str())
                .collect();
        if devices.len() == 2 {
            Ok(devices)
        } else {
            Err(format!("{slices:?}"))
        }
    });
    let attributes = &devices[0]["attributes"];
    assert_eq!(attributes["vendorName"]["string"], "Acme Automation");
    assert_eq!(attributes["productCode"]["string"], "PLC-3100");
    assert_eq!(attributes["port"]["int"], plant.addr.port());
    assert_eq!(attributes["handler"]["string"], "modbus");
    assert_eq!(attributes["configuration"]["string"], "plc-dra");

    // The README's claim and three more, each with a pod: the scheduler allocates the
    // PLC's two devices (capacity 2) to two claims, and no third; a claim that matches
    // nothing waits with the scheduler's reason.
    let by_vendor = r#"device.attributes["dowser.dev"].vendorName == "Acme Automation""#;
    node.kubectl_stdin(&["apply", "-f", "-"], &readme_claim);
    node.kubectl_stdin(&["apply", "-f", "-"], &claim_reader("reader-1", "acme-plc"));
    for (claim, pod) in [("acme-plc-2", "reader-2"), ("acme-plc-3", "reader-3")] {
        node.kubectl_stdin(
            &["apply", "-f", "-"],
            &claim_like_readme(&readme_claim, claim, by_vendor),
        );
        node.kubectl_stdin(&["apply", "-f", "-"], &claim_reader(pod, claim));
        // One at a time, so that the third is the one left without a device.
        if pod == "reader-2" {
            for pod in ["reader-1", "reader-2"] {
                wait_for(&format!("{pod} scheduled"), MINUTES(1), || {
                    match pod_of(node, pod)["spec"]["nodeName"].as_str() {
                        Some(n) if n == node.name() => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                });
            }
        }
    }
    node.kubectl_stdin(
        &["apply", "-f", "-"],
        &claim_like_readme(
            &readme_claim,
            "nobodys-plc",
            r#"device.attributes["dowser.dev"].vendorName == "Nobody Industries""#,
        ),
    );
    node.kubectl_stdin(
        &["apply", "-f", "-"],
        &claim_reader("reader-none", "nobodys-plc"),
    );
    let pool = format!("shared/default/{instance}");
    let mut given = Vec::new();
    for claim in ["acme-plc", "acme-plc-2"] {
        let result = wait_for(&format!("{claim} allocated"), MINUTES(1), || {
            let c = node.json(&["get", "resourceclaim", "-n", "default", claim]);
            let result = c["status"]["allocation"]["devices"]["results"][0].clone();
            if result["driver"] == "dowser.dev" {
                Ok(result)
            } else {
                Err(format!("{}", c["status"]))
            }
        });
        assert_eq!(result["pool"], pool.as_str(), "{result}");
        given.push(result["device"].as_str().unwrap().to_string());
    }
    given.sort();
    assert_eq!(
        given,
        [format!("{instance}-0"), format!("{instance}-1")],
        "each slot to one claim"
    );
    for pod in ["reader-3", "reader-none"] {
        let why = wait_for(
            &format!("the scheduler's reason for {pod}"),
            MINUTES(1),
            || unschedulable(node, pod),
        );
        assert!(why.contains("cannot allocate all claims"), "{pod}: {why}");
    }
    let unallocated = node.json(&["get", "resourceclaim", "-n", "default", "acme-plc-3"]);
    assert_eq!(unallocated["status"]["allocation"], Value::Null);

    // The two allocated claims' pods run the example broker, which reads the PLC at the
    // address it finds in its environment: the CDI spec the agent wrote when the kubelet
    // prepared the claim.
    let first = wait_for("reader-1 Running", MINUTES(2), || running(node, "reader-1"));
    let second = wait_for("reader-2 Running", MINUTES(2), || running(node, "reader-2"));
    for reader in ["reader-1", "reader-2"] {
        reads_the_plc(node, reader, &plant);
    }
    let uids = [claim_uid(node, "acme-plc"), claim_uid(node, "acme-plc-2")];
    let mut prepared = uids.to_vec();
    prepared.sort();
    assert_eq!(cdi_specs(node), prepared, "one CDI spec per prepared claim");

    // The kubelet restarts (it wipes the node's slices as it starts), then the agent: the
    // pods keep their containers and the specs stay; a restarted agent rewrites no slice.
    node.node_sh("stop", &["kubelet"]);
    node.node_sh("start", &["kubelet"]);
    let versions = |node: &RealNode| -> Vec<String> {
        dowser_slices(node)
            .iter()
            .map(|s| {
                s["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let before = versions(node);
    node.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "delete",
        "pod",
        "-l",
        "app.kubernetes.io/component=agent",
    ]);
    rollout(node);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        versions(node),
        before,
        "a restarted agent rewrote its slices"
    );
    assert_eq!(running(node, "reader-1"), Ok(first));
    assert_eq!(running(node, "reader-2"), Ok(second));
    assert_eq!(
        cdi_specs(node),
        prepared,
        "the restarts kept the claims' specs"
    );
    assert!(unschedulable(node, "reader-3").is_ok(), "capacity 2 holds");

    // A claim released: its spec goes, and the waiting claim gets the device and runs.
    node.kubectl_ok(&["delete", "pod", "-n", "default", "reader-2", "--wait=true"]);
    node.kubectl_ok(&[
        "delete",
        "resourceclaim",
        "-n",
        "default",
        "acme-plc-2",
        "--wait=true",
    ]);
    wait_for("the released claim's CDI spec removed", MINUTES(1), || {
        let specs = cdi_specs(node);
        if specs.contains(&uids[1]) {
            Err(format!("{specs:?}"))
        } else {
            Ok(())
        }
    });
    wait_for("reader-3 Running on the freed device", MINUTES(3), || {
        running(node, "reader-3")
    });

    // A Configuration with a broker: the controller gives the broker a claim from the
    // Instance's template, and it reads the PLC.
    let with_broker = configuration("plc-dra-broker", &plant).replace(
        &format!("offlineGracePeriodSeconds: {GRACE_SECONDS}"),
        "offlineGracePeriodSeconds: 4",
    );
    node.kubectl_stdin(&["apply", "-f", "-"], &with_broker);
    let broker = wait_for("the DRA broker Running", MINUTES(3), || {
        running_broker(node, "plc-dra-broker")
    });
    let pod = pod_of(node, &broker.name);
    let broker_instance = pod["metadata"]["labels"]["dowser.dev/instance"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        pod["spec"]["resourceClaims"][0]["resourceClaimTemplateName"],
        broker_instance.as_str(),
        "{pod}"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"],
        Value::Null,
        "no extended resource"
    );
    reads_the_plc(node, &broker.name, &plant);

    // The device goes: after the grace period its devices leave the slices, and the
    // broker goes with its Instance.
    drop(plant);
    wait_pods_gone(
        node,
        "the DRA broker removed with its device",
        "plc-dra-broker",
    );
    wait_for("the gone PLC's devices unpublished", MINUTES(2), || {
        let left: Vec<Value> = dowser_slices(node)
            .iter()
            .flat_map(|s| s["spec"]["devices"].as_array().cloned().unwrap_or_default())
            .filter(|d| d["attributes"]["instance"]["string"] == instance.as_str())
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });

    // Uninstall: pods and claims first, then the README's uninstall for deploy-dra/.
    node.kubectl_ok(&[
        "delete",
        "pods",
        "-n",
        "default",
        "reader-1",
        "reader-3",
        "reader-none",
        "--grace-period=1",
        "--wait=true",
    ]);
    node.kubectl_ok(&[
        "delete",
        "resourceclaims",
        "-n",
        "default",
        "--all",
        "--wait=true",
    ]);
    node.run_readme_block(
        &readme_block("kubectl delete configurations.dowser.dev,instances.dowser.dev")
            .replace("kubectl delete -k deploy/", "kubectl delete -k deploy-dra/"),
    );
    wait_for("no dowser.dev ResourceSlice left", MINUTES(2), || {
        let left = dowser_slices(node);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    wait_for("no CDI spec left", MINUTES(1), || {
        let specs = cdi_specs(node);
        if specs.is_empty() {
            Ok(())
        } else {
            Err(format!("{specs:?}"))
        }
    });
    let classes = node.kubectl_ok(&["get", "deviceclasses", "-o", "name"]);
    assert!(!classes.contains("dowser.dev"), "{classes}");
    node.clean();
}
