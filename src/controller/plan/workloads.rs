//! The workloads of a Configuration: broker pods (one per slot), broker Jobs (one per
//! Instance and spec) and Services.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::ResourceExt;

use super::{Action, Inputs, Removal};
use crate::controller::backoff::PodKey;
use crate::{
    controller::{
        brokers::{self, NODE_ANNOTATION, SPEC_HASH},
        placement,
    },
    crd::{Configuration, INSTANCE_LABEL, Instance},
};

/// What the broker pods come to.
#[derive(Default)]
pub(super) struct Pods {
    pub(super) wanted: usize,
    pub(super) running: usize,
    /// The shortest wait of a failed broker.
    pub(super) requeue: Option<Duration>,
}

impl Pods {
    fn wait(&mut self, wait: Duration) {
        self.requeue = Some(self.requeue.map_or(wait, |r| r.min(wait)));
    }
}

/// One broker pod per slot, on the node the slot belongs to, with its node's name.
fn wanted_pods(
    config: &Configuration,
    instances: &[Cow<Instance>],
    devices: brokers::BrokerDevices,
) -> BTreeMap<String, (Pod, String)> {
    let Some(spec) = config
        .spec
        .broker_spec
        .as_ref()
        .and_then(|b| b.broker_pod_spec.as_ref())
    else {
        return BTreeMap::new();
    };
    let mut wanted = BTreeMap::new();
    for instance in instances {
        let status = instance.status.clone().unwrap_or_default();
        let placed = placement::broker_nodes(instance.spec.capacity, &status.nodes, &status.slots);
        for (slot, node) in placed {
            if let Some(node) = node {
                let pod = brokers::broker_pod(config, instance, spec, slot, &node, devices);
                wanted.insert(pod.name_any(), (pod, node));
            }
        }
    }
    wanted
}

/// One broker pod per slot: made where missing (once its backoff, if any, is over),
/// replaced where it is on the wrong node, of an old spec, given old device details or
/// failed, removed where no slot wants it.
pub(super) fn broker_pods(
    inputs: &Inputs,
    instances: &[Cow<Instance>],
    actions: &mut Vec<Action>,
) -> Pods {
    let ns = inputs.config.namespace().unwrap_or_default();
    let existing: BTreeMap<String, &Pod> = inputs
        .pods
        .iter()
        .filter(|p| brokers::is_slot_broker(p))
        .map(|p| (p.name_any(), p))
        .collect();
    let wanted = wanted_pods(inputs.config, instances, inputs.devices);
    let mut out = Pods {
        wanted: wanted.len(),
        ..Pods::default()
    };
    for (name, (pod, node)) in &wanted {
        let key = (ns.clone(), name.clone());
        match existing.get(name) {
            // Made once the node's report arrives (a change of the Configuration).
            None if brokers::awaits_properties_version(inputs.config, node) => {}
            None => match inputs.backoff.wait_left(&key, inputs.now) {
                Some(wait) => out.wait(wait),
                None => actions.push(Action::CreatePod {
                    pod: Box::new(pod.clone()),
                    node: node.clone(),
                }),
            },
            Some(current) => {
                if let Some(why) = replacement(inputs, current, pod, node, &key, &mut out) {
                    let pod = name.clone();
                    actions.push(Action::DeletePod { pod, why });
                }
            }
        }
    }
    for (name, pod) in &existing {
        clean_up(inputs, instances, wanted.contains_key(name), pod, actions);
    }
    out
}

/// Why a wanted broker pod that exists must be made again, if it must. Counts it when it
/// runs.
fn replacement(
    inputs: &Inputs,
    current: &Pod,
    wanted: &Pod,
    node: &String,
    key: &PodKey,
    out: &mut Pods,
) -> Option<Removal> {
    if current.metadata.deletion_timestamp.is_some() {
        // Going away already: made again once gone.
        return None;
    }
    let phase = current.status.as_ref().and_then(|s| s.phase.as_deref());
    if current.annotations().get(NODE_ANNOTATION) != Some(node) {
        Some(Removal::Rehomed { node: node.clone() })
    } else if current.annotations().get(SPEC_HASH) != wanted.annotations().get(SPEC_HASH) {
        Some(Removal::NewSpec)
    } else if brokers::given_changed(current, wanted) {
        Some(Removal::NewDetails)
    } else if phase == Some("Failed") {
        let wait = inputs.backoff.next_wait(key);
        out.wait(wait);
        Some(Removal::Failed { wait })
    } else {
        out.running += usize::from(phase == Some("Running"));
        None
    }
}

/// A broker pod on a Node that no longer exists is deleted at once; one that no slot wants
/// is removed.
fn clean_up(
    inputs: &Inputs,
    instances: &[Cow<Instance>],
    wanted: bool,
    pod: &Pod,
    actions: &mut Vec<Action>,
) {
    let name = pod.name_any();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_ref());
    if node.is_some_and(|n| !inputs.nodes.contains(n)) {
        // No kubelet will ever confirm this deletion, whether the pod is unwanted or its
        // slot moves to another node (same pod name): without it, the slot's broker waits
        // for the pod garbage collector of kube-controller-manager.
        actions.push(Action::ForceDeletePod { pod: name.clone() });
    }
    if wanted || pod.metadata.deletion_timestamp.is_some() {
        return;
    }
    let node = pod.annotations().get(NODE_ANNOTATION).cloned();
    let instance = pod
        .labels()
        .get(INSTANCE_LABEL)
        .cloned()
        .unwrap_or_default();
    let why = if instances.iter().any(|i| i.name_any() == instance) {
        // Its node no longer sees the device: the slot is freed, then the broker is made
        // again where the device is still seen.
        Removal::LeftNode {
            node: node.unwrap_or_default(),
            instance,
        }
    } else {
        Removal::DeviceGone { instance }
    };
    actions.push(Action::DeletePod { pod: name, why });
}

/// What the broker Jobs come to.
pub(super) struct Jobs {
    pub(super) wanted: usize,
    /// Wanted Jobs that exist.
    pub(super) alive: usize,
}

/// One Job per Instance and broker Job spec, run again when its device's details change.
pub(super) fn broker_jobs(
    inputs: &Inputs,
    instances: &[Cow<Instance>],
    actions: &mut Vec<Action>,
) -> Jobs {
    let spec = inputs
        .config
        .spec
        .broker_spec
        .as_ref()
        .and_then(|b| b.broker_job_spec.as_ref());
    let wanted: Vec<Job> = spec
        .map(|spec| {
            instances
                .iter()
                .map(|i| brokers::broker_job(inputs.config, i, spec, inputs.devices))
                .collect()
        })
        .unwrap_or_default();
    let names: BTreeSet<String> = wanted.iter().map(ResourceExt::name_any).collect();
    let existing: BTreeMap<String, &Job> = inputs.jobs.iter().map(|j| (j.name_any(), j)).collect();
    for job in &wanted {
        match existing.get(&job.name_any()) {
            None => actions.push(Action::CreateJob {
                job: Box::new(job.clone()),
            }),
            // Given old device details: run again once it is gone.
            Some(current)
                if current.metadata.deletion_timestamp.is_none()
                    && brokers::given_changed(*current, job) =>
            {
                actions.push(Action::DeleteJob {
                    job: job.name_any(),
                });
            }
            Some(_) => {}
        }
    }
    for job in inputs.jobs.iter().map(ResourceExt::name_any) {
        if !names.contains(&job) {
            actions.push(Action::DeleteJob { job });
        }
    }
    Jobs {
        wanted: wanted.len(),
        alive: inputs
            .jobs
            .iter()
            .filter(|j| names.contains(&j.name_any()))
            .count(),
    }
}

/// A Service per Instance and one for the whole Configuration, as its spec asks.
pub(super) fn services(inputs: &Inputs, instances: &[Cow<Instance>], actions: &mut Vec<Action>) {
    let config = inputs.config;
    let mut wanted = Vec::new();
    if let Some(spec) = &config.spec.instance_service_spec {
        wanted.extend(
            instances
                .iter()
                .map(|i| brokers::instance_service(config, i, spec)),
        );
    }
    if let Some(spec) = &config.spec.configuration_service_spec
        && !instances.is_empty()
    {
        wanted.push(brokers::configuration_service(config, spec));
    }
    let names: BTreeSet<String> = wanted.iter().map(ResourceExt::name_any).collect();
    for service in wanted {
        actions.push(Action::ApplyService {
            service: Box::new(service),
        });
    }
    for service in inputs.services.iter().map(ResourceExt::name_any) {
        if !names.contains(&service) {
            actions.push(Action::DeleteService { service });
        }
    }
}
