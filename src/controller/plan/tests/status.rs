//! `Ready`, `Accepted`, and the order of the steps.

use serde_json::json;

use super::*;
use crate::controller::plan::{Requeue, nodes_named};

#[test]
fn ready_says_whether_every_wanted_broker_runs() {
    let pods = || mk_config(pod_broker("broker:1"));
    // What, the world, Ready's status, reason and message, and how many brokers run.
    type Row<'a> = (&'a str, World, (&'a str, &'a str, &'a str), u32);
    let rows: Vec<Row> = vec![
        (
            "no broker asked for",
            World::new(mk_config(json!({}))).instance(mk_instance("i", 1, &["a"], &[])),
            (
                "True",
                "NoBrokers",
                "devices are advertised; no broker is requested",
            ),
            0,
        ),
        (
            "no device yet",
            World::new(pods()),
            ("False", "NoDevices", "no device found yet"),
            0,
        ),
        (
            "one of two running",
            World::new(pods())
                .instance(mk_instance("i", 2, &["a", "b"], &[(0, "a"), (1, "b")]))
                .broker("i", 0, "a", "Running")
                .broker("i", 1, "b", "Pending"),
            ("False", "BrokersStarting", "1 of 2 broker pods running"),
            1,
        ),
        (
            "all running",
            World::new(pods())
                .instance(mk_instance("i", 2, &["a", "b"], &[(0, "a"), (1, "b")]))
                .broker("i", 0, "a", "Running")
                .broker("i", 1, "b", "Running"),
            ("True", "BrokersRunning", "2 of 2 broker pods running"),
            2,
        ),
        (
            "a running pod of the old spec is not counted",
            World::new(pods())
                .instance(mk_instance("i", 1, &["a"], &[(0, "a")]))
                .with_pods(|w| {
                    vec![mk_broker(
                        &mk_config(pod_broker("broker:0")),
                        &w.instances[0],
                        0,
                        "a",
                        "Running",
                    )]
                }),
            ("False", "BrokersStarting", "0 of 1 broker pods running"),
            0,
        ),
        (
            "Jobs",
            World::new(mk_config(job_broker("broker:1")))
                .instance(mk_instance("i", 1, &["a"], &[]))
                .instance(mk_instance("j", 1, &["a"], &[])),
            ("True", "JobsCreated", "2 broker Jobs"),
            0,
        ),
    ];
    for (what, world, (status, reason, message), brokers) in rows {
        let plan = world.plan();
        assert_eq!(
            ready_of(&plan),
            (status.into(), reason.into(), message.into()),
            "{what}"
        );
        assert_eq!(plan.status.brokers, Some(brokers), "{what}");
        assert_eq!(plan.status.observed_generation, Some(3), "{what}");
        let accepted = &plan.status.conditions[0];
        assert_eq!(
            (accepted.type_.as_str(), accepted.status.as_str()),
            ("Accepted", "True")
        );
    }
}

#[test]
fn an_invalid_configuration_is_reported_once_and_runs_nothing() {
    let mut config = mk_config(json!({"brokerSpec": {"brokerPodSpec": {"containers": []}}}));
    let world = World::new(config.clone()).instance(mk_instance("i", 1, &["a"], &[]));
    let plan = world.plan();
    let message = "spec.brokerSpec.brokerPodSpec.containers: Required value: a broker pod needs at least one container";
    assert_eq!(world.actions(), [format!("report invalid: {message}")]);
    assert_eq!(plan.requeue, Requeue::AwaitChange);
    let accepted = &plan.status.conditions[0];
    assert_eq!(
        (
            accepted.status.as_str(),
            accepted.reason.as_str(),
            accepted.message.as_str()
        ),
        ("False", "InvalidConfiguration", message)
    );
    assert_eq!(ready_of(&plan).1, "InvalidConfiguration");
    assert_eq!(
        (plan.status.instances, plan.status.brokers),
        (Some(1), Some(0))
    );
    // Once the status says so, the Warning is not repeated.
    config.status = Some(plan.status);
    let again = World::new(config).instance(mk_instance("i", 1, &["a"], &[]));
    assert_eq!(again.actions(), Vec::<String>::new());
}

#[test]
fn the_steps_come_in_order_and_the_nodes_asked_about_are_those_named() {
    let spec = json!({"ports": [{"port": 80}]});
    let mut config = mk_config(pod_broker("broker:1"));
    config.spec.instance_service_spec = serde_json::from_value(spec).unwrap();
    let world = World::new(config)
        .instance(mk_instance("i", 2, &["a", "gone"], &[(0, "gone")]))
        .broker("i", 0, "gone", "Running");
    let kinds: Vec<String> = world
        .actions()
        .iter()
        .map(|a| a.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        kinds,
        [
            "forget nodes",
            "delete pod",
            "create pod",
            "force-delete pod",
            "apply service"
        ]
    );
    assert_eq!(
        nodes_named(&world.instances, &world.pods),
        ["a", "gone"].map(String::from).into()
    );
}
