//! Nodes that fail under dowser, end to end on a real control plane with fake kubelets, the
//! agent and the controller as processes: a node rebooted with a local device's broker on it.

mod common;

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    agent::Agent,
    cluster::{Cluster, FakeKubelet},
    controller::ControllerProcess,
    plant::phase,
};
use dowser::crd::{Configuration, Instance};
use dowser_sim::modbus::UnitConfig;
use futures::StreamExt;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

/// Polls `check` for up to `seconds`; on timeout panics with `what`, the last state seen
/// and `logs()`.
async fn settle<T, F, Fut>(seconds: u64, what: &str, logs: impl Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(state) => state,
        };
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}\nlast seen: {last}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn apply(client: &Client, config: serde_json::Value) {
    let api: Api<Configuration> = Api::namespaced(client.clone(), "default");
    let name = config["metadata"]["name"].as_str().unwrap().to_string();
    api.patch(
        &name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(config),
    )
    .await
    .unwrap();
}

async fn instances(client: &Client, config: &str) -> Vec<Instance> {
    let api: Api<Instance> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default().labels(&format!("dowser.dev/configuration={config}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Broker pods of a Configuration (not being deleted).
async fn brokers(client: &Client, config: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.list(&ListParams::default().labels(&format!("dowser.dev/configuration={config}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn describe(pods: &[Pod]) -> String {
    let b: Vec<String> = pods
        .iter()
        .map(|p| format!("{}({}, {:?})", p.name_any(), phase(p), p.uid()))
        .collect();
    format!("brokers {b:?}")
}

/// Uids of a Configuration's pods ever seen failed with UnexpectedAdmissionError, collected
/// by a watch for as long as the returned set lives.
fn admission_errors(
    client: &Client,
    config: &str,
) -> (Arc<Mutex<BTreeSet<String>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cfg = watcher::Config::default().labels(&format!("dowser.dev/configuration={config}"));
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher::watcher(pods, cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = stream.next().await {
            let Ok(pod) = event else { continue };
            let reason = pod.status.as_ref().and_then(|s| s.reason.as_deref());
            if reason == Some("UnexpectedAdmissionError") {
                out.lock().unwrap().insert(pod.uid().unwrap_or_default());
            }
        }
    });
    (seen, task)
}

/// A power loss and boot of a node: its kubelet and agent are killed (kill -9), the
/// container runtime's state (on a tmpfs) is lost, and both start again with the same node
/// name and kubelet directory.
fn reboot(cluster: &Cluster, kubelet: &mut FakeKubelet, agent: &mut Agent) -> (FakeKubelet, Agent) {
    agent.kill9();
    kubelet.kill9();
    let _ = std::fs::remove_dir_all(kubelet.root.join("run"));
    // So that starting again waits for the new kubelet's socket.
    let _ = std::fs::remove_file(kubelet.plugin_dir().join("kubelet.sock"));
    let kubelet = cluster.fake_kubelet(&kubelet.node.clone(), &[]);
    let agent = Agent::start(cluster, &kubelet);
    (kubelet, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebooted_node_runs_its_local_devices_broker_again_without_an_admission_loop() {
    let _serial = common::serial().await;
    let cluster = Cluster::start();
    cluster.apply_crds();
    let client = cluster.client().await;
    let mut kubelet = cluster.fake_kubelet("node-a", &[]);
    let mut agent = Agent::start(&cluster, &kubelet);
    let scratch = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(&cluster, scratch.path());
    // A Modbus RTU meter on a serial line of node-a (a pty).
    let line = dowser_sim::rtu::serve(&dowser_sim::rtu::LineConfig {
        mode: dowser_sim::modbus::Mode::Normal,
        units: vec![UnitConfig::identified(7, "Acme", "Meter-3", "2.1")],
    })
    .unwrap();
    let path = line.path.to_string_lossy().into_owned();
    apply(
        &client,
        json!({
            "apiVersion": "dowser.dev/v1alpha1",
            "kind": "Configuration",
            "metadata": {"name": "meters", "namespace": "default"},
            "spec": {
                "discovery": {"modbus": {
                    "rtu": {"lines": [{"path": path, "baudRate": 9600}]},
                    "unitIds": ["7"],
                    "intervalSeconds": 1,
                    "requestTimeoutMs": 1000,
                }},
                "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "node-a"}},
                "capacity": 1,
                "offlineGracePeriodSeconds": 10,
                "brokerSpec": {"brokerPodSpec": {"containers": [{"name": "broker", "image": "example/broker:1"}]}},
            },
        }),
    )
    .await;
    let (errors, watch) = admission_errors(&client, "meters");
    let logs = |agent: &Agent| {
        format!(
            "--- controller\n{}\n--- agent\n{}\n--- kubelet\n{}",
            std::fs::read_to_string(&controller.log).unwrap_or_default(),
            agent.log(),
            cluster.kubelet_log("node-a")
        )
    };
    let before = settle(
        60,
        "the meter's broker Running on node-a",
        || logs(&agent),
        || async {
            let b = brokers(&client, "meters").await;
            match b.as_slice() {
                [p] if phase(p) == "Running" => Ok(p.clone()),
                _ => Err(describe(&b)),
            }
        },
    )
    .await;
    let instance = instances(&client, "meters").await.remove(0);
    assert_eq!(
        before.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node-a")
    );
    assert!(errors.lock().unwrap().is_empty());

    let rebooted = Timestamp::now();
    let (_kubelet, agent) = reboot(&cluster, &mut kubelet, &mut agent);

    // The broker is admitted again (its containers were lost with the node): the same pod
    // if the agent's plugin registered in time, else a replacement of the pod the kubelet
    // refused.
    let after = settle(
        60,
        "the broker Running again after the reboot",
        || logs(&agent),
        || async {
            let b = brokers(&client, "meters").await;
            match b.as_slice() {
                [p] if phase(p) == "Running" && started(p) >= rebooted => Ok(p.clone()),
                _ => Err(describe(&b)),
            }
        },
    )
    .await;
    assert_eq!(
        after.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node-a")
    );
    // And it stays so: no loop of refused and replaced pods.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let b = brokers(&client, "meters").await;
    assert!(
        matches!(b.as_slice(), [p] if p.uid() == after.uid() && phase(p) == "Running"),
        "the broker did not stay Running: {}\n{}",
        describe(&b),
        logs(&agent)
    );
    let refused = errors.lock().unwrap().clone();
    eprintln!(
        "pods refused with UnexpectedAdmissionError after the reboot: {}",
        refused.len()
    );
    // A real kubelet refuses the broker at most once: while the agent's plugin has not
    // registered again.
    assert!(
        refused.len() <= 1,
        "pods refused: {refused:?}\n{}",
        logs(&agent)
    );
    // The Instance survived the reboot.
    let now = instances(&client, "meters").await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].uid(), instance.uid());
    watch.abort();
}

/// When the kubelet last started a pod's containers.
fn started(p: &Pod) -> Timestamp {
    p.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}
