//! This node's part of every Instance: the spec it applies for the devices it sees, its
//! entry in `status.nodes` and its claimed slots in `status.slots`, all under one field
//! manager per node. Every status write carries the node's whole part, so no write can drop
//! another.
//!
//! The node's label ([`naming::node_label`]) marks the Instances it takes part in: it sees
//! the device, or a pod here holds one of its slots. The agent's cache watches that label
//! only. It is set with the first write of the Instance's spec (creating or joining it) and
//! removed when the node's part is empty and the Instance stays for other nodes.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions},
};
use serde::Serialize;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::metrics::Metrics;
use crate::{
    apiserver::{apply_body, apply_status, is_conflict, is_not_found},
    crd::{Configuration, Instance, InstanceSpec},
    naming,
};

/// What this node applies to an Instance's status: always the list of nodes, so that an
/// empty list drops this node; its slots only when it claims some (an apply without them
/// drops the slots it claimed, while an empty map would set `status.slots` to null once no
/// node claims any, which the schema refuses: the last slot could never be released); and
/// the Instance's extended resource, the same from every node (so co-owned without
/// conflict).
#[derive(Serialize)]
struct StatusPart<'a> {
    nodes: Vec<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    slots: BTreeMap<String, &'a str>,
    resource: &'a str,
}

/// What this node applies to an Instance besides its metadata.
#[derive(Serialize)]
struct SpecPart<'a> {
    spec: &'a InstanceSpec,
}

#[derive(Clone)]
struct Part {
    joined: bool,
    claims: BTreeSet<u32>,
    /// Whether the Instance has this node's label, as this node last wrote or read it.
    labelled: bool,
    /// The Instance's extended resource ([`naming::instance_resource`]).
    resource: String,
}

type Key = (String, String);

/// Reads and deletes a last node out tries before it gives up for this time.
const DELETE_ATTEMPTS: usize = 5;

/// Instances per page when listing them all (once, at start).
const LIST_PAGE: u32 = 500;

/// Whether `node` takes part in an Instance: it sees the device, or holds one of its slots.
fn takes_part(instance: &Instance, node: &str) -> bool {
    instance
        .status
        .as_ref()
        .is_some_and(|s| s.nodes.iter().any(|n| n == node) || s.slots.values().any(|n| n == node))
}

/// This node's part of every Instance it touches. Each part has its own lock, held across
/// the write that carries it: writes to one Instance stay in order, writes to different
/// Instances run side by side.
pub struct NodeInstances {
    client: Client,
    node: String,
    manager: String,
    label: String,
    parts: std::sync::Mutex<BTreeMap<Key, Arc<Mutex<Part>>>>,
    metrics: Arc<Metrics>,
}

/// Why a slot could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("slot {slot} of {instance} is claimed by another node")]
    Taken { instance: String, slot: u32 },
    #[error("slots {slots:?} of {instance} not claimed: the API server did not answer within {}s ({waiting})", deadline.as_secs())]
    TimedOut {
        instance: String,
        slots: Vec<u32>,
        deadline: std::time::Duration,
        waiting: &'static str,
    },
    #[error(transparent)]
    Api(#[from] kube::Error),
}

impl NodeInstances {
    pub fn new(client: Client, node: &str, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            node: node.to_string(),
            manager: format!("dowser-agent-{node}"),
            label: naming::node_label(node),
            parts: std::sync::Mutex::new(BTreeMap::new()),
            metrics,
        }
    }

    /// The agent's metrics, which count these writes.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The field manager of this node's writes.
    pub fn manager(&self) -> &str {
        &self.manager
    }

    /// The label of the Instances this node takes part in.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The lock of one Instance's part (made empty on first use).
    fn part(&self, namespace: &str, name: &str) -> Arc<Mutex<Part>> {
        self.parts
            .lock()
            .expect("parts lock")
            .entry((namespace.to_string(), name.to_string()))
            .or_insert_with(|| {
                Arc::new(Mutex::new(Part {
                    joined: false,
                    claims: BTreeSet::new(),
                    labelled: false,
                    resource: naming::instance_resource(namespace, name),
                }))
            })
            .clone()
    }

    /// Forgets an Instance's part (it is gone).
    fn forget(&self, namespace: &str, name: &str) {
        self.parts
            .lock()
            .expect("parts lock")
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Takes over this node's part of an existing Instance after a restart. Nothing is
    /// written, except that an Instance this node no longer takes part in loses its label
    /// (the agent stopped between leaving and unlabelling it).
    pub async fn adopt(&self, instance: &Instance) {
        let ns = instance.namespace().unwrap_or_default();
        let status = instance.status.clone().unwrap_or_default();
        let part = self.part(&ns, &instance.name_any());
        let mut part = part.lock().await;
        part.joined = status.nodes.contains(&self.node);
        part.labelled = instance.labels().contains_key(&self.label);
        part.claims = status
            .slots
            .iter()
            .filter(|(_, n)| **n == self.node)
            .filter_map(|(s, _)| s.parse().ok())
            .collect();
        if part.labelled && !part.joined && part.claims.is_empty() {
            let api: Api<Instance> = Api::namespaced(self.client.clone(), &ns);
            if let Err(e) = self
                .unlabel_if_done(&api, &instance.name_any(), &mut part)
                .await
            {
                warn!(instance = %instance.name_any(), error = %e, "cannot remove the node label");
            }
        }
    }

    /// Applies `wanted` (the Instance a device becomes) if `current` differs, and joins its
    /// node list.
    pub async fn upsert(
        &self,
        config: &Configuration,
        wanted: &Instance,
        current: Option<&Instance>,
    ) -> Result<(), kube::Error> {
        let name = wanted.name_any();
        let ns = wanted.namespace().unwrap_or_default();
        let api: Api<Instance> = Api::namespaced(self.client.clone(), &ns);
        // The lock is held from the label to the join: a release that unlabels the
        // Instance cannot come in between.
        let part = self.part(&ns, &name);
        let mut part = part.lock().await;
        if !part.labelled || current.is_none_or(|c| c.spec != wanted.spec) {
            let mut metadata = wanted.metadata.clone();
            metadata
                .labels
                .get_or_insert_default()
                .insert(self.label.clone(), String::new());
            metadata.owner_references = config.controller_owner_ref(&()).map(|mut o| {
                // The Configuration is the owner for garbage collection, not a controller.
                o.controller = Some(false);
                o.block_owner_deletion = None;
                vec![o]
            });
            let metadata = serde_json::to_value(&metadata).map_err(kube::Error::SerdeError)?;
            let body = apply_body::<Instance>(metadata, SpecPart { spec: &wanted.spec });
            api.patch(
                &name,
                &PatchParams::apply(&self.manager).force(),
                &Patch::Apply(body),
            )
            .await?;
            part.labelled = true;
            self.metrics.wrote();
            info!(instance = %name, device = %wanted.spec.device_id, "instance written");
        }
        let status = current.and_then(|c| c.status.as_ref());
        let joined_already = status.is_some_and(|s| s.nodes.contains(&self.node));
        // Instances written before the resource was in the status get it now.
        let resource_shown = status.is_some_and(|s| s.resource.as_ref() == Some(&part.resource));
        if !part.joined || !joined_already || !resource_shown {
            part.joined = true;
            self.apply_status(&api, &name, &part).await?;
        }
        Ok(())
    }

    /// Leaves an Instance: drops this node from `status.nodes` (claims held by running pods
    /// stay while the Instance does); the last node out deletes it, since no node sees the
    /// device any more.
    pub async fn leave(&self, namespace: &str, name: &str) -> Result<(), kube::Error> {
        let api: Api<Instance> = Api::namespaced(self.client.clone(), namespace);
        let part = self.part(namespace, name);
        let mut part = part.lock().await;
        part.joined = false;
        match self.apply_status(&api, name, &part).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {
                self.forget(namespace, name);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        drop(part);
        // The Instance may change between the read and the delete (another node leaves and
        // unlabels it, or joins): read it again and decide again.
        let mut conflict = None;
        for _ in 0..DELETE_ATTEMPTS {
            let Some(now) = api.get_opt(name).await? else {
                self.forget(namespace, name);
                return Ok(());
            };
            let status = now.status.clone().unwrap_or_default();
            if !status.nodes.is_empty() {
                // Other nodes still see the device: this node's label goes, unless a pod
                // here still holds a slot.
                let part = self.part(namespace, name);
                let mut part = part.lock().await;
                return self.unlabel_if_done(&api, name, &mut part).await;
            }
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: now.uid(),
                    resource_version: now.resource_version(),
                }),
                ..DeleteParams::default()
            };
            match api.delete(name, &dp).await {
                Ok(_) => {
                    self.metrics.wrote();
                    info!(instance = %name, "last node out: instance deleted");
                }
                Err(e) if is_conflict(&e) => {
                    debug!(instance = %name, error = %e, "instance changed before its delete; reading it again");
                    conflict = Some(e);
                    continue;
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
            self.forget(namespace, name);
            return Ok(());
        }
        // Still changing: the caller leaves again later, which reads it afresh.
        conflict.map_or(Ok(()), Err)
    }

    /// Claims slots for a pod being admitted here. Fails if another node claims one of them,
    /// or if the claim is not recorded within `deadline` (waiting for another write of the
    /// Instance included): the kubelet waits on this, and admits nothing else meanwhile.
    pub async fn claim(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        slots: &[u32],
        deadline: std::time::Duration,
    ) -> Result<(), ClaimError> {
        let until = tokio::time::Instant::now() + deadline;
        let timed_out = |waiting| ClaimError::TimedOut {
            instance: format!("{namespace}/{name}"),
            slots: slots.to_vec(),
            deadline,
            waiting,
        };
        let api: Api<Instance> = Api::namespaced(self.client.clone(), namespace);
        let part = self.part(namespace, name);
        let mut part = tokio::time::timeout_at(until, part.lock())
            .await
            .map_err(|_| timed_out("an earlier write of the Instance is still waiting for it"))?;
        let mut wanted = part.clone();
        wanted.claims.extend(slots);
        if wanted.claims == part.claims {
            return Ok(());
        }
        match tokio::time::timeout_at(until, self.apply_status(&api, name, &wanted)).await {
            Ok(Ok(())) => {
                *part = wanted;
                Ok(())
            }
            Ok(Err(e)) if is_conflict(&e) => Err(ClaimError::Taken {
                instance: name.to_string(),
                slot: slots.first().copied().unwrap_or_default(),
            }),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                // The claim may have reached the API server all the same: once it answers
                // again, this node's part is stated again without it, so that no slot stays
                // claimed for a pod the kubelet refused.
                drop(part);
                let me = self.clone();
                let (ns, name) = (namespace.to_string(), name.to_string());
                tokio::spawn(async move { me.restate(&ns, &name).await });
                Err(timed_out("no answer to the claim"))
            }
        }
    }

    /// Applies this node's part of an Instance as it stands.
    async fn restate(&self, namespace: &str, name: &str) {
        let api: Api<Instance> = Api::namespaced(self.client.clone(), namespace);
        let part = self.part(namespace, name);
        let part = part.lock().await;
        match self.apply_status(&api, name, &part).await {
            Ok(()) => debug!(instance = %name, "claims stated again after an unanswered claim"),
            Err(e) if is_not_found(&e) => {}
            Err(e) => warn!(instance = %name, error = %e, "cannot state the claims again"),
        }
    }

    /// Releases claims no pod holds any more.
    pub async fn release(
        &self,
        namespace: &str,
        name: &str,
        slots: &[u32],
    ) -> Result<(), kube::Error> {
        let api: Api<Instance> = Api::namespaced(self.client.clone(), namespace);
        let key = (namespace.to_string(), name.to_string());
        let Some(part) = self.parts.lock().expect("parts lock").get(&key).cloned() else {
            return Ok(());
        };
        let mut part = part.lock().await;
        for s in slots {
            part.claims.remove(s);
        }
        let released = match self.apply_status(&api, name, &part).await {
            Ok(()) => self.unlabel_if_done(&api, name, &mut part).await,
            Err(e) => Err(e),
        };
        match released {
            Err(e) if is_not_found(&e) => {
                self.forget(namespace, name);
                Ok(())
            }
            other => other,
        }
    }

    /// Removes this node's label from an Instance once its part is empty (not seen here, no
    /// slot held here), so that the node's cache lets go of it.
    async fn unlabel_if_done(
        &self,
        api: &Api<Instance>,
        name: &str,
        part: &mut Part,
    ) -> Result<(), kube::Error> {
        if part.joined || !part.claims.is_empty() || !part.labelled {
            return Ok(());
        }
        let patch = serde_json::json!({"metadata": {"labels": {self.label.as_str(): null}}});
        let params = PatchParams {
            field_manager: Some(self.manager.clone()),
            ..PatchParams::default()
        };
        match api.patch(name, &params, &Patch::Merge(patch)).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
        part.labelled = false;
        self.metrics.wrote();
        debug!(instance = %name, "node label removed");
        Ok(())
    }

    /// Labels the Instances this node takes part in that lack its label (written before
    /// nodes labelled them), so that the agent's watch, which selects by the label, finds
    /// them: read a page at a time, never all held at once. Returns how many it labelled.
    pub async fn label_unlabelled(&self) -> Result<usize, kube::Error> {
        let all: Api<Instance> = Api::all(self.client.clone());
        let params = PatchParams {
            field_manager: Some(self.manager.clone()),
            ..PatchParams::default()
        };
        let patch = serde_json::json!({"metadata": {"labels": {self.label.as_str(): ""}}});
        let mut list = ListParams::default()
            .labels(&format!("!{}", self.label))
            .limit(LIST_PAGE);
        let mut labelled = 0;
        loop {
            let page = all.list(&list).await?;
            for instance in page.items.iter().filter(|i| takes_part(i, &self.node)) {
                let ns = instance.namespace().unwrap_or_default();
                let api: Api<Instance> = Api::namespaced(self.client.clone(), &ns);
                match api
                    .patch(&instance.name_any(), &params, &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => labelled += 1,
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e),
                }
                self.metrics.wrote();
            }
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => list = list.continue_token(&token),
                _ => break,
            }
        }
        if labelled > 0 {
            info!(instances = labelled, label = %self.label, "labelled the Instances this node takes part in");
        }
        Ok(labelled)
    }

    /// Every claim of this node, as (namespace, instance, slot).
    pub async fn claims(&self) -> Vec<(String, String, u32)> {
        let parts: Vec<(Key, Arc<Mutex<Part>>)> = self
            .parts
            .lock()
            .expect("parts lock")
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        let mut claims = Vec::new();
        for ((ns, name), part) in parts {
            let part = part.lock().await;
            claims.extend(part.claims.iter().map(|s| (ns.clone(), name.clone(), *s)));
        }
        claims
    }

    async fn apply_status(
        &self,
        api: &Api<Instance>,
        name: &str,
        part: &Part,
    ) -> Result<(), kube::Error> {
        let status = StatusPart {
            nodes: if part.joined {
                vec![self.node.as_str()]
            } else {
                vec![]
            },
            slots: part
                .claims
                .iter()
                .map(|s| (s.to_string(), self.node.as_str()))
                .collect(),
            resource: &part.resource,
        };
        // Not forced: a slot another node claims is a conflict, never taken over.
        apply_status(api, name, &self.manager, false, status).await?;
        self.metrics.wrote();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_takes_part_by_seeing_the_device_or_holding_a_slot() {
        let instance = |status: serde_json::Value| -> Instance {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "dowser.dev/v1alpha1", "kind": "Instance",
                "metadata": {"name": "plc-1", "namespace": "default"},
                "spec": {
                    "configurationName": "plc", "deviceId": "modbus://10.0.0.5:502/1",
                    "shared": true, "capacity": 1
                },
                "status": status,
            }))
            .unwrap()
        };
        let seen = instance(serde_json::json!({"nodes": ["a", "b"]}));
        assert!(takes_part(&seen, "a") && takes_part(&seen, "b"));
        assert!(!takes_part(&seen, "c"));
        // A pod on c still holds a slot of a device c no longer sees.
        let held = instance(serde_json::json!({"nodes": ["a"], "slots": {"0": "c"}}));
        assert!(takes_part(&held, "c"));
        let nobody = instance(serde_json::json!({"nodes": []}));
        assert!(!takes_part(&nobody, "a"));
    }

    #[test]
    fn a_node_without_claims_applies_no_slots_map() {
        let body = |slots: &[(&str, &str)]| {
            serde_json::to_value(StatusPart {
                nodes: vec!["a"],
                slots: slots.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
                resource: "dowser.dev/default_plc-1",
            })
            .unwrap()
        };
        assert_eq!(
            body(&[]),
            serde_json::json!({"nodes": ["a"], "resource": "dowser.dev/default_plc-1"})
        );
        assert_eq!(body(&[("0", "a")])["slots"], serde_json::json!({"0": "a"}));
    }
}
