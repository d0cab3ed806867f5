//! What a node goes through, end to end on a real control plane with fake kubelets, agents,
//! the controller and simulated devices: a node lost for good, a reboot with a local device's
//! broker on it, and hostile devices of every network protocol at once beside good ones.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    agent::Agent,
    cluster::{Cluster, FakeKubelet, STATUS_EVERY_SECOND},
    controller::ControllerProcess,
    eventually,
    plant::{Plant, apply, device, instances, modbus_config, nodes_of, phase, running_brokers},
    settle,
};
use dowser_sim::modbus::UnitConfig;
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{Event, Node, Pod},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

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
    let resource = dowser::naming::instance_resource("default", &plc_instance);

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
    let flags: Vec<&str> = kubelet.flags.iter().map(String::as_str).collect();
    let kubelet = cluster.fake_kubelet_with(&kubelet.node.clone(), &[], &flags);
    let agent = Agent::start(cluster, &kubelet);
    (kubelet, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebooted_node_runs_its_local_devices_broker_again_without_an_admission_loop() {
    let _serial = common::serial().await;
    let cluster = Cluster::start();
    cluster.apply_crds();
    let client = cluster.client().await;
    // The kubelet posts its status every second (its nodeStatusUpdateFrequency; 10 s by
    // default): brokers are scheduled as soon as the Node lists their device.
    let mut kubelet = cluster.fake_kubelet_with("node-a", &[], STATUS_EVERY_SECOND);
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

/// When the kubelet last started a pod's containers (the pod's `startTime` is kept from its
/// first admission, by a real kubelet too).
fn started(p: &Pod) -> Timestamp {
    p.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
        .map(|t| t.0)
        .max()
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The resident memory of a process, in KiB (`VmRSS` of /proc/<pid>/status).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

/// A counter of the agent's /metrics.
fn counter(agent: &Agent, name: &str) -> u64 {
    let (_, body) = agent.get("/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn device_ids(client: &Client, config: &str) -> Vec<String> {
    let mut ids: Vec<String> = instances(client, config)
        .await
        .into_iter()
        .map(|i| i.spec.device_id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_devices_of_every_protocol_at_once_leave_the_agent_healthy_and_bounded() {
    use dowser_sim::{
        Fleet, FleetConfig,
        modbus::{ListenerConfig, Mode as ModbusMode},
        opcua::{Mode as OpcuaMode, ServerConfig},
    };
    let _serial = common::serial().await;
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let unit = |vendor: &str| vec![UnitConfig::identified(1, vendor, "PLC-100", "1.2")];
    let modbus =
        |mode: ModbusMode, vendor: &str| ListenerConfig::device(any, unit(vendor)).with_mode(mode);
    let fleet = Fleet::start(&FleetConfig {
        modbus: vec![
            modbus(ModbusMode::Normal, "Good 1"),
            modbus(ModbusMode::Normal, "Good 2"),
            modbus(ModbusMode::Silent, "Silent"),
            // Answers after 3 s, past the 500 ms request timeout.
            modbus(ModbusMode::Slow, "Slow"),
            modbus(ModbusMode::Garbage, "Garbage"),
            modbus(ModbusMode::Reset, "Reset"),
            modbus(ModbusMode::Exception, "Exception"),
        ],
        opcua: vec![
            ServerConfig::server(any, "Press 1", "urn:plant:press-1"),
            ServerConfig::server(any, "Press 2", "urn:plant:press-2"),
            ServerConfig::server(any, "Dead", "urn:plant:dead").with_mode(OpcuaMode::Silent),
            ServerConfig::server(any, "Noise", "urn:plant:noise").with_mode(OpcuaMode::Garbage),
            // 50,000 endpoints with long URLs.
            ServerConfig::server(any, "Absurd", "urn:plant:absurd").with_mode(OpcuaMode::Absurd),
        ],
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let port = |vendor: &str| {
        fleet
            .modbus
            .iter()
            .find(|l| l.config.units[0].vendor_name.as_deref() == Some(vendor))
            .unwrap()
            .addr
            .port()
    };
    let targets: Vec<String> = fleet.modbus.iter().map(|l| l.addr.to_string()).collect();
    let urls: Vec<String> = fleet.opcua.iter().map(|s| s.url.clone()).collect();

    let cluster = Cluster::start();
    cluster.apply_crds();
    let client = cluster.client().await;
    let kubelet = cluster.fake_kubelet("node-a", &[]);
    let agent = Agent::start(&cluster, &kubelet);
    let logs = || {
        format!(
            "--- configurations\n{}\n--- agent metrics\n{}\n--- agent\n{}",
            cluster.kubectl_ok(&["get", "configurations", "-o", "yaml"]),
            agent.get("/metrics").1,
            agent.log()
        )
    };
    apply(
        &client,
        json!({
            "apiVersion": "dowser.dev/v1alpha1",
            "kind": "Configuration",
            "metadata": {"name": "plcs", "namespace": "default"},
            "spec": {"discovery": {"modbus": {
                "targets": targets,
                "connectTimeoutMs": 500,
                "requestTimeoutMs": 500,
                "intervalSeconds": 1,
            }}},
        }),
    )
    .await;
    apply(
        &client,
        json!({
            "apiVersion": "dowser.dev/v1alpha1",
            "kind": "Configuration",
            "metadata": {"name": "servers", "namespace": "default"},
            "spec": {"discovery": {"opcua": {
                "discoveryUrls": urls,
                "timeoutMs": 1000,
                "intervalSeconds": 1,
            }}},
        }),
    )
    .await;

    // The good devices become Instances; of the hostile ones only the Modbus device that
    // answers identification with an exception does, as a device without identification
    // (its registers work: it is a real device, not a broken one).
    let tcp = |vendor: &str| format!("modbus+tcp://127.0.0.1:{}/1", port(vendor));
    let mut want_modbus = vec![tcp("Good 1"), tcp("Good 2"), tcp("Exception")];
    want_modbus.sort();
    let want_opcua = ["urn:plant:press-1", "urn:plant:press-2"];
    settle(45, "the good devices as Instances", logs, || async {
        let m = device_ids(&client, "plcs").await;
        let o = device_ids(&client, "servers").await;
        if m == want_modbus && o == want_opcua {
            Ok(())
        } else {
            Err(format!("modbus {m:?}, opcua {o:?}"))
        }
    })
    .await;

    // Several more rounds of both Configurations: healthy throughout, memory bounded and
    // flat once warm.
    let rounds = |a: &Agent| counter(a, "dowser_agent_discovery_rounds_total");
    let start = rounds(&agent);
    let mut samples: Vec<(u64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while rounds(&agent) < start + 16 {
        assert!(
            Instant::now() < deadline,
            "only {} rounds in 40 s\n{}",
            rounds(&agent) - start,
            logs()
        );
        let (status, body) = agent.get("/healthz");
        assert!(
            status.contains("200"),
            "/healthz: {status} {body}\n{}",
            logs()
        );
        samples.push((rounds(&agent) - start, rss_kib(agent.pid())));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let peak = samples.iter().map(|(_, r)| *r).max().unwrap();
    let half = |early: bool| {
        samples
            .iter()
            .filter(|(n, _)| (*n < 8) == early)
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(0)
    };
    let (early, late) = (half(true), half(false));
    eprintln!(
        "agent VmRSS over {} rounds: peak {} KiB, rounds 0-7 max {early} KiB, rounds 8-15 max {late} KiB",
        rounds(&agent) - start,
        peak
    );
    assert!(peak < 200 * 1024, "agent VmRSS {peak} KiB\n{samples:?}");
    // One absurd GetEndpoints answer (tens of MiB decoded) moves the peak by up to ~25 MiB
    // whichever round it lands in; a leak of it, or of anything per round, grows past that
    // within 8 rounds.
    assert!(
        late <= early + 32 * 1024,
        "agent VmRSS grows: {early} KiB then {late} KiB\n{samples:?}"
    );
    assert_eq!(device_ids(&client, "plcs").await, want_modbus);
    assert_eq!(device_ids(&client, "servers").await, want_opcua);
    assert_eq!(counter(&agent, "dowser_agent_discovery_errors_total"), 0);
}

/// The `dowser.dev/` entries of a Node: name → (capacity, allocatable).
fn dowser_resources(node: &Node) -> BTreeMap<String, (Option<String>, Option<String>)> {
    let mut out: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    let status = node.status.clone().unwrap_or_default();
    for (name, q) in status.capacity.unwrap_or_default() {
        if name.starts_with("dowser.dev/") {
            out.entry(name).or_default().0 = Some(q.0);
        }
    }
    for (name, q) in status.allocatable.unwrap_or_default() {
        if name.starts_with("dowser.dev/") {
            out.entry(name).or_default().1 = Some(q.0);
        }
    }
    out
}

/// Devices that come and go by the thousand (BLE and mDNS churn) leave nothing on the Node:
/// a kubelet never removes a device-plugin resource (it sets a forgotten one to 0 and keeps
/// it), so the agent removes the entries whose plugins are gone, and the Node carries only
/// live resources again. The fake kubelet forgets a stopped plugin after 5 s instead of the
/// kubelet's 5 minutes and posts its status every second; the agent looks every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_devices_that_come_and_go_leave_only_live_resources_on_the_node() {
    use dowser_sim::modbus::{ListenerConfig, serve};
    let _serial = common::serial().await;
    // 1,000 devices: 250 addresses × unit ids 1-4; and one device that stays.
    let mut fleet = ListenerConfig::device(
        "127.201.19.1:15020".parse().unwrap(),
        (1..=4)
            .map(|u| UnitConfig::identified(u, "Acme", "BLE-ish", "1.0"))
            .collect(),
    );
    fleet.count = 250;
    let churn = serve(&fleet).await.unwrap();
    let stays = device("127.0.0.1:0").await;

    let cluster = Cluster::start();
    cluster.apply_crds();
    let client = cluster.client().await;
    let kubelet = cluster.fake_kubelet_with(
        "node-a",
        &[],
        &[
            "--node-status-update-frequency",
            "1",
            "--endpoint-stop-grace-period",
            "5",
        ],
    );
    let agent = Agent::start_with(
        &cluster,
        &kubelet,
        "info,kube=warn",
        &["--node-status-sweep-seconds", "1"],
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let logs = || {
        let log = agent.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        format!(
            "--- agent (last lines)\n{}\n--- kubelet\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            cluster
                .kubelet_log("node-a")
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    apply(
        &client,
        json!({
            "apiVersion": "dowser.dev/v1alpha1",
            "kind": "Configuration",
            "metadata": {"name": "churn", "namespace": "default"},
            "spec": {
                "discovery": {"modbus": {
                    "targets": ["127.201.19.1-127.201.19.250"],
                    "ports": [15020],
                    "unitIds": ["1-4"],
                    "intervalSeconds": 2,
                    "requestTimeoutMs": 500,
                }},
                "capacity": 1,
                "offlineGracePeriodSeconds": 2,
            },
        }),
    )
    .await;
    apply(&client, modbus_config("stays", stays.addr.port(), None)).await;

    // 1,000 device resources, the churn Configuration's, and the two of the device that stays.
    settle(
        300,
        "1,003 dowser.dev/ resources allocatable",
        logs,
        || async {
            let node = nodes.get("node-a").await.map_err(|e| e.to_string())?;
            let live = dowser_resources(&node)
                .values()
                .filter(|(_, a)| a.as_deref().is_some_and(|a| a != "0"))
                .count();
            (live == 1003)
                .then_some(())
                .ok_or(format!("{live} allocatable"))
        },
    )
    .await;
    assert_eq!(instances(&client, "churn").await.len(), 1000);

    // The devices go: their Instances after the offline grace period, their plugins with them.
    let gone = Instant::now();
    drop(churn);
    settle(300, "the 1,000 Instances deleted", logs, || async {
        let left = instances(&client, "churn").await.len();
        (left == 0).then_some(()).ok_or(format!("{left} Instances"))
    })
    .await;
    let deleted = gone.elapsed().as_secs_f64();
    // Their plugins stopped with them. The kubelet forgets a stopped plugin only after its
    // grace period (5 s here) and writes back, meanwhile, what it still tracks: judge once it
    // has forgotten the last ones and posted its status since.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let api = &nodes;
    let clean = move |what: &'static str| async move {
        let node = api.get("node-a").await.map_err(|e| e.to_string())?;
        let resources = dowser_resources(&node);
        let stale = resources
            .values()
            .filter(|(_, a)| a.as_deref() != Some("1"))
            .count();
        (resources.len() == 2 && stale == 0)
            .then_some(())
            .ok_or(format!(
                "{what}: {} dowser.dev/ resources, {stale} of them not allocatable",
                resources.len()
            ))
    };
    settle(
        300,
        "only the resources of the device that stays on the node",
        logs,
        || clean("on the node"),
    )
    .await;
    eprintln!(
        "1,000 devices gone → Instances deleted after {deleted:.1} s, only live resources on the node after {:.1} s",
        gone.elapsed().as_secs_f64()
    );
    // And stays so: the kubelet's next posts write none of them back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    clean("3 s later").await.unwrap();
    // What stays is the device that stays: its Instance's resource and its Configuration's.
    assert_eq!(instances(&client, "stays").await.len(), 1);
    drop(stays);
}
