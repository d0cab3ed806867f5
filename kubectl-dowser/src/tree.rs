//! `kubectl dowser tree`: everything that exists for a Configuration, as one tree. Pure:
//! [`build`] makes the model from the objects read, [`lines`] lays the model out as
//! labelled lines, [`render`] prints them as columns.

use std::collections::BTreeMap;

use dowser::{
    controller::brokers::{NODE_ANNOTATION, SLOT_LABEL},
    crd::{Approval, CONFIGURATION_LABEL, Configuration, INSTANCE_LABEL, Instance},
    naming,
};
use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time},
};
use kube::ResourceExt;

use crate::output::{Health, Style, age};

/// What was read from the cluster.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub configurations: Vec<Configuration>,
    pub instances: Vec<Instance>,
    pub pods: Vec<Pod>,
    pub jobs: Vec<Job>,
    pub services: Vec<Service>,
}

/// A condition's status, reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl Cond {
    fn of(conditions: &[Condition], type_: &str) -> Option<Cond> {
        conditions.iter().find(|c| c.type_ == type_).map(|c| Cond {
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
    }

    fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// A Configuration and what it made.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigTree {
    pub namespace: String,
    pub name: String,
    pub created: Option<Time>,
    pub accepted: Option<Cond>,
    pub ready: Option<Cond>,
    pub approval: Approval,
    /// The counts of the Configuration's status.
    pub instances: Option<u32>,
    pub brokers: Option<u32>,
    pub pending: Option<u32>,
    pub resource: Option<String>,
    /// Discovery health on each node (`status.nodes`).
    pub discovery: Vec<Discovery>,
    pub devices: Vec<InstanceTree>,
    /// The Configuration's own Services, and workloads labelled with it whose Instance is
    /// not there (any more).
    pub services: Vec<ServiceLeaf>,
    pub jobs: Vec<JobLeaf>,
    pub pods: Vec<PodLeaf>,
}

/// Discovery on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    pub node: String,
    pub devices: u32,
    pub error: Option<String>,
    pub problems: Vec<String>,
}

/// Where a device stands with approval, from its Instance's `Approved` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApprovalState {
    /// The Configuration approves every device.
    Automatic,
    /// `message`: who approved it.
    Approved { message: String },
    /// `message`: what to do.
    Pending { message: String },
    /// `message`: who approved the device that answered before, and what to do.
    IdentityChanged { message: String },
    /// Under `Manual`, but the controller has not decided yet.
    Undecided,
    /// A reason this version does not know.
    Other { reason: String, message: String },
}

impl ApprovalState {
    fn of(config: &Configuration, instance: &Instance) -> ApprovalState {
        let condition = instance
            .status
            .as_ref()
            .and_then(|s| Cond::of(&s.conditions, dowser::approval::CONDITION));
        match condition {
            None if config.spec.approval == Approval::Automatic => ApprovalState::Automatic,
            None => ApprovalState::Undecided,
            Some(c) => match c.reason.as_str() {
                "Approved" if c.is_true() => ApprovalState::Approved { message: c.message },
                "Pending" => ApprovalState::Pending { message: c.message },
                "IdentityChanged" => ApprovalState::IdentityChanged { message: c.message },
                _ => ApprovalState::Other {
                    reason: c.reason,
                    message: c.message,
                },
            },
        }
    }

    /// The word in the STATE column, how it is coloured, and what it says more.
    fn show(&self) -> (&str, Health, &str) {
        match self {
            ApprovalState::Automatic => ("Automatic", Health::Good, ""),
            ApprovalState::Approved { message } => ("Approved", Health::Good, message),
            ApprovalState::Pending { message } => ("Pending", Health::Waiting, message),
            ApprovalState::IdentityChanged { message } => ("IdentityChanged", Health::Bad, message),
            ApprovalState::Undecided => (
                "Undecided",
                Health::Waiting,
                "the controller has not decided on it yet",
            ),
            ApprovalState::Other { reason, message } => (reason, Health::Waiting, message),
        }
    }
}

/// One device and what holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceTree {
    pub name: String,
    pub device_id: String,
    pub shared: bool,
    pub capacity: u32,
    pub created: Option<Time>,
    pub approval: ApprovalState,
    pub resource: Option<String>,
    pub identity: Option<String>,
    /// The nodes that see the device, and those holding one of its slots.
    pub nodes: Vec<NodeBranch>,
    pub jobs: Vec<JobLeaf>,
    pub services: Vec<ServiceLeaf>,
    /// Pods of the Instance in no slot and of no Job.
    pub pods: Vec<PodLeaf>,
}

impl InstanceTree {
    fn held(&self) -> usize {
        self.nodes
            .iter()
            .flat_map(|n| &n.slots)
            .filter(|s| s.claimed)
            .count()
    }
}

/// A node under an Instance.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeBranch {
    pub name: String,
    /// Whether the node sees the device now (`status.nodes`); a node that does not may
    /// still hold a slot.
    pub sees: bool,
    pub slots: Vec<SlotBranch>,
}

/// A slot of an Instance on a node.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotBranch {
    pub slot: String,
    /// Claimed by this node (`status.slots`); a broker pod placed on a node that has not
    /// claimed its slot yet sits under an unclaimed one.
    pub claimed: bool,
    /// The broker pods of this slot on this node.
    pub pods: Vec<PodLeaf>,
}

/// A Pod, as `kubectl get pods` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodLeaf {
    pub name: String,
    /// Phase, or what a container waits for, or Terminating.
    pub status: String,
    pub health: Health,
    pub ready: usize,
    pub containers: usize,
    pub restarts: i32,
    pub node: Option<String>,
    pub ip: Option<String>,
    pub created: Option<Time>,
}

impl PodLeaf {
    pub fn of(pod: &Pod) -> PodLeaf {
        let status = pod.status.clone().unwrap_or_default();
        let statuses = status.container_statuses.clone().unwrap_or_default();
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.len())
            .unwrap_or(statuses.len());
        let ready = statuses.iter().filter(|c| c.ready).count();
        let restarts = statuses.iter().map(|c| c.restart_count).sum();
        let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
        let waiting = statuses
            .iter()
            .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .next();
        let terminated = statuses
            .iter()
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.reason.clone())
            .next();
        let shown = if pod.metadata.deletion_timestamp.is_some() {
            "Terminating".to_string()
        } else if let Some(reason) = waiting.filter(|_| phase != "Succeeded" && phase != "Failed") {
            reason
        } else if phase == "Failed" {
            terminated
                .or(status.reason.clone())
                .unwrap_or_else(|| phase.clone())
        } else {
            phase.clone()
        };
        let health = match shown.as_str() {
            "Running" if ready == containers => Health::Good,
            "Succeeded" | "Completed" => Health::Good,
            "Failed"
            | "Error"
            | "CrashLoopBackOff"
            | "ErrImagePull"
            | "ImagePullBackOff"
            | "InvalidImageName"
            | "CreateContainerConfigError"
            | "OOMKilled"
            | "UnexpectedAdmissionError" => Health::Bad,
            _ if phase == "Failed" => Health::Bad,
            _ => Health::Waiting,
        };
        PodLeaf {
            name: pod.name_any(),
            status: shown,
            health,
            ready,
            containers,
            restarts,
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ip: status.pod_ip.clone(),
            created: pod.metadata.creation_timestamp.clone(),
        }
    }
}

/// A broker Job and its pods.
#[derive(Clone, Debug, PartialEq)]
pub struct JobLeaf {
    pub name: String,
    pub status: String,
    pub health: Health,
    pub active: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub created: Option<Time>,
    pub pods: Vec<PodLeaf>,
}

impl JobLeaf {
    pub fn of(job: &Job) -> JobLeaf {
        let status = job.status.clone().unwrap_or_default();
        let condition = |type_: &str| {
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == type_ && c.status == "True")
        };
        let active = status.active.unwrap_or(0);
        let (shown, health) = if condition("Complete") {
            ("Complete", Health::Good)
        } else if condition("Failed") {
            ("Failed", Health::Bad)
        } else if condition("Suspended") {
            ("Suspended", Health::Waiting)
        } else if active > 0 {
            ("Running", Health::Good)
        } else {
            ("Pending", Health::Waiting)
        };
        JobLeaf {
            name: job.name_any(),
            status: shown.into(),
            health,
            active,
            succeeded: status.succeeded.unwrap_or(0),
            failed: status.failed.unwrap_or(0),
            created: job.metadata.creation_timestamp.clone(),
            pods: vec![],
        }
    }
}

/// A Service in front of brokers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLeaf {
    pub name: String,
    pub type_: String,
    pub cluster_ip: Option<String>,
    /// `80/TCP,9000/UDP`, as `kubectl get services` shows them.
    pub ports: String,
    pub created: Option<Time>,
}

impl ServiceLeaf {
    pub fn of(service: &Service) -> ServiceLeaf {
        let spec = service.spec.clone().unwrap_or_default();
        let ports = spec
            .ports
            .iter()
            .flatten()
            .map(|p| format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP")))
            .collect::<Vec<_>>()
            .join(",");
        ServiceLeaf {
            name: service.name_any(),
            type_: spec.type_.unwrap_or_else(|| "ClusterIP".into()),
            cluster_ip: spec.cluster_ip,
            ports,
            created: service.metadata.creation_timestamp.clone(),
        }
    }
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// Whether an object is labelled as one of `config`'s (in its namespace).
fn labelled_for(meta: &ObjectMeta, config: &Configuration) -> bool {
    meta.namespace == config.namespace()
        && label(meta, CONFIGURATION_LABEL)
            == Some(naming::configuration_label(&config.name_any()).as_str())
}

/// The Instances of `config`, by name.
fn instances_of<'a>(objects: &'a Objects, config: &Configuration) -> Vec<&'a Instance> {
    let mut instances: Vec<&Instance> = objects
        .instances
        .iter()
        .filter(|i| {
            i.namespace() == config.namespace() && i.spec.configuration_name == config.name_any()
        })
        .collect();
    instances.sort_by_key(|i| i.name_any());
    instances
}

/// The number of a slot for sorting: numbers in order, anything else after them.
fn slot_order(slot: &str) -> (u64, String) {
    (slot.parse().unwrap_or(u64::MAX), slot.to_string())
}

/// The tree of each Configuration in `objects`, in namespace and name order. Instances
/// belong to the Configuration their `spec.configurationName` names; Pods, Jobs and Services
/// to the one their `dowser.dev/configuration` label names (and to the Instance their
/// `dowser.dev/instance` label names).
pub fn build(objects: &Objects) -> Vec<ConfigTree> {
    let mut configurations: Vec<&Configuration> = objects.configurations.iter().collect();
    configurations.sort_by_key(|c| (c.namespace(), c.name_any()));
    configurations
        .into_iter()
        .map(|c| build_one(c, objects))
        .collect()
}

fn build_one(config: &Configuration, objects: &Objects) -> ConfigTree {
    let ours = |meta: &ObjectMeta| labelled_for(meta, config);
    let pods: Vec<&Pod> = objects.pods.iter().filter(|p| ours(&p.metadata)).collect();
    let jobs: Vec<&Job> = objects.jobs.iter().filter(|j| ours(&j.metadata)).collect();
    let services: Vec<&Service> = objects
        .services
        .iter()
        .filter(|s| ours(&s.metadata))
        .collect();
    let instances = instances_of(objects, config);
    let instance_names: Vec<String> = instances.iter().map(|i| i.name_any()).collect();
    let of_instance =
        |meta: &ObjectMeta, instance: Option<&str>| label(meta, INSTANCE_LABEL) == instance;

    let devices = instances
        .iter()
        .map(|i| {
            let n = i.name_any();
            let pods: Vec<&Pod> = pods
                .iter()
                .copied()
                .filter(|p| of_instance(&p.metadata, Some(&n)))
                .collect();
            let jobs: Vec<&Job> = jobs
                .iter()
                .copied()
                .filter(|j| of_instance(&j.metadata, Some(&n)))
                .collect();
            let services: Vec<&Service> = services
                .iter()
                .copied()
                .filter(|s| of_instance(&s.metadata, Some(&n)))
                .collect();
            build_instance(config, i, &pods, &jobs, &services)
        })
        .collect();

    // Workloads of no Instance listed here: the Configuration's Services, and leftovers of
    // Instances that are gone.
    let stray = |meta: &ObjectMeta| {
        label(meta, INSTANCE_LABEL).is_none_or(|i| !instance_names.iter().any(|n| n == i))
    };
    let stray_jobs: Vec<&Job> = jobs
        .iter()
        .copied()
        .filter(|j| stray(&j.metadata))
        .collect();
    let mut job_leaves = jobs_with_pods(&stray_jobs, &pods);
    let mut stray_pods: Vec<PodLeaf> = pods
        .iter()
        .copied()
        .filter(|p| {
            stray(&p.metadata)
                && owner_job(p).is_none_or(|j| !job_leaves.iter().any(|l| l.name == j))
        })
        .map(PodLeaf::of)
        .collect();
    stray_pods.sort_by(|a, b| a.name.cmp(&b.name));
    job_leaves.sort_by(|a, b| a.name.cmp(&b.name));
    let mut service_leaves: Vec<ServiceLeaf> = services
        .iter()
        .copied()
        .filter(|s| stray(&s.metadata))
        .map(ServiceLeaf::of)
        .collect();
    service_leaves.sort_by(|a, b| a.name.cmp(&b.name));

    let status = config.status.clone().unwrap_or_default();
    let mut discovery: Vec<Discovery> = status
        .nodes
        .iter()
        .map(|n| Discovery {
            node: n.node.clone(),
            devices: n.devices,
            error: n.error.clone(),
            problems: n.problems.clone(),
        })
        .collect();
    discovery.sort_by(|a, b| a.node.cmp(&b.node));
    ConfigTree {
        namespace: config.namespace().unwrap_or_default(),
        name: config.name_any(),
        created: config.metadata.creation_timestamp.clone(),
        accepted: Cond::of(&status.conditions, "Accepted"),
        ready: Cond::of(&status.conditions, "Ready"),
        approval: config.spec.approval,
        instances: status.instances,
        brokers: status.brokers,
        pending: status.pending_approvals,
        resource: status.resource.clone(),
        discovery,
        devices,
        services: service_leaves,
        jobs: job_leaves,
        pods: stray_pods,
    }
}

/// The objects of each Configuration in `objects` for `-o json|yaml`, in the tree's order:
/// the Configuration, its Instances, then its Jobs, Pods and Services.
pub fn involved(objects: &Objects) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut configurations: Vec<&Configuration> = objects.configurations.iter().collect();
    configurations.sort_by_key(|c| (c.namespace(), c.name_any()));
    let mut out = vec![];
    for config in configurations {
        let ours = |meta: &ObjectMeta| labelled_for(meta, config);
        out.push(serde_json::to_value(config)?);
        for i in instances_of(objects, config) {
            out.push(serde_json::to_value(i)?);
        }
        for j in objects.jobs.iter().filter(|j| ours(&j.metadata)) {
            out.push(serde_json::to_value(j)?);
        }
        for p in objects.pods.iter().filter(|p| ours(&p.metadata)) {
            out.push(serde_json::to_value(p)?);
        }
        for s in objects.services.iter().filter(|s| ours(&s.metadata)) {
            out.push(serde_json::to_value(s)?);
        }
    }
    Ok(out)
}

/// The Job that owns a pod, if one does.
fn owner_job(pod: &Pod) -> Option<String> {
    pod.owner_references()
        .iter()
        .find(|o| o.kind == "Job" && o.api_version == "batch/v1")
        .map(|o| o.name.clone())
}

/// Jobs with the pods they own among `pods`.
fn jobs_with_pods(jobs: &[&Job], pods: &[&Pod]) -> Vec<JobLeaf> {
    jobs.iter()
        .map(|j| {
            let mut leaf = JobLeaf::of(j);
            leaf.pods = pods
                .iter()
                .copied()
                .filter(|p| owner_job(p).as_deref() == Some(leaf.name.as_str()))
                .map(PodLeaf::of)
                .collect();
            leaf.pods.sort_by(|a, b| a.name.cmp(&b.name));
            leaf
        })
        .collect()
}

/// The branch of `name` under an Instance, made (seeing nothing) if there is none yet.
fn branch<'a>(nodes: &'a mut BTreeMap<String, NodeBranch>, name: &str) -> &'a mut NodeBranch {
    nodes.entry(name.to_string()).or_insert_with(|| NodeBranch {
        name: name.to_string(),
        sees: false,
        slots: vec![],
    })
}

fn build_instance(
    config: &Configuration,
    instance: &Instance,
    pods: &[&Pod],
    jobs: &[&Job],
    services: &[&Service],
) -> InstanceTree {
    let status = instance.status.clone().unwrap_or_default();
    let mut nodes: BTreeMap<String, NodeBranch> = BTreeMap::new();
    for n in &status.nodes {
        branch(&mut nodes, n).sees = true;
    }
    for (slot, holder) in &status.slots {
        branch(&mut nodes, holder).slots.push(SlotBranch {
            slot: slot.clone(),
            claimed: true,
            pods: vec![],
        });
    }

    let mut job_leaves = jobs_with_pods(jobs, pods);
    job_leaves.sort_by(|a, b| a.name.cmp(&b.name));
    let mut loose = vec![];
    for pod in pods {
        if owner_job(pod).is_some_and(|j| job_leaves.iter().any(|l| l.name == j)) {
            continue;
        }
        let leaf = PodLeaf::of(pod);
        let slot = label(&pod.metadata, SLOT_LABEL);
        let on = leaf.node.clone().or_else(|| {
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(NODE_ANNOTATION).cloned())
        });
        let (Some(slot), Some(on)) = (slot, on) else {
            loose.push(leaf);
            continue;
        };
        let on_node = branch(&mut nodes, &on);
        match on_node.slots.iter_mut().find(|s| s.slot == slot) {
            Some(s) => s.pods.push(leaf),
            None => on_node.slots.push(SlotBranch {
                slot: slot.to_string(),
                claimed: false,
                pods: vec![leaf],
            }),
        }
    }
    let mut nodes: Vec<NodeBranch> = nodes.into_values().collect();
    for n in &mut nodes {
        n.slots.sort_by_key(|s| slot_order(&s.slot));
        for s in &mut n.slots {
            s.pods.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
    loose.sort_by(|a, b| a.name.cmp(&b.name));
    let mut service_leaves: Vec<ServiceLeaf> =
        services.iter().map(|s| ServiceLeaf::of(s)).collect();
    service_leaves.sort_by(|a, b| a.name.cmp(&b.name));
    InstanceTree {
        name: instance.name_any(),
        device_id: instance.spec.device_id.clone(),
        shared: instance.spec.shared,
        capacity: instance.spec.capacity,
        created: instance.metadata.creation_timestamp.clone(),
        approval: ApprovalState::of(config, instance),
        resource: status.resource.clone(),
        identity: status.identity.clone(),
        nodes,
        jobs: job_leaves,
        services: service_leaves,
        pods: loose,
    }
}

/// One line of the tree before layout: what it is, its state and what it says more.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// The object's namespace, for the NAMESPACE column (none for nodes and slots).
    pub namespace: Option<String>,
    /// `Kind/name`, or what the line is about.
    pub label: String,
    pub state: String,
    pub health: Health,
    pub details: String,
    pub created: Option<Time>,
    pub children: Vec<Line>,
}

impl Line {
    fn new(label: impl Into<String>, state: impl Into<String>, health: Health) -> Line {
        Line {
            namespace: None,
            label: label.into(),
            state: state.into(),
            health,
            details: String::new(),
            created: None,
            children: vec![],
        }
    }

    fn details(mut self, parts: Vec<String>) -> Line {
        self.details = parts
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        self
    }

    fn object(mut self, namespace: &str, created: &Option<Time>) -> Line {
        self.namespace = Some(namespace.to_string());
        self.created = created.clone();
        self
    }
}

fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

fn cond_word(c: &Option<Cond>) -> &str {
    c.as_ref().map(|c| c.status.as_str()).unwrap_or("Unknown")
}

/// The lines of the trees; `wide` says more on each.
pub fn lines(trees: &[ConfigTree], wide: bool) -> Vec<Line> {
    trees.iter().map(|t| config_line(t, wide)).collect()
}

fn config_line(t: &ConfigTree, wide: bool) -> Line {
    let ns = t.namespace.as_str();
    let accepted = t.accepted.as_ref().is_some_and(Cond::is_true);
    let ready = t.ready.as_ref().is_some_and(Cond::is_true);
    let (state, health) = match (&t.accepted, &t.ready) {
        (Some(a), _) if !a.is_true() => ("NotAccepted", Health::Bad),
        (_, Some(_)) if ready => ("Ready", Health::Good),
        (_, Some(_)) => ("NotReady", Health::Waiting),
        _ => ("Unknown", Health::Waiting),
    };
    let mut details = vec![
        format!(
            "Accepted={} Ready={}",
            cond_word(&t.accepted),
            cond_word(&t.ready)
        ),
        plural(
            t.instances.unwrap_or(t.devices.len() as u32),
            "instance",
            "instances",
        ),
        plural(t.brokers.unwrap_or(0), "broker", "brokers"),
        match t.approval {
            Approval::Manual => format!(
                "{} (Manual)",
                plural(
                    t.pending.unwrap_or(0),
                    "pending approval",
                    "pending approvals"
                )
            ),
            Approval::Automatic => "approval Automatic".into(),
        },
    ];
    if !accepted && let Some(a) = &t.accepted {
        details.push(a.message.clone());
    }
    if wide {
        if accepted
            && !ready
            && let Some(r) = &t.ready
        {
            details.push(r.message.clone());
        }
        if let Some(r) = &t.resource {
            details.push(format!("resource {r}"));
        }
    }
    let mut line = Line::new(format!("Configuration/{}", t.name), state, health)
        .details(details)
        .object(ns, &t.created);
    if !t.discovery.is_empty() {
        let seen: u32 = t.discovery.iter().map(|d| d.devices).sum();
        let failing = t.discovery.iter().filter(|d| d.error.is_some()).count();
        let mut discovery = Line::new(
            "Discovery",
            if failing > 0 { "Failing" } else { "Ok" },
            if failing > 0 {
                Health::Bad
            } else {
                Health::Good
            },
        )
        .details(vec![
            plural(t.discovery.len() as u64, "node", "nodes"),
            format!("{seen} seen"),
        ]);
        discovery.children = t.discovery.iter().map(discovery_line).collect();
        line.children.push(discovery);
    }
    for d in &t.devices {
        line.children.push(instance_line(d, ns, wide));
    }
    line.children
        .extend(t.jobs.iter().map(|j| job_line(j, ns, wide)));
    line.children
        .extend(t.pods.iter().map(|p| pod_line(p, ns, wide)));
    line.children
        .extend(t.services.iter().map(|s| service_line(s, ns)));
    line
}

fn discovery_line(d: &Discovery) -> Line {
    let (state, health) = match (&d.error, d.problems.is_empty()) {
        (Some(_), _) => ("Error", Health::Bad),
        (None, false) => ("Problems", Health::Waiting),
        (None, true) => ("Ok", Health::Good),
    };
    let mut line = Line::new(format!("Node/{}", d.node), state, health).details(vec![
        plural(d.devices, "device", "devices"),
        d.error.clone().unwrap_or_default(),
    ]);
    line.children = d
        .problems
        .iter()
        .map(|p| Line::new("problem", "", Health::Waiting).details(vec![p.clone()]))
        .collect();
    line
}

fn instance_line(d: &InstanceTree, ns: &str, wide: bool) -> Line {
    let (state, health, said) = d.approval.show();
    let seeing = d.nodes.iter().filter(|n| n.sees).count();
    let mut details = vec![
        d.device_id.clone(),
        format!("seen by {seeing}"),
        format!("slots {}/{} held", d.held(), d.capacity),
        said.to_string(),
    ];
    if wide {
        details.push(if d.shared { "shared" } else { "local" }.into());
        if let Some(r) = &d.resource {
            details.push(format!("resource {r}"));
        }
        if let Some(i) = &d.identity {
            details.push(format!("identity {i}"));
        }
    }
    let mut line = Line::new(format!("Instance/{}", d.name), state, health)
        .details(details)
        .object(ns, &d.created);
    for n in &d.nodes {
        let (state, health) = if n.sees {
            ("Sees", Health::Good)
        } else {
            ("Gone", Health::Waiting)
        };
        let mut node = Line::new(format!("Node/{}", n.name), state, health);
        if !n.sees {
            node = node.details(vec!["no longer sees the device; holds a slot".into()]);
        }
        for s in &n.slots {
            let (state, health) = if s.claimed {
                ("Held", Health::Good)
            } else {
                ("Unclaimed", Health::Waiting)
            };
            let details = match (s.claimed, s.pods.is_empty()) {
                (true, true) => vec!["by a pod of this node that is not a broker".to_string()],
                (true, false) => vec![format!(
                    "by {}",
                    s.pods
                        .iter()
                        .map(|p| format!("Pod/{}", p.name))
                        .collect::<Vec<_>>()
                        .join(" ")
                )],
                (false, _) => vec!["not claimed by this node yet".to_string()],
            };
            let mut slot = Line::new(format!("Slot/{}", s.slot), state, health).details(details);
            slot.children = s.pods.iter().map(|p| pod_line(p, ns, wide)).collect();
            node.children.push(slot);
        }
        line.children.push(node);
    }
    line.children
        .extend(d.jobs.iter().map(|j| job_line(j, ns, wide)));
    line.children
        .extend(d.pods.iter().map(|p| pod_line(p, ns, wide)));
    line.children
        .extend(d.services.iter().map(|s| service_line(s, ns)));
    line
}

fn pod_line(p: &PodLeaf, ns: &str, wide: bool) -> Line {
    let mut details = vec![format!("{}/{} ready", p.ready, p.containers)];
    if p.restarts > 0 {
        details.push(plural(p.restarts as u64, "restart", "restarts"));
    }
    if wide {
        if let Some(n) = &p.node {
            details.push(format!("node {n}"));
        }
        if let Some(ip) = &p.ip {
            details.push(format!("ip {ip}"));
        }
    }
    Line::new(format!("Pod/{}", p.name), &p.status, p.health)
        .details(details)
        .object(ns, &p.created)
}

fn job_line(j: &JobLeaf, ns: &str, wide: bool) -> Line {
    let mut line = Line::new(format!("Job/{}", j.name), &j.status, j.health)
        .details(vec![format!(
            "{} active, {} succeeded, {} failed",
            j.active, j.succeeded, j.failed
        )])
        .object(ns, &j.created);
    line.children = j.pods.iter().map(|p| pod_line(p, ns, wide)).collect();
    line
}

fn service_line(s: &ServiceLeaf, ns: &str) -> Line {
    Line::new(format!("Service/{}", s.name), &s.type_, Health::Plain)
        .details(vec![
            s.cluster_ip.clone().unwrap_or_default(),
            s.ports.clone(),
        ])
        .object(ns, &s.created)
}

/// One laid-out row.
struct Row {
    root: bool,
    namespace: String,
    name: String,
    state: String,
    health: Health,
    age: String,
    details: String,
}

fn flatten(line: &Line, lead: &str, branch: &str, now: i64, out: &mut Vec<Row>) {
    out.push(Row {
        root: lead.is_empty() && branch.is_empty(),
        namespace: line.namespace.clone().unwrap_or_default(),
        name: format!("{lead}{branch}{}", line.label),
        state: line.state.clone(),
        health: line.health,
        age: line
            .created
            .as_ref()
            .map(|t| age(now - t.0.as_second()))
            .unwrap_or_default(),
        details: line.details.clone(),
    });
    // Children are drawn under this line's label: below a root at the start, below a
    // child after its branch, continued with a bar while siblings follow.
    let lead = match branch {
        "" => lead.to_string(),
        "├─" => format!("{lead}│ "),
        _ => format!("{lead}  "),
    };
    let last = line.children.len().saturating_sub(1);
    for (i, child) in line.children.iter().enumerate() {
        flatten(child, &lead, if i == last { "└─" } else { "├─" }, now, out);
    }
}

/// The lines as columns under a header, like `kubectl tree`: NAMESPACE (with
/// `style.all_namespaces`), NAME, STATE, AGE and DETAILS; `now` in seconds since the epoch.
pub fn render(lines: &[Line], style: &Style, now: i64) -> String {
    let mut rows = vec![];
    for line in lines {
        flatten(line, "", "", now, &mut rows);
    }
    let width = |f: &dyn Fn(&Row) -> &str, header: &str| {
        rows.iter()
            .map(|r| f(r).chars().count())
            .chain([header.chars().count()])
            .max()
            .unwrap_or(0)
    };
    let ns_w = width(&|r| &r.namespace, "NAMESPACE");
    let name_w = width(&|r| &r.name, "NAME");
    let state_w = width(&|r| &r.state, "STATE");
    let age_w = width(&|r| &r.age, "AGE");
    let pad = |s: &str, w: usize| format!("{s}{}", " ".repeat(w - s.chars().count()));
    let mut out = String::new();
    let mut push = |ns: &str, name: String, state: String, age: &str, details: &str| {
        let mut l = String::new();
        if style.all_namespaces {
            l.push_str(&pad(ns, ns_w));
            l.push_str("   ");
        }
        l.push_str(&name);
        l.push_str("   ");
        l.push_str(&state);
        l.push_str("   ");
        l.push_str(&pad(age, age_w));
        l.push_str("   ");
        l.push_str(details);
        out.push_str(l.trim_end());
        out.push('\n');
    };
    push(
        "NAMESPACE",
        pad("NAME", name_w),
        pad("STATE", state_w),
        "AGE",
        "DETAILS",
    );
    for r in &rows {
        // The root of each tree stands out; padding stays outside the colour codes.
        let name = format!(
            "{}{}",
            if r.root {
                style.bold(&r.name)
            } else {
                r.name.clone()
            },
            " ".repeat(name_w - r.name.chars().count())
        );
        let state = format!(
            "{}{}",
            style.paint(&r.state, r.health),
            " ".repeat(state_w - r.state.chars().count())
        );
        push(&r.namespace, name, state, &r.age, &r.details);
    }
    out
}

#[cfg(test)]
mod tests;
