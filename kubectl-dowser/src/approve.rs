//! `kubectl dowser approve` and `revoke`: what to do for each Instance and what to say.
//! Pure: the cluster is read and written in `main.rs`.

use dowser::crd::{Approval, Configuration, DeviceApproval, DeviceApprovalSpec, Instance};
use kube::ResourceExt;

/// How kubectl names the kind in its messages.
pub const KIND: &str = "deviceapproval.dowser.dev";

/// What approving one Instance comes to.
#[derive(Clone, Debug)]
pub enum Decision {
    /// No approval yet: create this one.
    Create(Box<DeviceApproval>),
    /// Approved already, for the identity the device has now (by `by`).
    Unchanged { by: String },
    /// Approved for another identity (or another Configuration): `old` goes, `new` comes.
    Replace {
        old: Box<DeviceApproval>,
        new: Box<DeviceApproval>,
    },
    /// Nothing can be approved; why.
    Refuse(String),
}

/// The approval of `instance` by `user` (who must be the identity that creates it: the API
/// server refuses any other), given its Configuration (if it could be read) and the
/// DeviceApproval of its name (if there is one).
pub fn decide(
    instance: &Instance,
    config: Option<&Configuration>,
    existing: Option<&DeviceApproval>,
    user: &str,
    reason: Option<&str>,
) -> Decision {
    let name = instance.name_any();
    let configuration = &instance.spec.configuration_name;
    let Some(identity) = instance.status.as_ref().and_then(|s| s.identity.clone()) else {
        return Decision::Refuse(no_identity(&name, configuration, config));
    };
    let mut approval = DeviceApproval::new(
        &name,
        DeviceApprovalSpec {
            configuration_name: configuration.clone(),
            device_id: instance.spec.device_id.clone(),
            identity,
            approved_by: user.to_string(),
            reason: reason.map(str::to_string),
        },
    );
    approval.metadata.namespace = instance.namespace();
    match existing {
        None => Decision::Create(Box::new(approval)),
        Some(e)
            if e.spec.identity == approval.spec.identity
                && e.spec.configuration_name == approval.spec.configuration_name =>
        {
            Decision::Unchanged {
                by: e.spec.approved_by.clone(),
            }
        }
        Some(e) => Decision::Replace {
            old: Box::new(e.clone()),
            new: Box::new(approval),
        },
    }
}

/// Why an Instance without `status.identity` cannot be approved.
fn no_identity(name: &str, configuration: &str, config: Option<&Configuration>) -> String {
    let why = match config {
        Some(c) if c.spec.approval == Approval::Automatic => format!(
            "its Configuration {configuration:?} approves every device (approval: Automatic), so \
             there is nothing to approve"
        ),
        Some(_) => format!(
            "the controller has not recorded its identity yet (its Configuration \
             {configuration:?} is Manual): check that the controller runs, then try again"
        ),
        None => format!(
            "its Configuration {configuration:?} is not Manual (approval: Manual) or the \
             controller has not looked at it yet"
        ),
    };
    format!("instance {name:?} has no identity to approve (status.identity): {why}")
}

/// What `approve` prints for a decision carried out.
pub fn said(name: &str, decision: &Decision) -> String {
    match decision {
        Decision::Create(_) => format!("{KIND}/{name} created"),
        Decision::Unchanged { by } => {
            format!("{KIND}/{name} unchanged (already approved by {by} for its current identity)")
        }
        Decision::Replace { old, new } => format!(
            "{KIND}/{name} replaced: the device's identity changed (approved by {} as {}, now {})",
            old.spec.approved_by,
            short(&old.spec.identity),
            short(&new.spec.identity)
        ),
        Decision::Refuse(why) => format!("error: {why}"),
    }
}

/// An identity's first 12 hex digits, enough to tell two apart.
fn short(identity: &str) -> &str {
    identity.get(..12).unwrap_or(identity)
}

/// What `revoke` prints for a DeviceApproval deleted, as `kubectl delete` does.
pub fn deleted(name: &str) -> String {
    format!("{KIND} {name:?} deleted")
}

/// What to tell someone the API server refused (403): who lacks which role where, and the
/// command that grants it, with the identity the server saw (`user`, when known).
pub fn forbidden_hint(user: Option<&str>, namespace: &str) -> String {
    let subject = match user {
        Some(u) => match u.strip_prefix("system:serviceaccount:") {
            Some(sa) => format!("--serviceaccount={sa}"),
            None => format!("--user={u}"),
        },
        None => "--user=<you>".to_string(),
    };
    let who = user.map(|u| format!(" ({u})")).unwrap_or_default();
    format!(
        "hint: approving and revoking devices takes the ClusterRole dowser-approver, bound to \
         you{who} in namespace {namespace}, e.g.\n  kubectl -n {namespace} create rolebinding \
         dowser-approvers --clusterrole=dowser-approver {subject}"
    )
}

/// An `INSTANCE` argument: a name, or `TYPE/name` with the Instance kind in any of the
/// forms kubectl takes (`instance/`, `instances.dowser.dev/`, `dwi/`); `None` for another
/// kind.
pub fn instance_name(arg: &str) -> Option<&str> {
    named(arg, &["instance", "instances", "dwi"])
}

/// A `CONFIG` argument of `tree`, like [`instance_name`] (`configuration/`, `dwc/`...).
pub fn configuration_name(arg: &str) -> Option<&str> {
    named(arg, &["configuration", "configurations", "dwc"])
}

fn named<'a>(arg: &'a str, kinds: &[&str]) -> Option<&'a str> {
    let Some((kind, name)) = arg.split_once('/') else {
        return Some(arg);
    };
    let kind = kind.strip_suffix(".dowser.dev").unwrap_or(kind);
    (kinds.contains(&kind.to_ascii_lowercase().as_str()) && !name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dowser::crd::{InstanceSpec, InstanceStatus};

    fn instance(identity: Option<&str>) -> Instance {
        let mut i = Instance::new(
            "gated-4d1c0e3b6f2a",
            InstanceSpec {
                configuration_name: "gated".into(),
                device_id: "modbus+tcp://10.0.7.3:502/1".into(),
                shared: true,
                capacity: 1,
                properties: Default::default(),
                devices: vec![],
                mounts: vec![],
            },
        );
        i.metadata.namespace = Some("plant".into());
        i.status = Some(InstanceStatus {
            identity: identity.map(str::to_string),
            ..InstanceStatus::default()
        });
        i
    }

    fn config(approval: Approval) -> Configuration {
        let mut c: Configuration = serde_json::from_value(serde_json::json!({
            "apiVersion": "dowser.dev/v1alpha1",
            "kind": "Configuration",
            "metadata": {"name": "gated", "namespace": "plant"},
            "spec": {"discovery": {"modbus": {"targets": ["10.0.7.3"]}}},
        }))
        .unwrap();
        c.spec.approval = approval;
        c
    }

    const ID: &str = "0123456789abcdef0123456789abcdef";
    const OTHER: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn a_first_approval_holds_the_identity_now_and_who_approves() {
        let Decision::Create(a) = decide(
            &instance(Some(ID)),
            Some(&config(Approval::Manual)),
            None,
            "alice",
            Some("commissioned line 3"),
        ) else {
            panic!("not created");
        };
        assert_eq!(a.name_any(), "gated-4d1c0e3b6f2a");
        assert_eq!(a.namespace().as_deref(), Some("plant"));
        assert_eq!(
            a.spec,
            DeviceApprovalSpec {
                configuration_name: "gated".into(),
                device_id: "modbus+tcp://10.0.7.3:502/1".into(),
                identity: ID.into(),
                approved_by: "alice".into(),
                reason: Some("commissioned line 3".into()),
            }
        );
        assert_eq!(
            said("gated-4d1c0e3b6f2a", &Decision::Create(a)),
            "deviceapproval.dowser.dev/gated-4d1c0e3b6f2a created"
        );
    }

    #[test]
    fn the_same_identity_is_approved_once_another_one_replaces_the_approval() {
        let i = instance(Some(ID));
        let Decision::Create(mut by_bob) = decide(&i, None, None, "bob", None) else {
            panic!("not created");
        };
        let same = decide(&i, None, Some(&by_bob), "alice", None);
        assert!(
            matches!(&same, Decision::Unchanged { by } if by == "bob"),
            "{same:?}"
        );
        assert_eq!(
            said("x", &same),
            "deviceapproval.dowser.dev/x unchanged (already approved by bob for its current identity)"
        );

        by_bob.spec.identity = OTHER.into();
        let changed = decide(&i, None, Some(&by_bob), "alice", None);
        let Decision::Replace { old, new } = &changed else {
            panic!("not replaced: {changed:?}");
        };
        assert_eq!(old.spec.identity, OTHER);
        assert_eq!(
            (new.spec.identity.as_str(), new.spec.approved_by.as_str()),
            (ID, "alice")
        );
        assert_eq!(
            said("x", &changed),
            "deviceapproval.dowser.dev/x replaced: the device's identity changed (approved by bob \
             as fedcba987654, now 0123456789ab)"
        );

        // An approval left by a Configuration of the same name before is not this one's.
        by_bob.spec.identity = ID.into();
        by_bob.spec.configuration_name = "old".into();
        assert!(matches!(
            decide(&i, None, Some(&by_bob), "alice", None),
            Decision::Replace { .. }
        ));
    }

    #[test]
    fn an_instance_without_identity_is_refused_with_the_reason() {
        let i = instance(None);
        let refused = |config: Option<&Configuration>| match decide(&i, config, None, "alice", None)
        {
            Decision::Refuse(why) => why,
            other => panic!("{other:?}"),
        };
        let automatic = refused(Some(&config(Approval::Automatic)));
        assert!(
            automatic.starts_with("instance \"gated-4d1c0e3b6f2a\" has no identity"),
            "{automatic}"
        );
        assert!(
            automatic.contains("approves every device (approval: Automatic)"),
            "{automatic}"
        );
        let manual = refused(Some(&config(Approval::Manual)));
        assert!(
            manual.contains("the controller has not recorded its identity yet"),
            "{manual}"
        );
        let unknown = refused(None);
        assert!(unknown.contains("is not Manual"), "{unknown}");
        assert!(said("x", &Decision::Refuse(unknown)).starts_with("error: "));
    }

    #[test]
    fn the_hint_names_the_role_and_the_binding_for_whoever_was_refused() {
        let sa = forbidden_hint(
            Some("system:serviceaccount:dowser-system:dowser-agent"),
            "default",
        );
        assert!(sa.contains("ClusterRole dowser-approver"), "{sa}");
        assert!(
            sa.contains(
                "kubectl -n default create rolebinding dowser-approvers \
                 --clusterrole=dowser-approver --serviceaccount=dowser-system:dowser-agent"
            ),
            "{sa}"
        );
        assert!(forbidden_hint(Some("alice"), "plant").ends_with("--user=alice"));
        assert!(forbidden_hint(None, "plant").ends_with("--user=<you>"));
        assert_eq!(deleted("x"), "deviceapproval.dowser.dev \"x\" deleted");
    }

    #[test]
    fn arguments_name_objects_as_kubectl_does() {
        assert_eq!(instance_name("gated-1"), Some("gated-1"));
        assert_eq!(instance_name("instance/gated-1"), Some("gated-1"));
        assert_eq!(
            instance_name("instances.dowser.dev/gated-1"),
            Some("gated-1")
        );
        assert_eq!(instance_name("dwi/gated-1"), Some("gated-1"));
        assert_eq!(instance_name("pod/gated-1"), None);
        assert_eq!(instance_name("instance/"), None);
        assert_eq!(configuration_name("dwc/gated"), Some("gated"));
        assert_eq!(configuration_name("Configuration/gated"), Some("gated"));
        assert_eq!(configuration_name("instance/gated"), None);
    }
}
