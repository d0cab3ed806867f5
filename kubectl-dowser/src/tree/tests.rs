use super::*;
use serde_json::json;

/// 2025-01-01T00:00:00Z, and the time the objects below were made.
const NOW: i64 = 1_735_689_600;
const MADE: &str = "2024-12-31T23:55:00Z";

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": MADE})
}

fn configuration(name: &str, approval: &str) -> Configuration {
    from(json!({
        "apiVersion": "dowser.dev/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": MADE},
        "spec": {
            "discovery": {"modbus": {"targets": ["10.0.7.3"]}},
            "approval": approval,
        },
        "status": {
            "conditions": [
                condition("Accepted", "True", "Valid", "the Configuration is valid"),
                condition("Ready", "False", "BrokersMissing", "1 of 2 brokers running"),
            ],
            "instances": 2, "brokers": 1, "pendingApprovals": 1,
            "resource": format!("dowser.dev/default.{name}"),
            "nodes": [
                {"node": "node-b", "devices": 2},
                {"node": "node-a", "devices": 2, "problems": ["10.0.7.9:502: refused the unit id"]},
                {"node": "node-c", "devices": 0, "error": "no route to 10.0.7.0/24"},
            ],
        },
    }))
}

fn instance(name: &str, config: &str, approved: Option<(&str, &str)>) -> Instance {
    let conditions: Vec<serde_json::Value> = approved
        .map(|(reason, message)| {
            let status = if reason == "Approved" {
                "True"
            } else {
                "False"
            };
            condition("Approved", status, reason, message)
        })
        .into_iter()
        .collect();
    from(json!({
        "apiVersion": "dowser.dev/v1alpha1",
        "kind": "Instance",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": MADE,
                     "labels": {"dowser.dev/configuration": config}},
        "spec": {"configurationName": config, "deviceId": format!("modbus+tcp://{name}:502/1"),
                 "shared": true, "capacity": 2},
        "status": {
            "nodes": ["node-b", "node-a"],
            "slots": {"0": "node-a", "1": "node-c"},
            "resource": format!("dowser.dev/default_{name}"),
            "identity": "0123456789abcdef0123456789abcdef",
            "conditions": conditions,
        },
    }))
}

fn pod(name: &str, config: &str, instance: Option<&str>, slot: Option<&str>, node: &str) -> Pod {
    let mut labels = json!({"dowser.dev/configuration": config});
    if let Some(i) = instance {
        labels["dowser.dev/instance"] = json!(i);
    }
    if let Some(s) = slot {
        labels["dowser.dev/slot"] = json!(s);
    }
    from(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels,
                     "creationTimestamp": MADE, "annotations": {"dowser.dev/node": node}},
        "spec": {"nodeName": node, "containers": [{"name": "broker", "image": "b"}]},
        "status": {"phase": "Running", "podIP": "10.244.0.7",
                   "containerStatuses": [{"name": "broker", "image": "b", "imageID": "",
                                          "ready": true, "restartCount": 0}]},
    }))
}

fn service(name: &str, config: &str, instance: Option<&str>) -> Service {
    let mut labels = json!({"dowser.dev/configuration": config});
    if let Some(i) = instance {
        labels["dowser.dev/instance"] = json!(i);
    }
    from(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels,
                     "creationTimestamp": MADE},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.12",
                 "ports": [{"port": 80, "protocol": "TCP"}]},
    }))
}

/// A Manual Configuration with an approved device (a broker on node-a in slot 0, slot 1
/// held by node-c, which no longer sees it) and one waiting; its Service; a pod of an
/// Instance that is gone; and objects of another Configuration and namespace.
fn plant() -> Objects {
    let mut elsewhere = pod("plc-0", "gated", Some("gated-aaaa"), Some("0"), "node-a");
    elsewhere.metadata.namespace = Some("plant".into());
    Objects {
        configurations: vec![configuration("gated", "Manual")],
        instances: vec![
            instance(
                "gated-bbbb",
                "gated",
                Some((
                    "Pending",
                    "waiting for approval: kubectl dowser approve gated-bbbb",
                )),
            ),
            instance(
                "gated-aaaa",
                "gated",
                Some(("Approved", "approved by alice")),
            ),
            instance("other-cccc", "other", None),
        ],
        pods: vec![
            pod(
                "gated-aaaa-0",
                "gated",
                Some("gated-aaaa"),
                Some("0"),
                "node-a",
            ),
            pod(
                "gated-gone-0",
                "gated",
                Some("gated-gone"),
                Some("0"),
                "node-b",
            ),
            pod(
                "other-cccc-0",
                "other",
                Some("other-cccc"),
                Some("0"),
                "node-a",
            ),
            elsewhere,
        ],
        jobs: vec![],
        services: vec![
            service("gated-aaaa-svc", "gated", Some("gated-aaaa")),
            service("gated-svc", "gated", None),
        ],
    }
}

#[test]
fn the_model_puts_each_object_under_what_it_belongs_to() {
    let trees = build(&plant());
    assert_eq!(trees.len(), 1);
    let t = &trees[0];
    assert_eq!(
        (t.namespace.as_str(), t.name.as_str()),
        ("default", "gated")
    );
    assert_eq!(t.approval, Approval::Manual);
    assert_eq!(
        (t.instances, t.brokers, t.pending),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(
        t.discovery
            .iter()
            .map(|d| d.node.as_str())
            .collect::<Vec<_>>(),
        ["node-a", "node-b", "node-c"]
    );
    let names: Vec<&str> = t.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        ["gated-aaaa", "gated-bbbb"],
        "other Configurations' left out"
    );

    let a = &t.devices[0];
    assert_eq!(
        a.approval,
        ApprovalState::Approved {
            message: "approved by alice".into()
        }
    );
    let nodes: Vec<(&str, bool)> = a.nodes.iter().map(|n| (n.name.as_str(), n.sees)).collect();
    assert_eq!(
        nodes,
        [("node-a", true), ("node-b", true), ("node-c", false)]
    );
    let on_a = &a.nodes[0].slots;
    assert_eq!(on_a.len(), 1);
    assert_eq!((on_a[0].slot.as_str(), on_a[0].claimed), ("0", true));
    assert_eq!(on_a[0].pods[0].name, "gated-aaaa-0");
    assert_eq!(on_a[0].pods[0].health, Health::Good);
    assert!(a.nodes[1].slots.is_empty());
    assert_eq!(a.nodes[2].slots[0].slot, "1");
    assert!(a.nodes[2].slots[0].pods.is_empty());
    assert_eq!(a.services[0].name, "gated-aaaa-svc");
    assert!(a.pods.is_empty() && a.jobs.is_empty());

    assert!(matches!(
        t.devices[1].approval,
        ApprovalState::Pending { .. }
    ));
    // The Configuration's Service, and the pod of an Instance no longer there.
    assert_eq!(t.services.len(), 1);
    assert_eq!(t.services[0].name, "gated-svc");
    assert_eq!(t.pods.len(), 1);
    assert_eq!(t.pods[0].name, "gated-gone-0");
}

#[test]
fn the_tree_reads_in_one_screen() {
    let text = render(&lines(&build(&plant()), false), &Style::default(), NOW);
    let want = "\
NAME                         STATE       AGE   DETAILS
Configuration/gated          NotReady    5m    Accepted=True Ready=False, 2 instances, 1 broker, 1 pending approval (Manual)
├─Discovery                  Failing           3 nodes, 4 seen
│ ├─Node/node-a              Problems          2 devices
│ │ └─problem                                  10.0.7.9:502: refused the unit id
│ ├─Node/node-b              Ok                2 devices
│ └─Node/node-c              Error             0 devices, no route to 10.0.7.0/24
├─Instance/gated-aaaa        Approved    5m    modbus+tcp://gated-aaaa:502/1, seen by 2, slots 2/2 held, approved by alice
│ ├─Node/node-a              Sees
│ │ └─Slot/0                 Held              by Pod/gated-aaaa-0
│ │   └─Pod/gated-aaaa-0     Running     5m    1/1 ready
│ ├─Node/node-b              Sees
│ ├─Node/node-c              Gone              no longer sees the device; holds a slot
│ │ └─Slot/1                 Held              by a pod of this node that is not a broker
│ └─Service/gated-aaaa-svc   ClusterIP   5m    10.96.0.12, 80/TCP
├─Instance/gated-bbbb        Pending     5m    modbus+tcp://gated-bbbb:502/1, seen by 2, slots 2/2 held, waiting for approval: kubectl dowser approve gated-bbbb
│ ├─Node/node-a              Sees
│ │ └─Slot/0                 Held              by a pod of this node that is not a broker
│ ├─Node/node-b              Sees
│ └─Node/node-c              Gone              no longer sees the device; holds a slot
│   └─Slot/1                 Held              by a pod of this node that is not a broker
├─Pod/gated-gone-0           Running     5m    1/1 ready
└─Service/gated-svc          ClusterIP   5m    10.96.0.12, 80/TCP
";
    assert_eq!(text, want, "\n{text}");
}

#[test]
fn wide_says_more_and_all_namespaces_adds_their_column() {
    let style = Style {
        all_namespaces: true,
        ..Style::default()
    };
    let text = render(&lines(&build(&plant()), true), &style, NOW);
    let mut rows = text.lines();
    assert!(rows.next().unwrap().starts_with("NAMESPACE   NAME"));
    let config = rows.next().unwrap();
    assert!(
        config.starts_with("default     Configuration/gated"),
        "{config}"
    );
    assert!(
        config.contains("1 of 2 brokers running, resource dowser.dev/default.gated"),
        "{config}"
    );
    assert!(text.contains(
        "shared, resource dowser.dev/default_gated-aaaa, identity 0123456789abcdef0123456789abcdef"
    ));
    assert!(text.contains("1/1 ready, node node-a, ip 10.244.0.7"));
    // Nodes and slots are no objects of the namespace.
    assert!(
        text.lines()
            .any(|l| l.starts_with("            │ ├─Node/node-a")),
        "{text}"
    );
}

#[test]
fn colour_paints_the_state_and_keeps_the_columns() {
    let style = Style {
        colour: true,
        ..Style::default()
    };
    let text = render(&lines(&build(&plant()), false), &style, NOW);
    assert!(
        text.contains("\x1b[1mConfiguration/gated\x1b[0m          \x1b[33mNotReady\x1b[0m    5m"),
        "{text}"
    );
    assert!(text.contains("\x1b[32mApproved\x1b[0m    5m"));
    assert!(text.contains("\x1b[31mError\x1b[0m"));
    assert!(
        text.contains("   ClusterIP   5m"),
        "plain states are not painted"
    );
    let plain = render(&lines(&build(&plant()), false), &Style::default(), NOW);
    assert!(!plain.contains('\x1b'));
}

#[test]
fn an_automatic_device_and_a_job_broker_with_its_pod() {
    let config = configuration("jobs", "Automatic");
    let mut i = instance("jobs-aaaa", "jobs", None);
    i.status.as_mut().unwrap().slots.clear();
    let job: Job = from(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "jobs-aaaa-0a1b2c3d4e", "namespace": "default", "uid": "j1",
                     "labels": {"dowser.dev/configuration": "jobs", "dowser.dev/instance": "jobs-aaaa"}},
        "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    }));
    let mut job_pod = pod(
        "jobs-aaaa-0a1b2c3d4e-x7k2p",
        "jobs",
        Some("jobs-aaaa"),
        None,
        "node-b",
    );
    job_pod.metadata.owner_references = Some(vec![from(json!({
        "apiVersion": "batch/v1", "kind": "Job", "name": "jobs-aaaa-0a1b2c3d4e", "uid": "j1",
    }))]);
    let status = job_pod.status.as_mut().unwrap();
    status.phase = Some("Succeeded".into());
    status.container_statuses.as_mut().unwrap()[0].ready = false;
    let objects = Objects {
        configurations: vec![config],
        instances: vec![i],
        pods: vec![job_pod],
        jobs: vec![job],
        services: vec![],
    };
    let trees = build(&objects);
    let d = &trees[0].devices[0];
    assert_eq!(d.approval, ApprovalState::Automatic);
    assert_eq!(d.jobs.len(), 1);
    assert_eq!(d.jobs[0].status, "Complete");
    assert_eq!(d.jobs[0].pods[0].status, "Succeeded");
    assert!(d.pods.is_empty(), "a Job's pod is under its Job");
    let text = render(&lines(&trees, false), &Style::default(), NOW);
    assert!(
        text.contains("  └─Job/jobs-aaaa-0a1b2c3d4e           Complete"),
        "{text}"
    );
    assert!(text.contains("0 active, 1 succeeded, 0 failed"), "{text}");
    assert!(
        text.contains("    └─Pod/jobs-aaaa-0a1b2c3d4e-x7k2p   Succeeded   5m    0/1 ready"),
        "{text}"
    );
    assert!(
        text.contains("└─Instance/jobs-aaaa                   Automatic"),
        "{text}"
    );
}

#[test]
fn a_broker_placed_before_its_node_claimed_the_slot_and_pod_states() {
    let config = configuration("gated", "Automatic");
    let mut i = instance("gated-aaaa", "gated", None);
    i.status.as_mut().unwrap().slots.clear();
    let mut waiting = pod(
        "gated-aaaa-1",
        "gated",
        Some("gated-aaaa"),
        Some("1"),
        "node-b",
    );
    let status = waiting.status.as_mut().unwrap();
    status.phase = Some("Pending".into());
    let c = &mut status.container_statuses.as_mut().unwrap()[0];
    c.ready = false;
    c.state = Some(from(json!({"waiting": {"reason": "ContainerCreating"}})));
    let mut crashing = pod(
        "gated-aaaa-0",
        "gated",
        Some("gated-aaaa"),
        Some("0"),
        "node-a",
    );
    let c = &mut crashing
        .status
        .as_mut()
        .unwrap()
        .container_statuses
        .as_mut()
        .unwrap()[0];
    c.ready = false;
    c.restart_count = 4;
    c.state = Some(from(json!({"waiting": {"reason": "CrashLoopBackOff"}})));
    let mut leaving = pod(
        "gated-aaaa-2",
        "gated",
        Some("gated-aaaa"),
        Some("2"),
        "node-a",
    );
    leaving.metadata.deletion_timestamp = Some(from(json!(MADE)));
    let objects = Objects {
        configurations: vec![config],
        instances: vec![i],
        pods: vec![waiting, crashing, leaving],
        ..Objects::default()
    };
    let d = &build(&objects)[0].devices[0];
    let on_b = &d.nodes[1];
    assert_eq!(on_b.name, "node-b");
    assert!(!on_b.slots[0].claimed);
    let p = &on_b.slots[0].pods[0];
    assert_eq!(
        (p.status.as_str(), p.health),
        ("ContainerCreating", Health::Waiting)
    );
    let on_a: Vec<(&str, &str, Health)> = d.nodes[0]
        .slots
        .iter()
        .map(|s| (s.slot.as_str(), s.pods[0].status.as_str(), s.pods[0].health))
        .collect();
    assert_eq!(
        on_a,
        [
            ("0", "CrashLoopBackOff", Health::Bad),
            ("2", "Terminating", Health::Waiting)
        ]
    );
    let text = render(&lines(&build(&objects), false), &Style::default(), NOW);
    assert!(
        text.contains("Unclaimed") && text.contains("not claimed by this node yet"),
        "{text}"
    );
    assert!(text.contains("0/1 ready, 4 restarts"), "{text}");
}

#[test]
fn json_and_yaml_hold_the_configuration_then_its_objects() {
    let items = involved(&plant()).unwrap();
    let kinds: Vec<String> = items
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["kind"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Configuration/gated",
            "Instance/gated-aaaa",
            "Instance/gated-bbbb",
            "Pod/gated-aaaa-0",
            "Pod/gated-gone-0",
            "Service/gated-aaaa-svc",
            "Service/gated-svc",
        ]
    );
    assert_eq!(items[0]["apiVersion"], "dowser.dev/v1alpha1");
}
