//! `dowser agent` end to end: three fake nodes on a real control plane, an agent on each, and
//! simulated Modbus devices.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{
    agent::Agent,
    eventually,
    plant::{Plant, bound_pod, device, modbus_config, nodes_of, phase, pod},
};
use dowser::{
    crd::{Configuration, Instance},
    naming::node_label,
};
use dowser_sim::modbus::UnitConfig;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_devices_become_one_instance_on_every_node_that_sees_them() {
    let _serial = common::serial().await;
    let plant = Plant::start().await;
    let sim = device("127.0.0.1:0").await;
    let port = sim.addr.port();
    plant.apply(modbus_config("plc", port, None)).await;

    let found = tokio::time::timeout(
        Duration::from_secs(30),
        eventually(60, "one Instance listing the three nodes", || async {
            let list = plant.instances("plc").await;
            (list.len() == 1 && nodes_of(&list[0]) == ["node-a", "node-b", "node-c"])
                .then(|| list[0].clone())
        }),
    )
    .await;
    let instance = match found {
        Ok(i) => i,
        Err(_) => panic!(
            "no Instance listing the three nodes: {:?}\n{}",
            plant
                .instances("plc")
                .await
                .iter()
                .map(nodes_of)
                .collect::<Vec<_>>(),
            plant.logs()
        ),
    };
    let name = instance.name_any();
    assert_eq!(
        instance.spec.device_id,
        format!("modbus+tcp://127.0.0.1:{port}/1")
    );
    assert!(instance.spec.shared);
    assert_eq!(instance.spec.properties["MODBUS_VENDOR_NAME"], "Acme");
    let owner = &instance.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Configuration", "plc")
    );

    // Capacity 1 over three nodes: exactly one node offers the slot.
    let resource = dowser::naming::instance_resource("default", &name);
    let offered = eventually(60, "the slot offered by exactly one node", || async {
        let mut per_node = BTreeMap::new();
        for n in ["node-a", "node-b", "node-c"] {
            per_node.insert(n, plant.allocatable(n, &resource).await?);
        }
        let ones: Vec<_> = per_node
            .iter()
            .filter(|(_, v)| v.as_str() == "1")
            .map(|(n, _)| n.to_string())
            .collect();
        let zeros = per_node.values().filter(|v| v.as_str() == "0").count();
        (ones.len() == 1 && zeros == 2).then(|| ones[0].clone())
    })
    .await;

    // Two pods for a device of capacity 1: one runs with the device's environment, the other
    // waits; neither is refused at admission.
    let pods: Api<Pod> = Api::namespaced(plant.client.clone(), "default");
    pods.create(&PostParams::default(), &pod("first", &resource))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("second", &resource))
        .await
        .unwrap();
    let running = eventually(60, "one broker pod Running", || async {
        let list = pods.list(&ListParams::default()).await.ok()?.items;
        let running: Vec<_> = list
            .iter()
            .filter(|p| phase(p) == "Running")
            .cloned()
            .collect();
        (running.len() == 1).then(|| running[0].clone())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list = pods.list(&ListParams::default()).await.unwrap().items;
    let phases: BTreeMap<String, String> = list.iter().map(|p| (p.name_any(), phase(p))).collect();
    assert_eq!(
        phases.values().filter(|p| *p == "Running").count(),
        1,
        "{phases:?}"
    );
    assert_eq!(
        phases.values().filter(|p| *p == "Pending").count(),
        1,
        "{phases:?}"
    );
    assert_eq!(
        running.spec.as_ref().unwrap().node_name.as_deref(),
        Some(offered.as_str())
    );
    let allocations: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&running.annotations()["fake-kubelet.dowser.dev/allocations"])
            .unwrap();
    let env = &allocations["broker"][0]["envs"];
    let hash = name.rsplit('-').next().unwrap().to_ascii_uppercase();
    assert_eq!(env["MODBUS_HOST"], "127.0.0.1");
    assert_eq!(env["MODBUS_PORT"], port.to_string());
    assert_eq!(env[format!("MODBUS_UNIT_ID_{hash}")], "1");
    assert_eq!(env["POLL_MS"], "250");
    let claimed = plant.instances("plc").await[0]
        .status
        .clone()
        .unwrap()
        .slots;
    assert_eq!(
        claimed,
        BTreeMap::from([("0".to_string(), offered.clone())])
    );

    // Deleting the running pod lets the waiting one run.
    let waiting = if running.name_any() == "first" {
        "second"
    } else {
        "first"
    };
    pods.delete(&running.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    eventually(60, "the waiting pod Running", || async {
        let p = pods.get(waiting).await.ok()?;
        (phase(&p) == "Running").then_some(())
    })
    .await;

    // The device goes away: the Instance stays for the grace period, then goes.
    let instances: Api<Instance> = Api::namespaced(plant.client.clone(), "default");
    drop(sim);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        instances.get_opt(&name).await.unwrap().is_some(),
        "removed before the grace period"
    );
    eventually(
        30,
        "the Instance deleted after the grace period",
        || async { instances.get_opt(&name).await.ok()?.is_none().then_some(()) },
    )
    .await;
    // It comes back under the same name.
    let _sim = device(&format!("127.0.0.1:{port}")).await;
    eventually(60, "the Instance back under the same name", || async {
        let i = instances.get_opt(&name).await.ok()??;
        (nodes_of(&i).len() == 3).then_some(())
    })
    .await;
    let _ = plant.logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_selector_restarts_and_kubelet_restarts_change_nothing_they_should_not() {
    let _serial = common::serial().await;
    let mut plant = Plant::start().await;
    let sim = device("127.0.0.1:0").await;
    let selector = json!({"matchLabels": {"site/line": "3"}});
    plant
        .apply(modbus_config("line3", sim.addr.port(), Some(selector)))
        .await;
    eventually(60, "an Instance seen by the two selected nodes", || async {
        let list = plant.instances("line3").await;
        (list.len() == 1 && nodes_of(&list[0]) == ["node-a", "node-b"]).then_some(())
    })
    .await;
    // Every node reports its discovery health in the Configuration.
    let configs: Api<Configuration> = Api::namespaced(plant.client.clone(), "default");
    eventually(60, "discovery health of the selected nodes", || async {
        let c = configs.get("line3").await.ok()?;
        let nodes = c.status?.nodes;
        let mut names: Vec<_> = nodes
            .iter()
            .filter(|n| n.devices == 1 && n.error.is_none())
            .map(|n| n.node.clone())
            .collect();
        names.sort();
        (names == ["node-a", "node-b"]).then_some(())
    })
    .await;

    // The agent tells Prometheus and the kubelet's probes how it is doing.
    let agent = &plant.agents[0];
    assert!(agent.get("/healthz").0.contains("200"));
    assert!(agent.get("/readyz").0.contains("200"));
    let (status, metrics) = agent.get("/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(
        metrics.contains("dowser_agent_devices{namespace=\"default\",configuration=\"line3\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "dowser_agent_discovery_round_seconds{namespace=\"default\",configuration=\"line3\"}"
    ));
    assert!(metrics.contains("dowser_agent_api_writes_total "));

    // Relabelling node-c into line 3 brings it in.
    let nodes: Api<Node> = Api::all(plant.client.clone());
    nodes
        .patch(
            "node-c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"site/line": "3"}}})),
        )
        .await
        .unwrap();
    let instance = eventually(60, "node-c joins after relabelling", || async {
        let list = plant.instances("line3").await;
        (list.len() == 1 && nodes_of(&list[0]).len() == 3).then(|| list[0].clone())
    })
    .await;
    let name = instance.name_any();
    let resource = dowser::naming::instance_resource("default", &name);
    eventually(60, "the slot offered", || async {
        (plant.allocatable("node-a", &resource).await.as_deref() == Some("1")).then_some(())
    })
    .await;
    // Each node labels the Instances it takes part in (its agent caches those only).
    let instances: Api<Instance> = Api::namespaced(plant.client.clone(), "default");
    let labelled = |node: &'static str| {
        let instances = instances.clone();
        async move {
            let selector = node_label(node);
            let params = ListParams::default().labels(&selector);
            let list = instances.list(&params).await.unwrap().items;
            list.iter().map(|i| i.name_any()).collect::<Vec<_>>()
        }
    };
    for node in ["node-a", "node-b", "node-c"] {
        assert_eq!(labelled(node).await, [name.as_str()], "{node}");
    }

    // kill -9 an agent and start it again: nothing is deleted, recreated or rewritten.
    let before = instances.get(&name).await.unwrap();
    let kubelet_b = &plant.kubelets[1];
    plant.agents[1].kill9();
    plant.agents[1] = Agent::start(&plant.cluster, kubelet_b);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = instances.get(&name).await.unwrap();
    assert_eq!(after.uid(), before.uid(), "{}", plant.logs());
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "the restarted agent wrote: {}",
        plant.logs()
    );

    // An Instance without the node's label (as written before nodes labelled theirs): the
    // agent labels it at start and takes it over, changing nothing else.
    plant.agents[1].kill9();
    let unlabel = json!({"metadata": {"labels": {node_label("node-b"): null}}});
    instances
        .patch(&name, &PatchParams::default(), &Patch::Merge(unlabel))
        .await
        .unwrap();
    assert!(labelled("node-b").await.is_empty());
    let before = instances.get(&name).await.unwrap();
    plant.agents[1] = Agent::start(&plant.cluster, kubelet_b);
    eventually(30, "node-b's label back", || async {
        (labelled("node-b").await == [name.as_str()]).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = instances.get(&name).await.unwrap();
    assert_eq!(after.uid(), before.uid());
    assert_eq!(after.spec, before.spec);
    assert_eq!(after.status, before.status, "{}", plant.logs());
    assert_eq!(cached_instances(&plant.agents[1]), 1, "{}", plant.logs());

    // A kubelet restart: the plugin registers again within seconds.
    plant.kubelets[0].restart();
    tokio::time::sleep(Duration::from_millis(300)).await;
    eventually(
        15,
        "the resource back after the kubelet restart",
        || async {
            (plant.allocatable("node-a", &resource).await.as_deref() == Some("1")).then_some(())
        },
    )
    .await;

    // node-c leaves line 3: it leaves the Instance (the others still see the device), its
    // label goes and its agent's cache lets go.
    nodes
        .patch(
            "node-c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"site/line": null}}})),
        )
        .await
        .unwrap();
    eventually(
        60,
        "node-c out of the Instance and its label gone",
        || async {
            let i = instances.get(&name).await.ok()?;
            let out = nodes_of(&i) == ["node-a", "node-b"] && labelled("node-c").await.is_empty();
            (out && cached_instances(&plant.agents[2]) == 0).then_some(())
        },
    )
    .await;
    assert_eq!(labelled("node-a").await, [name.as_str()]);

    // A Configuration whose details the schema accepts but dowser does not: no discovery,
    // and every selected node says why in the status.
    let mut bad = modbus_config("bad-regex", 1, None);
    bad["spec"]["discovery"]["modbus"]["vendorNames"] = json!({"include": ["(Acme"]});
    plant.apply(bad).await;
    eventually(60, "each node reports the invalid details", || async {
        let c = configs.get("bad-regex").await.ok()?;
        let nodes = c.status?.nodes;
        (nodes.len() == 3
            && nodes.iter().all(|n| {
                n.error
                    .as_deref()
                    .is_some_and(|e| e.contains("invalid regular expression"))
            }))
        .then_some(())
    })
    .await;
    assert!(plant.instances("bad-regex").await.is_empty());

    // Properties from a Secret that does not exist yet: discovery waits and says why; once
    // the Secret is created, discovery runs with it.
    let mut creds = modbus_config("with-secret", sim.addr.port(), None);
    creds["spec"]["properties"] = json!([{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "plc-creds", "key": "password"}}}]);
    plant.apply(creds).await;
    eventually(60, "each node reports the missing Secret", || async {
        let c = configs.get("with-secret").await.ok()?;
        let nodes = c.status?.nodes;
        (nodes.len() == 3
            && nodes.iter().all(|n| {
                n.error.as_deref().is_some_and(|e| {
                    e.contains("key \"password\" of Secret \"plc-creds\" not found")
                })
            }))
        .then_some(())
    })
    .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(plant.client.clone(), "default");
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "plc-creds", "namespace": "default"},
        "stringData": {"password": "s3cret"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    eventually(60, "discovery runs once the Secret exists", || async {
        let c = configs.get("with-secret").await.ok()?;
        let nodes = c.status?.nodes;
        let ok = nodes.len() == 3 && nodes.iter().all(|n| n.error.is_none() && n.devices == 1);
        (ok && plant.instances("with-secret").await.len() == 1).then_some(())
    })
    .await;
}

/// The `dowser_agent_cached_instances` gauge of an agent.
fn cached_instances(agent: &Agent) -> u64 {
    let (_, metrics) = agent.get("/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("dowser_agent_cached_instances "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no dowser_agent_cached_instances in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_device_becomes_an_instance_of_its_node_only() {
    let _serial = common::serial().await;
    let plant = Plant::start().await;
    let line = dowser_sim::rtu::serve(&dowser_sim::rtu::LineConfig {
        mode: dowser_sim::modbus::Mode::Normal,
        units: vec![UnitConfig::identified(7, "Acme", "Meter-3", "2.1")],
    })
    .unwrap();
    let path = line.path.to_string_lossy().into_owned();
    // The serial line is attached to node-a (every fake node shares this machine, so the
    // selector stands in for the cable).
    plant
        .apply(json!({
            "apiVersion": "dowser.dev/v1alpha1",
            "kind": "Configuration",
            "metadata": {"name": "meters", "namespace": "default"},
            "spec": {
                "discovery": {"modbus": {
                    "rtu": {"lines": [{"path": path, "baudRate": 9600}]},
                    "unitIds": ["7"],
                    "intervalSeconds": 1,
                    "requestTimeoutMs": 300,
                }},
                "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "node-a"}},
            },
        }))
        .await;
    let instance = eventually(60, "the Instance of node-a", || async {
        let list = plant.instances("meters").await;
        (list.len() == 1 && nodes_of(&list[0]) == ["node-a"]).then(|| list[0].clone())
    })
    .await;
    let device_id = format!("modbus+rtu://{}/7", path.strip_prefix("/dev/").unwrap());
    assert_eq!(instance.spec.device_id, device_id);
    assert!(!instance.spec.shared);
    assert_eq!(
        instance.name_any(),
        dowser::naming::instance_name("meters", &device_id, Some("node-a"))
    );
    assert_eq!(instance.spec.devices[0].host_path, path);
    // A pod for it runs on node-a and gets the serial line's device node.
    let resource = dowser::naming::instance_resource("default", &instance.name_any());
    let pods: Api<Pod> = Api::namespaced(plant.client.clone(), "default");
    pods.create(&PostParams::default(), &pod("meter-broker", &resource))
        .await
        .unwrap();
    let running = eventually(60, "the broker Running", || async {
        let p = pods.get("meter-broker").await.ok()?;
        (phase(&p) == "Running").then_some(p)
    })
    .await;
    assert_eq!(
        running.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node-a")
    );
    let allocations: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&running.annotations()["fake-kubelet.dowser.dev/allocations"])
            .unwrap();
    let got = &allocations["broker"][0];
    assert_eq!(got["devices"][0]["hostPath"], path.as_str());
    assert_eq!(got["devices"][0]["permissions"], "rw");
    assert_eq!(got["envs"]["MODBUS_SERIAL_PORT"], path.as_str());
    assert_eq!(got["envs"]["MODBUS_TRANSPORT"], "rtu");
    for other in ["node-b", "node-c"] {
        assert_eq!(
            plant.allocatable(other, &resource).await,
            None,
            "{other} offers the local device"
        );
    }
}

/// The resources a kubelet offers a device id through (its PodResources
/// GetAllocatableResources).
async fn resources_of(kubelet: &common::cluster::FakeKubelet, device: &str) -> Vec<String> {
    let mut out: Vec<String> = common::outage::kubelet_devices(kubelet)
        .await
        .into_iter()
        .filter(|(_, ids)| ids.iter().any(|d| d == device))
        .map(|(r, _)| r)
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_hands_a_slot_out_once_and_keeps_offering_it_when_the_kubelet_drops_its_stream() {
    let _serial = common::serial().await;
    let cluster = common::cluster::Cluster::start();
    cluster.apply_crds();
    let client = cluster.client().await;
    let kubelet = cluster.fake_kubelet("node-a", &[]);
    let mut first = Agent::start(&cluster, &kubelet);
    // Both agents of this test log there.
    let agent_log = kubelet.root.join("agent.log");
    let logs = || {
        format!(
            "--- agents ---\n{}\n--- kubelet ---\n{}",
            std::fs::read_to_string(&agent_log).unwrap_or_default(),
            cluster.kubelet_log("node-a")
        )
    };
    let sim = device("127.0.0.1:0").await;
    common::plant::apply(&client, modbus_config("press", sim.addr.port(), None)).await;
    let instance = common::plant::the_instance_on(&client, "press", "node-a", 90, logs).await;
    // Capacity 1: one slot, offered through the Instance's and the Configuration's resource.
    let slot = dowser::agent::slots::device_id(&instance.name_any(), 0);
    let resources = common::settle(
        60,
        "the slot offered through two resources",
        logs,
        || async {
            let r = resources_of(&kubelet, &slot).await;
            if r.len() == 2 {
                Ok(r)
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    let nodes: Api<Node> = Api::all(client.clone());
    let allocatable = |resource: String| {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get("node-a").await.ok()?;
            n.status?.allocatable?.get(&resource).map(|q| q.0.clone())
        }
    };

    // A second agent on the node registers the same resources (as when a rolling update
    // starts the new agent before the old one is gone); then the first one dies. An older
    // stream of a resource that ends makes the kubelet disconnect the resource's current
    // client (kubelet 1.35 `runClient`): the kubelet ends the second agent's stream without
    // restarting, and the second agent must register again.
    let registered = || {
        std::fs::read_to_string(&agent_log)
            .unwrap_or_default()
            .matches("registered with the kubelet")
            .count()
    };
    let before = registered();
    let _second = Agent::start(&cluster, &kubelet);
    common::settle(
        60,
        "the second agent registered both resources",
        logs,
        || async {
            let n = registered() - before;
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} registrations"))
            }
        },
    )
    .await;
    first.kill9();
    // The kubelet reads the end of the first agent's streams at once; the test looks after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    common::settle(60, "the resources back with their device", logs, || async {
        let r = resources_of(&kubelet, &slot).await;
        let a = [
            allocatable(resources[0].clone()).await,
            allocatable(resources[1].clone()).await,
        ];
        if r == resources && a.iter().all(|a| a.as_deref() == Some("1")) {
            Ok(())
        } else {
            Err(format!("offered through {r:?}; allocatable {a:?}"))
        }
    })
    .await;

    // Two pods, one through each resource, admitted side by side: one gets the slot, the
    // kubelet refuses the other.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, resource) in [("via-one", &resources[0]), ("via-other", &resources[1])] {
        pods.create(
            &PostParams::default(),
            &bound_pod(name, "node-a", Some(resource)),
        )
        .await
        .unwrap();
    }
    let phases = || async {
        let list = pods.list(&ListParams::default()).await.ok()?.items;
        let by_name: BTreeMap<String, (String, String, String)> = list
            .iter()
            .map(|p| {
                let s = p.status.clone().unwrap_or_default();
                (
                    p.name_any(),
                    (
                        phase(p),
                        s.reason.unwrap_or_default(),
                        s.message.unwrap_or_default(),
                    ),
                )
            })
            .collect();
        Some(by_name)
    };
    let settled = common::settle(60, "one pod Running, one refused", logs, || async {
        let Some(p) = phases().await else {
            return Err("no pods listed".to_string());
        };
        let running = p.values().filter(|(ph, _, _)| ph == "Running").count();
        assert!(
            running < 2,
            "both pods Running on one slot: {p:?}\n{}",
            logs()
        );
        let failed = p.values().filter(|(ph, _, _)| ph == "Failed").count();
        if running == 1 && failed == 1 {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await;
    let (_, reason, message) = settled
        .values()
        .find(|(ph, _, _)| ph == "Failed")
        .unwrap()
        .clone();
    assert_eq!(reason, "UnexpectedAdmissionError", "{settled:?}");
    // Refused by the agent (the slot is held through the other resource) or, once the slot
    // is reported Unhealthy there, by the kubelet's device manager.
    assert!(
        message.contains("is in use on node node-a: a pod holds it through")
            || message.contains("requested number of devices unavailable")
            || message.contains("cannot allocate unhealthy devices"),
        "the refusal does not say why: {message}"
    );
    eprintln!("the pod that did not get the slot: {message}");
    // And it stays that way.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = phases().await.unwrap();
    assert_eq!(
        after.values().filter(|(ph, _, _)| ph == "Running").count(),
        1,
        "{after:?}"
    );
}

/// The ResourceSlices of driver dowser.dev, by pool name.
async fn slices_by_pool(
    client: &kube::Client,
) -> BTreeMap<String, Vec<k8s_openapi::api::resource::v1::ResourceSlice>> {
    let api: Api<k8s_openapi::api::resource::v1::ResourceSlice> = Api::all(client.clone());
    let mut by_pool: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for s in api
        .list(&ListParams::default().fields("spec.driver=dowser.dev"))
        .await
        .unwrap()
        .items
    {
        by_pool.entry(s.spec.pool.name.clone()).or_default().push(s);
    }
    by_pool
}

/// DRA mode on two nodes (agents with deploy/'s identity, fake kubelets that offer nothing
/// of DRA themselves): a stale slice a previous agent left is removed at start; a device
/// both nodes see is published once, by the first node by name, for both; when that node no
/// longer sees it the other takes the pool over, and still only one slice holds it; no
/// device plugin is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dra_mode_publishes_a_shared_device_once_and_hands_it_over() {
    use k8s_openapi::api::resource::v1::ResourceSlice;
    let _serial = common::serial().await;
    let cluster = common::cluster::Cluster::start();
    cluster.apply_crds();
    let client = cluster.client().await;
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    // What an agent of node-a left behind: a slice of a device gone while it was down.
    let stale: ResourceSlice = serde_json::from_value(json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": "dowser-stale-0", "labels": {"dowser.dev/publisher": "node-a"}},
        "spec": {
            "driver": "dowser.dev",
            "nodeName": "node-a",
            "pool": {"name": "node-a/default", "generation": 1, "resourceSliceCount": 1},
            "devices": [{"name": "gone-0"}],
        },
    }))
    .unwrap();
    slices.create(&PostParams::default(), &stale).await.unwrap();

    let kubelets = [
        cluster.fake_kubelet_with(
            "node-a",
            &[("site/line", "3")],
            common::cluster::STATUS_EVERY_SECOND,
        ),
        cluster.fake_kubelet_with(
            "node-b",
            &[("site/line", "4")],
            common::cluster::STATUS_EVERY_SECOND,
        ),
    ];
    let agents: Vec<Agent> = kubelets
        .iter()
        .map(|k| {
            let dir = |d: &str| k.root.join(d).display().to_string();
            Agent::start_with(
                &cluster,
                k,
                "info,kube=warn",
                &[
                    "--mode",
                    "dra",
                    "--kubelet-plugins-dir",
                    &dir("plugins"),
                    "--plugins-registry-dir",
                    &dir("plugins_registry"),
                    "--cdi-dir",
                    &dir("cdi"),
                ],
            )
        })
        .collect();
    let logs = || {
        agents
            .iter()
            .map(|a| format!("--- agent {} ---\n{}", a.node, a.log()))
            .collect::<String>()
    };
    eventually(30, "the stale slice removed", || async {
        slices
            .get_opt("dowser-stale-0")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    let sim = device("127.0.0.1:0").await;
    let mut config = modbus_config("plc", sim.addr.port(), None);
    config["spec"]["capacity"] = json!(2);
    common::plant::apply(&client, config.clone()).await;
    let instance = eventually(60, "one Instance on both nodes", || async {
        let list = common::plant::instances(&client, "plc").await;
        (list.len() == 1 && nodes_of(&list[0]) == ["node-a", "node-b"]).then(|| list[0].name_any())
    })
    .await;
    let pool = format!("shared/default/{instance}");
    let published_by = |by: &'static str, nodes: Vec<&'static str>| {
        let client = client.clone();
        let pool = pool.clone();
        let instance = instance.clone();
        async move {
            let all = slices_by_pool(&client).await;
            let [slice] = all.get(&pool)?.as_slice() else {
                return None;
            };
            let selector = &slice.spec.node_selector.as_ref()?.node_selector_terms[0];
            let values = selector.match_expressions.as_ref()?[0].values.clone()?;
            let names: Vec<String> = slice
                .spec
                .devices
                .iter()
                .flatten()
                .map(|d| d.name.clone())
                .collect();
            (slice
                .labels()
                .get("dowser.dev/publisher")
                .map(String::as_str)
                == Some(by)
                && values == nodes
                && names == [format!("{instance}-0"), format!("{instance}-1")]
                && all.len() == 1)
                .then(|| slice.clone())
        }
    };
    let slice = tokio::time::timeout(
        Duration::from_secs(30),
        eventually(
            30,
            "the shared device published once, by node-a, for both nodes",
            || published_by("node-a", vec!["node-a", "node-b"]),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("{}", logs()));
    let vendor = &slice.spec.devices.as_ref().unwrap()[0]
        .attributes
        .as_ref()
        .unwrap()["vendorName"];
    assert_eq!(vendor.string.as_deref(), Some("Acme"));
    assert_eq!(slice.spec.node_name, None);

    // node-a stops seeing it (deselected): after the grace period node-b publishes it alone.
    config["spec"]["nodeSelector"] = json!({"matchLabels": {"site/line": "4"}});
    common::plant::apply(&client, config).await;
    let moved = tokio::time::timeout(
        Duration::from_secs(60),
        eventually(
            60,
            "the pool handed over to node-b, for node-b only",
            || published_by("node-b", vec!["node-b"]),
        ),
    )
    .await;
    assert!(
        moved.is_ok(),
        "{:?}\n{}",
        slices_by_pool(&client).await,
        logs()
    );
    let moved = moved.unwrap();
    assert!(moved.spec.pool.generation > slice.spec.pool.generation);

    // Device plugins are not this mode's: nothing registered with either kubelet.
    for k in &kubelets {
        let sockets: Vec<_> = std::fs::read_dir(k.plugin_dir())
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("dowser"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(sockets.is_empty(), "{}: {sockets:?}", k.node);
    }
    drop(sim);
}

/// An asyncua server that takes only the user `operator` with `password`, and tells its
/// nameplate in a session.
fn asyncua_with_users(port: u16, password: &str) -> dowser_sim::peers::Peer {
    use std::io::BufRead;
    let mut child = dowser_sim::peers::script("asyncua_server.py", "asyncua")
        .unwrap()
        .args(["--port", &port.to_string(), "--name", "Filler 7"])
        .args(["--uri", "urn:plant:filler-7", "--policies", "None"])
        .args(["--users", &format!("operator:{password}")])
        .args(["--build-info", "ACME Automation,Filler PLC,4.2.1,1187"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start asyncua");
    let stdout = child.stdout.take().unwrap();
    let peer = dowser_sim::peers::Peer(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "asyncua did not start");
    peer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opcua_server_that_refuses_the_credentials_is_named_in_each_nodes_status() {
    let _serial = common::serial().await;
    let plant = Plant::start().await;
    let port = dowser_sim::peers::free_port();
    let _server = asyncua_with_users(port, "right-pw");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(plant.client.clone(), "default");
    let secret = |password: &str| -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "filler-login", "namespace": "default"},
            "stringData": {"username": "operator", "password": password},
        }))
        .unwrap()
    };
    secrets
        .create(&PostParams::default(), &secret("wrong-pw"))
        .await
        .unwrap();
    plant
        .apply(json!({
            "apiVersion": "dowser.dev/v1alpha1",
            "kind": "Configuration",
            "metadata": {"name": "fillers", "namespace": "default"},
            "spec": {
                "discovery": {"opcua": {
                    "discoveryUrls": [format!("opc.tcp://127.0.0.1:{port}/peer/")],
                    "intervalSeconds": 1,
                    "timeoutMs": 3000,
                    "session": {"userIdentity": "UserName"},
                    "manufacturerNames": {"include": ["ACME.*"]},
                }},
                "properties": [
                    {"name": "USERNAME", "valueFrom": {"secretKeyRef": {"name": "filler-login", "key": "username"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "filler-login", "key": "password"}}},
                ],
                "offlineGracePeriodSeconds": 4,
            },
        }))
        .await;
    let configs: Api<Configuration> = Api::namespaced(plant.client.clone(), "default");
    eventually(
        60,
        "each node names the server that refused the login",
        || async {
            let nodes = configs.get("fillers").await.ok()?.status?.nodes;
            (nodes.len() == 3
                && nodes.iter().all(|n| {
                    n.error.is_none()
                        && n.problems.len() == 1
                        && n.problems[0].contains("urn:plant:filler-7")
                        && n.problems[0].contains("rejected the user identity")
                }))
            .then_some(())
        },
    )
    .await;
    assert!(plant.instances("fillers").await.is_empty());
    let status = serde_json::to_string(&configs.get("fillers").await.unwrap().status).unwrap();
    assert!(!status.contains("wrong-pw"), "{status}");

    // The right password: the server becomes an Instance with its nameplate, the problem goes.
    secrets
        .replace("filler-login", &PostParams::default(), &secret("right-pw"))
        .await
        .unwrap();
    let instance = eventually(60, "the server found once the login works", || async {
        let nodes = configs.get("fillers").await.ok()?.status?.nodes;
        let list = plant.instances("fillers").await;
        (nodes
            .iter()
            .all(|n| n.problems.is_empty() && n.devices == 1)
            && list.len() == 1)
            .then(|| list[0].clone())
    })
    .await;
    assert_eq!(
        instance.spec.properties["OPCUA_MANUFACTURER_NAME"],
        "ACME Automation"
    );
    assert_eq!(instance.spec.properties["OPCUA_PRODUCT_NAME"], "Filler PLC");
    assert!(
        !instance
            .spec
            .properties
            .values()
            .any(|v| v.contains("right-pw"))
    );
}
