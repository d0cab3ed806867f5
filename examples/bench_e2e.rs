//! The cluster part of `scripts/bench`: agent footprint and end-to-end latency on a local
//! control plane that the script has booted (KUBECONFIG, CRDs applied, apiserver audit log
//! at DOWSER_AUDIT_LOG). Runs the release binaries given by DOWSER_BIN and
//! DOWSER_FAKE_KUBELET; simulated devices are served in this process.
//!
//! Writes Markdown table rows (benchmark | dowser | peer | ratio) to `--rows`.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use dowser::crd::{CONFIGURATION_LABEL, Instance, InstanceSpec};
use dowser::naming::{instance_name, instance_resource};
use dowser_sim::modbus::{ListenerConfig, RunningListener, UnitConfig, serve};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use support::{Proc, apply, env, kubectl, status_kib};

/// (VmRSS, VmHWM) in KiB and user+system CPU ticks of a process.
fn usage(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM"), ticks)
}

/// (RssAnon, RssFile) in KiB: heap and stacks versus mapped pages of the binary.
fn rss_split(pid: u32) -> (u64, u64) {
    (status_kib(pid, "RssAnon"), status_kib(pid, "RssFile"))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// A `dowser agent` for the fake node whose kubelet root is `node_dir`.
fn start_agent(node_dir: &Path, log: &Path, extra: &[&str]) -> Proc {
    Proc(
        Command::new(env("DOWSER_BIN"))
            .args(["agent", "--device-plugin-dir"])
            .arg(node_dir.join("device-plugins"))
            .arg("--pod-resources-socket")
            .arg(node_dir.join("pod-resources/kubelet.sock"))
            .args(["--health-addr", "127.0.0.1:0"])
            .args(["--pod-resources-interval-seconds", "1"])
            .args(extra)
            .env("NODE_NAME", "edge-1")
            .env("DOWSER_LOG", "warn")
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

async fn device(addr: &str) -> RunningListener {
    serve(&ListenerConfig::device(
        addr.parse().unwrap(),
        vec![UnitConfig::identified(1, "Acme", "PLC", "1.0")],
    ))
    .await
    .unwrap()
    .remove(0)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut work, mut rows) = (
        PathBuf::from("target/bench/e2e"),
        PathBuf::from("target/bench/e2e.rows"),
    );
    while let Some(a) = args.next() {
        match a.as_str() {
            "--work" => work = args.next().unwrap().into(),
            "--rows" => rows = args.next().unwrap().into(),
            other => panic!("unknown argument {other}"),
        }
    }
    std::fs::create_dir_all(&work).unwrap();
    let audit = PathBuf::from(env("DOWSER_AUDIT_LOG"));
    let kubeconfig = env("KUBECONFIG");
    let client = Client::try_default().await.unwrap();
    let mut out = Vec::new();

    let node_dir = work.join("edge-1");
    std::fs::create_dir_all(&node_dir).unwrap();
    let _kubelet = Proc(
        Command::new(env("DOWSER_FAKE_KUBELET"))
            .args([
                "--kubeconfig",
                &kubeconfig,
                "--node-name",
                "edge-1",
                "--root-dir",
            ])
            .arg(&node_dir)
            // Node status every 100 ms (a real kubelet's default nodeStatusUpdateFrequency is
            // 10 s), so that the rows measure dowser's part, not the kubelet's period.
            .args(["--node-status-update-frequency", "0.1"])
            .stderr(std::fs::File::create(work.join("kubelet.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    while !node_dir.join("device-plugins/kubelet.sock").exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Footprint: the examples of deploy/examples and 100 Modbus Instances, then a minute idle.
    let mut fleet = ListenerConfig::device(
        "127.91.0.1:5020".parse().unwrap(),
        vec![
            UnitConfig::identified(1, "Acme", "PLC", "1.0"),
            UnitConfig::identified(2, "Acme", "IO", "1.0"),
        ],
    );
    fleet.count = 50;
    let _fleet = serve(&fleet).await.unwrap();
    kubectl(&["apply", "-f", "deploy/examples/"]);
    apply(
        "apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {name: hundred, namespace: default}\nspec:\n  discovery: {modbus: {targets: [\"127.91.0.1-127.91.0.50\"], ports: [5020], unitIds: [\"1-2\"], intervalSeconds: 30}}\n",
    );
    let agent = start_agent(&node_dir, &work.join("agent.log"), &[]);
    let pid = agent.0.id();
    let t = Instant::now();
    loop {
        let n = kubectl(&[
            "get",
            "instances",
            "-l",
            "dowser.dev/configuration=hundred",
            "-o",
            "name",
        ])
        .lines()
        .count();
        if n == 100 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "only {n} of 100 Instances"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let converge = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lines_before = support::audit(&audit, usize::MAX, "dowser-agent/").lines;
    let (_, _, ticks_before) = usage(pid);
    let mut rss = Vec::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.push(usage(pid).0);
    }
    let (steady, peak, ticks_after) = usage(pid);
    let (anon, file) = rss_split(pid);
    let support::Audit {
        requests, writes, ..
    } = support::audit(&audit, lines_before, "dowser-agent/");
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let cpu = (ticks_after - ticks_before) as f64 / ticks_per_sec / 60.0 * 100.0;
    let mib = |k: u64| k as f64 / 1024.0;
    out.push(format!(
        "| agent RSS idle, 6 example Configurations + 100 Instances (MiB; budget 12) | steady {:.1} (heap {:.1} + binary pages {:.1}), peak {:.1} | Akri agent limit 79 Mi | - |",
        mib(steady),
        mib(anon),
        mib(file),
        mib(peak)
    ));
    out.push(format!(
        "| agent CPU idle over 60 s | {cpu:.2} % of a core | - | - |"
    ));
    out.push(format!(
        "| agent API requests / writes in 60 s idle (apiserver audit log) | {requests} / {writes} | - | - |"
    ));
    out.push(format!(
        "| 100 Instances created after agent start (s) | {converge:.2} | - | - |"
    ));
    drop(agent);
    kubectl(&["delete", "configurations", "--all", "--wait=false"]);

    // End to end: device appears -> resource allocatable on the node -> broker Running.
    let _agent = start_agent(
        &node_dir,
        &work.join("agent-e2e.log"),
        &["--slot-release-grace-seconds", "1"],
    );
    let _controller = Proc(
        Command::new(env("DOWSER_BIN"))
            .args([
                "controller",
                "--health-addr",
                "127.0.0.1:0",
                "--instance-name",
                "bench",
            ])
            .env("DOWSER_LOG", "warn")
            .stderr(std::fs::File::create(work.join("controller.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    apply(
        "apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {name: e2e, namespace: default}\nspec:\n  discovery: {modbus: {targets: [\"127.91.1.0/27\"], ports: [5020], intervalSeconds: 1, connectTimeoutMs: 200, requestTimeoutMs: 300}}\n  offlineGracePeriodSeconds: 1\n  brokerSpec: {brokerPodSpec: {containers: [{name: broker, image: example.invalid/broker:1}]}}\n",
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (mut to_allocatable, mut to_running) = (Vec::new(), Vec::new());
    const REPS: usize = 20;
    for rep in 0..REPS {
        let addr = format!("127.91.1.{}:5020", rep + 1);
        let id = format!("modbus+tcp://{addr}/1");
        let instance = instance_name("e2e", &id, None);
        let resource = instance_resource("default", &instance);
        // Devices appear at any moment of the agent's polling cycle, not in step with it.
        tokio::time::sleep(Duration::from_millis((rep as u64 * 379) % 1000)).await;
        let t0 = Instant::now();
        let dev = device(&addr).await;
        let mut allocatable = None;
        let running = loop {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "rep {rep}: no broker in 60 s"
            );
            if allocatable.is_none() {
                let node = nodes.get("edge-1").await.unwrap();
                let has = node
                    .status
                    .and_then(|s| s.allocatable)
                    .and_then(|a| a.get(&resource).map(|q| q.0 != "0"))
                    .unwrap_or(false);
                if has {
                    allocatable = Some(t0.elapsed());
                }
            }
            if let Some(pod) = pods.get_opt(&format!("{instance}-0")).await.unwrap()
                && pod.status.and_then(|s| s.phase).as_deref() == Some("Running")
            {
                break t0.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        to_allocatable.push(allocatable.unwrap_or(running).as_secs_f64());
        to_running.push(running.as_secs_f64());
        drop(dev);
        // Wait for the broker to go before the next device, so runs do not overlap.
        let t = Instant::now();
        while !pods
            .list(&ListParams::default().labels("dowser.dev/configuration=e2e"))
            .await
            .unwrap()
            .items
            .is_empty()
        {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "broker of rep {rep} never left"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out.push(format!(
        "| device appears → `dowser.dev/<instance>` allocatable on the node, p50 / p95 of {REPS} (s; Modbus polled every 1 s) | {:.2} / {:.2} | - | - |",
        percentile(&mut to_allocatable, 0.5),
        percentile(&mut to_allocatable, 0.95)
    ));
    out.push(format!(
        "| device appears → broker pod Running, p50 / p95 of {REPS} (s; budget p50 2) | {:.2} / {:.2} | - | - |",
        percentile(&mut to_running, 0.5),
        percentile(&mut to_running, 0.95)
    ));
    drop(_agent);

    // Controller footprint with 1,000 Instances (no brokers: this is the controller's own
    // bookkeeping — watches, status, conditions).
    apply(
        "apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {name: scale, namespace: default}\nspec:\n  discovery: {modbus: {targets: [\"127.0.0.1:1\"]}}\n",
    );
    let instances: Api<Instance> = Api::namespaced(client.clone(), "default");
    let t = Instant::now();
    for i in 0..1000u32 {
        let id = format!("modbus+tcp://10.1.{}.{}:502/1", i / 250, i % 250 + 1);
        let name = instance_name("scale", &id, None);
        let mut instance = Instance::new(
            &name,
            InstanceSpec {
                configuration_name: "scale".into(),
                device_id: id,
                shared: true,
                capacity: 1,
                properties: Default::default(),
                devices: vec![],
                mounts: vec![],
            },
        );
        instance.metadata.labels =
            Some([(CONFIGURATION_LABEL.to_string(), "scale".to_string())].into());
        instances
            .create(&PostParams::default(), &instance)
            .await
            .unwrap();
        let status = serde_json::json!({"status": {"nodes": ["edge-1"]}});
        instances
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    let created = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (rss, hwm, _) = usage(_controller.0.id());
    let (anon, file) = rss_split(_controller.0.id());
    out.push(format!(
        "| controller RSS with 1,000 Instances (MiB; budget 30) | {:.1} (heap {:.1} + binary pages {:.1}), peak {:.1} | Akri controller limit 100 Mi | - |",
        mib(rss),
        mib(anon),
        mib(file),
        mib(hwm)
    ));
    out.push(format!("| 1,000 Instances created + status written by the bench client (s) | {created:.1} | - | - |"));
    std::fs::write(&rows, out.join("\n") + "\n").unwrap();

    // Leave the cluster empty for the scale rows, in one request (`kubectl delete --all`
    // deletes and waits for 1,000 objects one at a time: minutes).
    instances
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    kubectl(&["delete", "configurations", "--all"]);
    while !instances
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .items
        .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
