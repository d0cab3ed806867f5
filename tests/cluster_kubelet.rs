//! The local control plane's scheduling of extended resources, with fake kubelets and a real
//! device plugin: what dowser's agent relies on.

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{
    cluster::{Cluster, FakeKubelet, STATUS_EVERY_SECOND},
    outage::kubelet_holders,
};
use dowser::deviceplugin::{
    HEALTHY,
    plugin::{Allocator, PluginConfig, run},
    podresources::{
        GetPodResourcesRequest, ListPodResourcesRequest,
        pod_resources_lister_client::PodResourcesListerClient,
    },
    v1beta1::{ContainerAllocateResponse, Device},
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio::sync::watch;

const RESOURCE: &str = "dowser.dev/x";

struct EnvAllocator;

/// How many times a plugin's Allocate was called.
static ALLOCATE_CALLS: AtomicUsize = AtomicUsize::new(0);

impl Allocator for EnvAllocator {
    async fn allocate(&self, ids: &[String]) -> Result<ContainerAllocateResponse, tonic::Status> {
        ALLOCATE_CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(ContainerAllocateResponse {
            envs: [("X_DEVICE".to_string(), ids.join(","))].into(),
            ..Default::default()
        })
    }
}

fn start_plugin(
    kubelet: &FakeKubelet,
    devices: &[&str],
) -> (watch::Sender<Vec<Device>>, tokio::task::JoinHandle<()>) {
    let list = devices
        .iter()
        .map(|id| Device {
            id: id.to_string(),
            health: HEALTHY.to_string(),
            topology: None,
        })
        .collect();
    let (tx, rx) = watch::channel(list);
    let config = PluginConfig {
        dir: kubelet.plugin_dir(),
        socket_name: "dowser-x.sock".into(),
        resource_name: RESOURCE.into(),
    };
    let restarts = dowser::deviceplugin::kubelet_restarts(&config.dir);
    let task = tokio::spawn(run(
        config,
        rx,
        Arc::new(EnvAllocator),
        restarts,
        std::future::pending(),
    ));
    (tx, task)
}

fn allocatable(node: &Node, resource: &str) -> Option<String> {
    node.status
        .as_ref()?
        .allocatable
        .as_ref()?
        .get(resource)
        .map(|q| q.0.clone())
}

fn capacity(node: &Node, resource: &str) -> Option<String> {
    node.status
        .as_ref()?
        .capacity
        .as_ref()?
        .get(resource)
        .map(|q| q.0.clone())
}

/// Waits until `check` holds for the named Node, watching it.
async fn node_until(client: &Client, name: &str, what: &str, check: impl Fn(&Node) -> bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(nodes, cfg).applied_objects();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        let mut stream = std::pin::pin!(stream);
        while let Ok(Some(node)) = stream.try_next().await {
            if check(&node) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "node {name} never reached: {what}"
    );
}

async fn pod_until(client: &Client, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(pods, cfg).applied_objects();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        let mut stream = std::pin::pin!(stream);
        while let Ok(Some(pod)) = stream.try_next().await {
            if check(&pod) {
                return Some(pod);
            }
        }
        None
    })
    .await;
    found
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("pod {name} never reached: {what}"))
}

fn broker_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "containers": [{
                "name": "broker",
                "image": "busybox",
                "resources": {"limits": {RESOURCE: "1"}},
            }],
        },
    }))
    .unwrap()
}

/// A pod on node-a asking for one device, whose container runs `command` (the fake
/// kubelet's containers complete when it is `sleep N`).
fn running_pod(name: &str, restart_policy: &str, command: &[&str]) -> Pod {
    let mut pod = broker_pod(name);
    let spec = pod.spec.as_mut().unwrap();
    spec.restart_policy = Some(restart_policy.into());
    spec.containers[0].command = Some(command.iter().map(|c| c.to_string()).collect());
    pod
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| c.restart_count)
        .sum()
}

/// Waits until a pod is deleted for good.
async fn pod_gone(pods: &Api<Pod>, name: &str) {
    for _ in 0..150 {
        if pods.get_opt(name).await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("pod {name} was not deleted");
}

fn phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_resources_schedule_admit_and_survive_a_kubelet_restart() {
    let cluster = Cluster::start();
    let client = cluster.client().await;
    // node-a posts its status every second (the kubelet's nodeStatusUpdateFrequency) as the
    // test waits on its capacity several times.
    let node_a = cluster.fake_kubelet_with("node-a", &[("site/line", "3")], STATUS_EVERY_SECOND);
    let _node_b = cluster.fake_kubelet("node-b", &[]);
    for n in ["node-a", "node-b"] {
        node_until(&client, n, "Ready and untainted", |node| {
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| !t.is_empty());
            ready && !tainted
        })
        .await;
    }

    // A plugin on node-a offers one device of dowser.dev/x.
    let (_devices, _plugin) = start_plugin(&node_a, &["x-0"]);
    node_until(&client, "node-a", "dowser.dev/x: 1", |n| {
        allocatable(n, RESOURCE).as_deref() == Some("1")
    })
    .await;
    let b: Api<Node> = Api::all(client.clone());
    assert_eq!(allocatable(&b.get("node-b").await.unwrap(), RESOURCE), None);

    // The real scheduler places a pod that asks for it on node-a, and the kubelet admits it
    // with what the plugin's Allocate returned.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &broker_pod("first"))
        .await
        .unwrap();
    let first = pod_until(&client, "first", "Running", |p| phase(p) == "Running").await;
    assert_eq!(
        first.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node-a")
    );
    let allocations: BTreeMap<String, serde_json::Value> = serde_json::from_str(
        &first.metadata.annotations.as_ref().unwrap()["fake-kubelet.dowser.dev/allocations"],
    )
    .unwrap();
    assert_eq!(allocations["broker"][0]["envs"]["X_DEVICE"], "x-0");
    assert_eq!(allocations["broker"][0]["resource"], RESOURCE);

    // The kubelet's PodResources API says which pod holds the device.
    let channel = dowser::deviceplugin::connect_unix(&node_a.pod_resources_socket())
        .await
        .unwrap();
    let listed = PodResourcesListerClient::new(channel)
        .list(ListPodResourcesRequest {})
        .await
        .unwrap()
        .into_inner();
    let held: Vec<_> = listed
        .pod_resources
        .iter()
        .flat_map(|p| {
            p.containers.iter().flat_map(move |c| {
                c.devices.iter().map(move |d| {
                    (
                        p.name.clone(),
                        d.resource_name.clone(),
                        d.device_ids.clone(),
                    )
                })
            })
        })
        .collect();
    assert_eq!(
        held,
        [(
            "first".to_string(),
            RESOURCE.to_string(),
            vec!["x-0".to_string()]
        )]
    );

    // A second pod beyond capacity waits in Pending, unschedulable; it is not failed.
    pods.create(&PostParams::default(), &broker_pod("second"))
        .await
        .unwrap();
    let second = pod_until(&client, "second", "Unschedulable", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable")
                })
            })
    })
    .await;
    assert_eq!(phase(&second), "Pending");
    assert!(second.spec.as_ref().unwrap().node_name.is_none());

    // A kubelet restart drops the resource; the plugin notices its socket is gone, registers
    // again, and the resource comes back.
    let nodes: Api<Node> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields("metadata.name=node-a");
    let mut updates = Box::pin(watcher(nodes, cfg).applied_objects());
    // Drain to the current state first.
    let current = updates.next().await.unwrap().unwrap();
    assert_eq!(allocatable(&current, RESOURCE).as_deref(), Some("1"));
    node_a.restart();
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        let mut dropped = false;
        while let Some(Ok(node)) = updates.next().await {
            match allocatable(&node, RESOURCE).as_deref() {
                Some("1") if dropped => return true,
                Some("1") => {}
                _ => dropped = true,
            }
        }
        false
    })
    .await;
    assert!(
        matches!(seen, Ok(true)),
        "resource did not disappear and come back after a kubelet restart; kubelet log:\n{}",
        cluster.kubelet_log("node-a")
    );

    // Deleting the first pod frees its device: the waiting pod is scheduled and admitted.
    pods.delete("first", &Default::default()).await.unwrap();
    let second = pod_until(&client, "second", "Running", |p| phase(p) == "Running").await;
    assert_eq!(
        second.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node-a")
    );

    // Pods and containers as the kubelet runs them: a pod whose containers complete frees
    // its device; a restarted container keeps its device and the plugin's earlier answer
    // (no new Allocate); a deleted pod holds its device through its termination grace period
    // (here a 3 s preStop hook), and PodResources lists it meanwhile.
    pods.delete("second", &Default::default()).await.unwrap();
    pod_gone(&pods, "second").await;
    let calls = ALLOCATE_CALLS.load(Ordering::SeqCst);
    pods.create(
        &PostParams::default(),
        &running_pod("job", "Never", &["sleep", "2"]),
    )
    .await
    .unwrap();
    pod_until(&client, "job", "Succeeded", |p| phase(p) == "Succeeded").await;
    assert!(
        !kubelet_holders(&node_a)
            .await
            .iter()
            .any(|(p, _, _)| p == "job"),
        "a completed pod is not active"
    );
    let mut crashy = running_pod("crashy", "Always", &["sleep", "1"]);
    crashy.spec.as_mut().unwrap().containers[0].lifecycle =
        Some(serde_json::from_value(json!({"preStop": {"sleep": {"seconds": 3}}})).unwrap());
    pods.create(&PostParams::default(), &crashy).await.unwrap();
    let restarted = pod_until(&client, "crashy", "Running after a restart", |p| {
        phase(p) == "Running" && restarts(p) >= 1
    })
    .await;
    assert_eq!(
        ALLOCATE_CALLS.load(Ordering::SeqCst),
        calls + 2,
        "one Allocate for the completed pod, one for the restarting one"
    );
    let allocations: BTreeMap<String, serde_json::Value> = serde_json::from_str(
        &restarted.metadata.annotations.as_ref().unwrap()["fake-kubelet.dowser.dev/allocations"],
    )
    .unwrap();
    assert_eq!(allocations["broker"][0]["envs"]["X_DEVICE"], "x-0");
    pods.delete("crashy", &Default::default()).await.unwrap();
    pod_until(&client, "crashy", "terminating", |p| {
        p.metadata.deletion_timestamp.is_some()
    })
    .await;
    let held = (
        "crashy".to_string(),
        RESOURCE.to_string(),
        vec!["x-0".to_string()],
    );
    assert!(
        kubelet_holders(&node_a).await.contains(&held),
        "a pod in its termination grace period holds its device"
    );
    let channel = dowser::deviceplugin::connect_unix(&node_a.pod_resources_socket())
        .await
        .unwrap();
    let got = PodResourcesListerClient::new(channel)
        .get(GetPodResourcesRequest {
            pod_name: "crashy".into(),
            pod_namespace: "default".into(),
        })
        .await
        .expect("Get (KubeletPodResourcesGet is on by default in 1.35)")
        .into_inner();
    assert_eq!(
        got.pod_resources.unwrap().containers[0].devices[0].device_ids,
        ["x-0"]
    );
    pod_gone(&pods, "crashy").await;
    assert!(!kubelet_holders(&node_a).await.contains(&held));

    // A pod bound by hand to a node that never offered the resource is admitted without the
    // device, the way the kubelet does it: its device manager skips a resource no plugin
    // registered, and the fit predicate ignores extended resources the Node does not list
    // (`removeMissingExtendedResources`, a documented caveat of the kubelet).
    let mut direct = broker_pod("direct");
    direct.spec.as_mut().unwrap().node_name = Some("node-b".into());
    pods.create(&PostParams::default(), &direct).await.unwrap();
    let direct = pod_until(&client, "direct", "Running", |p| phase(p) == "Running").await;
    assert_eq!(
        direct.metadata.annotations.as_ref().unwrap()["fake-kubelet.dowser.dev/allocations"],
        "{}",
        "no device for a resource the node never offered"
    );

    // On a node whose plugin for the resource stopped, the kubelet keeps the devices in the
    // capacity, none allocatable, for its grace period, then capacity 0 for good; a pod bound
    // there by hand is then refused by the fit predicate, not by the device manager.
    let node_c = cluster.fake_kubelet_with(
        "node-c",
        &[],
        &[STATUS_EVERY_SECOND, &["--endpoint-stop-grace-period", "3"]].concat(),
    );
    let (c_devices, c_plugin) = start_plugin(&node_c, &["x-0"]);
    node_until(&client, "node-c", "dowser.dev/x: 1", |n| {
        allocatable(n, RESOURCE).as_deref() == Some("1")
    })
    .await;
    // The plugin stops: its ListAndWatch stream ends.
    drop(c_devices);
    c_plugin.abort();
    node_until(
        &client,
        "node-c",
        "dowser.dev/x kept, none allocatable",
        |n| {
            capacity(n, RESOURCE).as_deref() == Some("1")
                && allocatable(n, RESOURCE).as_deref() == Some("0")
        },
    )
    .await;
    node_until(
        &client,
        "node-c",
        "dowser.dev/x: 0 after the grace period",
        |n| {
            capacity(n, RESOURCE).as_deref() == Some("0")
                && allocatable(n, RESOURCE).as_deref() == Some("0")
        },
    )
    .await;
    let mut refused = broker_pod("refused");
    refused.spec.as_mut().unwrap().node_name = Some("node-c".into());
    pods.create(&PostParams::default(), &refused).await.unwrap();
    let refused = pod_until(&client, "refused", "Failed", |p| phase(p) == "Failed").await;
    let status = refused.status.unwrap();
    assert_eq!(status.reason.as_deref(), Some("OutOfdowser.dev/x"));
    assert_eq!(
        status.message.as_deref(),
        Some("Node didn't have enough resource: dowser.dev/x, requested: 1, used: 0, capacity: 0")
    );
}
