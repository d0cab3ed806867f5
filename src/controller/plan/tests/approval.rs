//! `approval: Manual`: no broker before a person approves the device, and none for a device
//! that is no longer the one approved.

use serde_json::json;

use super::*;
use crate::{
    approval,
    crd::{DeviceApproval, DeviceApprovalSpec},
};

fn manual() -> Configuration {
    let mut spec = pod_broker("broker:1");
    spec["approval"] = json!("Manual");
    mk_config(spec)
}

fn approval_of(instance: &Instance, configuration: &str) -> DeviceApproval {
    let mut a = DeviceApproval::new(
        &instance.name_any(),
        DeviceApprovalSpec {
            configuration_name: configuration.into(),
            device_id: instance.spec.device_id.clone(),
            identity: approval::identity(&instance.spec),
            approved_by: "alice".into(),
            reason: None,
        },
    );
    a.metadata.namespace = Some(NS.into());
    a
}

/// `instance` as the controller left it after recording `approved` for it.
fn recorded(mut instance: Instance, reason: &str, approved: bool) -> Instance {
    let identity = approval::identity(&instance.spec);
    let status = instance.status.get_or_insert_with(Default::default);
    status.identity = Some(identity.clone());
    status.approved_identity = approved.then_some(identity);
    let message = match reason {
        "Pending" => format!(
            "waiting for approval: kubectl dowser approve {}",
            instance.metadata.name.as_deref().unwrap()
        ),
        _ => "approved by alice".to_string(),
    };
    status.conditions = vec![crate::controller::status::condition(
        approval::CONDITION,
        approved,
        reason,
        &message,
        None,
        &[],
        Timestamp::UNIX_EPOCH,
    )];
    instance
}

fn creates_a_pod(actions: &[String]) -> bool {
    actions.iter().any(|a| a.starts_with("create pod"))
}

#[test]
fn a_device_waits_for_approval_then_gets_its_broker() {
    let found = mk_instance("i", 1, &["a"], &[]);
    let waiting = World::new(manual()).instance(found.clone());
    let plan = waiting.plan();
    let actions = waiting.actions();
    assert_eq!(actions, ["record i Pending"], "no broker before approval");
    assert_eq!(plan.status.pending_approvals, Some(1));
    assert_eq!(plan.status.instances, Some(1));

    // Recorded: nothing more to write while nobody approves.
    let recorded_pending = World::new(manual()).instance(recorded(found.clone(), "Pending", false));
    assert!(
        recorded_pending.actions().is_empty(),
        "{:?}",
        recorded_pending.actions()
    );

    // Approved: recorded, and its broker made.
    let mut approved = World::new(manual()).instance(recorded(found.clone(), "Pending", false));
    approved.approvals = vec![approval_of(&found, "plc")];
    let actions = approved.actions();
    assert_eq!(actions[0], "record i Approved");
    assert!(creates_a_pod(&actions), "{actions:?}");
    assert_eq!(approved.plan().status.pending_approvals, Some(0));
}

#[test]
fn another_device_in_the_approved_ones_place_loses_its_broker() {
    let approved_device = mk_instance("i", 1, &["a"], &[(0, "a")]);
    let approval = approval_of(&approved_device, "plc");
    // Another vendor answers at the same address: the same Instance, other details.
    let impostor = with_property(
        recorded(approved_device.clone(), "Approved", true),
        "MODBUS_VENDOR_NAME",
        "Evil Corp",
    );
    let mut world = World::new(manual())
        .instance(impostor)
        .broker("i", 0, "a", "Running");
    world.approvals = vec![approval];
    let actions = world.actions();
    assert_eq!(actions[0], "record i IdentityChanged", "{actions:?}");
    assert!(
        actions.iter().any(|a| a.starts_with("delete pod")),
        "the broker goes: {actions:?}"
    );
    assert_eq!(world.plan().status.pending_approvals, Some(1));
}

#[test]
fn automatic_configurations_record_nothing() {
    let world =
        World::new(mk_config(pod_broker("broker:1"))).instance(mk_instance("i", 1, &["a"], &[]));
    let plan = world.plan();
    assert!(!world.actions().iter().any(|a| a.starts_with("record")));
    assert_eq!(plan.status.pending_approvals, None);
}
