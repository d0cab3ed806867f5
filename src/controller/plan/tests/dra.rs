//! DRA mode: brokers get their device through a claim from their Instance's template.

use super::*;
use crate::controller::{
    brokers::{BrokerDevices, CLAIM_NAME},
    plan::Action,
};

fn dra(world: World) -> World {
    World {
        devices: BrokerDevices::Dra,
        ..world
    }
}

#[test]
fn a_broker_asks_for_its_instance_through_a_claim_template_applied_first() {
    check(vec![
        (
            "pods: the template of each Instance that gets a broker, before its pods",
            dra(World::new(mk_config(pod_broker("broker:1")))
                .instance(mk_instance("i", 2, &["a", "b"], &[]))
                .instance(mk_instance("j", 1, &["b"], &[]))),
            &[
                "apply claim template i",
                "apply claim template j",
                "create pod i-0 on a",
                "create pod i-1 on b",
                "create pod j-0 on b",
            ],
        ),
        (
            "jobs too",
            dra(
                World::new(mk_config(job_broker("job:1"))).instance(mk_instance(
                    "i",
                    1,
                    &["a"],
                    &[],
                )),
            ),
            &["apply claim template i", "create job i-8d8152d56d"],
        ),
        (
            "nothing to make, nothing applied",
            dra(World::new(mk_config(json!({}))).instance(mk_instance("i", 1, &["a"], &[]))),
            &[],
        ),
    ]);
}

#[test]
fn a_dra_broker_holds_a_claim_not_an_extended_resource() {
    let world = dra(
        World::new(mk_config(pod_broker("broker:1"))).instance(mk_instance("i", 1, &["a"], &[])),
    );
    let plan = world.plan();
    let Action::CreatePod { pod, .. } = &plan.actions[1] else {
        panic!("{:?}", plan.actions);
    };
    let spec = pod.spec.as_ref().unwrap();
    let claims = spec.resource_claims.as_ref().unwrap();
    assert_eq!(claims[0].name, CLAIM_NAME);
    assert_eq!(claims[0].resource_claim_template_name.as_deref(), Some("i"));
    let resources = spec.containers[0].resources.as_ref().unwrap();
    assert_eq!(resources.claims.as_ref().unwrap()[0].name, CLAIM_NAME);
    assert!(resources.limits.is_none(), "no extended resource");

    let Action::ApplyClaimTemplate { template } = &plan.actions[0] else {
        panic!("{:?}", plan.actions);
    };
    assert_eq!(
        template.metadata.owner_references.as_ref().unwrap()[0].name,
        "i"
    );
    let request = &template
        .spec
        .spec
        .devices
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap()[0];
    let exactly = request.exactly.as_ref().unwrap();
    assert_eq!(exactly.device_class_name, "dowser.dev");
    assert_eq!(
        exactly.selectors.as_ref().unwrap()[0]
            .cel
            .as_ref()
            .unwrap()
            .expression,
        r#"device.attributes["dowser.dev"].namespace == "ns" && device.attributes["dowser.dev"].instance == "i""#
    );
}
