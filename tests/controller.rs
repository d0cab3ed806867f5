//! `dowser controller` end to end: brokers next to the hardware, Services, status, Events,
//! cleanup; on three fake nodes with agents and simulated devices.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{
    controller::ControllerProcess,
    eventually,
    outage::kubelet_holders,
    plant::{Plant, device, device_of, instances, modbus_config, phase, running_brokers},
    settle,
};
use dowser::crd::Configuration;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;

fn with_broker(mut config: serde_json::Value, capacity: u32) -> serde_json::Value {
    config["spec"]["capacity"] = json!(capacity);
    config["spec"]["brokerSpec"] =
        json!({"brokerPodSpec": {"containers": [{"name": "broker", "image": "example/broker:1"}]}});
    config["spec"]["instanceServiceSpec"] =
        json!({"ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
    config["spec"]["configurationServiceSpec"] =
        json!({"ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
    config
}

/// The nodes the given pods run on.
fn nodes_of_pods<C: FromIterator<String>>(pods: &[Pod]) -> C {
    pods.iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect()
}

/// How many pods and Services of a Configuration exist (any phase).
async fn pods_and_services(
    pods: &Api<Pod>,
    services: &Api<Service>,
    config: &str,
) -> Option<(usize, usize)> {
    let selector = ListParams::default().labels(&format!("dowser.dev/configuration={config}"));
    let p = pods.list(&selector).await.ok()?.items.len();
    let s = services.list(&selector).await.ok()?.items.len();
    Some((p, s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_run_next_to_the_device_and_follow_it() {
    let _serial = common::serial().await;
    let plant = Plant::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(&plant.cluster, scratch.path());
    let sim = device("127.0.0.1:0").await;
    let port = sim.addr.port();
    let mut config = with_broker(modbus_config("plc", port, None), 2);
    config["spec"]["nodeSelector"] =
        json!({"matchExpressions": [{"key": "dowser-test/off", "operator": "DoesNotExist"}]});
    plant.apply(config).await;

    // Capacity 2 on three nodes: two brokers, on two different nodes, with the device's env.
    let pods: Api<Pod> = Api::namespaced(plant.client.clone(), "default");
    // (Nodes join the Instance one after another; brokers placed before all had joined
    // are spread again.)
    let brokers = eventually(90, "two broker pods Running on two nodes", || async {
        let r = running_brokers(&pods, "plc").await;
        let on: BTreeSet<String> = nodes_of_pods(&r);
        (r.len() == 2 && on.len() == 2).then_some(r)
    })
    .await;
    let nodes: BTreeSet<String> = nodes_of_pods(&brokers);
    assert_eq!(nodes.len(), 2, "brokers on {nodes:?}\n{}", controller.log());
    for b in &brokers {
        let allocations: serde_json::Value =
            serde_json::from_str(&b.annotations()["fake-kubelet.dowser.dev/allocations"]).unwrap();
        assert_eq!(
            allocations["broker"][0]["envs"]["MODBUS_PORT"],
            port.to_string()
        );
        assert_eq!(allocations["broker"][0]["envs"]["POLL_MS"], "250");
    }
    let instance = plant.instances("plc").await.remove(0);
    let services: Api<Service> = Api::namespaced(plant.client.clone(), "default");
    let per_instance = services
        .get(&format!("{}-svc", instance.name_any()))
        .await
        .unwrap();
    assert_eq!(
        per_instance.spec.unwrap().selector.unwrap()["dowser.dev/instance"],
        instance.name_any()
    );
    let per_config = services.get("plc-svc").await.unwrap();
    assert_eq!(
        per_config.spec.unwrap().selector.unwrap()["dowser.dev/configuration"],
        "plc"
    );
    let configs: Api<Configuration> = Api::namespaced(plant.client.clone(), "default");
    eventually(60, "Ready with two brokers in the status", || async {
        let s = configs.get("plc").await.ok()?.status?;
        let ready = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let accepted = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True");
        (ready && accepted && s.brokers == Some(2) && s.instances == Some(1)).then_some(())
    })
    .await;

    // One of the broker nodes stops seeing the device: its broker moves to the third node.
    let moved_from = brokers[0].spec.as_ref().unwrap().node_name.clone().unwrap();
    let nodes_api: Api<Node> = Api::all(plant.client.clone());
    nodes_api
        .patch(
            &moved_from,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"dowser-test/off": "true"}}})),
        )
        .await
        .unwrap();
    eventually(
        90,
        "the broker re-homed off the node that lost the device",
        || async {
            let r = running_brokers(&pods, "plc").await;
            let on: BTreeSet<String> = nodes_of_pods(&r);
            (r.len() == 2 && on.len() == 2 && !on.contains(&moved_from)).then_some(())
        },
    )
    .await;
    let events: Api<Event> = Api::namespaced(plant.client.clone(), "default");
    let reasons: BTreeSet<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.contains("BrokerScheduled") && reasons.contains("BrokerRehomed"),
        "{reasons:?}"
    );

    // The device disappears: after the grace period its brokers and Services are gone.
    drop(sim);
    eventually(60, "brokers and Services gone with the device", || async {
        (pods_and_services(&pods, &services, "plc").await? == (0, 0)).then_some(())
    })
    .await;

    // Deleting the Configuration leaves nothing of it behind.
    let _sim = device(&format!("127.0.0.1:{port}")).await;
    eventually(60, "brokers back with the device", || async {
        (running_brokers(&pods, "plc").await.len() == 2).then_some(())
    })
    .await;
    configs
        .delete("plc", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(
        60,
        "nothing left after deleting the Configuration",
        || async {
            let left = pods_and_services(&pods, &services, "plc").await?;
            (left == (0, 0) && plant.instances("plc").await.is_empty()).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_is_not_accepted_and_says_why() {
    let _serial = common::serial().await;
    let plant = Plant::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let _controller = ControllerProcess::start(&plant.cluster, scratch.path());
    let mut bad = with_broker(modbus_config("bad", 1, None), 1);
    bad["spec"]["discovery"]["modbus"]["targets"] = json!(["10.0.7.40-10.0.7.10"]);
    plant.apply(bad).await;
    let configs: Api<Configuration> = Api::namespaced(plant.client.clone(), "default");
    let accepted = eventually(60, "Accepted=False", || async {
        let s = configs.get("bad").await.ok()?.status?;
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "Accepted" && c.status == "False")
    })
    .await;
    assert_eq!(accepted.reason, "InvalidConfiguration");
    assert!(
        accepted
            .message
            .contains("spec.discovery.modbus.targets[0]")
            && accepted.message.contains("starts after it ends"),
        "{}",
        accepted.message
    );
    let events: Api<Event> = Api::namespaced(plant.client.clone(), "default");
    eventually(60, "an InvalidConfiguration Event", || async {
        let list = events.list(&ListParams::default()).await.ok()?.items;
        list.iter()
            .any(|e| e.reason.as_deref() == Some("InvalidConfiguration"))
            .then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(plant.client.clone(), "default");
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_when_the_leader_dies() {
    let _serial = common::serial().await;
    let plant = Plant::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let mut replicas = [
        ControllerProcess::replica(&plant.cluster, scratch.path(), "controller-a"),
        ControllerProcess::replica(&plant.cluster, scratch.path(), "controller-b"),
    ];
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(plant.client.clone(), common::cluster::INSTALL_NAMESPACE);
    let sim = device("127.0.0.1:0").await;
    plant
        .apply(with_broker(
            modbus_config("first", sim.addr.port(), None),
            1,
        ))
        .await;
    let pods: Api<Pod> = Api::namespaced(plant.client.clone(), "default");
    let before = settle(
        60,
        "the leader runs a broker",
        || plant.logs(),
        || async {
            let r = running_brokers(&pods, "first").await;
            if r.len() == 1 {
                Ok(r[0].uid())
            } else {
                Err(format!("Running brokers: {}", r.len()))
            }
        },
    )
    .await;

    // Exactly one replica leads (each says so on /metrics), and the Lease names it.
    let leading =
        |r: &ControllerProcess| r.get("/metrics").1.contains("dowser_controller_leader 1");
    let leaders: Vec<usize> = (0..2).filter(|i| leading(&replicas[*i])).collect();
    assert_eq!(leaders.len(), 1, "leaders: {leaders:?}");
    let leader = leaders[0];
    let holder = leases
        .get("dowser-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_eq!(holder, ["controller-a", "controller-b"][leader]);

    // The leader dies; a change made during the failover is reconciled by the standby.
    replicas[leader].kill9();
    plant
        .apply(with_broker(
            modbus_config("second", sim.addr.port(), None),
            1,
        ))
        .await;
    settle(
        60,
        "the standby runs the new broker",
        || plant.logs(),
        || async {
            match running_brokers(&pods, "second").await.len() {
                1 => Ok(()),
                n => Err(format!("Running brokers: {n}")),
            }
        },
    )
    .await;
    // The new leader says so on /metrics; both replicas are healthy.
    let standby = &replicas[1 - leader];
    assert!(standby.get("/healthz").0.contains("200"));
    assert!(standby.get("/readyz").0.contains("200"));
    let (_, metrics) = standby.get("/metrics");
    assert!(metrics.contains("dowser_controller_leader 1"), "{metrics}");
    assert!(
        metrics.contains("dowser_controller_brokers_created_total "),
        "{metrics}"
    );
    let new_holder = leases
        .get("dowser-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_ne!(new_holder, holder);
    // The first Configuration's broker was not restarted by the change of leader.
    let first = running_brokers(&pods, "first").await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].uid(), before, "the broker was replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_by_sigterm_frees_its_lease_for_the_next() {
    let _serial = common::serial().await;
    let plant = Plant::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(plant.client.clone(), common::cluster::INSTALL_NAMESPACE);
    let holder = || async {
        leases
            .get_opt("dowser-controller")
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    };
    let mut first = ControllerProcess::replica(&plant.cluster, scratch.path(), "controller-a");
    eventually(60, "the first replica leads", || async {
        (holder().await.as_deref() == Some("controller-a")).then_some(())
    })
    .await;

    // Stopped as a rolling update stops it: it exits cleanly and the Lease is free at once,
    // not held for its duration by a process that is gone.
    let status = first.terminate();
    assert!(status.success(), "{status}: {}", first.log());
    assert_eq!(holder().await, None, "{}", first.log());

    // The next replica takes it.
    let _second = ControllerProcess::replica(&plant.cluster, scratch.path(), "controller-b");
    eventually(60, "the next replica leads", || async {
        (holder().await.as_deref() == Some("controller-b")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_brokers_run_once_per_device_and_per_spec() {
    let _serial = common::serial().await;
    let plant = Plant::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let _controller = ControllerProcess::start(&plant.cluster, scratch.path());
    let sim = device("127.0.0.1:0").await;
    let mut config = modbus_config("commission", sim.addr.port(), None);
    // The Job's container works for 3 s and exits 0 (the fake kubelet runs `sleep N` so).
    config["spec"]["brokerSpec"] = json!({"brokerJobSpec": {"template": {"spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "commission", "image": "example/commission:1",
                        "command": ["sleep", "3"]}],
    }}}});
    plant.apply(config.clone()).await;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> =
        Api::namespaced(plant.client.clone(), "default");
    let selector = ListParams::default().labels("dowser.dev/configuration=commission");
    let first = eventually(60, "one Job for the device", || async {
        let list = jobs.list(&selector).await.ok()?.items;
        (list.len() == 1).then(|| list[0].name_any())
    })
    .await;
    // Its pod asks for the device, so it runs where the device is, with its environment.
    let pods: Api<Pod> = Api::namespaced(plant.client.clone(), "default");
    let pod = eventually(60, "the Job's pod Running", || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={first}")))
            .await
            .ok()?
            .items;
        list.into_iter().find(|p| phase(p) == "Running")
    })
    .await;
    let allocations: serde_json::Value =
        serde_json::from_str(&pod.annotations()["fake-kubelet.dowser.dev/allocations"]).unwrap();
    assert_eq!(
        allocations["commission"][0]["envs"]["MODBUS_PORT"],
        sim.addr.port().to_string()
    );
    // The pod completes: its kubelet no longer counts it among its active pods, so its
    // device is free (PodResources, which the agent reads to release slots, stops listing it).
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap();
    let kubelet = plant.kubelets.iter().find(|k| k.node == node).unwrap();
    settle(
        60,
        "the Job's pod Succeeded and its device free on its node",
        || plant.logs(),
        || async {
            let p = pods.get(&pod.name_any()).await.map_err(|e| e.to_string())?;
            let held = kubelet_holders(kubelet).await;
            let still = held.iter().any(|(name, _, _)| *name == pod.name_any());
            if phase(&p) == "Succeeded" && !still {
                Ok(())
            } else {
                Err(format!(
                    "pod {}, devices held on {node}: {held:?}",
                    phase(&p)
                ))
            }
        },
    )
    .await;
    // No pod holds the slot any more: the agent releases it (its last one, too).
    settle(
        30,
        "the Instance's slot released once the Job's pod is done",
        || plant.logs(),
        || async {
            let claimed: Vec<_> = instances(&plant.client, "commission")
                .await
                .iter()
                .map(|i| i.status.clone().unwrap_or_default().slots)
                .collect();
            if claimed.len() == 1 && claimed.iter().all(|s| s.is_empty()) {
                Ok(())
            } else {
                Err(format!("claimed slots of the Instances: {claimed:?}"))
            }
        },
    )
    .await;
    // Reconciling again makes no second Job; a new spec makes a new Job and removes the old.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(jobs.list(&selector).await.unwrap().items.len(), 1);
    config["spec"]["brokerSpec"]["brokerJobSpec"]["template"]["spec"]["containers"][0]["image"] =
        json!("example/commission:2");
    plant.apply(config).await;
    eventually(60, "the Job of the new spec replaces the old", || async {
        let list = jobs.list(&selector).await.ok()?.items;
        let live: Vec<_> = list
            .iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .collect();
        (live.len() == 1 && live[0].name_any() != first).then_some(())
    })
    .await;
}

/// The environment the broker container of a pod got, as the fake kubelet recorded it.
fn broker_env(pod: &Pod) -> serde_json::Value {
    let allocations: serde_json::Value = pod
        .annotations()
        .get("fake-kubelet.dowser.dev/allocations")
        .map(|a| serde_json::from_str(a).unwrap())
        .unwrap_or_default();
    allocations["broker"][0]["envs"].clone()
}

/// The one Running broker of `config`, once it is the only broker pod left and `check`
/// accepts its environment.
async fn sole_broker(
    pods: &Api<Pod>,
    config: &str,
    what: &str,
    logs: impl Fn() -> String,
    check: impl Fn(&Pod) -> bool,
) -> Pod {
    common::settle(90, what, logs, || async {
        let all = common::plant::broker_pods(pods, config)
            .await
            .ok_or("the API server does not answer")?;
        let listed: Vec<String> = all
            .iter()
            .map(|p| {
                format!(
                    "{} {} {} {}",
                    p.name_any(),
                    p.uid().unwrap_or_default(),
                    phase(p),
                    broker_env(p)
                )
            })
            .collect();
        let every = pods
            .list(&ListParams::default().labels(&format!("dowser.dev/configuration={config}")))
            .await
            .map_err(|e| e.to_string())?
            .items;
        match all.as_slice() {
            [one] if every.len() == 1 && phase(one) == "Running" && check(one) => Ok(one.clone()),
            _ => Err(format!(
                "broker pods: {listed:?} ({} with those going away)",
                every.len()
            )),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_are_replaced_when_what_they_were_given_changes() {
    let _serial = common::serial().await;
    let plant = Plant::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(&plant.cluster, scratch.path());
    let logs = || format!("--- controller ---\n{}\n{}", controller.log(), plant.logs());
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(plant.client.clone(), "default");
    let first_password = "first-Pw-9c1f04";
    let second_password = "second-Pw-7d2e55";
    let secret = |password: &str| -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "plc-login", "namespace": "default"},
            "stringData": {"password": password},
        }))
        .unwrap()
    };
    secrets
        .create(&Default::default(), &secret(first_password))
        .await
        .unwrap();
    let sim = device_of("127.0.0.1:0", "Acme").await;
    let port = sim.addr.port();
    let mut config = with_broker(modbus_config("given", port, None), 1);
    config["spec"]["nodeSelector"] = json!({"matchLabels": {"kubernetes.io/hostname": "node-a"}});
    config["spec"]["properties"] = json!([{"name": "PLC_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "plc-login", "key": "password"}}}]);
    plant.apply(config.clone()).await;
    let pods: Api<Pod> = Api::namespaced(plant.client.clone(), "default");
    let first = sole_broker(&pods, "given", "a broker for the Acme device", logs, |p| {
        broker_env(p)["MODBUS_VENDOR_NAME"] == "Acme"
    })
    .await;

    // A change that gives the broker nothing new (the grace period; the agent discovers
    // again) leaves it running.
    config["spec"]["offlineGracePeriodSeconds"] = json!(5);
    plant.apply(config.clone()).await;
    let configs: Api<Configuration> = Api::namespaced(plant.client.clone(), "default");
    let generation = configs.get("given").await.unwrap().metadata.generation;
    eventually(60, "the controller saw the new generation", || async {
        let status = configs.get("given").await.ok()?.status?;
        (status.observed_generation == generation).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let still = sole_broker(&pods, "given", "the broker still there", logs, |_| true).await;
    assert_eq!(still.uid(), first.uid(), "replaced for nothing\n{}", logs());

    // The device comes back on the same address (the same device id) with other details:
    // its broker is replaced by one that gets them, the old one is gone.
    drop(sim);
    let sim = device_of(&format!("127.0.0.1:{port}"), "Bcme").await;
    let second = sole_broker(&pods, "given", "a broker for the Bcme device", logs, |p| {
        broker_env(p)["MODBUS_VENDOR_NAME"] == "Bcme"
    })
    .await;
    assert_ne!(second.uid(), first.uid());

    // The Secret-backed property reaches the broker, plain and with the Instance hash, as
    // a reference to the Secret's key that the kubelet reads for the broker.
    let instance = plant.instances("given").await.remove(0);
    let hash = instance
        .name_any()
        .rsplit('-')
        .next()
        .unwrap()
        .to_uppercase();
    let reference =
        json!({"secretKeyRef": {"name": "plc-login", "key": "password", "optional": false}});
    let env = serde_json::to_value(&second.spec.as_ref().unwrap().containers[0].env).unwrap();
    for name in ["PLC_PASSWORD".to_string(), format!("PLC_PASSWORD_{hash}")] {
        let var = env
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == name.as_str()));
        assert_eq!(
            var.map(|v| &v["valueFrom"]),
            Some(&reference),
            "{name} in {env}"
        );
    }

    // A new value in the Secret replaces the broker with one that gets it.
    secrets
        .replace("plc-login", &Default::default(), &{
            let mut s = secret(second_password);
            s.metadata.resource_version =
                secrets.get("plc-login").await.unwrap().resource_version();
            s
        })
        .await
        .unwrap();
    let third = sole_broker(
        &pods,
        "given",
        "a broker made after the new password",
        logs,
        |p| p.uid() != second.uid(),
    )
    .await;
    let env_of =
        |p: &Pod| serde_json::to_value(&p.spec.as_ref().unwrap().containers[0].env).unwrap();
    assert_eq!(env_of(&third), env);
    drop(sim);

    // Neither value is in any Instance, Pod, Event, log or metric.
    let instances = serde_json::to_string(&plant.instances("given").await).unwrap();
    let all_pods =
        serde_json::to_string(&pods.list(&ListParams::default()).await.unwrap()).unwrap();
    let events: Api<Event> = Api::namespaced(plant.client.clone(), "default");
    let events =
        serde_json::to_string(&events.list(&ListParams::default()).await.unwrap()).unwrap();
    let configuration = serde_json::to_string(&configs.get("given").await.unwrap()).unwrap();
    let mut metrics = controller.get("/metrics").1;
    for agent in &plant.agents {
        metrics.push_str(&agent.get("/metrics").1);
    }
    let places = [
        ("Instances", instances),
        ("Pods", all_pods),
        ("Events", events),
        ("the Configuration", configuration),
        ("logs", logs()),
        ("metrics", metrics),
    ];
    for password in [first_password, second_password] {
        for (place, text) in &places {
            assert!(!text.contains(password), "{password} is in {place}");
        }
    }

    // The Secret is deleted and node-a's agent restarts (kill -9): it cannot read the
    // property and says so, and the broker is left as it is.
    secrets
        .delete("plc-login", &Default::default())
        .await
        .unwrap();
    let agent_a = &plant.agents[0];
    assert_eq!(agent_a.node, "node-a");
    let killed = std::process::Command::new("kill")
        .args(["-9", &agent_a.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let restarted = common::agent::Agent::start(&plant.cluster, &plant.kubelets[0]);
    eventually(60, "the restarted agent reported its node", || async {
        // Once it serves its health endpoint.
        std::net::TcpStream::connect(restarted.health).ok()?;
        let (_, metrics) = restarted.get("/metrics");
        let writes = metrics
            .lines()
            .find_map(|l| l.strip_prefix("dowser_agent_api_writes_total "))?;
        (writes.trim() != "0").then_some(())
    })
    .await;
    let node_a = configs.get("given").await.unwrap().status.unwrap().nodes;
    let node_a = node_a.iter().find(|n| n.node == "node-a").unwrap();
    assert!(
        node_a
            .error
            .as_deref()
            .is_some_and(|e| e.contains("Secret \"plc-login\"")),
        "{node_a:?}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let kept = sole_broker(&pods, "given", "the broker kept", logs, |_| true).await;
    assert_eq!(kept.uid(), third.uid(), "replaced\n{}", logs());
}

/// Same-named Configurations in two namespaces on one node, with long names (a
/// 63-character Configuration name, in `default` and in a 63-character namespace, and a
/// 253-character one there too): every plugin binds, pods that ask for an Instance's
/// resource (as brokers do) or a Configuration's are admitted, each with its own
/// namespace's Configuration, and the statuses say what to request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_named_configurations_in_two_namespaces_and_the_longest_names_get_their_own_resources()
{
    use dowser::{crd::Instance, naming};
    use k8s_openapi::api::core::v1::Namespace;

    let _serial = common::serial().await;
    let plant = Plant::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(&plant.cluster, scratch.path());
    let sim = device("127.0.0.1:0").await;
    let port = sim.addr.port();

    let long_ns = format!("plant-{}", "n".repeat(57));
    let name63 = format!("plc-{}", "x".repeat(59));
    let name253 = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    assert_eq!((long_ns.len(), name63.len(), name253.len()), (63, 63, 253));
    let namespaces: Api<Namespace> = Api::all(plant.client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": long_ns}})).unwrap(),
        )
        .await
        .unwrap();
    // Everything on node-a: the resources of both namespaces meet on one node.
    let nodes_api: Api<Node> = Api::all(plant.client.clone());
    nodes_api
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"dowser-test/names": "yes"}}})),
        )
        .await
        .unwrap();
    // The same device for all: the Instances of `name63` have the same name in both
    // namespaces.
    let configs = [
        ("default", name63.as_str()),
        (long_ns.as_str(), name63.as_str()),
        (long_ns.as_str(), name253.as_str()),
    ];
    for (ns, name) in configs {
        let mut c = modbus_config(name, port, None);
        c["metadata"]["namespace"] = json!(ns);
        c["spec"]["capacity"] = json!(2);
        c["spec"]["nodeSelector"] = json!({"matchLabels": {"dowser-test/names": "yes"}});
        c["spec"]["brokerProperties"] = json!({"SITE": ns});
        let api: Api<Configuration> = Api::namespaced(plant.client.clone(), ns);
        api.patch(name, &PatchParams::apply("test").force(), &Patch::Apply(c))
            .await
            .unwrap();
    }
    // A second dotted 253-character name, the same but for its last characters, with a
    // broker and both Services: its Instance of the same device is its own, and its
    // Services get valid names although neither name leaves room for `-svc`.
    let name253b = format!("{}{}", &name253[..name253.len() - 1], "e");
    let mut c = with_broker(modbus_config(&name253b, port, None), 1);
    c["metadata"]["namespace"] = json!(long_ns);
    c["spec"]["nodeSelector"] = json!({"matchLabels": {"dowser-test/names": "yes"}});
    c["spec"]["brokerProperties"] = json!({"SITE": long_ns});
    Api::<Configuration>::namespaced(plant.client.clone(), &long_ns)
        .patch(
            &name253b,
            &PatchParams::apply("test").force(),
            &Patch::Apply(c),
        )
        .await
        .unwrap();
    // In each namespace, a pod asks for this device (the Instance's resource, as a broker
    // does) and one for any device of the Configuration.
    let logs = || format!("{}\n--- controller ---\n{}", plant.logs(), controller.log());
    for (n, (ns, name)) in configs.into_iter().enumerate() {
        let instances: Api<Instance> = Api::namespaced(plant.client.clone(), ns);
        let label = format!(
            "dowser.dev/configuration={}",
            naming::configuration_label(name)
        );
        let this_device = common::settle(
            60,
            "the Instance's resource in its status",
            logs,
            || async {
                let list = instances
                    .list(&ListParams::default().labels(&label))
                    .await
                    .map_err(|e| e.to_string())?
                    .items;
                let resources: Vec<_> = list
                    .iter()
                    .map(|i| {
                        (
                            i.name_any(),
                            i.status.as_ref().and_then(|s| s.resource.clone()),
                        )
                    })
                    .collect();
                match resources.as_slice() {
                    [(i, Some(r))] => Ok((i.clone(), r.clone())),
                    _ => Err(format!("{resources:?}")),
                }
            },
        )
        .await;
        assert_eq!(this_device.1, naming::instance_resource(ns, &this_device.0));
        for (pod, resource) in [
            (format!("this-device-{n}"), this_device.1),
            (
                format!("any-device-{n}"),
                naming::configuration_resource(ns, name),
            ),
        ] {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": pod, "namespace": ns},
                "spec": {"containers": [{
                    "name": "broker",
                    "image": "busybox",
                    "resources": {"limits": {resource: "1"}},
                }]},
            }))
            .unwrap();
            Api::<Pod>::namespaced(plant.client.clone(), ns)
                .create(&Default::default(), &pod)
                .await
                .unwrap();
        }
    }

    // All six admitted on node-a, each with its own namespace's Configuration, and the
    // broker.
    let running = common::settle(90, "seven pods Running", logs, || async {
        let mut all = Vec::new();
        for ns in ["default", long_ns.as_str()] {
            let pods: Api<Pod> = Api::namespaced(plant.client.clone(), ns);
            let list = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            all.extend(list.items);
        }
        let phases: Vec<(String, String)> = all
            .iter()
            .map(|p| {
                (
                    format!("{}/{}", p.namespace().unwrap(), p.name_any()),
                    phase(p),
                )
            })
            .collect();
        if all.len() == 7 && phases.iter().all(|(_, p)| p == "Running") {
            Ok(all)
        } else {
            Err(format!("{phases:?}"))
        }
    })
    .await;
    for p in &running {
        let ns = p.namespace().unwrap();
        let allocations: serde_json::Value =
            serde_json::from_str(&p.annotations()["fake-kubelet.dowser.dev/allocations"]).unwrap();
        let env = &allocations["broker"][0]["envs"];
        assert_eq!(env["SITE"], ns.as_str(), "{}/{}: {env}", ns, p.name_any());
        assert_eq!(env["MODBUS_PORT"], port.to_string());
    }

    // The Configurations' statuses name the resource to request.
    for (ns, name) in configs {
        let configurations: Api<Configuration> = Api::namespaced(plant.client.clone(), ns);
        let want = naming::configuration_resource(ns, name);
        eventually(30, "the Configuration's resource in its status", || async {
            let s = configurations.get(name).await.ok()?.status?;
            (s.resource.as_deref() == Some(want.as_str())).then_some(())
        })
        .await;
    }

    // The second dotted Configuration's Services: one for its Instance, one for it.
    let instance_of = |name: String| {
        let instances = Api::<Instance>::namespaced(plant.client.clone(), &long_ns);
        async move {
            instances
                .list(&ListParams::default().labels(&format!(
                    "dowser.dev/configuration={}",
                    naming::configuration_label(&name)
                )))
                .await
                .unwrap()
                .items
                .remove(0)
                .name_any()
        }
    };
    let instance = instance_of(name253b.clone()).await;
    assert_ne!(instance, instance_of(name253.clone()).await);
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(plant.client.clone(), &long_ns);
    let wanted = [
        naming::service_name(&instance),
        naming::service_name(&name253b),
    ];
    common::settle(
        60,
        "both Services of the dotted Configuration",
        logs,
        || async {
            let mut names: Vec<String> = services
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .iter()
                .map(|s| s.name_any())
                .collect();
            names.sort();
            let mut want = wanted.to_vec();
            want.sort();
            if names == want {
                Ok(())
            } else {
                Err(format!("Services {names:?}, want {want:?}"))
            }
        },
    )
    .await;
    assert!(wanted[1].starts_with("svc-aaaa"), "{wanted:?}");
}

/// The controller reads a Configuration's Instances a page at a time: all of them count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_with_more_instances_than_a_page_counts_them_all() {
    use futures::{StreamExt, TryStreamExt};
    let _serial = common::serial().await;
    let plant = Plant::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(&plant.cluster, scratch.path());
    // Nothing answers on port 1: the agents find no device; the Instances below are all.
    plant.apply(modbus_config("many", 1, None)).await;
    const INSTANCES: usize = 600;
    let api: Api<dowser::crd::Instance> = Api::namespaced(plant.client.clone(), "default");
    futures::stream::iter(0..INSTANCES)
        .map(|n| {
            let api = api.clone();
            async move {
                let instance: dowser::crd::Instance = serde_json::from_value(json!({
                    "apiVersion": "dowser.dev/v1alpha1",
                    "kind": "Instance",
                    "metadata": {
                        "name": format!("many-{n:04}"),
                        "labels": {"dowser.dev/configuration": "many"},
                    },
                    "spec": {
                        "configurationName": "many",
                        "deviceId": format!("modbus://10.0.{}.{}:502/1", n / 250, n % 250),
                        "shared": true,
                        "capacity": 1,
                    },
                }))
                .unwrap();
                api.create(&Default::default(), &instance).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let configs: Api<Configuration> = Api::namespaced(plant.client.clone(), "default");
    eventually(60, "all Instances counted in the status", || async {
        let s = configs.get("many").await.ok()?.status?;
        (s.instances == Some(INSTANCES as u32)).then_some(())
    })
    .await;
    let listed = api.list(&ListParams::default()).await.unwrap().items.len();
    assert_eq!(listed, INSTANCES, "{}", controller.log());
}

/// `dowser handler modbus` as its own process on a node, registered with that node's agent.
struct HandlerProcess(std::process::Child);

impl HandlerProcess {
    fn start(kubelet: &common::cluster::FakeKubelet, name: &str) -> Self {
        let socket = common::agent::handlers_dir(kubelet).join("agent-registration.sock");
        let log = std::fs::File::create(kubelet.root.join(format!("handler-{name}.log"))).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_dowser"))
            .args(["handler", "modbus", "--register-as", name, "--shared"])
            .arg("--registration-socket")
            .arg(socket)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run dowser handler");
        Self(child)
    }
}

impl Drop for HandlerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_handler_registers_discovers_and_gets_its_brokers_scheduled() {
    let _serial = common::serial().await;
    let mut plant = Plant::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(&plant.cluster, scratch.path());
    let sim = device("127.0.0.1:0").await;
    // The handler runs on node-a and node-b; node-c has none.
    let mut on_a = Some(HandlerProcess::start(&plant.kubelets[0], "plant-modbus"));
    let _on_b = HandlerProcess::start(&plant.kubelets[1], "plant-modbus");
    let mut config = with_broker(modbus_config("ext", sim.addr.port(), None), 1);
    config["spec"]["discovery"] = json!({"external": {
        "name": "plant-modbus",
        "details": format!("targets: [\"{}\"]\nintervalSeconds: 1\nrequestTimeoutMs: 300\n", sim.addr),
    }});
    plant.apply(config).await;

    // One Instance (the handler registered its devices as shared) seen by the two nodes
    // that run the handler, with what the handler found.
    let found = tokio::time::timeout(
        Duration::from_secs(60),
        eventually(90, "one Instance on node-a and node-b", || async {
            let list = instances(&plant.client, "ext").await;
            (list.len() == 1 && common::plant::nodes_of(&list[0]) == ["node-a", "node-b"])
                .then(|| list[0].clone())
        }),
    )
    .await;
    let configs: Api<Configuration> = Api::namespaced(plant.client.clone(), "default");
    let instance = match found {
        Ok(i) => i,
        Err(_) => panic!(
            "no Instance on node-a and node-b: {:?}\n{:?}\n{}\n{}",
            instances(&plant.client, "ext").await,
            configs.get("ext").await.map(|c| c.status),
            std::fs::read_to_string(plant.kubelets[0].root.join("handler-plant-modbus.log"))
                .unwrap_or_default(),
            plant.logs()
        ),
    };
    assert!(instance.spec.shared);
    assert_eq!(
        instance.spec.device_id,
        format!("modbus+tcp://{}/1", sim.addr)
    );
    assert_eq!(instance.spec.properties["MODBUS_VENDOR_NAME"], "Acme");
    let pods: Api<Pod> = Api::namespaced(plant.client.clone(), "default");
    let broker = eventually(90, "a broker Running next to the device", || async {
        let r = running_brokers(&pods, "ext").await;
        (r.len() == 1).then(|| r[0].clone())
    })
    .await;
    let allocations: serde_json::Value =
        serde_json::from_str(&broker.annotations()["fake-kubelet.dowser.dev/allocations"]).unwrap();
    assert_eq!(
        allocations["broker"][0]["envs"]["MODBUS_PORT"],
        sim.addr.port().to_string()
    );
    // node-c says why it finds nothing.
    eventually(60, "node-c waiting for the handler", || async {
        let status = configs.get("ext").await.ok()?.status?;
        let c = status.nodes.iter().find(|n| n.node == "node-c")?;
        (c.error.as_deref()
            == Some(
                "waiting for a discovery handler named \"plant-modbus\" to register with this \
                 node's agent",
            ))
        .then_some(())
    })
    .await;

    // node-a's handler dies: node-a says so at once, and leaves the Instance after the grace
    // period (4 s); the broker keeps a node that sees the device.
    on_a.take();
    eventually(30, "node-a naming its lost handler", || async {
        let status = configs.get("ext").await.ok()?.status?;
        let a = status.nodes.iter().find(|n| n.node == "node-a")?;
        a.problems
            .iter()
            .any(|p| p.starts_with("handler at "))
            .then_some(())
    })
    .await;
    eventually(60, "node-a left the Instance", || async {
        let list = instances(&plant.client, "ext").await;
        (list.len() == 1 && common::plant::nodes_of(&list[0]) == ["node-b"]).then_some(())
    })
    .await;
    eventually(90, "the broker on node-b", || async {
        let r = running_brokers(&pods, "ext").await;
        (r.len() == 1 && r[0].spec.as_ref()?.node_name.as_deref() == Some("node-b")).then_some(())
    })
    .await;

    // On node-c, a handler of another name that registers once and never again. The agent
    // restarts: it dials the handler from what it remembered, keeps the Instance as it was
    // and hears of a new device.
    let (devices, watched) = tokio::sync::watch::channel(vec!["cam-1".to_string()]);
    let node_c = common::agent::handlers_dir(&plant.kubelets[2]);
    common::once_handler::serve(&node_c, "cams", watched).await;
    plant
        .apply(json!({
            "apiVersion": "dowser.dev/v1alpha1",
            "kind": "Configuration",
            "metadata": {"name": "cams", "namespace": "default"},
            "spec": {
                "discovery": {"external": {"name": "cams"}},
                "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": "node-c"}},
                "offlineGracePeriodSeconds": 4,
            },
        }))
        .await;
    let before = eventually(60, "cam-1's Instance on node-c", || async {
        let list = instances(&plant.client, "cams").await;
        (list.len() == 1 && common::plant::nodes_of(&list[0]) == ["node-c"])
            .then(|| list[0].clone())
    })
    .await;
    assert!(!before.spec.shared, "as the handler registered");
    assert_eq!(before.spec.device_id, "cam-1");
    // What the handler said a broker gets: its properties, device nodes and mounts.
    assert_eq!(before.spec.properties["CAMERA"], "cam-1");
    assert_eq!(before.spec.devices[0].host_path, "/dev/cam-1");
    assert_eq!(before.spec.devices[0].permissions, "rw");
    assert_eq!(before.spec.mounts[0].host_path, "/var/lib/cams/cam-1");
    assert!(before.spec.mounts[0].read_only);
    plant.agents[2].kill9();
    plant.agents[2] = common::agent::Agent::start(&plant.cluster, &plant.kubelets[2]);
    devices.send(vec!["cam-1".into(), "cam-2".into()]).unwrap();
    eventually(60, "cam-2's Instance from the restarted agent", || async {
        (instances(&plant.client, "cams").await.len() == 2).then_some(())
    })
    .await;
    let after = Api::<dowser::crd::Instance>::namespaced(plant.client.clone(), "default")
        .get(&before.name_any())
        .await
        .unwrap();
    assert_eq!(after.uid(), before.uid());
    assert_eq!(after.spec, before.spec);
    let log = plant.agents[2].log();
    assert!(
        log.contains("dialing the discovery handlers registered before this start"),
        "{log}"
    );
    drop(controller);
}
