//! Three fake nodes with an agent each on a real control plane, and simulated devices.

use dowser::crd::{Configuration, Instance};
use dowser_sim::modbus::{ListenerConfig, RunningListener, UnitConfig, serve};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

use super::{
    agent::Agent,
    cluster::{Cluster, FakeKubelet, STATUS_EVERY_SECOND},
};

/// Server-side applies a Configuration (namespace `default`) as the tests' field manager.
pub async fn apply(client: &Client, config: serde_json::Value) {
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

/// The Instances of a Configuration in namespace `default` (none while the API server does
/// not answer).
pub async fn instances(client: &Client, config: &str) -> Vec<Instance> {
    try_instances(client, config).await.unwrap_or_default()
}

/// Waits for the one Instance of a Configuration (namespace `default`) that exactly `node`
/// sees, printing what was seen and `logs` on a timeout.
pub async fn the_instance_on(
    client: &Client,
    config: &str,
    node: &str,
    seconds: u64,
    logs: impl Fn() -> String,
) -> Instance {
    super::settle(
        seconds,
        &format!("the Instance of {node}"),
        logs,
        || async {
            let list = try_instances(client, config)
                .await
                .ok_or("no Instances listed")?;
            if list.len() == 1 && nodes_of(&list[0]) == [node] {
                Ok(list[0].clone())
            } else {
                Err(format!(
                    "{:?}",
                    list.iter().map(nodes_of).collect::<Vec<_>>()
                ))
            }
        },
    )
    .await
}

/// The Instances of a Configuration in namespace `default`; `None` while the API server
/// does not answer.
pub async fn try_instances(client: &Client, config: &str) -> Option<Vec<Instance>> {
    let api: Api<Instance> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default().labels(&format!("dowser.dev/configuration={config}")))
        .await
        .map(|l| l.items)
        .ok()
}

pub struct Plant {
    pub cluster: Cluster,
    pub client: Client,
    pub kubelets: Vec<FakeKubelet>,
    pub agents: Vec<Agent>,
}

impl Plant {
    pub async fn start() -> Plant {
        let cluster = Cluster::start();
        cluster.apply_crds();
        let client = cluster.client().await;
        // The plant's tests wait on node capacity many times: its kubelets post their
        // status every second (the kubelet's nodeStatusUpdateFrequency; 10 s by default).
        let kubelets = vec![
            cluster.fake_kubelet_with("node-a", &[("site/line", "3")], STATUS_EVERY_SECOND),
            cluster.fake_kubelet_with("node-b", &[("site/line", "3")], STATUS_EVERY_SECOND),
            cluster.fake_kubelet_with("node-c", &[("site/line", "4")], STATUS_EVERY_SECOND),
        ];
        let agents = kubelets.iter().map(|k| Agent::start(&cluster, k)).collect();
        Plant {
            cluster,
            client,
            kubelets,
            agents,
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for a in &self.agents {
            out.push_str(&format!("--- agent {} ---\n{}\n", a.node, a.log()));
        }
        for k in &self.kubelets {
            out.push_str(&format!(
                "--- kubelet {} ---\n{}\n",
                k.node,
                self.cluster.kubelet_log(&k.node)
            ));
        }
        out
    }

    pub async fn apply(&self, config: serde_json::Value) {
        apply(&self.client, config).await
    }

    pub async fn instances(&self, config: &str) -> Vec<Instance> {
        instances(&self.client, config).await
    }

    pub async fn allocatable(&self, node: &str, resource: &str) -> Option<String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let n = nodes.get(node).await.ok()?;
        n.status?.allocatable?.get(resource).map(|q| q.0.clone())
    }
}

pub async fn device(listen: &str) -> RunningListener {
    serve(&ListenerConfig::device(
        listen.parse().unwrap(),
        vec![UnitConfig::identified(1, "Acme", "PLC-100", "1.2")],
    ))
    .await
    .unwrap()
    .remove(0)
}

pub fn modbus_config(
    name: &str,
    port: u16,
    selector: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut c = modbus_configuration(name, &[port], 300);
    c["spec"]["brokerProperties"] = json!({"POLL_MS": "250"});
    if let Some(s) = selector {
        c["spec"]["nodeSelector"] = s;
    }
    c
}

/// A Configuration in namespace `default` scanning Modbus devices on these loopback ports
/// every second (a request times out after `request_timeout_ms`), capacity 1, grace
/// period 4 s.
pub fn modbus_configuration(
    name: &str,
    ports: &[u16],
    request_timeout_ms: u32,
) -> serde_json::Value {
    let targets: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    json!({
        "apiVersion": "dowser.dev/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "discovery": {"modbus": {
                "targets": targets,
                "intervalSeconds": 1,
                "requestTimeoutMs": request_timeout_ms,
            }},
            "capacity": 1,
            "offlineGracePeriodSeconds": 4,
        },
    })
}

pub fn nodes_of(i: &Instance) -> Vec<String> {
    let mut n = i
        .status
        .as_ref()
        .map(|s| s.nodes.clone())
        .unwrap_or_default();
    n.sort();
    n
}

pub fn pod(name: &str, resource: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{
            "name": "broker",
            "image": "busybox",
            "resources": {"limits": {resource: "1"}},
        }]},
    }))
    .unwrap()
}

/// A pod bound to `node` (no scheduler: the kubelet admits it as it comes), asking one
/// device of `resource` if given.
pub fn bound_pod(name: &str, node: &str, resource: Option<&str>) -> Pod {
    let mut p = pod(name, resource.unwrap_or("cpu"));
    let spec = p.spec.as_mut().unwrap();
    spec.node_name = Some(node.to_string());
    if resource.is_none() {
        spec.containers[0].resources = None;
    }
    p
}

/// Running broker pods of a Configuration that are not being deleted.
pub async fn running_brokers(pods: &Api<Pod>, config: &str) -> Vec<Pod> {
    broker_pods(pods, config)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|p| phase(p) == "Running")
        .collect()
}

/// Broker pods of a Configuration that are not being deleted; `None` while the API server
/// does not answer.
pub async fn broker_pods(pods: &Api<Pod>, config: &str) -> Option<Vec<Pod>> {
    let list = pods
        .list(&ListParams::default().labels(&format!("dowser.dev/configuration={config}")))
        .await
        .ok()?;
    Some(
        list.items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect(),
    )
}

pub fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// A simulated Modbus device at `listen` whose unit 1 says it is made by `vendor`. The
/// address may be one a device just left: its socket closes once its task has stopped.
pub async fn device_of(listen: &str, vendor: &str) -> dowser_sim::modbus::RunningListener {
    use dowser_sim::modbus::{ListenerConfig, UnitConfig, serve};
    let config = ListenerConfig::device(
        listen.parse().unwrap(),
        vec![UnitConfig::identified(1, vendor, "PLC-100", "1.2")],
    );
    super::eventually(10, &format!("a device listening on {listen}"), || async {
        serve(&config).await.ok().map(|mut l| l.remove(0))
    })
    .await
}
