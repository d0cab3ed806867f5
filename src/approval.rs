//! Approval of discovered devices: the one place for its rules. Under a Configuration whose
//! `approval` is `Manual`, a device's Instance exists (with all that discovery learned) but
//! offers no resource and gets no broker until a person approves it with a
//! [`DeviceApproval`] of the Instance's name that holds the device's current identity. The
//! controller decides ([`state`]) and records the decision in the Instance's status; agents
//! offer a device only when that record matches what they see ([`offered`]).

use sha2::{Digest, Sha256};

use crate::crd::{Approval, Configuration, DeviceApproval, Instance, InstanceSpec};

/// The condition type on Instances of a `Manual` Configuration.
pub const CONDITION: &str = "Approved";

/// The device's identity: a hash of everything discovery learned of it (its id, properties,
/// device nodes and mounts), which a handler keeps stable while the device is the same. A
/// different device answering at the same address, or the same one with a new certificate
/// or firmware, has another.
pub fn identity(spec: &InstanceSpec) -> String {
    let mut hash = Sha256::new();
    let learned = serde_json::json!({
        "deviceId": spec.device_id,
        "properties": spec.properties,
        "devices": spec.devices,
        "mounts": spec.mounts,
    });
    hash.update(learned.to_string().as_bytes());
    hash.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a device stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// The Configuration approves every device (`Automatic`).
    Automatic,
    /// Approved by `by` for its current identity.
    Approved { by: String },
    /// Nobody has approved it.
    Pending,
    /// Approved for another identity: something else answers now.
    IdentityChanged { by: String },
}

impl State {
    /// Whether the device gets its resource and broker.
    pub fn allowed(&self) -> bool {
        matches!(self, State::Automatic | State::Approved { .. })
    }

    /// The `Approved` condition's status, reason and message (`Manual` only).
    pub fn condition(&self, instance: &str) -> Option<(bool, &'static str, String)> {
        match self {
            State::Automatic => None,
            State::Approved { by } => Some((true, "Approved", format!("approved by {by}"))),
            State::Pending => Some((
                false,
                "Pending",
                format!("waiting for approval: kubectl dowser approve {instance}"),
            )),
            State::IdentityChanged { by } => Some((
                false,
                "IdentityChanged",
                format!(
                    "the device answering now is not the one {by} approved (its identity \
                     changed); check it, then kubectl dowser approve {instance}"
                ),
            )),
        }
    }
}

/// Where the device of `instance` stands under `config`, given the approval of its name.
pub fn state(
    config: &Configuration,
    instance: &Instance,
    approval: Option<&DeviceApproval>,
) -> State {
    if config.spec.approval == Approval::Automatic {
        return State::Automatic;
    }
    match approval {
        // An approval of another Configuration's device of the same name is not this one's.
        Some(a) if a.spec.configuration_name != config.metadata.name.as_deref().unwrap_or("") => {
            State::Pending
        }
        Some(a) if a.spec.identity == identity(&instance.spec) => State::Approved {
            by: a.spec.approved_by.clone(),
        },
        Some(a) => State::IdentityChanged {
            by: a.spec.approved_by.clone(),
        },
        None => State::Pending,
    }
}

/// Whether a node may offer the device of `instance`: always under `Automatic`; under
/// `Manual`, when the controller recorded an approval of exactly the identity the Instance
/// has now (a device whose details just changed waits for the controller's new decision).
pub fn offered(config: &Configuration, instance: &Instance) -> bool {
    if config.spec.approval == Approval::Automatic {
        return true;
    }
    instance
        .status
        .as_ref()
        .and_then(|s| s.approved_identity.as_deref())
        .is_some_and(|approved| approved == identity(&instance.spec))
}

/// [`offered`] with the Configuration from an agent's cache (an Instance whose
/// Configuration is gone keeps what it had until it goes too).
pub fn offered_here(
    configurations: &kube::runtime::reflector::Store<Configuration>,
    instance: &Instance,
) -> bool {
    use kube::ResourceExt;
    let namespace = instance.namespace().unwrap_or_default();
    let key = kube::runtime::reflector::ObjectRef::<Configuration>::new(
        &instance.spec.configuration_name,
    )
    .within(&namespace);
    match configurations.get(&key) {
        Some(config) => offered(&config, instance),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DeviceApprovalSpec, InstanceStatus};

    fn config(approval: Approval) -> Configuration {
        let mut c: Configuration = serde_json::from_value(serde_json::json!({
            "apiVersion": "dowser.dev/v1alpha1",
            "kind": "Configuration",
            "metadata": {"name": "plc", "namespace": "default"},
            "spec": {"discovery": {"modbus": {"targets": ["10.0.7.3"]}}},
        }))
        .unwrap();
        c.spec.approval = approval;
        c
    }

    fn instance(vendor: &str) -> Instance {
        let mut i = Instance::new(
            "plc-0123456789ab",
            InstanceSpec {
                configuration_name: "plc".into(),
                device_id: "modbus+tcp://10.0.7.3:502/1".into(),
                shared: true,
                capacity: 1,
                properties: [("MODBUS_VENDOR_NAME".to_string(), vendor.to_string())].into(),
                devices: vec![],
                mounts: vec![],
            },
        );
        i.metadata.namespace = Some("default".into());
        i
    }

    fn approval(of: &Instance, configuration: &str) -> DeviceApproval {
        DeviceApproval::new(
            "plc-0123456789ab",
            DeviceApprovalSpec {
                configuration_name: configuration.into(),
                device_id: of.spec.device_id.clone(),
                identity: identity(&of.spec),
                approved_by: "alice".into(),
                reason: None,
            },
        )
    }

    #[test]
    fn automatic_needs_no_approval() {
        let i = instance("Acme");
        assert_eq!(
            state(&config(Approval::Automatic), &i, None),
            State::Automatic
        );
        assert!(offered(&config(Approval::Automatic), &i));
    }

    #[test]
    fn manual_waits_for_an_approval_of_this_identity() {
        let manual = config(Approval::Manual);
        let acme = instance("Acme");
        assert_eq!(state(&manual, &acme, None), State::Pending);
        let approved = approval(&acme, "plc");
        assert_eq!(
            state(&manual, &acme, Some(&approved)),
            State::Approved { by: "alice".into() }
        );
        // Another vendor answers at the same address: the approval does not carry over.
        let other = instance("Evil Corp");
        assert_eq!(
            state(&manual, &other, Some(&approved)),
            State::IdentityChanged { by: "alice".into() }
        );
        // An approval written for another Configuration is not this one's.
        assert_eq!(
            state(&manual, &acme, Some(&approval(&acme, "other"))),
            State::Pending
        );
    }

    #[test]
    fn nodes_offer_only_what_the_controller_recorded_for_the_identity_seen_now() {
        let manual = config(Approval::Manual);
        let mut acme = instance("Acme");
        assert!(!offered(&manual, &acme));
        acme.status = Some(InstanceStatus {
            approved_identity: Some(identity(&acme.spec)),
            ..InstanceStatus::default()
        });
        assert!(offered(&manual, &acme));
        acme.spec
            .properties
            .insert("MODBUS_VENDOR_NAME".into(), "Evil Corp".into());
        assert!(
            !offered(&manual, &acme),
            "details changed: wait for a new decision"
        );
    }

    #[test]
    fn the_identity_is_stable_and_follows_what_discovery_learned() {
        let a = instance("Acme");
        assert_eq!(identity(&a.spec), identity(&instance("Acme").spec));
        assert_eq!(identity(&a.spec).len(), 32);
        assert_ne!(identity(&a.spec), identity(&instance("Acme2").spec));
    }
}
