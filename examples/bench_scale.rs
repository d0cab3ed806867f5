//! The scale part of `scripts/bench`, on the local control plane the script has booted
//! (KUBECONFIG, CRDs applied, apiserver audit log at DOWSER_AUDIT_LOG): 1,000 simulated
//! Modbus devices on one fake node, then nine more fake nodes with 1,000 devices each
//! (10,000 Instances), each node's devices picked by its own Configuration's nodeSelector.
//! Runs the release binaries given by DOWSER_BIN and DOWSER_FAKE_KUBELET; the devices are
//! served in this process. No broker pods: the rows measure discovery and bookkeeping.
//!
//! Writes Markdown table rows (benchmark | dowser | peer | ratio) to `--rows`.
//! Usage: bench_scale [--work DIR] [--rows FILE] [--nodes N] [--devices-per-node N]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use dowser::crd::{CONFIGURATION_LABEL, Instance};
use dowser_sim::modbus::{ListenerConfig, RunningListener, UnitConfig, serve};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};
use kube::{Api, Client, api::ListParams};
use support::{Proc, apply, env, status_kib};

/// Units per simulated device address; addresses per node = devices / UNITS.
const UNITS: u32 = 4;
const CONVERGE_LIMIT: Duration = Duration::from_secs(300);
/// How long the requests of a converged, unchanging cluster are counted (per minute in the row).
const IDLE_SECONDS: u64 = 30;

/// VmRSS in MiB.
fn rss_mib(pid: u32) -> f64 {
    status_kib(pid, "VmRSS") as f64 / 1024.0
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
    _devices: Vec<RunningListener>,
}

/// A fake node `scale-<n>` with its kubelet, its agent and `devices` Modbus devices on
/// 127.92.<n>.x:5020 (units 1..=UNITS each), found by Configuration `scale-<n>`.
async fn node(work: &Path, n: u32, devices: u32) -> FakeNode {
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
    let addresses = devices.div_ceil(UNITS);
    let mut fleet = ListenerConfig::device(
        format!("127.92.{n}.1:5020").parse().unwrap(),
        (1..=UNITS)
            .map(|u| UnitConfig::identified(u as u8, "Acme", "PLC", "1.0"))
            .collect(),
    );
    fleet.count = addresses;
    let served = serve(&fleet).await.unwrap();
    apply(&format!(
        "apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
         discovery: {{modbus: {{targets: [\"127.92.{n}.1-127.92.{n}.{addresses}\"], ports: [5020], unitIds: [\"1-{UNITS}\"], intervalSeconds: 60}}}}\n  \
         nodeSelector: {{matchLabels: {{bench/node: {name}}}}}\n"
    ));
    let agent = Proc(
        Command::new(env("DOWSER_BIN"))
            .args(["agent", "--device-plugin-dir"])
            .arg(dir.join("device-plugins"))
            .arg("--pod-resources-socket")
            .arg(dir.join("pod-resources/kubelet.sock"))
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
        _devices: served,
    }
}

/// Instances that exist, and `dowser.dev/` resources allocatable (non-zero) on `nodes`.
async fn progress(client: &Client, nodes: &[FakeNode]) -> (usize, usize) {
    let instances: Api<Instance> = Api::namespaced(client.clone(), "default");
    let n = instances
        .list_metadata(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|i| {
                    i.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(CONFIGURATION_LABEL))
                        .is_some_and(|c| c.starts_with("scale-"))
                })
                .count()
        })
        .unwrap_or(0);
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

/// Seconds until `want` Instances exist and as many resources are allocatable, or what was
/// reached when the limit ran out.
async fn converge(
    client: &Client,
    nodes: &[FakeNode],
    want: usize,
    t0: Instant,
) -> Result<f64, String> {
    loop {
        let (instances, resources) = progress(client, nodes).await;
        if instances >= want && resources >= want {
            return Ok(t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > CONVERGE_LIMIT {
            return Err(format!(
                "not converged in {} s: {instances} Instances, {resources} resources allocatable",
                CONVERGE_LIMIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The Instances that exist now, and how to call the moment: "at steady state" once
/// converged, "still converging" when the limit ran out first.
async fn instances_reached(
    client: &Client,
    nodes: &[FakeNode],
    converged: &Result<f64, String>,
) -> (usize, &'static str) {
    let (instances, _) = progress(client, nodes).await;
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
    while let Some(a) = args.next() {
        match a.as_str() {
            "--work" => work = args.next().unwrap().into(),
            "--rows" => rows = args.next().unwrap().into(),
            "--nodes" => node_count = args.next().unwrap().parse().unwrap(),
            "--devices-per-node" => per_node = args.next().unwrap().parse().unwrap(),
            other => panic!("unknown argument {other}"),
        }
    }
    std::fs::create_dir_all(&work).unwrap();
    let audit = PathBuf::from(env("DOWSER_AUDIT_LOG"));
    let client = Client::try_default().await.unwrap();
    let mut out = Vec::new();
    let per_node_devices = per_node.div_ceil(UNITS) * UNITS;

    let controller = Proc(
        Command::new(env("DOWSER_BIN"))
            .args(["controller", "--health-addr", "127.0.0.1:0"])
            .args(["--instance-name", "bench-scale"])
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
    let t0 = Instant::now();
    let mut nodes = vec![node(&work, 0, per_node).await];
    let want = per_node_devices as usize;
    let converged = converge(&client, &nodes, want, t0).await;
    let (agent_req, controller_req) = (
        audit_count(&audit, from, "dowser-agent/"),
        audit_count(&audit, from, "dowser-controller/"),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (agent_idle, controller_idle) = idle(&audit, IDLE_SECONDS).await;
    let agent_rss = rss_mib(nodes[0].agent.0.id());
    let controller_rss = rss_mib(controller.0.id());
    out.push(format!(
        "| scale, one node: {want} Modbus devices → all Instances exist and allocatable on the node (s; agent started → converged) | {} | - | - |",
        match &converged {
            Ok(s) => format!("{s:.1}"),
            Err(e) => e.clone(),
        }
    ));
    let (reached, state) = instances_reached(&client, &nodes, &converged).await;
    out.push(format!(
        "| scale, one node, {reached} Instances: agent / controller RSS {state} (MiB) | {agent_rss:.1} / {controller_rss:.1} | - | - |"
    ));
    out.push(format!(
        "| scale, one node: apiserver requests by agent / controller while converging; per minute after (audit log, {IDLE_SECONDS} s) | {agent_req} / {controller_req}; {agent_idle:.0} / {controller_idle:.0} | - | - |"
    ));
    if converged.is_err() || node_count < 2 {
        std::fs::write(&rows, out.join("\n") + "\n").unwrap();
        return;
    }

    // Nine (or `--nodes` - 1) more nodes, each with as many devices of its own.
    let from = audit_lines(&audit);
    let t0 = Instant::now();
    for n in 1..node_count {
        nodes.push(node(&work, n, per_node).await);
    }
    let want = per_node_devices as usize * node_count as usize;
    let converged = converge(&client, &nodes, want, t0).await;
    let (agent_req, controller_req) = (
        audit_count(&audit, from, "dowser-agent/"),
        audit_count(&audit, from, "dowser-controller/"),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (agent_idle, controller_idle) = idle(&audit, IDLE_SECONDS).await;
    let agents: Vec<f64> = nodes.iter().map(|n| rss_mib(n.agent.0.id())).collect();
    let controller_rss = rss_mib(controller.0.id());
    let added = per_node_devices * (node_count - 1);
    out.push(format!(
        "| scale, {node_count} nodes: {added} more devices on {} more nodes → all {want} Instances exist and allocatable (s; nodes started → converged; no broker pods) | {} | - | - |",
        node_count - 1,
        match &converged {
            Ok(s) => format!("{s:.1}"),
            Err(e) => e.clone(),
        }
    ));
    let (reached, state) = instances_reached(&client, &nodes, &converged).await;
    out.push(format!(
        "| scale, {node_count} nodes, {reached} Instances: controller RSS; agent RSS mean / max {state} (MiB) | {controller_rss:.1}; {:.1} / {:.1} | - | - |",
        agents.iter().sum::<f64>() / agents.len() as f64,
        agents.iter().cloned().fold(0.0, f64::max)
    ));
    out.push(format!(
        "| scale, {node_count} nodes: apiserver requests by all agents / controller while converging; per minute after (audit log, {IDLE_SECONDS} s) | {agent_req} / {controller_req}; {agent_idle:.0} / {controller_idle:.0} | - | - |"
    ));
    std::fs::write(&rows, out.join("\n") + "\n").unwrap();
}
