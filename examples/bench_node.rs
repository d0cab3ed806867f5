//! The real-node part of `scripts/bench`: dowser installed with the README's Helm command on a
//! real kubelet + containerd node (`tests/node/up.sh`, one node), the simulated plant
//! (dowser-sim, in this process) on the host's address on the node network.
//!
//! - Image sizes as the kubelet reports them (the Node's `status.images`).
//! - Agent and controller memory as the kubelet sees it: the container's working set from its
//!   cgroup (usage − inactive_file, as cAdvisor computes it), idle with the `deploy/examples/`
//!   Configurations, then with 100 more Modbus devices.
//! - Device appears → `dowser.dev/<instance>` allocatable on the real Node, and → the broker pod
//!   (the example Modbus broker) Running, p50 / p95 over `--reps` devices, once with the
//!   kubelet's default `nodeStatusUpdateFrequency` (10 s) and once with 1 s: one node boot each.
//! - The same with the agents in DRA mode (`--set agent.mode=dra`, the default 10 s status
//!   period): device appears → its device in a ResourceSlice, and → the broker Running, whose
//!   claim the scheduler allocates from the slice; compared with the device-plugin run at
//!   10 s. `--runs` picks runs (`plugin-10s,plugin-1s,dra`, the default).
//!
//! Needs root. Environment: DOWSER_NODE_IMAGES and DOWSER_PAUSE_IMAGE (what
//! `tests/node/build-images.sh` printed), and what `tests/node/up.sh` takes (DOWSER_K8S_BIN,
//! DOWSER_NODE_BIN). Stops its nodes with `tests/node/down.sh`, also when it fails.
//! Writes Markdown table rows (benchmark | dowser | peer | ratio) to `--rows`.

mod support;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dowser::naming::{instance_name, instance_resource};
use dowser_sim::modbus::{ListenerConfig, RunningListener, Spread, UnitConfig, serve};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Pod},
    resource::v1::ResourceSlice,
};
use kube::{
    Api, Client, Config,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::Value;
use support::env;

const DOWSER_IMAGE: &str = "ghcr.io/dowser-dev/dowser:0.1.0";
const BROKER_IMAGE: &str = "ghcr.io/dowser-dev/modbus-broker:0.1.0";
const NAMESPACE: &str = "dowser-system";
/// Ports one Modbus Configuration may list (the CRD's maxItems).
const MAX_PORTS: usize = 16;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A node booted by `tests/node/up.sh`; dropping it runs `tests/node/down.sh`.
struct RealNode {
    state: PathBuf,
    env: BTreeMap<String, String>,
}

impl RealNode {
    fn up(state: &Path, status_frequency: &str) -> RealNode {
        let _ = std::fs::remove_dir_all(state);
        eprintln!("  booting a real node (nodeStatusUpdateFrequency {status_frequency})");
        let t = Instant::now();
        let ok = Command::new(repo().join("tests/node/up.sh"))
            .arg(state)
            .env("DOWSER_NODE_COUNT", "1")
            .env("DOWSER_NODE_STATUS_UPDATE_FREQUENCY", status_frequency)
            .env("DOWSER_NODE_IMAGES", env("DOWSER_NODE_IMAGES"))
            .env("DOWSER_PAUSE_IMAGE", env("DOWSER_PAUSE_IMAGE"))
            .stdout(Stdio::null())
            .status()
            .expect("tests/node/up.sh")
            .success();
        // down.sh also cleans up after a failed boot.
        let mut node = RealNode {
            state: state.to_path_buf(),
            env: BTreeMap::new(),
        };
        assert!(ok, "tests/node/up.sh {} failed", state.display());
        node.env = std::fs::read_to_string(state.join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        eprintln!("  node Ready in {:.0} s", t.elapsed().as_secs_f64());
        node
    }

    fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from {}/env", self.state.display()))
    }

    fn name(&self) -> &str {
        self.var("NODE_1_NAME")
    }

    fn host_ip(&self) -> IpAddr {
        self.var("NODE_HOST_IP").parse().unwrap()
    }

    async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.var("KUBECONFIG")).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut child = Command::new(self.var("KUBECTL"))
            .args(args)
            .env("KUBECONFIG", self.var("KUBECONFIG"))
            .current_dir(repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, yaml: &str) {
        self.kubectl(&["apply", "-f", "-"], Some(yaml));
    }

    /// The README's Helm install, run by bash as written (with `extra` appended), kubectl and
    /// helm on PATH.
    fn helm_install(&self, extra: &str) {
        let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
        let block = readme
            .split("\n## ")
            .find(|s| s.starts_with("Install\n"))
            .expect("the README has an Install section")
            .split("```sh\n")
            .skip(1)
            .map(|b| b.split("```").next().unwrap())
            .find(|b| b.starts_with("helm install"))
            .expect("the README's Install section has a helm install block");
        let block = format!("{} {extra}\n", block.trim_end());
        let block = block.as_str();
        let bins = [self.var("KUBECTL"), self.var("HELM")]
            .iter()
            .map(|b| Path::new(b).parent().unwrap().display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let t = Instant::now();
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .current_dir(repo())
            .env("PATH", format!("{bins}:{}", env("PATH")))
            .env("KUBECONFIG", self.var("KUBECONFIG"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{block}failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "  dowser installed by the README's helm command in {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }

    /// The node's own cgroup (`/dowser-node-<slot>-1`; `tests/node/README.md`).
    fn cgroup(&self) -> String {
        let net = std::fs::read_to_string(self.state.join("net")).unwrap();
        let slot = net
            .lines()
            .find_map(|l| l.strip_prefix("SLOT="))
            .expect("SLOT in <state>/net");
        format!("/dowser-node-{slot}-1")
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/node/down.sh"))
            .arg(&self.state)
            .stdout(Stdio::null())
            .status();
    }
}

/// The working set of a container as cAdvisor (and so the kubelet) computes it: memory usage of
/// its cgroup minus inactive file pages. cgroup v1: `memory.usage_in_bytes` and
/// `total_inactive_file` of `memory.stat`; v2: `memory.current` and `inactive_file`.
fn working_set(container_cgroup: &Path) -> u64 {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let read = |f: &str| {
        std::fs::read_to_string(container_cgroup.join(f))
            .unwrap_or_else(|e| panic!("{}/{f}: {e}", container_cgroup.display()))
    };
    let usage: u64 = read(if v2 {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    })
    .trim()
    .parse()
    .unwrap();
    let key = if v2 {
        "inactive_file"
    } else {
        "total_inactive_file"
    };
    let inactive: u64 = read("memory.stat")
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0);
    usage.saturating_sub(inactive)
}

/// The memory cgroup of a container: `<memory hierarchy><node cgroup>/kubepods/[qos/]pod<uid>/<id>`
/// (the kubelet's cgroupfs layout), found by the container's id.
fn container_cgroup(node_cgroup: &str, container_id: &str) -> PathBuf {
    let root = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/memory")
    };
    let id = container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id);
    let kubepods = root
        .join(node_cgroup.trim_start_matches('/'))
        .join("kubepods");
    fn find(dir: &Path, name: &str, depth: u32) -> Option<PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if entry.file_name() == name {
                return Some(path);
            }
            if depth > 0
                && let Some(found) = find(&path, name, depth - 1)
            {
                return Some(found);
            }
        }
        None
    }
    find(&kubepods, id, 3)
        .unwrap_or_else(|| panic!("no cgroup of container {id} under {}", kubepods.display()))
}

/// A dowser component's container: its pod, name and cgroup.
struct Component {
    pod: String,
    container: String,
    cgroup: PathBuf,
}

async fn component(node: &RealNode, pods: &Api<Pod>, pod: &str) -> Component {
    let pod = pods.get(pod).await.unwrap();
    let status = &pod.status.unwrap().container_statuses.unwrap()[0];
    Component {
        pod: pod.metadata.name.unwrap(),
        container: status.name.clone(),
        cgroup: container_cgroup(&node.cgroup(), status.container_id.as_deref().unwrap()),
    }
}

/// The agent's pod and the controller's leader (the holder of its Lease).
async fn components(node: &RealNode, client: &Client) -> (Component, Component) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let agent = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=agent"))
        .await
        .unwrap()
        .items
        .remove(0);
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let t = Instant::now();
    let leader = loop {
        if let Some(holder) = leases
            .get_opt("dowser-controller")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
        {
            break holder;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no controller leader"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    (
        component(node, &pods, agent.metadata.name.as_deref().unwrap()).await,
        component(node, &pods, &leader).await,
    )
}

/// The kubelet's own figure for a container (`/stats/summary`, `workingSetBytes`), if it has one.
fn kubelet_working_set(node: &RealNode, c: &Component) -> Option<u64> {
    let out = Command::new(node.var("KUBECTL"))
        .args([
            "get",
            "--raw",
            &format!("/api/v1/nodes/{}/proxy/stats/summary", node.name()),
        ])
        .env("KUBECONFIG", node.var("KUBECONFIG"))
        .output()
        .ok()?;
    let summary: Value = serde_json::from_slice(&out.stdout).ok()?;
    summary["pods"]
        .as_array()?
        .iter()
        .find(|p| p["podRef"]["name"] == c.pod.as_str())?["containers"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == c.container.as_str())?["memory"]["workingSetBytes"]
        .as_u64()
}

/// Samples both working sets once a second for `window`; returns the row's text.
async fn idle_memory(node: &RealNode, agent: &Component, controller: &Component) -> String {
    const WINDOW: usize = 30;
    let (mut a, mut c) = (Vec::new(), Vec::new());
    for _ in 0..WINDOW {
        tokio::time::sleep(Duration::from_secs(1)).await;
        a.push(working_set(&agent.cgroup));
        c.push(working_set(&controller.cgroup));
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    let figure = |who: &str, v: &[u64], comp: &Component| {
        let kubelet = kubelet_working_set(node, comp)
            .map(|k| format!(", kubelet's summary API {:.1}", mib(k)))
            .unwrap_or_default();
        format!(
            "{who} {:.1} (max {:.1}{kubelet})",
            mib(*v.last().unwrap()),
            mib(*v.iter().max().unwrap())
        )
    };
    format!(
        "{}; {}",
        figure("agent", &a, agent),
        figure("controller", &c, controller)
    )
}

/// `count` free TCP ports on `ip` (bound once, released).
fn free_ports(ip: IpAddr, count: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind(SocketAddr::new(ip, 0)).unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let t = Instant::now();
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) => assert!(
                t.elapsed() < limit,
                "{what}: not within {} s; last seen: {e}",
                limit.as_secs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn allocatable(node: &Node, resource: &str) -> Option<String> {
    node.status
        .as_ref()?
        .allocatable
        .as_ref()?
        .get(resource)
        .map(|q| q.0.clone())
}

fn mib(bytes: i64) -> String {
    format!("{:.1}", bytes as f64 / 1048576.0)
}

/// Image sizes as the kubelet reports them in the Node's `status.images`.
fn image_sizes(node: &Node) -> String {
    let images = node
        .status
        .as_ref()
        .and_then(|s| s.images.clone())
        .unwrap_or_default();
    let size = |name: &str| {
        images
            .iter()
            .find(|i| i.names.iter().flatten().any(|n| n == name))
            .and_then(|i| i.size_bytes)
            .map(mib)
            .unwrap_or_else(|| panic!("{name} not in the Node's status.images"))
    };
    format!(
        "{} / {} / {}",
        size(DOWSER_IMAGE),
        size(BROKER_IMAGE),
        size(&env("DOWSER_PAUSE_IMAGE"))
    )
}

/// Memory idle with deploy/examples, then with 100 more devices; image sizes.
async fn footprint(node: &RealNode, client: &Client, out: &mut Vec<String>) {
    let nodes: Api<Node> = Api::all(client.clone());
    out.push(format!(
        "| real node: image size, dowser / modbus broker / pause (MiB, as the kubelet reports them in the Node's status.images: uncompressed layers) | {} | - | - |",
        image_sizes(&nodes.get(node.name()).await.unwrap())
    ));

    node.kubectl(&["apply", "-f", "deploy/examples/"], None);
    let (agent, controller) = components(node, client).await;
    // Each example Configuration has run its first discovery rounds.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let examples = idle_memory(node, &agent, &controller).await;
    out.push(format!(
        "| real node: working set idle, 6 example Configurations (MiB; container cgroup usage − inactive_file, last / max of 30 samples 1 s apart over 30 s idle) | {examples} | Akri agent / controller limits 79 / 100 Mi | - |"
    ));

    // 100 devices: 10 simulated PLCs (ports on the host's node-network address) × unit ids
    // 1-10, polled every 30 s, no broker. Each Instance is a device plugin of the agent that
    // the real kubelet connects to.
    let ip = node.host_ip();
    let mut fleet = ListenerConfig::device(
        SocketAddr::new(ip, 0),
        (1..=10)
            .map(|u| UnitConfig::identified(u, "Acme", "PLC", "1.0"))
            .collect(),
    );
    fleet.count = 10;
    fleet.spread = Spread::Ports;
    let fleet = serve(&fleet).await.unwrap();
    let ports: Vec<String> = fleet.iter().map(|l| l.addr.port().to_string()).collect();
    node.apply(&format!(
        "apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {{name: hundred, namespace: default}}\nspec:\n  discovery: {{modbus: {{targets: [\"{ip}/32\"], ports: [{}], unitIds: [\"1-10\"], intervalSeconds: 30}}}}\n",
        ports.join(", ")
    ));
    let t = Instant::now();
    wait_until(
        "100 dowser.dev resources allocatable on the node",
        Duration::from_secs(180),
        || async {
            let n = nodes.get(node.name()).await.map_err(|e| e.to_string())?;
            let offered = n
                .status
                .and_then(|s| s.allocatable)
                .unwrap_or_default()
                .iter()
                .filter(|(k, v)| k.starts_with("dowser.dev/default_hundred-") && v.0 == "1")
                .count();
            if offered == 100 {
                Ok(())
            } else {
                Err(format!("{offered} allocatable"))
            }
        },
    )
    .await;
    eprintln!(
        "  100 devices allocatable on the node {:.1} s after their Configuration",
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let hundred = idle_memory(node, &agent, &controller).await;
    out.push(format!(
        "| real node: same, + 100 Modbus devices (100 Instances, 100 device plugins registered with the kubelet, no brokers) | {hundred} | - | - |"
    ));

    node.kubectl(
        &[
            "delete",
            "configurations.dowser.dev",
            "--all",
            "-n",
            "default",
        ],
        None,
    );
    drop(fleet);
    wait_until("the Instances gone", Duration::from_secs(120), || async {
        let left = node.kubectl(&["get", "instances.dowser.dev", "-A", "-o", "name"], None);
        if left.trim().is_empty() {
            Ok(())
        } else {
            Err(format!("{} Instances", left.lines().count()))
        }
    })
    .await;
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// `reps` devices appear one after the other; each one's time to allocatable and to a Running
/// broker. Returns the two rows.
async fn latency(
    node: &RealNode,
    client: &Client,
    reps: usize,
    (period, status_period): (&str, Duration),
    dra: bool,
) -> ([String; 2], Vec<f64>) {
    let ip = node.host_ip();
    let ports = free_ports(ip, reps);
    // One Configuration per 16 ports (the most one lists), all with the example broker.
    let configs: Vec<(String, &[u16])> = ports
        .chunks(MAX_PORTS)
        .enumerate()
        .map(|(i, chunk)| (format!("e2e-{i}"), chunk))
        .collect();
    for (name, chunk) in &configs {
        let list: Vec<String> = chunk.iter().map(u16::to_string).collect();
        node.apply(&format!(
            r#"apiVersion: dowser.dev/v1alpha1
kind: Configuration
metadata: {{name: {name}, namespace: default}}
spec:
  discovery: {{modbus: {{targets: ["{ip}/32"], ports: [{}], unitIds: ["1"], intervalSeconds: 1, connectTimeoutMs: 200, requestTimeoutMs: 300}}}}
  offlineGracePeriodSeconds: 1
  brokerSpec:
    brokerPodSpec:
      terminationGracePeriodSeconds: 1
      containers: [{{name: broker, image: "{BROKER_IMAGE}", imagePullPolicy: Never}}]
"#,
            list.join(", ")
        ));
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (mut to_allocatable, mut to_running) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let (config, _) = &configs[rep / MAX_PORTS];
        let addr = SocketAddr::new(ip, ports[rep]);
        let instance = instance_name(config, &format!("modbus+tcp://{addr}/1"), None);
        let resource = instance_resource("default", &instance);
        let label = format!("dowser.dev/configuration={config}");
        // Devices appear at any moment of the agent's polling cycle and of the kubelet's
        // status period: the previous run ends in step with both (a status post made its
        // resource allocatable), so each run first waits a fraction of the period that steps
        // evenly through it (golden-ratio stride), or the runs would all start at one phase.
        let phase = (rep as f64 * 0.618_034).fract();
        tokio::time::sleep(status_period.mul_f64(phase)).await;
        let t0 = Instant::now();
        let device: Vec<RunningListener> = serve(&ListenerConfig::device(
            addr,
            vec![UnitConfig::identified(1, "Acme", "PLC", "1.0")],
        ))
        .await
        .unwrap();
        let mut seen_allocatable = None;
        let running = loop {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "rep {rep}: no Running broker in 120 s"
            );
            let offered = if seen_allocatable.is_some() {
                false
            } else if dra {
                published(&slices, &instance).await
            } else {
                allocatable(&nodes.get(node.name()).await.unwrap(), &resource).as_deref()
                    == Some("1")
            };
            if offered {
                seen_allocatable = Some(t0.elapsed());
            }
            let running = pods
                .list(&ListParams::default().labels(&label))
                .await
                .unwrap()
                .items
                .iter()
                .any(|p| {
                    p.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with(&instance))
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                });
            if running {
                break t0.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let to_alloc = seen_allocatable.unwrap_or(running).as_secs_f64();
        eprintln!(
            "    rep {rep}: allocatable {to_alloc:.2} s, broker Running {:.2} s",
            running.as_secs_f64()
        );
        to_allocatable.push(to_alloc);
        to_running.push(running.as_secs_f64());
        drop(device);
        // The broker gone before the next device, so runs do not overlap.
        wait_until(
            &format!("the broker of rep {rep} gone"),
            Duration::from_secs(120),
            || async {
                let n = pods
                    .list(&ListParams::default().labels(&label))
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .len();
                if n == 0 {
                    Ok(())
                } else {
                    Err(format!("{n} broker pods"))
                }
            },
        )
        .await;
    }
    node.kubectl(
        &[
            "delete",
            "configurations.dowser.dev",
            "--all",
            "-n",
            "default",
        ],
        None,
    );
    let conditions = format!(
        "kubelet nodeStatusUpdateFrequency {period}; devices appear at phases spread evenly over it; Modbus polled every 1 s; example Modbus broker"
    );
    let (offered, mode) = if dra {
        ("its device in a ResourceSlice", "DRA")
    } else {
        (
            "`dowser.dev/<instance>` allocatable on the Node",
            "device plugins",
        )
    };
    let rows = [
        format!(
            "| real node ({mode}): device appears → {offered}, p50 / p95 of {reps} (s; {conditions}) | {:.2} / {:.2} | - | - |",
            percentile(&mut to_allocatable, 0.5),
            percentile(&mut to_allocatable, 0.95)
        ),
        format!(
            "| real node ({mode}): device appears → broker pod Running, p50 / p95 of {reps} (s; {conditions}) | {:.2} / {:.2} | - | - |",
            percentile(&mut to_running, 0.5),
            percentile(&mut to_running, 0.95)
        ),
    ];
    (rows, to_running)
}

/// Whether a device of the Instance `instance` is in a ResourceSlice of driver dowser.dev.
async fn published(slices: &Api<ResourceSlice>, instance: &str) -> bool {
    let list = slices
        .list(&ListParams::default().fields("spec.driver=dowser.dev"))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.iter()
        .flat_map(|s| s.spec.devices.iter().flatten())
        .any(|d| {
            d.attributes
                .as_ref()
                .and_then(|a| a.get("instance"))
                .and_then(|a| a.string.as_deref())
                == Some(instance)
        })
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut work, mut rows, mut reps) = (
        PathBuf::from("target/bench/node"),
        PathBuf::from("target/bench/node.rows"),
        20,
    );
    let mut runs = "plugin-10s,plugin-1s,dra".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--work" => work = args.next().unwrap().into(),
            "--rows" => rows = args.next().unwrap().into(),
            "--reps" => reps = args.next().unwrap().parse().unwrap(),
            "--runs" => runs = args.next().unwrap(),
            other => panic!("unknown argument {other}"),
        }
    }
    std::fs::create_dir_all(&work).unwrap();
    let work = work.canonicalize().unwrap();
    let mut out = Vec::new();
    let mut latency_rows = Vec::new();
    let mut running: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for run in runs.split(',') {
        let (period, secs, dra) = match run {
            "plugin-10s" => ("10s", 10, false),
            "plugin-1s" => ("1s", 1, false),
            "dra" => ("10s", 10, true),
            other => panic!("unknown run {other} (plugin-10s, plugin-1s, dra)"),
        };
        let node = RealNode::up(&work.join(format!("node-{run}")), period);
        let client = node.client().await;
        node.helm_install(if dra { "--set agent.mode=dra" } else { "" });
        if run == "plugin-10s" {
            footprint(&node, &client, &mut out).await;
        }
        let (rows, times) = latency(
            &node,
            &client,
            reps,
            (period, Duration::from_secs(secs)),
            dra,
        )
        .await;
        latency_rows.extend(rows);
        running.insert(run, times);
        drop(node);
    }
    if let (Some(plugin), Some(dra)) = (running.get("plugin-10s"), running.get("dra")) {
        let (mut plugin, mut dra) = (plugin.clone(), dra.clone());
        let (p50, d50) = (percentile(&mut plugin, 0.5), percentile(&mut dra, 0.5));
        latency_rows.push(format!(
            "| real node: device appears → broker pod Running, p50 / p95 (s; kubelet status period 10 s), DRA (dowser) vs device plugins (peer) | {:.2} / {:.2} | {:.2} / {:.2} | {:.1}× |",
            d50,
            percentile(&mut dra, 0.95),
            p50,
            percentile(&mut plugin, 0.95),
            p50 / d50
        ));
    }
    out.extend(latency_rows);
    std::fs::write(&rows, out.join("\n") + "\n").unwrap();
}
