//! `kubectl dowser` (the plugin built from `kubectl-dowser/`) run by the real kubectl against a
//! real API server: why each node finds a Configuration's devices or not (the counts real
//! agents report), the tree of a Configuration with a broker, approving as an approver and
//! as the agent, revoking; and what approval is on the control plane: RBAC (who may approve),
//! the API server refusing a forged approver, nothing offered before approval, and another
//! device answering in the approved one's place losing its broker.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::{
    cluster::{Cluster, kubectl_output},
    controller::ControllerProcess,
    eventually,
    plant::{Plant, device, device_of, modbus_config, modbus_configuration, running_brokers},
};
use dowser::crd::{Configuration, DeviceApproval, Instance};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};
use serde_json::json;

/// The plugin: `DOWSER_KUBECTL_DOWSER`, or next to the test binaries (`cargo test
/// --workspace` builds it with its own tests).
fn plugin() -> PathBuf {
    if let Ok(p) = std::env::var("DOWSER_KUBECTL_DOWSER") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("kubectl-dowser");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p kubectl-dowser`",
        bin.display()
    );
    bin
}

/// `kubectl dowser ARGS` as the identity of `kubeconfig`: kubectl finds the plugin on the
/// PATH, as it would once the binary is copied there.
fn kubectl_dowser(cluster: &Cluster, kubeconfig: &Path, args: &[&str]) -> Output {
    let plugin = plugin();
    let mut path = vec![plugin.parent().unwrap().to_path_buf()];
    path.extend(cluster.kubectl.parent().map(Path::to_path_buf));
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut command = Command::new(&cluster.kubectl);
    command
        .arg("dowser")
        .args(args)
        .env("PATH", std::env::join_paths(path).unwrap())
        .env("KUBECONFIG", kubeconfig)
        .env_remove("NO_COLOR");
    let out = kubectl_output(&mut command, "");
    eprintln!(
        "$ kubectl dowser {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_dowser_shows_the_tree_and_approves_and_revokes_as_whoever_runs_it() {
    let _serial = common::serial().await;
    let plant = Plant::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(&plant.cluster, scratch.path());
    let cluster = &plant.cluster;
    let admin = cluster.kubeconfig.clone();
    // A person who decides: a ServiceAccount bound to dowser-approver in the namespace.
    let agent = cluster.service_account_kubeconfig("dowser-agent");
    let (approver, approver_name) = cluster.approver("plant-security", "default");
    let approver_name = approver_name.as_str();

    let sim = device("127.0.0.1:0").await;
    let mut config = modbus_config("gated", sim.addr.port(), None);
    config["spec"]["approval"] = json!("Manual");
    config["spec"]["brokerSpec"] =
        json!({"brokerPodSpec": {"containers": [{"name": "broker", "image": "example/broker:1"}]}});
    config["spec"]["instanceServiceSpec"] =
        json!({"ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
    plant.apply(config).await;
    let instances: Api<Instance> = Api::namespaced(plant.client.clone(), "default");
    let instance = eventually(60, "the Instance waiting for approval", || async {
        let i = plant.instances("gated").await.into_iter().next()?;
        let status = i.status.as_ref()?;
        let pending = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Approved" && c.reason == "Pending");
        (pending && status.nodes.len() == 3).then_some(i)
    })
    .await;
    let name = instance.name_any();
    let identity = instance.status.clone().unwrap().identity.unwrap();

    // Found, visible, waiting: kubectl shows it, no node offers it, nothing pending is lost.
    let configs: Api<Configuration> = Api::namespaced(plant.client.clone(), "default");
    eventually(60, "one pending approval in the status", || async {
        (configs.get("gated").await.ok()?.status?.pending_approvals == Some(1)).then_some(())
    })
    .await;
    let instances_table = cluster.kubectl_ok(&["get", "dwi", "-n", "default"]);
    assert!(instances_table.lines().next().unwrap().contains("APPROVED"));
    assert!(instances_table.contains("Pending"), "{instances_table}");
    let configs_table = cluster.kubectl_ok(&["get", "dwc", "gated", "-n", "default"]);
    let header: Vec<&str> = configs_table
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let row: Vec<&str> = configs_table
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    let column = header
        .iter()
        .position(|h| *h == "PENDING")
        .expect("a PENDING column");
    assert_eq!(row[column], "1", "{configs_table}");
    let resource = dowser::naming::instance_resource("default", &name);
    for node in ["node-a", "node-b", "node-c"] {
        assert_eq!(
            plant.allocatable(node, &resource).await,
            None,
            "{node} offers it"
        );
    }

    // Only the approver role may approve or revoke; no component of dowser holds it.
    let can = |who: &str, verb: &str| {
        let out = cluster.kubectl(
            &[
                "auth",
                "can-i",
                verb,
                "deviceapprovals.dowser.dev",
                "-n",
                "default",
                "--as",
                who,
            ],
            "",
        );
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can(approver_name, "create") && can(approver_name, "delete"));
    for component in ["dowser-agent", "dowser-controller"] {
        let who = format!("system:serviceaccount:dowser-system:{component}");
        assert!(!can(&who, "create"), "{component} may not approve");
        assert!(!can(&who, "delete"), "{component} may not revoke");
    }
    // The record of who approved cannot be forged: the API server refuses another name.
    let forged = json!({
        "apiVersion": "dowser.dev/v1alpha1",
        "kind": "DeviceApproval",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"configurationName": "gated", "deviceId": instance.spec.device_id,
                 "identity": identity, "approvedBy": "alice"},
    });
    let refused = kubectl_output(
        Command::new(&cluster.kubectl).args([
            "--kubeconfig",
            approver.to_str().unwrap(),
            "create",
            "-f",
            "-",
        ]),
        &forged.to_string(),
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && said.contains("spec.approvedBy must name the identity approving"),
        "{said}"
    );

    // Why: a Configuration whose filter leaves the PLC out, beside an address where nothing
    // listens. Each node's agent reports its round; the plugin says why nothing is found.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut picky = modbus_configuration("picky", &[sim.addr.port(), closed_port], 300);
    picky["spec"]["discovery"]["modbus"]["vendorNames"] = json!({"include": ["Other.*"]});
    plant.apply(picky).await;
    eventually(60, "each node's counts of a round of picky", || async {
        let status = configs.get("picky").await.ok()?.status?;
        let counted = status
            .nodes
            .iter()
            .filter(|n| n.last_round.is_some())
            .count();
        (counted == 3).then_some(())
    })
    .await;
    let why = ok(&kubectl_dowser(cluster, &admin, &["why", "picky"]));
    let mut lines = why.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NODE", "DEVICES", "TRIED", "ANSWERED", "DROPPED", "FAILED", "SINCE", "WHY"
        ],
        "{why}"
    );
    for node in ["node-a", "node-b", "node-c"] {
        let line = lines.next().unwrap();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells[..6],
            [node, "0", "2", "1", "vendorNames=1", "0"],
            "{why}"
        );
        assert!(
            line.ends_with("1 of 2 targets answered, none kept: 1 left out by vendorNames"),
            "{why}"
        );
    }
    // The device that is kept says so; wide adds what was silent; -A adds the namespace.
    let gated_why = ok(&kubectl_dowser(
        cluster,
        &admin,
        &["why", "gated", "-o", "wide"],
    ));
    assert!(
        gated_why.lines().next().unwrap().contains("SILENT"),
        "{gated_why}"
    );
    assert_eq!(
        gated_why.matches("1 device found").count(),
        3,
        "{gated_why}"
    );
    let everywhere = ok(&kubectl_dowser(cluster, &admin, &["why", "-A"]));
    assert!(
        everywhere.starts_with("NAMESPACE") && everywhere.contains("CONFIGURATION"),
        "{everywhere}"
    );
    assert_eq!(everywhere.lines().count(), 1 + 6, "{everywhere}");
    // The objects: the Configuration with every node's counts.
    let listed: serde_json::Value = serde_json::from_str(&ok(&kubectl_dowser(
        cluster,
        &admin,
        &["why", "picky", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(listed["kind"], "List");
    assert_eq!(listed["items"][0]["kind"], "Configuration");
    assert_eq!(
        listed["items"][0]["status"]["nodes"][0]["lastRound"]["dropped"]["vendorNames"],
        1
    );
    // Someone who may read Configurations but not Nodes sees every report, and is told
    // what is left out.
    let partial = kubectl_dowser(cluster, &approver, &["why", "picky"]);
    assert!(ok(&partial).contains("vendorNames=1"));
    assert!(
        String::from_utf8_lossy(&partial.stderr)
            .contains("warning: nodes without a report left out"),
        "{}",
        String::from_utf8_lossy(&partial.stderr)
    );
    // A filter the user widens: the next round's counts are in the status at once.
    let mut widened = modbus_configuration("picky", &[sim.addr.port(), closed_port], 300);
    widened["spec"]["discovery"]["modbus"]["vendorNames"] = json!({"include": ["Acme"]});
    plant.apply(widened).await;
    eventually(60, "picky finds the PLC on every node", || async {
        let out = kubectl_dowser(cluster, &admin, &["why", "picky"]);
        (String::from_utf8_lossy(&out.stdout)
            .matches("1 device found")
            .count()
            == 3)
            .then_some(())
    })
    .await;
    configs.delete("picky", &Default::default()).await.unwrap();

    // Waiting: the tree says so and what to do.
    let pending = ok(&kubectl_dowser(cluster, &admin, &["tree", "gated"]));
    assert!(
        pending.contains(&format!("Instance/{name}"))
            && pending.contains("Pending")
            && pending.contains(&format!("kubectl dowser approve {name}")),
        "{pending}"
    );

    // The agent's identity may not approve: the API server's refusal and the way to the role.
    let refused = kubectl_dowser(cluster, &agent, &["approve", &name]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("Error from server (Forbidden)")
            && stderr.contains("resource \"deviceapprovals\" in API group \"dowser.dev\"")
            && stderr.contains("ClusterRole dowser-approver")
            && stderr.contains(
                "create rolebinding dowser-approvers --clusterrole=dowser-approver \
                 --serviceaccount=dowser-system:dowser-agent"
            ),
        "{stderr}"
    );

    // The approver approves: recorded as the approver, and the broker runs.
    let approved = ok(&kubectl_dowser(
        cluster,
        &approver,
        &["approve", &name, "--reason", "commissioned line 3"],
    ));
    assert_eq!(
        approved,
        format!("deviceapproval.dowser.dev/{name} created\n")
    );
    let approvals: Api<DeviceApproval> = Api::namespaced(plant.client.clone(), "default");
    let approval = approvals.get(&name).await.unwrap();
    assert_eq!(approval.spec.approved_by, approver_name);
    assert_eq!(approval.spec.identity, identity);
    assert_eq!(approval.spec.configuration_name, "gated");
    assert_eq!(approval.spec.reason.as_deref(), Some("commissioned line 3"));
    let again = ok(&kubectl_dowser(cluster, &approver, &["approve", &name]));
    assert!(again.contains("unchanged (already approved by"), "{again}");

    let pods: Api<Pod> = Api::namespaced(plant.client.clone(), "default");
    let broker = eventually(90, "the approved device's broker Running", || async {
        running_brokers(&pods, "gated").await.into_iter().next()
    })
    .await;
    let broker_node = broker.spec.as_ref().unwrap().node_name.clone().unwrap();

    // The tree: the device, the nodes that see it, the slot held on the broker's node and
    // the broker in it, its Service.
    let tree = eventually(60, "the tree with the broker in its slot", || async {
        let out = kubectl_dowser(cluster, &admin, &["tree", "gated"]);
        let text = String::from_utf8(out.stdout).ok()?;
        let slot_held = instances
            .get(&name)
            .await
            .ok()?
            .status?
            .slots
            .get("0")
            .is_some_and(|n| *n == broker_node);
        (slot_held
            && text.contains(&format!("Pod/{}", broker.name_any()))
            && text.contains("Running"))
        .then_some(text)
    })
    .await;
    for part in [
        "Configuration/gated".to_string(),
        format!("Instance/{name}"),
        "Approved".into(),
        format!("approved by {approver_name}"),
        "Node/node-a".into(),
        "Node/node-b".into(),
        "Node/node-c".into(),
        "Slot/0".into(),
        format!("by Pod/{}", broker.name_any()),
        format!("Service/{name}-svc"),
    ] {
        assert!(tree.contains(&part), "no {part:?} in\n{tree}");
    }
    assert!(!tree.contains('\x1b'), "no colour into a pipe");
    let lines: Vec<&str> = tree.lines().collect();
    // (The nodes' discovery comes first, then the Instance and the nodes that see it.)
    let instance_line = lines
        .iter()
        .position(|l| l.contains(&format!("Instance/{name}")))
        .unwrap();
    let node_line = instance_line
        + lines[instance_line..]
            .iter()
            .position(|l| l.contains(&format!("─Node/{broker_node}")))
            .unwrap_or_else(|| panic!("{tree}"));
    assert!(lines[node_line + 1].contains("Slot/0"), "{tree}");
    assert!(
        lines[node_line + 2].contains(&format!("Pod/{}", broker.name_any())),
        "{tree}"
    );
    let wide = ok(&kubectl_dowser(
        cluster,
        &admin,
        &["tree", "gated", "-o", "wide"],
    ));
    assert!(wide.contains(&format!("identity {identity}")), "{wide}");

    let json: serde_json::Value = serde_json::from_str(&ok(&kubectl_dowser(
        cluster,
        &admin,
        &["tree", "gated", "-o", "json"],
    )))
    .expect("-o json parses");
    assert_eq!(json["kind"], "List");
    let kinds: Vec<(String, String)> = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_string(),
                i["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("Configuration", "gated".to_string()),
        ("Instance", name.clone()),
        ("Pod", broker.name_any()),
        ("Service", format!("{name}-svc")),
    ] {
        assert!(
            kinds.iter().any(|(k, n)| k == want.0 && *n == want.1),
            "{want:?} not in {kinds:?}"
        );
    }
    let yaml: serde_json::Value = serde_yaml::from_str(&ok(&kubectl_dowser(
        cluster,
        &admin,
        &["tree", "-o", "yaml"],
    )))
    .expect("-o yaml parses");
    assert_eq!(yaml["items"][0]["kind"], "Configuration");

    // Revoked: the approval goes, and the broker with it.
    let revoked = ok(&kubectl_dowser(cluster, &approver, &["revoke", &name]));
    assert_eq!(
        revoked,
        format!("deviceapproval.dowser.dev \"{name}\" deleted\n")
    );
    assert!(approvals.get_opt(&name).await.unwrap().is_none());
    eventually(60, "the broker gone", || async {
        running_brokers(&pods, "gated")
            .await
            .is_empty()
            .then_some(())
    })
    .await;

    // An approval of another identity (the device that answered before) is replaced.
    let stale = json!({
        "apiVersion": "dowser.dev/v1alpha1",
        "kind": "DeviceApproval",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"configurationName": "gated", "deviceId": instance.spec.device_id,
                 "identity": "fedcba9876543210fedcba9876543210", "approvedBy": approver_name},
    });
    let approver_path = approver.to_str().unwrap();
    let created = kubectl_output(
        Command::new(&cluster.kubectl).args(["--kubeconfig", approver_path, "create", "-f", "-"]),
        &stale.to_string(),
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let out = kubectl_dowser(
        cluster,
        &approver,
        &["approve", &format!("instance/{name}"), "-o", "json"],
    );
    let list: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!(
            "deviceapproval.dowser.dev/{name} replaced: the device's identity changed"
        )),
        "{said}"
    );
    assert_eq!(list["items"][0]["spec"]["identity"], identity.as_str());
    assert_eq!(approvals.get(&name).await.unwrap().spec.identity, identity);
    eventually(90, "the broker back", || async {
        (running_brokers(&pods, "gated").await.len() == 1).then_some(())
    })
    .await;

    // Another device answers at the same address: not the one approved. Its broker goes and
    // no node offers it until someone approves it again.
    let listen = sim.addr.to_string();
    drop(sim);
    let _impostor = device_of(&listen, "Evil Corp").await;
    eventually(60, "IdentityChanged", || async {
        let i = instances.get(&name).await.ok()?;
        let c = i
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Approved")?;
        (c.status == "False" && c.reason == "IdentityChanged").then_some(())
    })
    .await;
    eventually(60, "the broker gone", || async {
        running_brokers(&pods, "gated")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    eventually(60, "no node offers the impostor", || async {
        for node in ["node-a", "node-b", "node-c"] {
            let offered = plant.allocatable(node, &resource).await;
            if offered.as_deref().is_some_and(|n| n != "0") {
                return None;
            }
        }
        Some(())
    })
    .await;
    drop(controller);
}
