//! Nodes that fail: a node lost for good, on a real control plane with fake kubelets, agents,
//! the controller and simulated devices.

mod common;

use common::{
    controller::ControllerProcess,
    eventually,
    plant::{Plant, device, modbus_config, nodes_of, phase},
};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
};
use serde_json::json;

/// Running broker pods of a Configuration that are not being deleted.
async fn running_brokers(pods: &Api<Pod>, config: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("dowser.dev/configuration={config}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| phase(p) == "Running" && p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// A device seen by two nodes (capacity 1) has its broker on the node that is lost; another
/// device is seen by that node only. The node goes away for good: its kubelet and agent stop
/// and its Node object is deleted, as a cloud node controller would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_frees_its_slots_rehomes_its_brokers_and_leaves_no_instance_behind() {
    let _serial = common::serial().await;
    let mut plant = Plant::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let _controller = ControllerProcess::start(&plant.cluster, scratch.path());

    // `plc` is seen by node-a and node-b (site/line 3), not node-c.
    let shared = device("127.0.0.1:0").await;
    let mut plc = modbus_config(
        "plc",
        shared.addr.port(),
        Some(json!({"matchLabels": {"site/line": "3"}})),
    );
    plc["spec"]["brokerSpec"] =
        json!({"brokerPodSpec": {"containers": [{"name": "broker", "image": "example/broker:1"}]}});
    plant.apply(plc).await;
    let pods: Api<Pod> = Api::namespaced(plant.client.clone(), "default");
    let broker = eventually(60, "the plc broker Running", || async {
        let r = running_brokers(&pods, "plc").await;
        (r.len() == 1).then(|| r[0].clone())
    })
    .await;
    let lost = node_of(&broker);
    let survivor = if lost == "node-a" { "node-b" } else { "node-a" };
    let plc_instance = eventually(30, "plc seen by node-a and node-b", || async {
        let i = plant.instances("plc").await;
        (i.len() == 1 && nodes_of(&i[0]) == ["node-a", "node-b"]).then(|| i[0].name_any())
    })
    .await;
    let resource = format!("dowser.dev/{plc_instance}");

    // `meter` is seen by the node that will be lost, and by no other.
    let solo = device("127.0.0.1:0").await;
    plant
        .apply(modbus_config(
            "meter",
            solo.addr.port(),
            Some(json!({"matchLabels": {"kubernetes.io/hostname": lost}})),
        ))
        .await;
    eventually(30, "meter seen by the node to be lost only", || async {
        let i = plant.instances("meter").await;
        (i.len() == 1 && nodes_of(&i[0]) == [lost.clone()]).then_some(())
    })
    .await;

    let i = plant.kubelets.iter().position(|k| k.node == lost).unwrap();
    drop(plant.agents.remove(i));
    drop(plant.kubelets.remove(i));
    let nodes: Api<Node> = Api::all(plant.client.clone());
    nodes.delete(&lost, &DeleteParams::default()).await.unwrap();

    // The broker is re-homed on the other node that sees the device.
    let rehomed = eventually(60, "the plc broker Running on the survivor", || async {
        let r = running_brokers(&pods, "plc").await;
        (r.len() == 1 && node_of(&r[0]) == survivor).then(|| r[0].clone())
    })
    .await;
    assert_ne!(rehomed.uid(), broker.uid());

    // The Instance seen only by the lost node is deleted, not left behind or stuck.
    eventually(30, "the meter Instance gone", || async {
        plant.instances("meter").await.is_empty().then_some(())
    })
    .await;

    // The shared Instance no longer lists the lost node nor gives it a slot; the survivor
    // advertises the freed slot as its own.
    eventually(30, "plc held by the survivor alone", || async {
        let i = plant.instances("plc").await;
        let status = i.first()?.status.clone()?;
        let slots: Vec<&String> = status.slots.values().collect();
        (status.nodes == [survivor.to_string()] && slots == [&survivor.to_string()]).then_some(())
    })
    .await;
    eventually(30, "the survivor advertises the slot", || async {
        (plant.allocatable(survivor, &resource).await.as_deref() == Some("1")).then_some(())
    })
    .await;

    // The user is told why.
    let events: Api<Event> = Api::namespaced(plant.client.clone(), "default");
    let said = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("NodeGone"))
        .filter_map(|e| e.message)
        .collect::<Vec<_>>();
    assert!(said.iter().any(|m| m.contains(&lost)), "{said:?}");
}
