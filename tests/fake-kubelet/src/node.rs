//! The Node object: registration, status (capacity, allocatable with device-plugin
//! resources, Ready condition) and the node Lease, kept fresh.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::MicroTime},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tracing::warn;

use crate::devices::DeviceManager;

const MANAGER: &str = "fake-kubelet";
const HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct NodeSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    /// How often the kubelet computes the node status (`nodeStatusUpdateFrequency`).
    pub status_every: Duration,
}

/// With the node lease, an unchanged status is posted this often only
/// (`nodeStatusReportFrequency`, 5 minutes by default).
const REPORT_EVERY: Duration = Duration::from_secs(300);

/// Registers the node, then keeps its status and lease fresh until the task is dropped.
///
/// As the kubelet does (`kubelet.go` `Run`, `kubelet_node_status.go`): the status is
/// computed every `nodeStatusUpdateFrequency` from the Node as the API server has it, and
/// patched only when it changed (or `nodeStatusReportFrequency` has passed); fast updates
/// (`fastStatusUpdateOnce`) run only until the node is Ready, which this kubelet is at once.
pub async fn run(
    client: Client,
    spec: NodeSpec,
    devices: Arc<DeviceManager>,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = spec.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), spec.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    nodes
        .patch(
            &spec.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": spec.name, "labels": labels},
            })),
        )
        .await?;
    let mut last_report = sync_status(&nodes, &spec, &devices, None).await?;
    untaint(&nodes, &spec.name).await?;
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut status_tick = tokio::time::interval(spec.status_every);
    status_tick.tick().await;
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if let Err(e) = renew_lease(&leases, &spec.name).await {
                    warn!(error = %e, "lease renewal failed");
                }
            }
            _ = status_tick.tick() => {
                match sync_status(&nodes, &spec, &devices, Some(last_report)).await {
                    Ok(t) => last_report = t,
                    Err(e) => warn!(error = %e, "node status update failed"),
                }
            }
        }
    }
}

/// Node status as the kubelet computes it (`nodestatus/setters.go` `MachineInfo`, `ReadyCondition`),
/// starting from the Node the API server has: device-plugin resources in capacity (all
/// devices) and allocatable (healthy devices); a resource whose plugin stopped more than the
/// grace period ago is set to 0, never removed; extended resources missing from capacity are
/// removed from allocatable. Returns when it last posted.
async fn sync_status(
    nodes: &Api<Node>,
    spec: &NodeSpec,
    devices: &DeviceManager,
    last_report: Option<Instant>,
) -> anyhow::Result<Instant> {
    let original = nodes.get(&spec.name).await?;
    let status = original.status.clone().unwrap_or_default();
    let quantities = |m: Option<BTreeMap<String, Quantity>>| -> BTreeMap<String, String> {
        m.unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    };
    let old_capacity = quantities(status.capacity.clone());
    let old_allocatable = quantities(status.allocatable.clone());
    let mut capacity = old_capacity.clone();
    capacity.insert("cpu".into(), spec.cpu.clone());
    capacity.insert("memory".into(), spec.memory.clone());
    capacity.insert("pods".into(), spec.pods.clone());
    let devices = devices.capacity().await;
    for (resource, (all, _)) in &devices.live {
        capacity.insert(resource.clone(), all.to_string());
    }
    for resource in &devices.removed {
        capacity.insert(resource.clone(), "0".into());
    }
    let mut allocatable = capacity.clone();
    for (resource, (_, healthy)) in &devices.live {
        allocatable.insert(resource.clone(), healthy.to_string());
    }
    let ready_before = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .filter(|c| c.status == "True");
    let changed =
        capacity != old_capacity || allocatable != old_allocatable || ready_before.is_none();
    if !changed && last_report.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
        return Ok(last_report.unwrap_or_else(Instant::now));
    }
    let now = Timestamp::now().to_string();
    let transition = ready_before
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| now.clone());
    // A strategic merge patch of what changed from the Node read, as the kubelet's
    // `PatchNodeStatus` computes it: entries it did not change are not sent (so an entry
    // someone else removes meanwhile stays removed), allocatable entries it dropped are
    // deleted explicitly.
    let diff = |old: &BTreeMap<String, String>, new: &BTreeMap<String, String>| {
        let mut patch = serde_json::Map::new();
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            patch.insert(k.clone(), serde_json::Value::Null);
        }
        for (k, v) in new.iter().filter(|(k, v)| old.get(*k) != Some(*v)) {
            patch.insert(k.clone(), json!(v));
        }
        patch
    };
    let capacity_patch = diff(&old_capacity, &capacity);
    let allocatable_patch = diff(&old_allocatable, &allocatable);
    nodes
        .patch_status(
            &spec.name,
            &PatchParams::default(),
            &Patch::Strategic(json!({
                "status": {
                    "capacity": capacity_patch,
                    "allocatable": allocatable_patch,
                    "addresses": [
                        {"type": "InternalIP", "address": "127.0.0.1"},
                        {"type": "Hostname", "address": spec.name},
                    ],
                    "conditions": [{
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "fake-kubelet is posting ready status",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": transition,
                    }],
                    "nodeInfo": {
                        "kubeletVersion": "v1.35.8-fake",
                        "kubeProxyVersion": "",
                        "architecture": std::env::consts::ARCH,
                        "operatingSystem": "linux",
                        "bootID": "", "containerRuntimeVersion": "fake://1", "kernelVersion": "",
                        "machineID": "", "osImage": "fake", "systemUUID": "",
                    },
                },
            })),
        )
        .await?;
    Ok(Instant::now())
}

/// The not-ready taint that admission puts on a new Node is removed by the node lifecycle
/// controller once the node is Ready; the test control plane runs without that controller,
/// so the fake kubelet removes it.
async fn untaint(nodes: &Api<Node>, name: &str) -> anyhow::Result<()> {
    let node = nodes.get(name).await?;
    let taints: Vec<_> = node
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .filter(|t| {
            !t.key.starts_with("node.kubernetes.io/not-ready")
                && !t.key.starts_with("node.kubernetes.io/unreachable")
        })
        .collect();
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": taints}})),
        )
        .await?;
    Ok(())
}

async fn renew_lease(leases: &Api<Lease>, node: &str) -> anyhow::Result<()> {
    leases
        .patch(
            node,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": node, "namespace": "kube-node-lease"},
                "spec": {
                    "holderIdentity": node,
                    "leaseDurationSeconds": 40,
                    "renewTime": MicroTime(Timestamp::now()),
                },
            })),
        )
        .await?;
    Ok(())
}
