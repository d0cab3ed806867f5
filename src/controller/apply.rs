//! Carries out a plan: each [`Action`] becomes its API call, then the log line, metric and
//! Event that tell what happened. Stops at the first call that fails (the reconcile is
//! retried); failures of clean-up deletes are logged and do not stop it.

use std::time::Instant;

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Pod, Service},
    resource::v1::ResourceClaimTemplate,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::events::EventType,
};
use serde_json::json;
use tracing::{info, warn};

use super::{
    Error, MANAGER,
    plan::{Action, Removal},
    reconcile::Ctx,
};
use crate::{
    apiserver::{apply_body, is_conflict, is_not_found},
    crd::{Configuration, INSTANCE_LABEL, Instance},
};

/// The APIs of one Configuration's namespace, and what the actions report to.
pub struct Executor<'a> {
    ctx: &'a Ctx,
    config: &'a Configuration,
    instances: Api<Instance>,
    pods: Api<Pod>,
    jobs: Api<Job>,
    services: Api<Service>,
    claim_templates: Api<ResourceClaimTemplate>,
}

impl<'a> Executor<'a> {
    pub fn new(ctx: &'a Ctx, config: &'a Configuration) -> Self {
        let ns = config.namespace().unwrap_or_default();
        let client = || ctx.client.clone();
        Executor {
            ctx,
            config,
            instances: Api::namespaced(client(), &ns),
            pods: Api::namespaced(client(), &ns),
            jobs: Api::namespaced(client(), &ns),
            services: Api::namespaced(client(), &ns),
            claim_templates: Api::namespaced(client(), &ns),
        }
    }

    /// Carries out `actions` in order.
    pub async fn run(&self, actions: Vec<Action>) -> Result<(), Error> {
        for action in actions {
            match action {
                Action::ReportInvalid { message } => {
                    self.event(EventType::Warning, "InvalidConfiguration", message)
                        .await
                }
                Action::ForgetNodes {
                    instance,
                    resource_version,
                    nodes,
                    freed,
                    gone,
                } => {
                    self.forget_nodes(&instance, resource_version, nodes, freed)
                        .await?;
                    self.nodes_gone(&instance, &gone).await;
                }
                Action::DeleteInstance {
                    instance,
                    uid,
                    resource_version,
                    gone,
                } => {
                    let preconditions = Preconditions {
                        uid,
                        resource_version,
                    };
                    self.delete_instance(&instance, preconditions).await?;
                    self.nodes_gone(&instance, &gone).await;
                }
                Action::RecordApproval {
                    instance,
                    identity,
                    approved_identity,
                    condition,
                } => {
                    self.record_approval(&instance, identity, approved_identity, condition)
                        .await?;
                }
                Action::ForceDeletePod { pod } => {
                    let now = DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::default()
                    };
                    log_failure("pod", &pod, self.pods.delete(&pod, &now).await);
                }
                Action::CreatePod { pod, node } => self.create_pod(&pod, &node).await?,
                Action::DeletePod { pod, why } => self.delete_pod(&pod, why).await?,
                Action::CreateJob { job } => self.create_job(&job).await?,
                Action::DeleteJob { job } => {
                    let background = DeleteParams::background();
                    log_failure("job", &job, self.jobs.delete(&job, &background).await);
                }
                Action::ApplyService { service } => self.apply_service(&service).await?,
                Action::ApplyClaimTemplate { template } => {
                    self.apply_claim_template(&template).await?
                }
                Action::DeleteService { service } => {
                    let result = self
                        .services
                        .delete(&service, &DeleteParams::default())
                        .await;
                    log_failure("service", &service, result);
                }
            }
        }
        Ok(())
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        self.ctx.event(self.config, type_, reason, note).await;
    }

    /// Removes gone nodes and their claims, with the resourceVersion the plan was made from
    /// as a precondition.
    async fn forget_nodes(
        &self,
        instance: &str,
        resource_version: Option<String>,
        nodes: Vec<String>,
        freed: Vec<String>,
    ) -> Result<(), Error> {
        let slots: serde_json::Map<String, serde_json::Value> = freed
            .into_iter()
            .map(|slot| (slot, serde_json::Value::Null))
            .collect();
        let patch = json!({
            "metadata": {"resourceVersion": resource_version},
            "status": {"nodes": nodes, "slots": slots},
        });
        self.instances
            .patch_status(instance, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(instance_error(instance))?;
        Ok(())
    }

    async fn record_approval(
        &self,
        instance: &str,
        identity: String,
        approved_identity: Option<String>,
        condition: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
    ) -> Result<(), Error> {
        // The controller is the only writer of an Instance's conditions.
        let patch = json!({
            "status": {
                "identity": identity,
                "approvedIdentity": approved_identity,
                "conditions": [condition],
            },
        });
        self.instances
            .patch_status(instance, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(instance_error(instance))?;
        let (kind, reason) = if condition.status == "True" {
            (EventType::Normal, "DeviceApproved")
        } else {
            (EventType::Normal, "ApprovalNeeded")
        };
        info!(%instance, reason = %condition.reason, "approval recorded");
        self.event(kind, reason, format!("{instance}: {}", condition.message))
            .await;
        Ok(())
    }

    async fn delete_instance(
        &self,
        instance: &str,
        preconditions: Preconditions,
    ) -> Result<(), Error> {
        let params = DeleteParams {
            preconditions: Some(preconditions),
            ..DeleteParams::default()
        };
        self.instances
            .delete(instance, &params)
            .await
            .map_err(instance_error(instance))?;
        Ok(())
    }

    async fn nodes_gone(&self, instance: &str, gone: &[String]) {
        info!(%instance, nodes = ?gone, "nodes that no longer exist removed");
        let note = format!(
            "{instance}: node(s) {} no longer exist; their slots are freed",
            gone.join(", ")
        );
        self.event(EventType::Normal, "NodeGone", note).await;
    }

    async fn create_pod(&self, pod: &Pod, node: &str) -> Result<(), Error> {
        let name = pod.name_any();
        match self.pods.create(&PostParams::default(), pod).await {
            Ok(_) => {
                self.ctx.metrics.broker_created();
                info!(pod = %name, %node, "broker created");
                let instance = pod
                    .labels()
                    .get(INSTANCE_LABEL)
                    .cloned()
                    .unwrap_or_default();
                let note = format!("broker {name} for {instance} on node {node}");
                self.event(EventType::Normal, "BrokerScheduled", note).await;
                Ok(())
            }
            // Made by an earlier pass whose answer was lost: nothing to do.
            Err(e) if is_conflict(&e) => Ok(()),
            Err(source) => Err(Error::Broker {
                broker: name,
                source,
            }),
        }
    }

    async fn delete_pod(&self, pod: &str, why: Removal) -> Result<(), Error> {
        if let Removal::Failed { .. } = why {
            let key = (self.config.namespace().unwrap_or_default(), pod.to_string());
            self.ctx
                .backoff
                .lock()
                .expect("backoff")
                .failed(key, Instant::now());
        }
        match self.pods.delete(pod, &DeleteParams::default()).await {
            Ok(_) => self.ctx.metrics.broker_removed(),
            Err(e) if is_not_found(&e) => {}
            Err(source) => {
                return Err(Error::Broker {
                    broker: pod.into(),
                    source,
                });
            }
        }
        let (type_, reason, note) = match why {
            Removal::Rehomed { node } => (
                EventType::Normal,
                "BrokerRehomed",
                format!("broker {pod} moves to node {node}"),
            ),
            Removal::NewSpec => (
                EventType::Normal,
                "BrokerUpdated",
                format!("broker {pod} restarts with the new broker spec"),
            ),
            Removal::NewDetails => (
                EventType::Normal,
                "BrokerUpdated",
                format!("broker {pod} restarts with its device's new details"),
            ),
            Removal::Failed { wait } => (
                EventType::Warning,
                "BrokerFailed",
                format!("broker {pod} failed; replaced in {}s", wait.as_secs()),
            ),
            Removal::LeftNode { node, instance } => {
                info!(%pod, %node, "broker leaves a node that lost the device");
                (
                    EventType::Normal,
                    "BrokerRehomed",
                    format!("broker {pod} leaves node {node}, which no longer sees {instance}"),
                )
            }
            Removal::DeviceGone { instance } => {
                info!(%pod, "broker removed");
                (
                    EventType::Normal,
                    "BrokerRemoved",
                    format!("broker {pod}: {instance} is gone"),
                )
            }
        };
        self.event(type_, reason, note).await;
        Ok(())
    }

    async fn create_job(&self, job: &Job) -> Result<(), Error> {
        let name = job.name_any();
        match self.jobs.create(&PostParams::default(), job).await {
            Ok(_) => {
                let note = format!("job {name}");
                self.event(EventType::Normal, "BrokerJobCreated", note)
                    .await;
                Ok(())
            }
            Err(e) if is_conflict(&e) => Ok(()),
            Err(source) => Err(Error::Broker {
                broker: name,
                source,
            }),
        }
    }

    /// The template a DRA broker's claim is made from; the claim goes with the broker pod,
    /// the template with its Instance (owner).
    async fn apply_claim_template(&self, template: &ResourceClaimTemplate) -> Result<(), Error> {
        let name = template.name_any();
        let params = PatchParams::apply(MANAGER).force();
        match self
            .claim_templates
            .patch(&name, &params, &Patch::Apply(template))
            .await
        {
            Ok(_) => Ok(()),
            Err(source) => Err(Error::Broker {
                broker: format!("ResourceClaimTemplate {name}"),
                source,
            }),
        }
    }

    async fn apply_service(&self, service: &Service) -> Result<(), Error> {
        let name = service.name_any();
        let body = apply_body::<Service>(
            serde_json::to_value(&service.metadata).unwrap_or_default(),
            json!({ "spec": service.spec }),
        );
        let params = PatchParams::apply(MANAGER).force();
        match self
            .services
            .patch(&name, &params, &Patch::Apply(body))
            .await
        {
            Ok(_) => Ok(()),
            Err(source) => Err(Error::Service {
                service: name,
                source,
            }),
        }
    }
}

/// A clean-up delete that failed: said, and retried by a later pass. An object already
/// gone is what was wanted.
fn log_failure<T>(kind: &str, name: &str, result: Result<T, kube::Error>) {
    match result {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {}
        Err(error) => warn!(%kind, %name, %error, "cannot delete"),
    }
}

impl Ctx {
    /// Publishes an Event about `config`; a failure is logged and otherwise ignored.
    pub async fn event(
        &self,
        config: &Configuration,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = kube::runtime::events::Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &config.object_ref(&())).await {
            warn!(%error, "cannot publish event");
        }
    }
}

/// Wraps an API error of a write to the Instance `instance`.
fn instance_error(instance: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |source| Error::Instance {
        instance: instance.into(),
        source,
    }
}
