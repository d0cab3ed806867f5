//! Reliability and security end to end, on a real control plane with fake kubelets, agents
//! and the controller as processes: Secret values stay secret, a flapping device restarts
//! no broker.

mod common;

use std::process::Command;

use common::{
    agent::Agent,
    cluster::{Cluster, STATUS_EVERY_SECOND},
    controller::ControllerProcess,
    eventually,
    plant::{apply, device, instances, modbus_config, running_brokers},
};
use dowser::crd::Configuration;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, ResourceExt, api::PostParams};
use serde_json::json;

/// Distinctive values that must never show up outside the Secret.
const USER: &str = "u-5e7a1c-plc-operator";
const PASSWORD: &str = "p-9b2d44-first-password";
const ROTATED: &str = "p-31c8e0-rotated-password";

/// Each value as it is, and as base64 (the form a Secret's `data` takes in a dump).
fn forms(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| {
            let b64 = serde_json::to_value(ByteString(v.as_bytes().to_vec())).unwrap();
            [v.to_string(), b64.as_str().unwrap().to_string()]
        })
        .collect()
}

fn with_broker(mut config: serde_json::Value) -> serde_json::Value {
    config["spec"]["brokerSpec"] =
        json!({"brokerPodSpec": {"containers": [{"name": "broker", "image": "example/broker:1"}]}});
    config
}

/// `dowser discover` as a process: (exit success, stdout + stderr).
fn discover(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dowser"))
        .arg("discover")
        .args(args)
        .env("DOWSER_LOG", "debug")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_leave_the_secret() {
    let _serial = common::serial().await;
    let cluster = Cluster::start();
    cluster.apply_crds();
    let client = cluster.client().await;
    // The kubelet posts its status every second (its nodeStatusUpdateFrequency; 10 s by
    // default): brokers are scheduled as soon as the Node lists their device.
    let kubelet = cluster.fake_kubelet_with("node-a", &[], STATUS_EVERY_SECOND);
    let agent = Agent::start_logging(&cluster, &kubelet, "debug");
    let scratch = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::replica_logging(&cluster, scratch.path(), "c-0", "debug");
    let sim = device("127.0.0.1:0").await;

    // A Secret with the user name only; the Configuration also wants the password.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret = |data: serde_json::Value| -> Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "plc-creds", "namespace": "default"},
            "stringData": data,
        }))
        .unwrap()
    };
    secrets
        .create(&PostParams::default(), &secret(json!({"user": USER})))
        .await
        .unwrap();
    let mut config = with_broker(modbus_config("guarded", sim.addr.port(), None));
    config["spec"]["properties"] = json!([
        {"name": "USER", "valueFrom": {"secretKeyRef": {"name": "plc-creds", "key": "user"}}},
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "plc-creds", "key": "password"}}},
    ]);
    apply(&client, config.clone()).await;

    // The error path: the node says which key is missing, and nothing else.
    let configs: Api<Configuration> = Api::namespaced(client.clone(), "default");
    eventually(60, "the node reports the missing key", || async {
        let nodes = configs.get("guarded").await.ok()?.status?.nodes;
        nodes
            .iter()
            .any(|n| {
                n.error.as_deref().is_some_and(|e| {
                    e.contains("key \"password\" of Secret \"plc-creds\" not found")
                })
            })
            .then_some(())
    })
    .await;

    // The key appears: discovery, an Instance, a broker.
    let both = |password: &str| secret(json!({"user": USER, "password": password}));
    secrets
        .replace("plc-creds", &PostParams::default(), &both(PASSWORD))
        .await
        .unwrap();
    let first = eventually(90, "a broker Running for the device", || async {
        let b = running_brokers(&Api::namespaced(client.clone(), "default"), "guarded").await;
        (b.len() == 1 && instances(&client, "guarded").await.len() == 1).then_some(b)
    })
    .await;

    // The password is rotated: discovery runs again with it, and the broker is replaced by
    // one that gets it (the kubelet gives a container's restarts its first environment).
    secrets
        .replace("plc-creds", &PostParams::default(), &both(ROTATED))
        .await
        .unwrap();
    eventually(60, "the agent rediscovers with the new Secret", || async {
        agent
            .log()
            .contains("a referenced Secret or ConfigMap changed")
            .then_some(())
    })
    .await;
    eventually(30, "the node is healthy again", || async {
        let nodes = configs.get("guarded").await.ok()?.status?.nodes;
        nodes
            .iter()
            .any(|n| n.error.is_none() && n.devices == 1)
            .then_some(())
    })
    .await;
    eventually(
        60,
        "a new broker Running for the rotated password",
        || async {
            let b = running_brokers(&Api::namespaced(client.clone(), "default"), "guarded").await;
            (b.len() == 1 && b[0].uid() != first[0].uid()).then_some(())
        },
    )
    .await;

    // `dowser discover` with the values given on the command line, in every output format,
    // and with a value typed without its name.
    let file = scratch.path().join("guarded.yaml");
    std::fs::write(&file, serde_yaml::to_string(&config).unwrap()).unwrap();
    let f = file.to_str().unwrap();
    let user = format!("USER={USER}");
    let password = format!("PASSWORD={ROTATED}");
    let mut cli = String::new();
    for output in ["table", "yaml", "json"] {
        let (ok, out) = discover(&[
            "-f",
            f,
            "-o",
            output,
            "--property",
            &user,
            "--property",
            &password,
        ]);
        assert!(ok, "dowser discover -o {output}: {out}");
        assert!(out.contains("MODBUS_VENDOR_NAME"), "{out}");
        cli.push_str(&out);
    }
    let (ok, out) = discover(&["-f", f, "--property", &user, "--property", PASSWORD]);
    assert!(!ok && out.contains("has no '='"), "{out}");
    cli.push_str(&out);
    // Without the values: the message names what to pass, not a value.
    let (ok, out) = discover(&["-f", f]);
    assert!(!ok && out.contains("--property PASSWORD=VALUE"), "{out}");
    cli.push_str(&out);

    // Everything a user or an operator can read.
    let agent_log = agent.log();
    let controller_log = controller.log();
    assert!(
        agent_log.contains("DEBUG") && controller_log.contains("DEBUG"),
        "the processes log at debug level"
    );
    let dump = cluster.kubectl_ok(&[
        "get",
        "configurations.dowser.dev,instances.dowser.dev,pods,services,events,leases",
        "-A",
        "-o",
        "yaml",
    ]);
    assert!(
        dump.contains("guarded") && dump.contains("Scheduled"),
        "{dump}"
    );
    let places = [
        ("agent log", agent_log),
        ("controller log", controller_log),
        ("kubelet log", cluster.kubelet_log("node-a")),
        (
            "Configurations, Instances, Pods, Services, Events, Leases",
            dump,
        ),
        ("dowser discover", cli),
    ];
    let mut leaks = Vec::new();
    for (place, text) in &places {
        for value in forms(&[USER, PASSWORD, ROTATED]) {
            if text.contains(&value) {
                leaks.push(format!("{value:?} in the {place}"));
            }
        }
    }
    assert!(leaks.is_empty(), "Secret values leaked: {leaks:#?}");
}

/// A counter or gauge of the agent's `/metrics` (the first sample of that name).
fn metric(agent: &Agent, name: &str) -> f64 {
    let (_, body) = agent.get("/metrics");
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_device_restarts_no_broker() {
    let _serial = common::serial().await;
    let cluster = Cluster::start();
    cluster.apply_crds();
    let client = cluster.client().await;
    // The kubelet posts its status every second (its nodeStatusUpdateFrequency; 10 s by
    // default): brokers are scheduled as soon as the Node lists their device.
    let kubelet = cluster.fake_kubelet_with("node-a", &[], STATUS_EVERY_SECOND);
    let agent = Agent::start(&cluster, &kubelet);
    let scratch = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(&cluster, scratch.path());
    let mut sim = Some(device("127.0.0.1:0").await);
    let addr = sim.as_ref().unwrap().addr;

    // Scans every second; a device may be unseen for 5 s before the node lets it go.
    let mut config = with_broker(modbus_config("flappy", addr.port(), None));
    config["spec"]["offlineGracePeriodSeconds"] = json!(5);
    apply(&client, config).await;
    let broker = eventually(90, "a broker Running for the device", || async {
        let b = running_brokers(&Api::namespaced(client.clone(), "default"), "flappy").await;
        (b.len() == 1).then(|| b[0].clone())
    })
    .await;
    let configs: Api<Configuration> = Api::namespaced(client.clone(), "default");
    // Settled: the Configuration's status is Ready with its broker.
    eventually(60, "the Configuration is Ready", || async {
        let s = configs.get("flappy").await.ok()?.status?;
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let instance_before = instances(&client, "flappy").await.remove(0);
    let config_before = configs.get("flappy").await.unwrap();
    let writes_before = metric(&agent, "dowser_agent_api_writes_total");

    // For a minute, the device goes away for a second and comes back for a second. The
    // absence is bounded by the clock, not by a count of samples: on a loaded machine each
    // /metrics read can take hundreds of milliseconds, and ten of them once made an
    // "absence of a second" outlast the 5 s grace period.
    let mut unseen_samples = 0usize;
    let mut longest_absence = std::time::Duration::ZERO;
    for _ in 0..30 {
        drop(sim.take());
        let gone = std::time::Instant::now();
        // Watched while it is gone: does a scan miss it?
        let mut missed = false;
        while gone.elapsed() < std::time::Duration::from_secs(1) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            missed |= metric(&agent, "dowser_agent_devices") == 0.0;
        }
        unseen_samples += usize::from(missed);
        sim = Some(
            dowser_sim::modbus::serve(&dowser_sim::modbus::ListenerConfig::device(
                addr,
                vec![dowser_sim::modbus::UnitConfig::identified(
                    1, "Acme", "PLC-100", "1.2",
                )],
            ))
            .await
            .expect("the device comes back on its address")
            .remove(0),
        );
        longest_absence = longest_absence.max(gone.elapsed());
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    drop(sim);
    let writes = metric(&agent, "dowser_agent_api_writes_total") - writes_before;
    let instance_after = instances(&client, "flappy").await;
    let config_after = configs.get("flappy").await.unwrap();
    let brokers = running_brokers(&Api::namespaced(client.clone(), "default"), "flappy").await;
    let log = format!(
        "--- agent ---\n{}\n--- controller ---\n{}",
        agent.log(),
        controller.log()
    );

    eprintln!(
        "flapping: the device was missed by a scan in {unseen_samples} of 30 absences (the longest {longest_absence:?}); {writes} agent API writes"
    );
    // The test kept its side: no absence as long as the grace period.
    assert!(
        longest_absence < std::time::Duration::from_secs(4),
        "an absence lasted {longest_absence:?}: the test did not flap the device as meant"
    );
    // The agent did see the device missing from scans (the test flapped it for real).
    assert!(
        unseen_samples >= 5,
        "the scans missed the device in only {unseen_samples} of 30 absences"
    );
    // Nothing was rewritten: the Instance and the Configuration are as they were.
    assert_eq!(instance_after.len(), 1, "{log}");
    assert_eq!(instance_after[0].uid(), instance_before.uid());
    assert_eq!(
        instance_after[0].resource_version(),
        instance_before.resource_version(),
        "the Instance was written while the device flapped"
    );
    assert_eq!(
        config_after.resource_version(),
        config_before.resource_version(),
        "the Configuration's status was written while the device flapped"
    );
    assert_eq!(writes, 0.0, "the agent wrote {writes} times\n{log}");
    // The same broker pod ran throughout.
    assert_eq!(brokers.len(), 1, "{log}");
    assert_eq!(
        brokers[0].uid(),
        broker.uid(),
        "the broker was replaced\n{log}"
    );
    let restarts: i32 = brokers[0]
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c.iter().map(|c| c.restart_count).sum())
        .unwrap_or_default();
    assert_eq!(restarts, 0);
}
