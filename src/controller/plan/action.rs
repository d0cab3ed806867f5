//! The actions a plan is made of, and their one-line descriptions (for logs and tests).

use std::{fmt, time::Duration};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Pod, Service},
    resource::v1::ResourceClaimTemplate,
};
use kube::ResourceExt;

/// One change to the cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Warn that the Configuration is not valid (an Event).
    ReportInvalid {
        message: String,
    },
    /// Remove nodes that no longer exist from an Instance's status (`nodes` is what stays)
    /// and their claims (`freed` slots), if the Instance is still at `resource_version`.
    ForgetNodes {
        instance: String,
        resource_version: Option<String>,
        nodes: Vec<String>,
        freed: Vec<String>,
        gone: Vec<String>,
    },
    /// Delete an Instance all of whose nodes are gone, if it is still at `resource_version`.
    DeleteInstance {
        instance: String,
        uid: Option<String>,
        resource_version: Option<String>,
        gone: Vec<String>,
    },
    /// Record where an Instance's device stands under `approval: Manual`: its identity now,
    /// the identity approved (none: nodes do not offer it) and the `Approved` condition.
    RecordApproval {
        instance: String,
        identity: String,
        approved_identity: Option<String>,
        condition: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
    },
    /// Delete a pod at once: it is on a Node that no longer exists, so no kubelet will
    /// confirm a graceful deletion.
    ForceDeletePod {
        pod: String,
    },
    /// Create a broker pod, pinned to `node`.
    CreatePod {
        pod: Box<Pod>,
        node: String,
    },
    /// Delete a broker pod.
    DeletePod {
        pod: String,
        why: Removal,
    },
    CreateJob {
        job: Box<Job>,
    },
    DeleteJob {
        job: String,
    },
    /// Create or update an Instance's ResourceClaimTemplate (server-side apply; DRA mode).
    ApplyClaimTemplate {
        template: Box<ResourceClaimTemplate>,
    },
    /// Create or update a Service (server-side apply).
    ApplyService {
        service: Box<Service>,
    },
    DeleteService {
        service: String,
    },
}

/// Why a broker pod is deleted.
#[derive(Clone, Debug, PartialEq)]
pub enum Removal {
    /// Its slot belongs to another node now: made again there.
    Rehomed { node: String },
    /// The broker spec changed: made again from the new one.
    NewSpec,
    /// What the broker is given for its device changed (the device's details, the
    /// `brokerProperties`, the properties' values on its node): made again to get it, as the
    /// kubelet gives a container's restarts the answer of its first `Allocate`.
    NewDetails,
    /// It failed: made again after `wait`.
    Failed { wait: Duration },
    /// Its node no longer sees the device (or holds more than its share): the slot is freed
    /// and dealt again.
    LeftNode { node: String, instance: String },
    /// Its Instance is gone.
    DeviceGone { instance: String },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Action::ReportInvalid { message } => write!(f, "report invalid: {message}"),
            Action::ForgetNodes {
                instance,
                gone,
                freed,
                ..
            } => write!(
                f,
                "forget nodes {} of {instance}, freeing slots [{}]",
                gone.join(","),
                freed.join(",")
            ),
            Action::DeleteInstance { instance, .. } => write!(f, "delete instance {instance}"),
            Action::RecordApproval {
                instance,
                condition,
                ..
            } => write!(f, "record {instance} {}", condition.reason),
            Action::ForceDeletePod { pod } => write!(f, "force-delete pod {pod}"),
            Action::CreatePod { pod, node } => write!(f, "create pod {} on {node}", pod.name_any()),
            Action::DeletePod { pod, why } => write!(f, "delete pod {pod}: {why}"),
            Action::CreateJob { job } => write!(f, "create job {}", job.name_any()),
            Action::DeleteJob { job } => write!(f, "delete job {job}"),
            Action::ApplyClaimTemplate { template } => {
                write!(f, "apply claim template {}", template.name_any())
            }
            Action::ApplyService { service } => write!(f, "apply service {}", service.name_any()),
            Action::DeleteService { service } => write!(f, "delete service {service}"),
        }
    }
}

impl fmt::Display for Removal {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Removal::Rehomed { node } => write!(f, "moves to {node}"),
            Removal::NewSpec => write!(f, "new spec"),
            Removal::NewDetails => write!(f, "new device details"),
            Removal::Failed { wait } => write!(f, "failed, again in {}s", wait.as_secs()),
            Removal::LeftNode { node, .. } => write!(f, "leaves {node}"),
            Removal::DeviceGone { instance } => write!(f, "{instance} is gone"),
        }
    }
}
