//! Every rule of the controller, as one pure function: from what exists (a Configuration,
//! its Instances, the Nodes, its broker Pods and Jobs, its Services) to the actions that make
//! the cluster match it and the status that describes the result. No I/O here:
//! [`super::apply`] carries the actions out, in the order given, and stops at the first
//! that fails.
//!
//! The rules, in the order they are applied:
//! - an invalid Configuration gets a Warning (once per message) and nothing else;
//! - nodes that no longer exist leave their Instances, with their slot claims; an Instance
//!   with no node left is deleted;
//! - one broker pod per slot, on the node [`placement::broker_nodes`] gives it; a pod is
//!   replaced when its slot moves (re-home), when the broker spec changes (roll-out), when
//!   what it is given for its device changes (the device's details, `brokerProperties`, the
//!   version of the properties on its node: [`crate::device_instance::given_hash`]) and when
//!   it failed (after a backoff); a pod whose slot has no node any more is removed; a pod on
//!   a Node that no longer exists is deleted at once (no kubelet will confirm it);
//! - one Job per Instance and broker Job spec, run again when its device's details or the
//!   `brokerProperties` change; Jobs of another spec or Instance are removed;
//! - in DRA mode a broker asks for its device through a claim made from its Instance's
//!   ResourceClaimTemplate, applied before the broker is made;
//! - a Service per Instance and one for the Configuration, as the spec asks; others removed;
//! - `Ready` says whether every wanted broker runs.

mod action;
mod workloads;

use std::{
    borrow::Cow,
    collections::BTreeSet,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{Pod, Service},
    },
    jiff::Timestamp,
};
use kube::ResourceExt;

pub use self::action::{Action, Removal};
use self::workloads::{Jobs, Pods, broker_jobs, broker_pods, services};
use super::{backoff::Backoff, brokers::BrokerDevices, status::condition};
use crate::{
    approval,
    crd::{Configuration, ConfigurationStatus, DeviceApproval, INSTANCE_LABEL, Instance},
    naming, validate,
};

/// How often a Configuration is looked at again when nothing else asks for it.
pub const LOOK_AGAIN: Duration = Duration::from_secs(300);

/// What the plan is made from.
pub struct Inputs<'a> {
    pub config: &'a Configuration,
    /// Its Instances, listed fresh.
    pub instances: &'a [Instance],
    /// The names of the Nodes that exist.
    pub nodes: &'a BTreeSet<String>,
    /// Pods with the Configuration's label: its broker pods, and the pods of its Jobs.
    pub pods: &'a [Pod],
    /// Jobs with the Configuration's label.
    pub jobs: &'a [Job],
    /// Services with the Configuration's label.
    pub services: &'a [Service],
    /// The DeviceApprovals of the namespace (`approval: Manual`).
    pub approvals: &'a [DeviceApproval],
    /// Failures of its broker pods.
    pub backoff: &'a Backoff,
    /// Now, for the backoff.
    pub now: Instant,
    /// Now, for the conditions that change.
    pub now_utc: Timestamp,
    /// How brokers ask for their device.
    pub devices: BrokerDevices,
}

/// Broker pods wanted and running (Jobs run once: not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Brokers {
    pub wanted: usize,
    pub running: usize,
}

/// When to reconcile again if nothing changes before.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Requeue {
    AwaitChange,
    After(Duration),
}

/// The outcome of [`plan`].
#[derive(Debug)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub status: ConfigurationStatus,
    /// Broker pods the Configuration wants, and how many of them run.
    pub brokers: Brokers,
    pub requeue: Requeue,
}

/// The actions that make the cluster match the Configuration, and its status once they are
/// done.
pub fn plan(inputs: &Inputs) -> Plan {
    let errors = validate::spec(&inputs.config.spec);
    if !errors.is_empty() {
        let message: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return invalid(inputs, message.join("; "));
    }
    let mut actions = Vec::new();
    let found = forget_gone_nodes(inputs, &mut actions);
    let (instances, pending) = approved(inputs, found, &mut actions);
    let pods = broker_pods(inputs, &instances, &mut actions);
    let jobs = broker_jobs(inputs, &instances, &mut actions);
    if inputs.devices == BrokerDevices::Dra {
        claim_templates_first(&instances, &mut actions);
    }
    services(inputs, &instances, &mut actions);
    let brokers = if jobs.wanted == 0 {
        pods.running
    } else {
        jobs.alive
    };
    let mut status = status(
        inputs,
        Verdict::yes("Valid", "the Configuration is valid"),
        ready(inputs.config, &pods, &jobs),
        instances.len() + pending,
        brokers,
    );
    if inputs.config.spec.approval == crate::crd::Approval::Manual {
        status.pending_approvals = Some(pending as u32);
    }
    Plan {
        actions,
        status,
        brokers: Brokers {
            wanted: pods.wanted,
            running: pods.running,
        },
        requeue: Requeue::After(pods.requeue.unwrap_or(LOOK_AGAIN)),
    }
}

/// The Instances whose devices may get brokers, and how many others wait for approval;
/// records where each device stands when that changed (`approval: Manual`).
fn approved<'a>(
    inputs: &Inputs<'a>,
    instances: Vec<Cow<'a, Instance>>,
    actions: &mut Vec<Action>,
) -> (Vec<Cow<'a, Instance>>, usize) {
    if inputs.config.spec.approval == crate::crd::Approval::Automatic {
        return (instances, 0);
    }
    let mut allowed = Vec::new();
    let mut pending = 0;
    for instance in instances {
        let name = instance.name_any();
        let of_name = inputs.approvals.iter().find(|a| a.name_any() == name);
        let state = approval::state(inputs.config, &instance, of_name);
        let identity = approval::identity(&instance.spec);
        let approved_identity = state.allowed().then(|| identity.clone());
        let status = instance.status.clone().unwrap_or_default();
        let old = status.conditions.as_slice();
        if let Some((ok, reason, message)) = state.condition(&name) {
            let condition = condition(
                approval::CONDITION,
                ok,
                reason,
                &message,
                None,
                old,
                inputs.now_utc,
            );
            let recorded = old
                .iter()
                .find(|c| c.type_ == approval::CONDITION)
                .is_some_and(|c| {
                    c.status == condition.status
                        && c.reason == condition.reason
                        && c.message == condition.message
                });
            if !recorded
                || status.identity.as_deref() != Some(identity.as_str())
                || status.approved_identity != approved_identity
            {
                actions.push(Action::RecordApproval {
                    instance: name,
                    identity,
                    approved_identity,
                    condition,
                });
            }
        }
        if state.allowed() {
            allowed.push(instance);
        } else {
            pending += 1;
        }
    }
    (allowed, pending)
}

/// The Nodes that `plan` asks about: those that the Instances and broker pods name.
pub fn nodes_named(instances: &[Instance], pods: &[Pod]) -> BTreeSet<String> {
    let on_instances = instances
        .iter()
        .filter_map(|i| i.status.as_ref())
        .flat_map(|s| s.nodes.iter().chain(s.slots.values()));
    let under_pods = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.as_ref());
    on_instances.chain(under_pods).cloned().collect()
}

/// A condition's status, reason and message.
struct Verdict {
    ok: bool,
    reason: &'static str,
    message: String,
}

impl Verdict {
    fn yes(reason: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        Verdict {
            ok: true,
            reason,
            message,
        }
    }

    fn no(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            ok: false,
            ..Self::yes(reason, message)
        }
    }
}

fn status(
    inputs: &Inputs,
    accepted: Verdict,
    ready: Verdict,
    instances: usize,
    brokers: usize,
) -> ConfigurationStatus {
    let generation = inputs.config.metadata.generation;
    let old = inputs
        .config
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_, v: Verdict| {
        condition(
            type_,
            v.ok,
            v.reason,
            &v.message,
            generation,
            old,
            inputs.now_utc,
        )
    };
    ConfigurationStatus {
        observed_generation: generation,
        conditions: vec![condition("Accepted", accepted), condition("Ready", ready)],
        instances: Some(instances as u32),
        pending_approvals: None,
        brokers: Some(brokers as u32),
        resource: Some(naming::configuration_resource(
            &inputs.config.namespace().unwrap_or_default(),
            &inputs.config.name_any(),
        )),
        nodes: vec![],
    }
}

/// An invalid Configuration: say why (once per message) and run nothing.
/// In DRA mode a broker's claim is made from its Instance's ResourceClaimTemplate: each
/// Instance that gets a broker pod or Job in this plan has its template applied first.
fn claim_templates_first(instances: &[Cow<Instance>], actions: &mut Vec<Action>) {
    let mut needed: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::CreatePod { pod, .. } => pod.labels().get(INSTANCE_LABEL).cloned(),
            Action::CreateJob { job } => job.labels().get(INSTANCE_LABEL).cloned(),
            _ => None,
        })
        .collect();
    needed.sort();
    needed.dedup();
    let templates: Vec<Action> = instances
        .iter()
        .filter(|i| needed.contains(&i.name_any()))
        .map(|i| Action::ApplyClaimTemplate {
            template: Box::new(crate::controller::brokers::claim_template(i)),
        })
        .collect();
    actions.splice(0..0, templates);
}

fn invalid(inputs: &Inputs, message: String) -> Plan {
    let said = inputs.config.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "False" && c.message == message)
    });
    let actions = if said {
        vec![]
    } else {
        vec![Action::ReportInvalid {
            message: message.clone(),
        }]
    };
    let accepted = Verdict::no("InvalidConfiguration", message);
    let ready = Verdict::no("InvalidConfiguration", "the Configuration is not valid");
    Plan {
        actions,
        status: status(inputs, accepted, ready, inputs.instances.len(), 0),
        brokers: Brokers::default(),
        requeue: Requeue::AwaitChange,
    }
}

/// Nodes that are gone for good can neither leave their Instances nor release their slots:
/// the controller does it for them, so that their brokers move elsewhere. Returns the
/// Instances that stay, as they are once that is done.
fn forget_gone_nodes<'a>(inputs: &Inputs<'a>, actions: &mut Vec<Action>) -> Vec<Cow<'a, Instance>> {
    let mut staying = Vec::new();
    for instance in inputs.instances {
        let status = instance.status.clone().unwrap_or_default();
        let gone: BTreeSet<&String> = status
            .nodes
            .iter()
            .chain(status.slots.values())
            .filter(|n| !inputs.nodes.contains(*n))
            .collect();
        let mut instance = Cow::Borrowed(instance);
        if !gone.is_empty() {
            let name = instance.name_any();
            let nodes: Vec<String> = status
                .nodes
                .iter()
                .filter(|n| !gone.contains(n))
                .cloned()
                .collect();
            let gone: Vec<String> = gone.into_iter().cloned().collect();
            if nodes.is_empty() {
                actions.push(Action::DeleteInstance {
                    instance: name,
                    uid: instance.uid(),
                    resource_version: instance.resource_version(),
                    gone,
                });
                continue;
            }
            let freed: Vec<String> = status
                .slots
                .iter()
                .filter(|(_, n)| gone.contains(n))
                .map(|(s, _)| s.clone())
                .collect();
            let left = instance.to_mut().status.get_or_insert_default();
            left.nodes = nodes.clone();
            left.slots.retain(|s, _| !freed.contains(s));
            actions.push(Action::ForgetNodes {
                instance: name,
                resource_version: instance.resource_version(),
                nodes,
                freed,
                gone,
            });
        }
        if instance.metadata.deletion_timestamp.is_none() {
            staying.push(instance);
        }
    }
    staying
}

/// `Ready`: every wanted broker runs.
fn ready(config: &Configuration, pods: &Pods, jobs: &Jobs) -> Verdict {
    let (running, wanted) = (pods.running, pods.wanted);
    match &config.spec.broker_spec {
        None => Verdict::yes(
            "NoBrokers",
            "devices are advertised; no broker is requested",
        ),
        Some(_) if jobs.wanted > 0 => {
            Verdict::yes("JobsCreated", format!("{} broker Jobs", jobs.wanted))
        }
        Some(_) if wanted == 0 => Verdict::no("NoDevices", "no device found yet"),
        Some(_) => {
            let message = format!("{running} of {wanted} broker pods running");
            if running == wanted {
                Verdict::yes("BrokersRunning", message)
            } else {
                Verdict::no("BrokersStarting", message)
            }
        }
    }
}

#[cfg(test)]
mod tests;
