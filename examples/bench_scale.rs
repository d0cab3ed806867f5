//! The scale part of `scripts/bench`, on the local control plane the script has booted
//! (KUBECONFIG, CRDs applied, apiserver audit log at DOWSER_AUDIT_LOG): 1,000 simulated
//! Modbus devices on one fake node, then nine more fake nodes with 1,000 devices each
//! (10,000 Instances), each node's devices picked by its own Configuration's nodeSelector.
//! Runs the release binaries given by DOWSER_BIN and DOWSER_FAKE_KUBELET; the devices are
//! served in this process. No broker pods: the rows measure discovery and bookkeeping.
//!
//! With `--mode dra` the agents publish ResourceSlices instead of registering device plugins
//! (the fake kubelet takes no part), and a device counts as offered once it is in a slice
//! rather than allocatable on the Node.
//!
//! With `--churn` the first node's devices then go (their simulators stop): the rows say how
//! long until every Instance is gone and nothing is offered, and the size of the Node object
//! that is left — device plugins leave one capacity entry per device for good (the kubelet
//! sets a removed plugin's capacity to 0 and never deletes it), DRA none.
//!
//! With `--agent-memory-limit MiB` the first node's agent runs in a memory cgroup of its own
//! (a child of this process's; cgroup v1 or v2) with that hard limit, as the DaemonSet's
//! `resources.limits.memory` puts it in one: a row says its peak usage and whether the kernel
//! had to reclaim or kill to keep it under the limit.
//!
//! Writes Markdown table rows (benchmark | dowser | peer | ratio) to `--rows`.
//! Usage: bench_scale [--work DIR] [--rows FILE] [--nodes N] [--devices-per-node N]
//!        [--mode devicePlugin|dra] [--churn] [--agent-memory-limit MiB]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use dowser::crd::{CONFIGURATION_LABEL, Instance};
use dowser_sim::modbus::{ListenerConfig, RunningListener, UnitConfig, serve};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node, resource::v1::ResourceSlice};
use kube::{Api, Client, api::ListParams};
use support::{Proc, apply, env, status_kib};

/// Units per simulated device address, at least; addresses per node = devices / units.
const UNITS: u32 = 4;
/// Addresses per node at most (one /24 of loopback): more devices get more units each.
const ADDRESSES: u32 = 250;

/// Modbus units per address for `devices` on a node.
fn units(devices: u32) -> u32 {
    devices.div_ceil(ADDRESSES).max(UNITS)
}
const CONVERGE_LIMIT: Duration = Duration::from_secs(300);
/// How long the requests of a converged, unchanging cluster are counted (per minute in the row).
const IDLE_SECONDS: u64 = 30;

/// CPU seconds (user + system) each part of the run has used so far, from every process's
/// `/proc/<pid>/stat`: the control plane by command name, dowser by its subcommand, the
/// simulated devices being this process.
fn cpu_seconds() -> std::collections::BTreeMap<&'static str, f64> {
    // SAFETY: sysconf reads a constant of the C library.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let own = std::process::id().to_string();
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let program = args[0].rsplit('/').next().unwrap_or_default();
        let part = match program {
            _ if pid == own => "devices",
            "kube-apiserver" => "apiserver",
            "etcd" => "etcd",
            "kube-scheduler" | "kube-controller-manager" => "scheduler+kcm",
            "fake-kubelet" => "kubelets",
            "dowser" if args.iter().any(|a| a == "agent") => "agents",
            "dowser" if args.iter().any(|a| a == "controller") => "controller",
            _ => continue,
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command in parentheses: state is field 3, utime 14 and stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.split(' ').collect())
            .unwrap_or_default();
        let used: f64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
            .sum();
        *out.entry(part).or_default() += used / ticks;
    }
    out
}

/// Where the CPU went between two [`cpu_seconds`] readings over `wall` seconds.
fn cpu_row(before: &std::collections::BTreeMap<&'static str, f64>, wall: f64) -> String {
    let after = cpu_seconds();
    let parts: Vec<String> = after
        .iter()
        .map(|(k, v)| format!("{k} {:.0}", v - before.get(k).copied().unwrap_or(0.0)))
        .collect();
    let total: f64 = after.values().sum::<f64>() - before.values().sum::<f64>();
    format!(
        "{} (total {total:.0} of {:.0} available)",
        parts.join(", "),
        wall * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
    )
}

/// VmRSS in MiB.
fn rss_mib(pid: u32) -> f64 {
    status_kib(pid, "VmRSS") as f64 / 1024.0
}

/// A memory cgroup with a hard limit, removed when dropped (once its processes are gone).
struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
    limit_mib: u64,
}

impl MemoryCgroup {
    /// A child of this process's memory cgroup.
    fn new(name: &str, limit_mib: u64) -> MemoryCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        // cgroup v1 lines are `id:controllers:path`, the v2 line `0::path`.
        let v1 = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let controllers = parts.nth(1)?;
            let path = parts.next()?;
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        });
        let (dir, v2) = match v1 {
            Some(path) => (format!("/sys/fs/cgroup/memory{path}"), false),
            None => {
                let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
                (format!("/sys/fs/cgroup{path}"), true)
            }
        };
        let dir = PathBuf::from(dir).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = (limit_mib * 1024 * 1024).to_string();
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(dir.join(file), &bytes).unwrap();
        MemoryCgroup { dir, v2, limit_mib }
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// Moves a process into the cgroup.
    fn enter(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// (peak usage in MiB, times the limit was hit, OOM kills).
    fn figures(&self) -> (f64, u64, u64) {
        let num = |s: &str| s.trim().parse::<u64>().unwrap_or(0);
        let field = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ').map(num))
                .unwrap_or(0)
        };
        if self.v2 {
            let events = self.read("memory.events");
            (
                num(&self.read("memory.peak")) as f64 / 1048576.0,
                field(&events, "max"),
                field(&events, "oom_kill"),
            )
        } else {
            (
                num(&self.read("memory.max_usage_in_bytes")) as f64 / 1048576.0,
                num(&self.read("memory.failcnt")),
                field(&self.read("memory.oom_control"), "oom_kill"),
            )
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn audit_lines(log: &Path) -> usize {
    support::audit(log, usize::MAX, "").lines
}

/// Requests made with a user agent prefix in the audit log lines from `from` on.
fn audit_count(log: &Path, from: usize, agent: &str) -> usize {
    support::audit(log, from, agent).requests
}

struct FakeNode {
    name: String,
    _kubelet: Proc,
    agent: Proc,
    devices: Vec<RunningListener>,
}

/// How the agents offer devices (`--mode`).
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    DevicePlugin,
    Dra,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::DevicePlugin => "devicePlugin",
            Mode::Dra => "dra",
        }
    }

    /// Where an offered device is.
    fn offered(self) -> &'static str {
        match self {
            Mode::DevicePlugin => "allocatable on the Node",
            Mode::Dra => "in ResourceSlices",
        }
    }
}

/// A fake node `scale-<n>` with its kubelet, its agent and `devices` Modbus devices on
/// 127.92.<n>.x:5020 (units 1..=units(devices) each), found by Configuration `scale-<n>`.
async fn node(work: &Path, n: u32, devices: u32, mode: Mode, grace: u32) -> FakeNode {
    let name = format!("scale-{n}");
    let dir = work.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let kubelet = Proc(
        Command::new(env("DOWSER_FAKE_KUBELET"))
            .args(["--kubeconfig", &env("KUBECONFIG"), "--node-name", &name])
            .args(["--label", &format!("bench/node={name}"), "--root-dir"])
            .arg(&dir)
            // Node status (device-plugin capacity) at a real kubelet's pace: every 10 s, its
            // default nodeStatusUpdateFrequency (the fake kubelet's default too).
            .args(["--node-status-update-frequency", "10"])
            .stderr(std::fs::File::create(work.join(format!("{name}-kubelet.log"))).unwrap())
            .spawn()
            .unwrap(),
    );
    while !dir.join("device-plugins/kubelet.sock").exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let units = units(devices);
    let addresses = devices.div_ceil(units);
    let mut fleet = ListenerConfig::device(
        format!("127.92.{n}.1:5020").parse().unwrap(),
        (1..=units)
            .map(|u| UnitConfig::identified(u as u8, "Acme", "PLC", "1.0"))
            .collect(),
    );
    fleet.count = addresses;
    let served = serve(&fleet).await.unwrap();
    apply(&format!(
        "apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
         discovery: {{modbus: {{targets: [\"127.92.{n}.1-127.92.{n}.{addresses}\"], ports: [5020], unitIds: [\"1-{units}\"], intervalSeconds: 60}}}}\n  \
         nodeSelector: {{matchLabels: {{bench/node: {name}}}}}\n  offlineGracePeriodSeconds: {grace}\n"
    ));
    let mut agent = Command::new(env("DOWSER_BIN"));
    agent
        .args(["agent", "--mode", mode.name(), "--device-plugin-dir"])
        .arg(dir.join("device-plugins"))
        .arg("--pod-resources-socket")
        .arg(dir.join("pod-resources/kubelet.sock"));
    if mode == Mode::Dra {
        for (flag, sub) in [
            ("--kubelet-plugins-dir", "plugins"),
            ("--plugins-registry-dir", "plugins_registry"),
            ("--cdi-dir", "cdi"),
        ] {
            agent.arg(flag).arg(dir.join(sub));
        }
    }
    let agent = Proc(
        agent
            .args(["--health-addr", "127.0.0.1:0"])
            .env("NODE_NAME", &name)
            .env("DOWSER_LOG", "warn")
            .stderr(std::fs::File::create(work.join(format!("{name}-agent.log"))).unwrap())
            .spawn()
            .unwrap(),
    );
    FakeNode {
        name,
        _kubelet: kubelet,
        agent,
        devices: served,
    }
}

/// Instances that exist, and devices offered: `dowser.dev/` resources allocatable (non-zero)
/// on `nodes`, or devices in the driver's ResourceSlices.
async fn progress(client: &Client, nodes: &[FakeNode], mode: Mode) -> (usize, usize) {
    let n = instance_count(client).await;
    if mode == Mode::Dra {
        let slices: Api<ResourceSlice> = Api::all(client.clone());
        let offered = slices
            .list(&ListParams::default().fields("spec.driver=dowser.dev"))
            .await
            .map(|l| {
                l.items
                    .iter()
                    .map(|s| s.spec.devices.as_ref().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0);
        return (n, offered);
    }
    let api: Api<Node> = Api::all(client.clone());
    let mut resources = 0;
    for node in nodes {
        if let Ok(n) = api.get(&node.name).await {
            resources += n
                .status
                .and_then(|s| s.allocatable)
                .map(|a| {
                    a.iter()
                        .filter(|(k, v)| k.starts_with("dowser.dev/") && v.0 != "0")
                        .count()
                })
                .unwrap_or(0);
        }
    }
    (n, resources)
}

/// How many Instances exist: a one-item page and its `remainingItemCount` (every Instance of
/// the bench's cluster is one of its `scale-*` Configurations), so that polling 10,000
/// Instances every second does not load the API server it measures; a whole list when the
/// server does not give the count.
async fn instance_count(client: &Client) -> usize {
    let instances: Api<Instance> = Api::namespaced(client.clone(), "default");
    let Ok(page) = instances
        .list_metadata(&ListParams::default().limit(1))
        .await
    else {
        return 0;
    };
    match (page.metadata.continue_, page.metadata.remaining_item_count) {
        (_, Some(rest)) => page.items.len() + rest.max(0) as usize,
        (None, None) => page.items.len(),
        (Some(_), None) => instances
            .list_metadata(&ListParams::default().labels(CONFIGURATION_LABEL))
            .await
            .map_or(0, |l| l.items.len()),
    }
}

/// Seconds until `done(Instances, devices offered)`, or what was reached when the limit ran
/// out.
async fn until(
    client: &Client,
    nodes: &[FakeNode],
    mode: Mode,
    t0: Instant,
    mut done: impl FnMut(usize, usize) -> bool,
) -> Result<f64, String> {
    loop {
        let (instances, offered) = progress(client, nodes, mode).await;
        if done(instances, offered) {
            return Ok(t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > CONVERGE_LIMIT {
            return Err(format!(
                "not converged in {} s: {instances} Instances, {offered} devices offered ({})",
                CONVERGE_LIMIT.as_secs(),
                mode.offered()
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// When `want` Instances existed (seconds), and when as many devices were offered; or what
/// was reached when the limit ran out.
struct Converged {
    instances: Option<f64>,
    offered: Result<f64, String>,
}

impl Converged {
    /// The row's figure: the time to converge, with the time all Instances existed.
    fn figure(&self) -> String {
        match (&self.offered, self.instances) {
            (Ok(s), Some(i)) => format!("{s:.1} (all Instances at {i:.1})"),
            (Ok(s), None) => format!("{s:.1}"),
            (Err(e), _) => e.clone(),
        }
    }
}

async fn converge(
    client: &Client,
    nodes: &[FakeNode],
    mode: Mode,
    want: usize,
    t0: Instant,
) -> Converged {
    let mut instances = None;
    let offered = until(client, nodes, mode, t0, |i, o| {
        if i >= want && instances.is_none() {
            instances = Some(t0.elapsed().as_secs_f64());
        }
        i >= want && o >= want
    })
    .await;
    Converged { instances, offered }
}

/// The Instances that exist now, and how to call the moment: "at steady state" once
/// converged, "still converging" when the limit ran out first.
async fn instances_reached(
    client: &Client,
    nodes: &[FakeNode],
    mode: Mode,
    converged: &Result<f64, String>,
) -> (usize, &'static str) {
    let (instances, _) = progress(client, nodes, mode).await;
    let state = match converged {
        Ok(_) => "at steady state",
        Err(_) => "still converging",
    };
    (instances, state)
}

/// Requests per minute by the agents and the controller while nothing changes.
async fn idle(audit: &Path, seconds: u64) -> (f64, f64) {
    let from = audit_lines(audit);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let per_min = |n: usize| n as f64 * 60.0 / seconds as f64;
    (
        per_min(audit_count(audit, from, "dowser-agent/")),
        per_min(audit_count(audit, from, "dowser-controller/")),
    )
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut work, mut rows) = (
        PathBuf::from("target/bench/scale"),
        PathBuf::from("target/bench/scale.rows"),
    );
    let (mut node_count, mut per_node) = (10u32, 1000u32);
    let mut memory_limit: Option<u64> = None;
    let (mut mode, mut churn) = (Mode::DevicePlugin, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--work" => work = args.next().unwrap().into(),
            "--rows" => rows = args.next().unwrap().into(),
            "--nodes" => node_count = args.next().unwrap().parse().unwrap(),
            "--devices-per-node" => per_node = args.next().unwrap().parse().unwrap(),
            "--agent-memory-limit" => memory_limit = Some(args.next().unwrap().parse().unwrap()),
            "--mode" => {
                mode = match args.next().as_deref() {
                    Some("devicePlugin") => Mode::DevicePlugin,
                    Some("dra") => Mode::Dra,
                    other => panic!("--mode devicePlugin|dra, not {other:?}"),
                }
            }
            "--churn" => churn = true,
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        !churn || node_count == 1,
        "--churn takes the first node's devices away: only with --nodes 1"
    );
    // Long enough for no device to go by chance while 1,000 are identified; short enough
    // that --churn does not wait the default 30 s.
    let grace = if churn { 10 } else { 30 };
    std::fs::create_dir_all(&work).unwrap();
    let audit = PathBuf::from(env("DOWSER_AUDIT_LOG"));
    let client = Client::try_default().await.unwrap();
    let mut out = Vec::new();
    let per_node_devices = per_node.div_ceil(units(per_node)) * units(per_node);

    let controller = Proc(
        Command::new(env("DOWSER_BIN"))
            .args(["controller", "--health-addr", "127.0.0.1:0"])
            .args(["--instance-name", "bench-scale"])
            .args([
                "--broker-devices",
                match mode {
                    Mode::DevicePlugin => "devicePlugin",
                    Mode::Dra => "dra",
                },
            ])
            .env("DOWSER_LOG", "warn")
            .stderr(std::fs::File::create(work.join("controller.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    // The controller of the previous rows was killed holding the Lease: wait until this one
    // leads, so that the rows below count its work, not its wait.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let t = Instant::now();
    while leases
        .get_opt("dowser-controller")
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
        .as_deref()
        != Some("bench-scale")
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the controller never led"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // One node with its devices.
    let from = audit_lines(&audit);
    let cpu = cpu_seconds();
    let t0 = Instant::now();
    let mut nodes = vec![node(&work, 0, per_node, mode, grace).await];
    // Moved before it has connected anywhere: its start-up is a few hundred KiB.
    let cgroup = memory_limit.map(|limit| {
        let cgroup =
            MemoryCgroup::new(&format!("dowser-bench-agent-{}", std::process::id()), limit);
        cgroup.enter(nodes[0].agent.0.id());
        cgroup
    });
    let want = per_node_devices as usize;
    let converged = converge(&client, &nodes, mode, want, t0).await;
    let cpu = cpu_row(&cpu, t0.elapsed().as_secs_f64());
    let (agent_req, controller_req) = (
        audit_count(&audit, from, "dowser-agent/"),
        audit_count(&audit, from, "dowser-controller/"),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (agent_idle, controller_idle) = idle(&audit, IDLE_SECONDS).await;
    let agent_rss = rss_mib(nodes[0].agent.0.id());
    let controller_rss = rss_mib(controller.0.id());
    out.push(format!(
        "| scale, one node, {}: {want} Modbus devices → all Instances exist and are offered ({}) (s; agent started → converged) | {} | - | - |",
        mode.name(),
        mode.offered(),
        converged.figure()
    ));
    let (reached, state) = instances_reached(&client, &nodes, mode, &converged.offered).await;
    out.push(format!(
        "| scale, one node, {}, {reached} Instances: agent / controller RSS {state} (MiB) | {agent_rss:.1} / {controller_rss:.1} | - | - |",
        mode.name()
    ));
    out.push(format!(
        "| scale, one node, {}: apiserver requests by agent / controller while converging (per device); per minute after (audit log, {IDLE_SECONDS} s) | {agent_req} / {controller_req} ({:.1} / {:.1}); {agent_idle:.0} / {controller_idle:.0} | - | - |",
        mode.name(),
        agent_req as f64 / want as f64,
        controller_req as f64 / want as f64,
    ));
    out.push(format!(
        "| scale, one node, {}: CPU seconds while converging, by part (devices: the simulators) | {cpu} | - | - |",
        mode.name()
    ));
    if let Some(cgroup) = &cgroup {
        let (peak, hit, killed) = cgroup.figures();
        let alive = nodes[0].agent.0.try_wait().unwrap().is_none();
        out.push(format!(
            "| scale, one node, {}, {reached} Instances: agent in a memory cgroup limited to {} MiB — peak usage (with the page cache it brought in) / limit hit / OOM kills / still running | {peak:.1} MiB / {hit} / {killed} / {} | - | - |",
            mode.name(),
            cgroup.limit_mib,
            if alive { "yes" } else { "no" }
        ));
    }
    if churn && converged.offered.is_ok() {
        // The devices go: every Instance after its grace period, then nothing offered.
        let t0 = Instant::now();
        nodes[0].devices.clear();
        let gone = until(&client, &nodes, mode, t0, |i, o| i == 0 && o == 0).await;
        let node: Node = Api::all(client.clone()).get(&nodes[0].name).await.unwrap();
        let status = node.status.clone().unwrap_or_default();
        let entries = |m: Option<std::collections::BTreeMap<String, _>>| {
            m.map_or(0, |m| {
                m.keys().filter(|k| k.starts_with("dowser.dev/")).count()
            })
        };
        let size = serde_json::to_vec(&node).unwrap().len() as f64 / 1024.0;
        out.push(format!(
            "| scale, one node, {}: {want} devices went → no Instance, none offered ({}) (s; simulators stopped → done; grace {grace} s, discovery every 60 s) | {} | - | - |",
            mode.name(),
            mode.offered(),
            match &gone {
                Ok(s) => format!("{s:.1}"),
                Err(e) => e.clone(),
            }
        ));
        out.push(format!(
            "| scale, one node, {}: the Node object after {want} devices came and went — size (KiB, JSON) / `dowser.dev/` entries in capacity, allocatable | {size:.1} / {}, {} | - | - |",
            mode.name(),
            entries(status.capacity),
            entries(status.allocatable)
        ));
    }
    if converged.offered.is_err() || node_count < 2 {
        std::fs::write(&rows, out.join("\n") + "\n").unwrap();
        return;
    }

    // Nine (or `--nodes` - 1) more nodes, each with as many devices of its own.
    let from = audit_lines(&audit);
    let cpu = cpu_seconds();
    let t0 = Instant::now();
    for n in 1..node_count {
        nodes.push(node(&work, n, per_node, mode, grace).await);
    }
    let want = per_node_devices as usize * node_count as usize;
    let converged = converge(&client, &nodes, mode, want, t0).await;
    let cpu = cpu_row(&cpu, t0.elapsed().as_secs_f64());
    let (agents_audit, controller_audit) = (
        support::audit(&audit, from, "dowser-agent/"),
        support::audit(&audit, from, "dowser-controller/"),
    );
    let (agent_req, controller_req) = (agents_audit.requests, controller_audit.requests);
    let kinds = format!(
        "agents: {}; controller: {}",
        agents_audit.kinds_text(),
        controller_audit.kinds_text()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (agent_idle, controller_idle) = idle(&audit, IDLE_SECONDS).await;
    let agents: Vec<f64> = nodes.iter().map(|n| rss_mib(n.agent.0.id())).collect();
    let controller_rss = rss_mib(controller.0.id());
    let added = per_node_devices * (node_count - 1);
    out.push(format!(
        "| scale, {node_count} nodes, {}: {added} more devices on {} more nodes → all {want} Instances exist and are offered ({}) (s; nodes started → converged; no broker pods) | {} | - | - |",
        mode.name(),
        node_count - 1,
        mode.offered(),
        converged.figure()
    ));
    let (reached, state) = instances_reached(&client, &nodes, mode, &converged.offered).await;
    out.push(format!(
        "| scale, {node_count} nodes, {}, {reached} Instances: controller RSS; agent RSS mean / max {state} (MiB) | {controller_rss:.1}; {:.1} / {:.1} | - | - |",
        mode.name(),
        agents.iter().sum::<f64>() / agents.len() as f64,
        agents.iter().cloned().fold(0.0, f64::max)
    ));
    out.push(format!(
        "| scale, {node_count} nodes, {}: apiserver requests by all agents / controller while converging (per device added); per minute after (audit log, {IDLE_SECONDS} s) | {agent_req} / {controller_req} ({:.1} / {:.1}); {agent_idle:.0} / {controller_idle:.0} | - | - |",
        mode.name(),
        agent_req as f64 / added as f64,
        controller_req as f64 / added as f64,
    ));
    out.push(format!(
        "| scale, {node_count} nodes, {}: those requests by verb and resource (audit log) | {kinds} | - | - |",
        mode.name()
    ));
    out.push(format!(
        "| scale, {node_count} nodes, {}: CPU seconds while converging, by part (devices: the simulators) | {cpu} | - | - |",
        mode.name()
    ));
    std::fs::write(&rows, out.join("\n") + "\n").unwrap();
}
