//! The Node object: registration, status (capacity, allocatable with device-plugin
//! resources, Ready condition) and the node Lease, kept fresh.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    apimachinery::pkg::apis::meta::v1::MicroTime,
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

pub struct NodeSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    /// Post status on this period only (a real kubelet's nodeStatusUpdateFrequency); `None`:
    /// on every device change and every heartbeat.
    pub status_every: Option<Duration>,
    /// How long a stopped plugin's resource is kept before it is set to 0 and forgotten (the
    /// kubelet's `endpointStopGracePeriod`, a constant 5 minutes there).
    pub stop_grace: Duration,
}

/// Registers the node, then keeps its status and lease fresh until the task is dropped.
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
    sync_status(&nodes, &spec, &devices).await?;
    untaint(&nodes, &spec.name).await?;
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let periodic = spec.status_every.is_some();
    let mut status_tick = tokio::time::interval(spec.status_every.unwrap_or(HEARTBEAT));
    status_tick.tick().await;
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if let Err(e) = renew_lease(&leases, &spec.name).await {
                    warn!(error = %e, "lease renewal failed");
                }
                if periodic {
                    continue;
                }
            }
            _ = status_tick.tick(), if periodic => {}
            _ = devices.changed.notified(), if !periodic => {}
        }
        if let Err(e) = sync_status(&nodes, &spec, &devices).await {
            warn!(error = %e, "node status update failed");
        }
    }
}

/// Node status as the kubelet reports it: device-plugin resources in capacity (all devices)
/// and allocatable (healthy devices). Those are written by a merge patch, as the kubelet
/// patches only what it sets (`nodestatus/setters.go` `MachineInfo`): a resource its device
/// manager has forgotten is set to 0 once and never written again, nor removed, so whoever
/// removes it later does not see it come back.
async fn sync_status(
    nodes: &Api<Node>,
    spec: &NodeSpec,
    devices: &DeviceManager,
) -> anyhow::Result<()> {
    let capacity = BTreeMap::from([
        ("cpu".to_string(), spec.cpu.clone()),
        ("memory".to_string(), spec.memory.clone()),
        ("pods".to_string(), spec.pods.clone()),
    ]);
    let allocatable = capacity.clone();
    let (mut plugin_capacity, mut plugin_allocatable) = (BTreeMap::new(), BTreeMap::new());
    for (resource, (all, healthy)) in devices.resources().await {
        plugin_capacity.insert(resource.clone(), all.to_string());
        plugin_allocatable.insert(resource, healthy.to_string());
    }
    for resource in devices.forget_stopped(spec.stop_grace).await {
        plugin_capacity.insert(resource.clone(), "0".to_string());
        plugin_allocatable.insert(resource, "0".to_string());
    }
    if !plugin_capacity.is_empty() {
        nodes
            .patch_status(
                &spec.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "capacity": plugin_capacity,
                    "allocatable": plugin_allocatable,
                }})),
            )
            .await?;
    }
    let now = Timestamp::now().to_string();
    nodes
        .patch_status(
            &spec.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": spec.name},
                "status": {
                    "capacity": capacity,
                    "allocatable": allocatable,
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
                        "lastTransitionTime": now,
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
    Ok(())
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
