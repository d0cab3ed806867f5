//! Broker Jobs, Services, and Nodes that are gone.

use kube::ResourceExt;
use serde_json::json;

use super::*;
use crate::controller::plan::Action;

#[test]
fn job_brokers_one_job_per_instance_and_spec() {
    let (v1, v2) = (
        mk_config(job_broker("broker:1")),
        mk_config(job_broker("broker:2")),
    );
    let name = |config, instance| mk_job(config, instance).name_any();
    let (i1, j1, i2, j2) = (
        name(&v1, "i"),
        name(&v1, "j"),
        name(&v2, "i"),
        name(&v2, "j"),
    );
    assert_ne!(i1, i2, "a Job is named after its spec");
    let two = |config: &Configuration| {
        World::new(config.clone())
            .instance(mk_instance("i", 1, &["a"], &[]))
            .instance(mk_instance("j", 1, &["b"], &[]))
    };
    let rows: Vec<(&str, World, Vec<String>)> = vec![
        (
            "one Job per Instance",
            two(&v1),
            vec![format!("create job {i1}"), format!("create job {j1}")],
        ),
        (
            "Jobs that exist are not made again",
            two(&v1).with_jobs(vec![mk_job(&v1, "i"), mk_job(&v1, "j")]),
            vec![],
        ),
        (
            "a new spec: new Jobs, the old ones removed",
            two(&v2).with_jobs(vec![mk_job(&v1, "i")]),
            vec![
                format!("create job {i2}"),
                format!("create job {j2}"),
                format!("delete job {i1}"),
            ],
        ),
        (
            "the Job of a device that is gone is removed",
            World::new(v1.clone())
                .instance(mk_instance("i", 1, &["a"], &[]))
                .with_jobs(vec![mk_job(&v1, "i"), mk_job(&v1, "j")]),
            vec![format!("delete job {j1}")],
        ),
    ];
    for (what, world, expected) in rows {
        assert_eq!(world.actions(), expected, "{what}");
    }
    // The pods of a Job are the Job's, not slot brokers to remove.
    let mut world = two(&v1).with_jobs(vec![mk_job(&v1, "i"), mk_job(&v1, "j")]);
    let mut job_pod = mk_broker(
        &mk_config(pod_broker("x")),
        &world.instances[0],
        0,
        "a",
        "Running",
    );
    job_pod.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job", "name": i1, "uid": "uid-job",
        }))
        .unwrap(),
    ]);
    world.pods.push(job_pod);
    assert_eq!(world.actions(), Vec::<String>::new());
}

#[test]
fn job_brokers_run_again_for_new_device_details_but_not_for_new_property_values() {
    let config = mk_config(job_broker("broker:1"));
    let spec = |c: &Configuration| c.spec.broker_spec.clone().unwrap().broker_job_spec.unwrap();
    let acme = with_property(
        mk_instance("i", 1, &["a"], &[]),
        "MODBUS_VENDOR_NAME",
        "Acme",
    );
    let bcme = with_property(
        mk_instance("i", 1, &["a"], &[]),
        "MODBUS_VENDOR_NAME",
        "Bcme",
    );
    let ran = brokers::broker_job(
        &config,
        &acme,
        &spec(&config),
        brokers::BrokerDevices::DevicePlugin,
    );
    let name = ran.name_any();
    let rows: Vec<(&str, World, Vec<String>)> = vec![
        (
            "nothing changed",
            World::new(config.clone())
                .instance(acme.clone())
                .with_jobs(vec![ran.clone()]),
            vec![],
        ),
        (
            "the device's details changed: run again once the old Job is gone",
            World::new(config.clone())
                .instance(bcme.clone())
                .with_jobs(vec![ran.clone()]),
            vec![format!("delete job {name}")],
        ),
        (
            "the old Job is gone: the new one is made",
            World::new(config.clone()).instance(bcme.clone()),
            vec![format!("create job {name}")],
        ),
        (
            "the old Job is going away: wait",
            World::new(config.clone())
                .instance(bcme.clone())
                .with_jobs(vec![deleting(ran.clone())]),
            vec![],
        ),
        (
            "new values of the properties: a Job's pods get them anyway",
            World::new(with_versions(config.clone(), &[("a", "v2")]))
                .instance(acme.clone())
                .with_jobs(vec![ran.clone()]),
            vec![],
        ),
    ];
    for (what, world, expected) in rows {
        assert_eq!(world.actions(), expected, "{what}");
    }
}

#[test]
fn services_one_per_instance_and_one_for_the_configuration() {
    let spec = json!({"ports": [{"port": 80}]});
    let both = mk_config(json!({"instanceServiceSpec": spec, "configurationServiceSpec": spec}));
    let only_config = mk_config(json!({"configurationServiceSpec": spec}));
    check(vec![
        (
            "both asked for",
            World::new(both.clone()).instance(mk_instance("i", 1, &["a"], &[])),
            &["apply service i-svc", "apply service plc-svc"],
        ),
        (
            "no Instance: no Configuration Service either",
            World::new(only_config.clone()),
            &[],
        ),
        (
            "the Configuration Service of the last Instance is removed with it",
            World::new(only_config).with_services(vec![mk_service("plc-svc")]),
            &["delete service plc-svc"],
        ),
        (
            "the Service of a device that is gone is removed",
            World::new(both)
                .instance(mk_instance("i", 1, &["a"], &[]))
                .with_services(vec![mk_service("i-svc"), mk_service("j-svc")]),
            &[
                "apply service i-svc",
                "apply service plc-svc",
                "delete service j-svc",
            ],
        ),
    ]);
}

#[test]
fn gone_nodes_leave_their_instances_and_their_brokers_move() {
    let c = || mk_config(pod_broker("broker:1"));
    check(vec![
        (
            "a node that is gone leaves, with its claim; its slot is dealt again",
            World::new(c())
                .instance(mk_instance("i", 1, &["a", "gone"], &[(0, "gone")]))
                .broker("i", 0, "gone", "Running"),
            &[
                "forget nodes gone of i, freeing slots [0]",
                // Same name, new node: the old pod must go first (it is made again once
                // gone), and no kubelet will confirm its deletion.
                "delete pod i-0: moves to a",
                "force-delete pod i-0",
            ],
        ),
        (
            "an Instance seen only by gone nodes is deleted, and its brokers with it",
            World::new(c())
                .instance(mk_instance("i", 1, &["gone"], &[(0, "gone")]))
                .broker("i", 0, "gone", "Running"),
            &[
                "delete instance i",
                "force-delete pod i-0",
                "delete pod i-0: i is gone",
            ],
        ),
        (
            "an Instance being deleted gets no broker",
            World::new(c())
                .with_instances(vec![deleting(mk_instance("i", 1, &["a"], &[(0, "a")]))])
                .with_pods(|w| vec![mk_broker(&w.config, &w.instances[0], 0, "a", "Running")]),
            &["delete pod i-0: i is gone"],
        ),
    ]);
    // What the Instance keeps, and the precondition that makes sure it is the one seen.
    let world = World::new(c()).instance(mk_instance(
        "i",
        2,
        &["a", "gone"],
        &[(0, "a"), (1, "gone")],
    ));
    assert_eq!(
        world.plan().actions[0],
        Action::ForgetNodes {
            instance: "i".into(),
            resource_version: Some("7".into()),
            nodes: vec!["a".into()],
            freed: vec!["1".into()],
            gone: vec!["gone".into()],
        }
    );
    assert_eq!(world.plan().status.instances, Some(1));
    let world = World::new(c()).instance(mk_instance("i", 1, &["gone"], &[]));
    assert!(matches!(
        &world.plan().actions[0],
        Action::DeleteInstance { uid: Some(u), resource_version: Some(v), .. } if u == "uid-i" && v == "7"
    ));
    assert_eq!(world.plan().status.instances, Some(0));
}
