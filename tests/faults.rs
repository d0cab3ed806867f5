//! Faults of the cluster around dowser, end to end on a real control plane with fake
//! kubelets, agents and the controller as processes: the API server stopped for 30 s while
//! devices come and go, one agent partitioned from the API server, and the uninstall.

mod common;

use std::time::{Duration, Instant};

use common::{
    agent::Agent,
    cluster::{Cluster, FakeKubelet, STATUS_EVERY_SECOND},
    controller::ControllerProcess,
    eventually, free_addr,
    outage::{self, Link, ProxiedAgent, Proxy, StoppedApiServer, kubelet_devices, kubelet_holders},
    plant::{
        apply, bound_pod, broker_pods, device, modbus_configuration, nodes_of, phase, try_instances,
    },
    readme, settle, workloads,
};
use dowser::crd::{INSTANCE_LABEL, Instance};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt, api::ListParams};
use serde_json::json;

/// What a Configuration's Instances and brokers are, for failure messages.
async fn describe(client: &Client, config: &str) -> String {
    let list = instances(client, config).await.unwrap_or_default();
    let b = brokers(client, config).await.unwrap_or_default();
    let i: Vec<String> = list
        .iter()
        .map(|(p, i)| format!("{p}:{}:{:?}", i.name_any(), nodes_of(i)))
        .collect();
    let b: Vec<String> = b
        .iter()
        .map(|(i, p)| format!("{}({i}, {}, {:?})", p.name_any(), phase(p), p.uid()))
        .collect();
    format!("Instances {i:?}; brokers {b:?}")
}

/// A Configuration scanning these ports every second, grace period 4 s, with a broker pod
/// per device.
fn config(name: &str, ports: &[u16], node: Option<&str>) -> serde_json::Value {
    // Generous: on a busy machine a device on loopback may answer late.
    let mut c = modbus_configuration(name, ports, 1000);
    c["spec"]["brokerSpec"] =
        json!({"brokerPodSpec": {"containers": [{"name": "broker", "image": "example/broker:1"}]}});
    if let Some(node) = node {
        c["spec"]["nodeSelector"] = json!({"matchLabels": {"kubernetes.io/hostname": node}});
    }
    c
}

/// The Instances of a Configuration by the port of their device, with their nodes.
async fn instances(client: &Client, config: &str) -> Option<Vec<(u16, Instance)>> {
    let mut out: Vec<(u16, Instance)> = try_instances(client, config)
        .await?
        .into_iter()
        .map(|i| (port_of(&i.spec.device_id), i))
        .collect();
    out.sort_by_key(|(p, _)| *p);
    Some(out)
}

/// `modbus+tcp://127.0.0.1:PORT/1` → PORT.
fn port_of(device_id: &str) -> u16 {
    device_id
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("device id {device_id}"))
}

/// Broker pods of a Configuration (not being deleted), by their Instance's name.
async fn brokers(client: &Client, config: &str) -> Option<Vec<(String, Pod)>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let list = broker_pods(&pods, config).await?;
    Some(
        list.into_iter()
            .map(|p| (p.labels()[INSTANCE_LABEL].clone(), p))
            .collect(),
    )
}

/// The broker of an Instance, once it is Running.
fn running_broker<'a>(brokers: &'a [(String, Pod)], instance: &Instance) -> Option<&'a Pod> {
    brokers
        .iter()
        .find(|(i, p)| *i == instance.name_any() && phase(p) == "Running")
        .map(|(_, p)| p)
}

/// Whether a kubelet can allocate a device of a resource (its PodResources
/// GetAllocatableResources, which lists healthy devices only).
async fn serves(kubelet: &FakeKubelet, resource: &str) -> bool {
    kubelet_devices(kubelet)
        .await
        .iter()
        .any(|(r, ids)| r == resource && !ids.is_empty())
}

/// Whether a kubelet holds a device of a resource for a pod, as its PodResources List says
/// (which works without the API server).
async fn holds(kubelet: &FakeKubelet, resource: &str) -> bool {
    kubelet_holders(kubelet)
        .await
        .iter()
        .any(|(_, r, ids)| r == resource && !ids.is_empty())
}

/// The kubelet of the node a pod is bound to.
fn kubelet_of<'a>(kubelets: &'a [FakeKubelet], pod: &Pod) -> &'a FakeKubelet {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    kubelets
        .iter()
        .find(|k| Some(&k.node) == node.as_ref())
        .unwrap_or_else(|| panic!("no kubelet for {node:?}"))
}

/// Waits until every one of these Nodes has one device of `resource` in its capacity (its
/// kubelet follows the plugin's ListAndWatch).
async fn offered_by(client: &Client, nodes: &[&str], resource: &str) {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    eventually(
        30,
        &format!("{resource} in the capacity of {nodes:?}"),
        || async {
            for n in nodes {
                let capacity = api.get(n).await.ok()?.status?.capacity?;
                if capacity.get(resource).map(|q| q.0.as_str()) != Some("1") {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

fn resource(i: &Instance) -> String {
    dowser::naming::instance_resource(&i.namespace().unwrap_or_default(), &i.name_any())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_of_30_seconds_loses_nothing() {
    let _serial = common::serial().await;
    let cluster = Cluster::start();
    cluster.apply_crds();
    let client = cluster.client().await;
    // The kubelet posts its status every second (its nodeStatusUpdateFrequency; 10 s by
    // default): brokers are scheduled as soon as the Node lists their device.
    let kubelets = [
        cluster.fake_kubelet_with("node-a", &[], STATUS_EVERY_SECOND),
        cluster.fake_kubelet_with("node-b", &[], STATUS_EVERY_SECOND),
    ];
    let agents: Vec<Agent> = kubelets.iter().map(|k| Agent::start(&cluster, k)).collect();
    let scratch = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(&cluster, scratch.path());
    let stays = device("127.0.0.1:0").await;
    let goes = device("127.0.0.1:0").await;
    let new_addr = free_addr();
    let (p_stays, p_goes, p_new) = (stays.addr.port(), goes.addr.port(), new_addr.port());
    apply(&client, config("outage", &[p_stays, p_goes, p_new], None)).await;
    let logs = || {
        let mut out = String::new();
        for a in &agents {
            out.push_str(&format!("--- agent {} ---\n{}\n", a.node, a.log()));
        }
        out.push_str(&format!("--- controller ---\n{}\n", controller.log()));
        for k in &kubelets {
            out.push_str(&format!(
                "--- kubelet {} ---\n{}\n",
                k.node,
                cluster.kubelet_log(&k.node)
            ));
        }
        out
    };

    // Two devices, each seen by both nodes, each with a Running broker.
    let (before, broker_before) = eventually(90, "two Instances with Running brokers", || async {
        let list = instances(&client, "outage").await?;
        let b = brokers(&client, "outage").await?;
        let both = ["node-a".to_string(), "node-b".to_string()];
        let ready = list.len() == 2 && list.iter().all(|(_, i)| nodes_of(i) == both);
        let stayed = list.iter().find(|(p, _)| *p == p_stays)?.1.clone();
        let broker = running_broker(&b, &stayed)?.clone();
        let all_running = list.iter().all(|(_, i)| running_broker(&b, i).is_some());
        (ready && all_running).then_some((stayed, broker))
    })
    .await;
    let stays_resource = resource(&before);
    // Both kubelets follow the device's plugin; the one of the broker's node holds the
    // device for it (on the other node, the slot it holds is reported Unhealthy, and the
    // kubelet's PodResources API lists healthy devices only).
    offered_by(&client, &["node-a", "node-b"], &stays_resource).await;
    let broker_kubelet = kubelet_of(&kubelets, &broker_before);
    assert!(holds(broker_kubelet, &stays_resource).await, "{}", logs());

    // The API server goes away for 30 s; meanwhile one device leaves, one appears.
    let outage = Instant::now();
    let stopped = StoppedApiServer::stop(&cluster);
    drop(goes);
    let new = device(&new_addr.to_string()).await;
    let mut checks = 0;
    while outage.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The processes are up, and the kubelet still holds the device of the broker.
        for a in &agents {
            assert!(a.get("/healthz").0.contains("200"), "{}", logs());
        }
        assert!(controller.get("/healthz").0.contains("200"), "{}", logs());
        assert!(
            holds(broker_kubelet, &stays_resource).await,
            "{} lost {stays_resource} during the outage\n{}",
            broker_kubelet.node,
            logs()
        );
        checks += 1;
    }
    assert!(checks >= 5);
    stopped.start(&cluster);
    let outage_seconds = outage.elapsed().as_secs_f64();
    let back = Instant::now();

    // They catch up: the Instances are the devices present, each with its broker.
    let (after, broker_after) = settle(
        150,
        &format!("the Instances and brokers of the devices present (ports {p_stays}, {p_new}; {p_goes} gone)"),
        logs,
        || async {
            let not_yet = Err(describe(&client, "outage").await);
            let (Some(list), Some(b)) =
                (instances(&client, "outage").await, brokers(&client, "outage").await)
            else {
                return not_yet;
            };
            let ports: Vec<u16> = list.iter().map(|(p, _)| *p).collect();
            let mut want = vec![p_stays, p_new];
            want.sort();
            let both = ["node-a".to_string(), "node-b".to_string()];
            if ports != want || !list.iter().all(|(_, i)| nodes_of(i) == both) || b.len() != 2 {
                return not_yet;
            }
            let stayed = &list.iter().find(|(p, _)| *p == p_stays).unwrap().1;
            let added = &list.iter().find(|(p, _)| *p == p_new).unwrap().1;
            match (running_broker(&b, added), running_broker(&b, stayed)) {
                (Some(_), Some(broker)) => Ok((stayed.clone(), broker.clone())),
                _ => not_yet,
            }
        },
    )
    .await;
    eprintln!(
        "outage: the API server was away for {outage_seconds:.1} s; state caught up {:.1} s after it was ready",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(after.uid(), before.uid(), "the Instance was recreated");
    assert_eq!(
        broker_after.uid(),
        broker_before.uid(),
        "the broker of the device that stayed was replaced\n{}",
        logs()
    );
    // The broker of the gone device is removed: deleted (above), then stopped by its
    // kubelet and gone from the API server (terminating pods count here).
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    settle(
        30,
        "the broker of the gone device removed from the API server",
        logs,
        || async {
            let left: Vec<String> = pods
                .list(&ListParams::default().labels("dowser.dev/configuration=outage"))
                .await
                .map_err(|e| e.to_string())?
                .items
                .iter()
                .map(|p| {
                    let deleting = p.metadata.deletion_timestamp.is_some();
                    format!("{} (phase {}, deleting {deleting})", p.name_any(), phase(p))
                })
                .collect();
            if left.len() == 2 {
                Ok(())
            } else {
                Err(format!("broker pods {left:?}"))
            }
        },
    )
    .await;
    // Nothing crashed or stopped serving.
    for a in &agents {
        assert!(a.get("/healthz").0.contains("200"));
        assert!(!a.log().contains("panicked"), "{}", logs());
    }
    assert!(controller.get("/healthz").0.contains("200"));
    assert!(holds(kubelet_of(&kubelets, &broker_after), &resource(&after)).await);
    offered_by(&client, &["node-a", "node-b"], &resource(&after)).await;
    drop(new);
    drop(stays);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_the_api_server_keeps_its_instances() {
    let _serial = common::serial().await;
    let cluster = Cluster::start();
    cluster.apply_crds();
    let client = cluster.client().await;
    // The kubelet posts its status every second (its nodeStatusUpdateFrequency; 10 s by
    // default): brokers are scheduled as soon as the Node lists their device.
    let node_a = cluster.fake_kubelet_with("node-a", &[], STATUS_EVERY_SECOND);
    let node_b = cluster.fake_kubelet_with("node-b", &[], STATUS_EVERY_SECOND);
    let agent_a = Agent::start(&cluster, &node_a);
    // node-b's agent reaches the API server through a proxy the test can cut.
    let direct = cluster.service_account_kubeconfig("dowser-agent");
    let proxy = Proxy::start(outage::server_addr(&direct)).await;
    let scratch = tempfile::tempdir().unwrap();
    let via = outage::kubeconfig_via(
        &direct,
        proxy.addr,
        &scratch.path().join("agent-b.kubeconfig"),
    );
    let mut agent_b = ProxiedAgent::start(&node_b, &via);
    let controller = ControllerProcess::start(&cluster, scratch.path());
    let logs = |b: &ProxiedAgent| {
        format!(
            "--- agent node-a ---\n{}\n--- agent node-b ---\n{}\n--- controller ---\n{}",
            agent_a.log(),
            b.log(),
            controller.log()
        )
    };

    // A device both nodes see, and devices only node-b sees: one stays, one leaves during
    // the partition, one appears during it.
    let shared = device("127.0.0.1:0").await;
    let stays = device("127.0.0.1:0").await;
    let leaves = device("127.0.0.1:0").await;
    let new_addr = free_addr();
    let (p_stays, p_leaves, p_new) = (stays.addr.port(), leaves.addr.port(), new_addr.port());
    apply(&client, config("plant", &[shared.addr.port()], None)).await;
    apply(
        &client,
        config("line", &[p_stays, p_leaves, p_new], Some("node-b")),
    )
    .await;
    let both = ["node-a".to_string(), "node-b".to_string()];
    let (shared_before, shared_broker, stays_before, stays_broker) =
        eventually(90, "Instances and Running brokers", || async {
            let plant = instances(&client, "plant").await?;
            let line = instances(&client, "line").await?;
            let (bp, bl) = (
                brokers(&client, "plant").await?,
                brokers(&client, "line").await?,
            );
            if plant.len() != 1 || nodes_of(&plant[0].1) != both || line.len() != 2 {
                return None;
            }
            if !line.iter().all(|(_, i)| nodes_of(i) == ["node-b"]) {
                return None;
            }
            line.iter()
                .all(|(_, i)| running_broker(&bl, i).is_some())
                .then_some(())?;
            let s = line.iter().find(|(p, _)| *p == p_stays)?.1.clone();
            Some((
                plant[0].1.clone(),
                running_broker(&bp, &plant[0].1)?.clone(),
                s.clone(),
                running_broker(&bl, &s)?.clone(),
            ))
        })
        .await;

    // The partition: first refused (connections reset), then blackholed (connections hang),
    // 14 s in all, three times the grace period and more. One device leaves, one appears.
    let partition = Instant::now();
    proxy.set(Link::Refused);
    drop(leaves);
    let new = device(&new_addr.to_string()).await;
    // Refused long enough for the device's grace period to run out: node-b's leave fails.
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.set(Link::Blackholed);
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Nobody took node-b's Instances away while it could not speak.
    let line = instances(&client, "line").await.unwrap();
    let ports: Vec<u16> = line.iter().map(|(p, _)| *p).collect();
    let mut kept = vec![p_stays, p_leaves];
    kept.sort();
    assert_eq!(
        ports, kept,
        "node-b's Instances changed during the partition"
    );
    assert!(line.iter().all(|(_, i)| nodes_of(i) == ["node-b"]));
    let plant = instances(&client, "plant").await.unwrap();
    assert_eq!(plant.len(), 1);
    assert_eq!(
        nodes_of(&plant[0].1),
        both,
        "node-b was dropped from the shared Instance"
    );
    assert!(agent_b.running(), "{}", logs(&agent_b));
    assert!(holds(&node_b, &resource(&stays_before)).await);
    proxy.set(Link::Open);
    let partition_seconds = partition.elapsed().as_secs_f64();
    let healed = Instant::now();

    // Back: node-b reconciles what happened meanwhile.
    eventually(90, "node-b's Instances are the devices it sees", || async {
        let line = instances(&client, "line").await?;
        let bl = brokers(&client, "line").await?;
        let ports: Vec<u16> = line.iter().map(|(p, _)| *p).collect();
        let mut want = vec![p_stays, p_new];
        want.sort();
        (ports == want
            && bl.len() == 2
            && line.iter().all(|(_, i)| running_broker(&bl, i).is_some()))
        .then_some(())
    })
    .await;
    eprintln!(
        "partition: node-b was cut off for {partition_seconds:.1} s; reconciled {:.1} s after",
        healed.elapsed().as_secs_f64()
    );
    let line = instances(&client, "line").await.unwrap();
    let bl = brokers(&client, "line").await.unwrap();
    let stays_after = &line.iter().find(|(p, _)| *p == p_stays).unwrap().1;
    assert_eq!(stays_after.uid(), stays_before.uid());
    assert_eq!(
        running_broker(&bl, stays_after).unwrap().uid(),
        stays_broker.uid(),
        "the broker of node-b's device was replaced\n{}",
        logs(&agent_b)
    );
    let plant = instances(&client, "plant").await.unwrap();
    let bp = brokers(&client, "plant").await.unwrap();
    assert_eq!(plant.len(), 1);
    assert_eq!(plant[0].1.uid(), shared_before.uid());
    assert_eq!(nodes_of(&plant[0].1), both);
    assert_eq!(
        running_broker(&bp, &plant[0].1).map(|p| p.uid()),
        Some(shared_broker.uid()),
        "the shared device's broker was replaced"
    );
    assert!(agent_b.running());
    drop((new, stays, shared));
}

/// Names (`kind/name`, with the namespace when there is one) of objects of these kinds,
/// in every namespace, that match `keep`.
/// For a timeout message: whether a Running pod of a kind is there, else the pods there
/// are and why they are not Running.
fn missing(kind: &str, running: bool, pods: &[Pod]) -> String {
    if running {
        return format!("{kind}: Running");
    }
    let why: Vec<String> = pods
        .iter()
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            let unscheduled = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.status != "True")
                .map(|c| format!("{} {}", c.type_, c.message.unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "{} on {:?}: {} {}",
                p.name_any(),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                phase(p),
                unscheduled
            )
        })
        .collect();
    if why.is_empty() {
        format!("{kind}: MISSING, none created")
    } else {
        format!("{kind}: MISSING, have {why:?}")
    }
}

fn objects(
    cluster: &Cluster,
    kinds: &str,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<String> {
    let out = cluster.kubectl_ok(&["get", kinds, "-A", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| keep(o))
        .map(|o| {
            format!(
                "{}/{} {}",
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default(),
                o["metadata"]["namespace"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

fn dowsers(o: &serde_json::Value) -> bool {
    let text = o.to_string();
    text.contains("dowser")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_leaves_nothing_behind() {
    let _serial = common::serial().await;
    let cluster = Cluster::start();
    // A kubelet keeps a stopped plugin's devices in the Node's capacity for 5 minutes, then
    // 0 for good; these kubelets shorten that grace period (and post their status every
    // second) so that the test sees the end state without waiting.
    let flags = [STATUS_EVERY_SECOND, &["--endpoint-stop-grace-period", "2"]].concat();
    let node_a = cluster.fake_kubelet_with("node-a", &[], &flags);
    let node_b = cluster.fake_kubelet_with("node-b", &[], &flags);
    readme::run(
        &cluster,
        &readme::block("kubectl apply -k deploy/"),
        Some(150),
    );
    // The kubelets run what the DaemonSet and the Deployment asked for.
    let workloads = workloads::Workloads::run(&cluster, &[&node_a, &node_b]).await;
    eventually(60, "two agents and two controllers running", || async {
        (workloads.running().len() == 4).then_some(())
    })
    .await;
    let client = cluster.client().await;

    // A broker pod with its Services, and a broker Job, each for a device both nodes see.
    let served = device("127.0.0.1:0").await;
    let commissioned = device("127.0.0.1:0").await;
    let mut with_services = config("line", &[served.addr.port()], None);
    with_services["spec"]["instanceServiceSpec"] =
        json!({"ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
    with_services["spec"]["configurationServiceSpec"] =
        json!({"ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
    apply(&client, with_services).await;
    let mut with_job = config("commission", &[commissioned.addr.port()], None);
    with_job["spec"]["brokerSpec"] = json!({"brokerJobSpec": {"template": {"spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "commission", "image": "example/commission:1"}],
    }}}});
    apply(&client, with_job).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let job_pods = || async {
        pods.list(&ListParams::default().labels("batch.kubernetes.io/job-name"))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    };
    let job_pod = settle(
        90,
        "a broker Running, a Job's pod Running, Services",
        || workloads.logs(),
        || async {
            let brokers = pods
                .list(&ListParams::default().labels("dowser.dev/slot"))
                .await
                .map_err(|e| format!("cannot list broker pods: {e}"))?
                .items;
            let jobs = job_pods().await;
            let services = objects(&cluster, "services", |o| {
                o["metadata"]["labels"]["dowser.dev/configuration"].is_string()
            });
            let broker = brokers.iter().any(|p| phase(p) == "Running");
            let job_pod = jobs.iter().find(|p| phase(p) == "Running");
            match job_pod {
                Some(p) if broker && services.len() == 2 => Ok(p.clone()),
                _ => Err(format!(
                    "{}; {}; {}; Instances: {}",
                    missing("broker pod", broker, &brokers),
                    missing("Job pod", job_pod.is_some(), &jobs),
                    if services.len() == 2 {
                        "Services: both".to_string()
                    } else {
                        format!("Services: MISSING, have {services:?}")
                    },
                    objects(&cluster, "instances", |_| true).join(", "),
                )),
            }
        },
    )
    .await;
    settle(
        60,
        "every node has dowser's device plugins",
        || workloads.logs(),
        || async {
            let with_plugins: Vec<bool> = [&node_a, &node_b]
                .iter()
                .map(|k| {
                    std::fs::read_dir(k.plugin_dir()).unwrap().any(|e| {
                        e.unwrap()
                            .file_name()
                            .to_string_lossy()
                            .starts_with("dowser-")
                    })
                })
                .collect();
            if with_plugins.iter().all(|b| *b) {
                Ok(())
            } else {
                Err(format!("plugins on node-a, node-b: {with_plugins:?}"))
            }
        },
    )
    .await;

    // The Job's pod is the Job's: the controller leaves it running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now: Vec<_> = job_pods().await.iter().map(|p| p.uid()).collect();
    assert_eq!(
        now,
        [job_pod.uid()],
        "the broker Job's pod was replaced\n{}",
        workloads.logs()
    );

    // The README's uninstall, as written.
    let uninstall = Instant::now();
    readme::run(
        &cluster,
        &readme::block("kubectl delete configurations.dowser.dev"),
        Some(150),
    );
    let uninstall_seconds = uninstall.elapsed().as_secs_f64();

    // The processes were stopped with their pods, and exited cleanly.
    eventually(30, "every dowser process stopped", || async {
        workloads.running().is_empty().then_some(())
    })
    .await;
    let stopped = workloads.stopped();
    assert_eq!(stopped.len(), 4, "{stopped:?}");
    assert!(
        stopped.iter().all(|(_, s)| s.success()),
        "{stopped:?}\n{}",
        workloads.logs()
    );
    // Device plugins are gone from the nodes: no socket left, no dowser.dev device offered.
    for k in [&node_a, &node_b] {
        let left: Vec<String> = std::fs::read_dir(k.plugin_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "kubelet.sock" && n != "kubelet_internal_checkpoint")
            .collect();
        assert!(left.is_empty(), "{}: sockets left {left:?}", k.node);
    }
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    eventually(30, "no dowser.dev resource offered by any node", || async {
        for n in ["node-a", "node-b"] {
            let status = nodes.get(n).await.ok()?.status?;
            for list in [status.capacity?, status.allocatable?] {
                if list
                    .iter()
                    .any(|(r, q)| r.starts_with("dowser.dev/") && q.0 != "0")
                {
                    return None;
                }
            }
        }
        Some(())
    })
    .await;
    // Nothing of dowser's is left in the cluster.
    let crds = cluster.kubectl_ok(&["get", "crd", "-o", "name"]);
    assert!(!crds.contains("dowser.dev"), "{crds}");
    let ns = cluster.kubectl(&["get", "namespace", "dowser-system"], "");
    assert!(!ns.status.success(), "namespace dowser-system is left");
    let rbac = objects(
        &cluster,
        "clusterroles,clusterrolebindings,roles,rolebindings",
        dowsers,
    );
    assert!(rbac.is_empty(), "RBAC left: {rbac:?}");
    let leases = objects(&cluster, "leases", dowsers);
    assert!(leases.is_empty(), "Leases left: {leases:?}");
    let left = objects(
        &cluster,
        "pods,jobs,services,daemonsets,deployments",
        dowsers,
    );
    assert!(left.is_empty(), "left after the uninstall: {left:?}");
    eprintln!("uninstall: the README's commands took {uninstall_seconds:.1} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_api_server_does_not_stall_admission_on_the_node() {
    let _serial = common::serial().await;
    let cluster = Cluster::start();
    cluster.apply_crds();
    let client = cluster.client().await;
    let node_a = cluster.fake_kubelet("node-a", &[]);
    let direct = cluster.service_account_kubeconfig("dowser-agent");
    let proxy = Proxy::start(outage::server_addr(&direct)).await;
    let scratch = tempfile::tempdir().unwrap();
    let via = outage::kubeconfig_via(
        &direct,
        proxy.addr,
        &scratch.path().join("agent.kubeconfig"),
    );
    let agent = ProxiedAgent::start(&node_a, &via);
    let logs = || {
        format!(
            "--- agent ---\n{}\n--- kubelet ---\n{}",
            agent.log(),
            cluster.kubelet_log("node-a")
        )
    };
    let plc = device("127.0.0.1:0").await;
    apply(
        &client,
        modbus_configuration("press", &[plc.addr.port()], 1000),
    )
    .await;
    let instance = common::plant::the_instance_on(&client, "press", "node-a", 60, logs).await;
    let wanted = resource(&instance);
    settle(60, "the device offered", logs, || async {
        if serves(&node_a, &wanted).await {
            Ok(())
        } else {
            Err(format!("{:?}", kubelet_devices(&node_a).await))
        }
    })
    .await;

    // The agent's connection to the API server hangs: a pod for the device needs a claim
    // written, and the kubelet admits pods one at a time.
    proxy.set(Link::Blackholed);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &Default::default(),
        &bound_pod("needs-a-claim", "node-a", Some(&wanted)),
    )
    .await
    .unwrap();
    pods.create(&Default::default(), &bound_pod("plain", "node-a", None))
        .await
        .unwrap();
    let status = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await.map_err(|e| e.to_string())?;
            let s = p.status.clone().unwrap_or_default();
            Ok::<_, String>((
                phase(&p),
                s.reason.unwrap_or_default(),
                s.message.unwrap_or_default(),
            ))
        }
    };
    // Allocate gives up and says why; the pod behind it is admitted.
    let (_, reason, message) = settle(60, "the pod that needs a claim refused", logs, || async {
        let s = status("needs-a-claim").await?;
        if s.0 == "Failed" {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert_eq!(reason, "UnexpectedAdmissionError");
    assert!(
        message.contains("the API server did not answer within 5s"),
        "the refusal does not say what happened: {message}\n{}",
        logs()
    );
    eprintln!("admission while the API server did not answer: {message}");
    let running = |name: &'static str, seconds: u64, what: &'static str| {
        settle(seconds, what, logs, move || async move {
            let s = status(name).await?;
            if s.0 == "Running" {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
    };
    running("plain", 60, "the plain pod Running").await;

    // The link back: a pod for the device is admitted, its slot claimed by node-a.
    proxy.set(Link::Open);
    pods.create(
        &Default::default(),
        &bound_pod("after", "node-a", Some(&wanted)),
    )
    .await
    .unwrap();
    running("after", 90, "a pod for the device Running").await;
    let slots = try_instances(&client, "press").await.unwrap()[0]
        .status
        .clone()
        .unwrap()
        .slots;
    assert_eq!(
        slots,
        std::collections::BTreeMap::from([("0".to_string(), "node-a".to_string())])
    );
    drop(plc);
}
