//! Broker pods: placement, re-home, fair share, backoff, spec roll-out.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::controller::plan::{LOOK_AGAIN, Requeue};

#[test]
fn placement_one_broker_per_slot_on_the_node_the_slot_belongs_to() {
    let c = || mk_config(pod_broker("broker:1"));
    check(vec![
        (
            "one slot, one node",
            World::new(c()).instance(mk_instance("i", 1, &["a"], &[])),
            &["create pod i-0 on a"],
        ),
        (
            "unclaimed slots spread over the nodes, by name",
            World::new(c()).instance(mk_instance("i", 2, &["b", "a"], &[])),
            &["create pod i-0 on a", "create pod i-1 on b"],
        ),
        (
            "more slots than nodes",
            World::new(c()).instance(mk_instance("i", 3, &["a", "b"], &[])),
            &[
                "create pod i-0 on a",
                "create pod i-1 on b",
                "create pod i-2 on a",
            ],
        ),
        (
            "a claimed slot stays with its node",
            World::new(c()).instance(mk_instance("i", 2, &["a", "b"], &[(0, "b")])),
            &["create pod i-0 on b", "create pod i-1 on a"],
        ),
        (
            "no node sees the device",
            World::new(c()).instance(mk_instance("i", 2, &[], &[])),
            &[],
        ),
        (
            "brokers that exist and run are left alone",
            World::new(c())
                .instance(mk_instance("i", 2, &["a", "b"], &[(0, "a"), (1, "b")]))
                .broker("i", 0, "a", "Running")
                .broker("i", 1, "b", "Pending"),
            &[],
        ),
        (
            "no broker spec, no pods",
            World::new(mk_config(json!({}))).instance(mk_instance("i", 1, &["a"], &[])),
            &[],
        ),
    ]);
}

#[test]
fn rehome_a_broker_follows_its_slot() {
    let c = || mk_config(pod_broker("broker:1"));
    check(vec![
        (
            "the slot now belongs to b",
            World::new(c())
                .instance(mk_instance("i", 1, &["a", "b"], &[(0, "b")]))
                .broker("i", 0, "a", "Running"),
            &["delete pod i-0: moves to b"],
        ),
        (
            "the old pod is still going away: wait for it",
            World::new(c())
                .instance(mk_instance("i", 1, &["a", "b"], &[(0, "b")]))
                .with_pods(|w| {
                    vec![deleting(mk_broker(
                        &w.config,
                        &w.instances[0],
                        0,
                        "a",
                        "Running",
                    ))]
                }),
            &[],
        ),
        (
            "its node no longer sees the device: drained until the claim is released",
            World::new(c())
                .instance(mk_instance("i", 2, &["b", "c"], &[(0, "a")]))
                .broker("i", 0, "a", "Running"),
            &["create pod i-1 on b", "delete pod i-0: leaves a"],
        ),
        (
            "released: dealt again to a node that sees it",
            World::new(c()).instance(mk_instance("i", 2, &["b", "c"], &[])),
            &["create pod i-0 on b", "create pod i-1 on c"],
        ),
    ]);
}

#[test]
fn fair_share_brokers_placed_before_other_nodes_joined_are_spread_again() {
    let c = || mk_config(pod_broker("broker:1"));
    check(vec![
        (
            "a held both slots while alone; b and c joined",
            World::new(c())
                .instance(mk_instance("i", 2, &["a", "b", "c"], &[(0, "a"), (1, "a")]))
                .broker("i", 0, "a", "Running")
                .broker("i", 1, "a", "Running"),
            &["delete pod i-1: leaves a"],
        ),
        (
            "once a released slot 1, it goes to b",
            World::new(c())
                .instance(mk_instance("i", 2, &["a", "b", "c"], &[(0, "a")]))
                .broker("i", 0, "a", "Running"),
            &["create pod i-1 on b"],
        ),
        (
            "alone, a keeps both",
            World::new(c())
                .instance(mk_instance("i", 2, &["a"], &[(0, "a"), (1, "a")]))
                .broker("i", 0, "a", "Running")
                .broker("i", 1, "a", "Running"),
            &[],
        ),
    ]);
}

#[test]
fn backoff_a_failed_broker_is_replaced_after_a_wait_that_doubles() {
    // What, failures recorded before, the pod's phase (None: no pod), seconds since the
    // last failure, the actions, and when the controller comes back.
    type Row<'a> = (&'a str, u32, Option<&'a str>, u64, &'a [&'a str], u64);
    let rows: Vec<Row> = vec![
        (
            "first failure: replaced after 5 s",
            0,
            Some("Failed"),
            0,
            &["delete pod i-0: failed, again in 5s"],
            5,
        ),
        (
            "third failure: 20 s",
            2,
            Some("Failed"),
            0,
            &["delete pod i-0: failed, again in 20s"],
            20,
        ),
        (
            "seventh failure: no more than 160 s",
            6,
            Some("Failed"),
            0,
            &["delete pod i-0: failed, again in 160s"],
            160,
        ),
        (
            "deleted 2 s after its first failure: waits",
            1,
            None,
            2,
            &[],
            3,
        ),
        (
            "deleted 6 s after its first failure: made again",
            1,
            None,
            6,
            &["create pod i-0 on a"],
            LOOK_AGAIN.as_secs(),
        ),
        (
            "running again",
            1,
            Some("Running"),
            0,
            &[],
            LOOK_AGAIN.as_secs(),
        ),
    ];
    for (what, failures, phase, since, expected, requeue) in rows {
        let mut world = World::new(mk_config(pod_broker("broker:1"))).instance(mk_instance(
            "i",
            1,
            &["a"],
            &[(0, "a")],
        ));
        if let Some(phase) = phase {
            world = world.broker("i", 0, "a", phase);
        }
        let t0 = world.now;
        for _ in 0..failures {
            world.backoff.failed((NS.into(), "i-0".into()), t0);
        }
        world.now = t0 + Duration::from_secs(since);
        assert_eq!(world.actions(), expected, "{what}");
        let requeue = Requeue::After(Duration::from_secs(requeue));
        assert_eq!(world.plan().requeue, requeue, "{what}");
    }
    // Another pod's failures do not hold this one back.
    let mut world = World::new(mk_config(pod_broker("broker:1"))).instance(mk_instance(
        "i",
        1,
        &["a"],
        &[(0, "a")],
    ));
    world.backoff.failed((NS.into(), "j-0".into()), world.now);
    assert_eq!(world.actions(), ["create pod i-0 on a"]);
}

#[test]
fn spec_rollout_a_new_broker_spec_replaces_every_broker() {
    let old = mk_config(pod_broker("broker:1"));
    let rolled = |new: Configuration| {
        let mut w = World::new(old.clone())
            .instance(mk_instance("i", 2, &["a", "b"], &[(0, "a"), (1, "b")]))
            .broker("i", 0, "a", "Running")
            .broker("i", 1, "b", "Running");
        w.config = new;
        w
    };
    check(vec![
        (
            "a new image",
            rolled(mk_config(pod_broker("broker:2"))),
            &["delete pod i-0: new spec", "delete pod i-1: new spec"],
        ),
        (
            "the same spec",
            rolled(mk_config(pod_broker("broker:1"))),
            &[],
        ),
        (
            "a change elsewhere in the Configuration",
            rolled(mk_config({
                let mut spec = pod_broker("broker:1");
                spec["offlineGracePeriodSeconds"] = json!(60);
                spec
            })),
            &[],
        ),
        (
            "moving wins over the new spec (one replacement, not two)",
            rolled(mk_config(pod_broker("broker:2"))).with_instances(vec![mk_instance(
                "i",
                2,
                &["a", "b"],
                &[(0, "b"), (1, "a")],
            )]),
            &["delete pod i-0: moves to b", "delete pod i-1: moves to a"],
        ),
    ]);
}

#[test]
fn details_rollout_a_broker_given_old_device_details_is_replaced() {
    let config = with_versions(
        mk_config(pod_broker("broker:1")),
        &[("a", "v1"), ("b", "v1")],
    );
    let device = || {
        with_property(
            mk_instance("i", 2, &["a", "b"], &[(0, "a"), (1, "b")]),
            "MODBUS_VENDOR_NAME",
            "Acme",
        )
    };
    // Brokers made for the device as it was; then the world changes to `now`.
    let given = |now: World| {
        let mut w = World::new(config.clone())
            .instance(device())
            .broker("i", 0, "a", "Running")
            .broker("i", 1, "b", "Running");
        w.config = now.config;
        w.instances = now.instances;
        w
    };
    let now = |config: Configuration, instance: Instance| World::new(config).instance(instance);
    let both = &[
        "delete pod i-0: new device details",
        "delete pod i-1: new device details",
    ];
    check(vec![
        ("nothing changed", given(now(config.clone(), device())), &[]),
        (
            "the device's details changed (the same device id)",
            given(now(
                config.clone(),
                with_property(device(), "MODBUS_VENDOR_NAME", "Bcme"),
            )),
            both,
        ),
        (
            "a device node changed",
            given(now(config.clone(), {
                let mut i = device();
                i.spec.devices = vec![dowser_discovery_api::DeviceSpec {
                    container_path: "/dev/ttyUSB0".into(),
                    host_path: "/dev/ttyUSB3".into(),
                    permissions: "rw".into(),
                }];
                i
            })),
            both,
        ),
        (
            "the brokerProperties changed",
            given(now(
                {
                    let mut c = config.clone();
                    c.spec
                        .broker_properties
                        .insert("POLL_MS".into(), "500".into());
                    c
                },
                device(),
            )),
            both,
        ),
        (
            "the properties changed on node b only (so far)",
            given(now(
                with_versions(config.clone(), &[("a", "v1"), ("b", "v2")]),
                device(),
            )),
            &["delete pod i-1: new device details"],
        ),
        (
            "what no broker is given changed (the grace period, which nodes see it)",
            given(now(
                {
                    let mut c = config.clone();
                    c.spec.offline_grace_period_seconds = 60;
                    c
                },
                {
                    let mut i = device();
                    i.status.as_mut().unwrap().nodes.push("c".into());
                    i
                },
            )),
            &[],
        ),
        (
            "moving wins over new details (one replacement, not two)",
            given(now(
                config.clone(),
                with_property(
                    mk_instance("i", 2, &["a", "b"], &[(0, "b"), (1, "a")]),
                    "MODBUS_VENDOR_NAME",
                    "Bcme",
                ),
            )),
            &["delete pod i-0: moves to b", "delete pod i-1: moves to a"],
        ),
        (
            "a new spec and new details: one replacement",
            given(now(
                mk_config(pod_broker("broker:2")),
                with_property(device(), "MODBUS_VENDOR_NAME", "Bcme"),
            )),
            &["delete pod i-0: new spec", "delete pod i-1: new spec"],
        ),
        (
            "a broker going away already is made again once gone",
            {
                let mut w = given(now(
                    config.clone(),
                    with_property(device(), "MODBUS_VENDOR_NAME", "Bcme"),
                ));
                w.pods = w.pods.into_iter().map(deleting).collect();
                w
            },
            &[],
        ),
        (
            "brokers made before brokers were stamped are not replaced for it",
            {
                let mut w = given(now(
                    config.clone(),
                    with_property(device(), "MODBUS_VENDOR_NAME", "Bcme"),
                ));
                for p in &mut w.pods {
                    p.annotations_mut().remove(brokers::GIVEN_HASH);
                }
                w
            },
            &[],
        ),
    ]);
}
