//! Discovery of one Configuration on this node: runs its handler, turns snapshots into
//! Instance writes through [`Presence`], applies the grace period, and reports this node's
//! discovery health in the Configuration's status (on change only).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use dowser_discovery_api::{Device, Properties, naming};
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, reflector::Store, watcher},
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{instances::NodeInstances, metrics::Metrics, presence::Presence};
use crate::{
    crd::{CONFIGURATION_LABEL, Configuration, Instance},
    handlers,
};

/// Why a worker stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The agent shuts down: Instances stay as they are.
    Shutdown,
    /// The Configuration no longer applies to this node (or changed): leave its Instances.
    Deselected,
    /// The Configuration changed: a new worker takes over this node's devices.
    Replaced,
}

pub struct Shared {
    pub client: Client,
    pub node: String,
    pub part: Arc<NodeInstances>,
    pub instances: Store<Instance>,
    pub metrics: Arc<Metrics>,
    /// Wakes the plugin manager after Instance writes.
    pub changed: mpsc::UnboundedSender<()>,
}

/// This node's discovery health, written to `status.nodes[]` of the Configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Health {
    devices: usize,
    error: Option<String>,
}

pub async fn run(
    shared: Arc<Shared>,
    config: Arc<Configuration>,
    mut stop: oneshot::Receiver<Stop>,
) {
    let ns = config.namespace().unwrap_or_default();
    let name = config.name_any();
    let selected = match config.spec.discovery.selected() {
        Ok(s) => s,
        Err(e) => {
            report_refusal(&shared, &config, &e.to_string()).await;
            return;
        }
    };
    let shared_devices = selected.shared();
    let grace = Duration::from_secs(config.spec.offline_grace_period_seconds.into());
    let mut presence = Presence::default();
    let adopted: Vec<Device> = shared
        .instances
        .state()
        .iter()
        .filter(|i| i.namespace().as_deref() == Some(ns.as_str()))
        .filter(|i| i.labels().get(CONFIGURATION_LABEL) == Some(&name))
        .filter(|i| {
            i.status
                .as_ref()
                .is_some_and(|s| s.nodes.contains(&shared.node))
        })
        .map(|i| Device {
            id: i.spec.device_id.clone(),
            properties: i.spec.properties.clone(),
            device_specs: i.spec.devices.clone(),
            mounts: i.spec.mounts.clone(),
        })
        .collect();
    if !adopted.is_empty() {
        info!(configuration = %format!("{ns}/{name}"), devices = adopted.len(), "adopted devices reported before");
    }
    presence.adopt(adopted, Instant::now());

    let (refs_changed_tx, mut refs_changed) = mpsc::unbounded_channel();
    let _watchers = WatcherGuard(watch_references(&shared.client, &config, refs_changed_tx));
    let mut last_health: Option<Health> = None;
    // Instances this node failed to leave (the API server was away): retried on every scan
    // until the write goes through, so a device that left during an outage is removed.
    let mut unleft: BTreeSet<String> = BTreeSet::new();
    'restart: loop {
        let properties = match resolve_properties(&shared.client, &config).await {
            Ok(p) => p,
            Err(message) => {
                let h = Health {
                    devices: presence.len(),
                    error: Some(message),
                };
                if last_health.as_ref() != Some(&h) {
                    report(&shared, &config, &h).await;
                    last_health = Some(h);
                }
                tokio::select! {
                    Some(()) = refs_changed.recv() => continue 'restart,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => continue 'restart,
                    reason = &mut stop => { finish(&shared, &config, shared_devices, &presence, reason.unwrap_or(Stop::Shutdown)).await; return; }
                }
            }
        };
        let mut stream = match handlers::discover(selected, properties) {
            Ok(s) => s,
            Err(e) => {
                report_refusal(&shared, &config, &e.to_string()).await;
                let reason = (&mut stop).await.unwrap_or(Stop::Shutdown);
                finish(&shared, &config, shared_devices, &presence, reason).await;
                return;
            }
        };
        loop {
            let expiry = presence.next_expiry(grace);
            let sleep = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                next = stream.next() => {
                    let Some(result) = next else { continue 'restart };
                    let health = match result {
                        Ok(snapshot) => {
                            shared.metrics.scanned(&ns, &name, snapshot.len(), snapshot.round());
                            let changed = presence.observe(&snapshot, Instant::now());
                            write_all(&shared, &config, shared_devices, &changed).await;
                            // Repair drift: a device this node sees must list this node. Those
                            // just written are listed, though the cache may not show it yet.
                            let written: BTreeSet<&str> = changed.iter().map(|d| d.id.as_str()).collect();
                            let unlisted: Vec<&Device> = presence.devices().filter(|device| {
                                let instance_name = instance_name(&shared, &name, &device.id, shared_devices);
                                !written.contains(device.id.as_str())
                                    && !find(&shared.instances, &ns, &instance_name)
                                        .is_some_and(|i| i.status.as_ref().is_some_and(|s| s.nodes.contains(&shared.node)))
                            }).collect();
                            write_all(&shared, &config, shared_devices, unlisted).await;
                            retry_leaves(&shared, &ns, &presence, &mut unleft, |id| instance_name(&shared, &name, id, shared_devices)).await;
                            Health { devices: presence.len(), error: None }
                        }
                        Err(e) => {
                            shared.metrics.discovery_error(&ns, &name);
                            Health { devices: presence.len(), error: Some(e.to_string()) }
                        }
                    };
                    if last_health.as_ref() != Some(&health) {
                        report(&shared, &config, &health).await;
                        last_health = Some(health);
                    }
                }
                _ = sleep => {
                    for id in presence.expire(Instant::now(), grace) {
                        let instance_name = instance_name(&shared, &name, &id, shared_devices);
                        info!(instance = %instance_name, device = %id, "device not seen for the grace period: leaving");
                        if let Err(e) = shared.part.leave(&ns, &instance_name).await {
                            warn!(instance = %instance_name, error = %e, "cannot leave instance; retried after the next scan");
                            unleft.insert(id);
                        }
                        let _ = shared.changed.send(());
                    }
                    let health = Health { devices: presence.len(), error: last_health.as_ref().and_then(|h| h.error.clone()) };
                    if last_health.as_ref() != Some(&health) {
                        report(&shared, &config, &health).await;
                        last_health = Some(health);
                    }
                }
                Some(()) = refs_changed.recv() => {
                    info!(configuration = %format!("{ns}/{name}"), "a referenced Secret or ConfigMap changed: discovering again");
                    continue 'restart;
                }
                reason = &mut stop => {
                    finish(&shared, &config, shared_devices, &presence, reason.unwrap_or(Stop::Shutdown)).await;
                    return;
                }
            }
        }
    }
}

/// Leaves again the Instances of devices that left while their leave failed; a device that
/// came back is no longer to leave.
async fn retry_leaves(
    shared: &Shared,
    ns: &str,
    presence: &Presence,
    unleft: &mut BTreeSet<String>,
    instance_name: impl Fn(&str) -> String,
) {
    unleft.retain(|id| !presence.contains(id));
    let ids: Vec<String> = unleft.iter().cloned().collect();
    for id in ids {
        let name = instance_name(&id);
        match shared.part.leave(ns, &name).await {
            Ok(()) => {
                info!(instance = %name, device = %id, "left the instance of a device gone while the API server was unreachable");
                unleft.remove(&id);
                let _ = shared.changed.send(());
            }
            Err(e) => warn!(instance = %name, error = %e, "cannot leave instance yet"),
        }
    }
}

/// The Instance name of one of this Configuration's devices as seen from this node.
fn instance_name(shared: &Shared, config: &str, device_id: &str, shared_devices: bool) -> String {
    naming::instance_name(
        config,
        device_id,
        (!shared_devices).then_some(shared.node.as_str()),
    )
}

fn find(store: &Store<Instance>, ns: &str, name: &str) -> Option<Arc<Instance>> {
    store
        .state()
        .into_iter()
        .find(|i| i.name_any() == name && i.namespace().as_deref() == Some(ns))
}

/// Instances written at once. A first scan of a plant finds hundreds of devices; written one
/// at a time (two round trips each) 1,000 took about 30 s.
const WRITES_IN_FLIGHT: usize = 8;

async fn write_all<'a>(
    shared: &Shared,
    config: &Configuration,
    shared_devices: bool,
    devices: impl IntoIterator<Item = &'a Device>,
) {
    futures::stream::iter(devices)
        .for_each_concurrent(WRITES_IN_FLIGHT, |device| {
            write(shared, config, shared_devices, device)
        })
        .await;
}

async fn write(shared: &Shared, config: &Configuration, shared_devices: bool, device: &Device) {
    let ns = config.namespace().unwrap_or_default();
    let instance_name = instance_name(shared, &config.name_any(), &device.id, shared_devices);
    let current = find(&shared.instances, &ns, &instance_name);
    match shared
        .part
        .upsert(config, shared_devices, device, current.as_deref())
        .await
    {
        Ok(_) => {
            let _ = shared.changed.send(());
        }
        Err(e) => warn!(device = %device.id, error = %e, "cannot write instance"),
    }
}

async fn finish(
    shared: &Shared,
    config: &Configuration,
    shared_devices: bool,
    presence: &Presence,
    reason: Stop,
) {
    if reason != Stop::Deselected {
        return;
    }
    let ns = config.namespace().unwrap_or_default();
    for device in presence.devices() {
        let instance_name = instance_name(shared, &config.name_any(), &device.id, shared_devices);
        if let Err(e) = shared.part.leave(&ns, &instance_name).await {
            warn!(instance = %instance_name, error = %e, "cannot leave instance");
        }
    }
    let _ = shared.changed.send(());
    clear_report(shared, config).await;
}

/// Writes this node's entry of `status.nodes` in the Configuration.
async fn report(shared: &Shared, config: &Configuration, health: &Health) {
    let api: Api<Configuration> = Api::namespaced(
        shared.client.clone(),
        &config.namespace().unwrap_or_default(),
    );
    let mut entry = json!({
        "node": shared.node,
        "devices": health.devices,
        "lastChange": Time(Timestamp::now()),
    });
    if let Some(e) = &health.error {
        entry["error"] = json!(e);
    }
    let body = json!({
        "apiVersion": "dowser.dev/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": config.name_any()},
        "status": {"nodes": [entry]},
    });
    match api
        .patch_status(
            &config.name_any(),
            &PatchParams::apply(&format!("dowser-agent-{}", shared.node)).force(),
            &Patch::Apply(body),
        )
        .await
    {
        Ok(_) => super::instances::WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        Err(e) => {
            warn!(error = %e, "cannot write discovery health");
            0
        }
    };
}

/// Reports why this node does not discover with a Configuration.
pub async fn report_refusal(shared: &Shared, config: &Configuration, why: &str) {
    report(
        shared,
        config,
        &Health {
            devices: 0,
            error: Some(why.to_string()),
        },
    )
    .await;
}

async fn clear_report(shared: &Shared, config: &Configuration) {
    let api: Api<Configuration> = Api::namespaced(
        shared.client.clone(),
        &config.namespace().unwrap_or_default(),
    );
    let body = json!({
        "apiVersion": "dowser.dev/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": config.name_any()},
        "status": {"nodes": []},
    });
    let _ = api
        .patch_status(
            &config.name_any(),
            &PatchParams::apply(&format!("dowser-agent-{}", shared.node)).force(),
            &Patch::Apply(body),
        )
        .await;
}

/// Resolves `spec.properties` from literals, Secrets and ConfigMaps of the Configuration's
/// namespace. The error says which key is missing.
async fn resolve_properties(client: &Client, config: &Configuration) -> Result<Properties, String> {
    let ns = config.namespace().unwrap_or_default();
    let mut props = Properties::new();
    for p in &config.spec.properties {
        if let Some(v) = &p.value {
            props.insert(p.name.clone(), v.clone());
            continue;
        }
        let Some(from) = &p.value_from else { continue };
        let value = if let Some(r) = &from.secret_key_ref {
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let found = api
                .get_opt(&r.name)
                .await
                .map_err(|e| format!("cannot read Secret {:?}: {e}", r.name))?;
            let value = found
                .and_then(|s| s.data)
                .and_then(|d| d.get(&r.key).cloned())
                .map(|b| String::from_utf8_lossy(&b.0).into_owned());
            match value {
                Some(v) => Some(v),
                None if r.optional => None,
                None => {
                    return Err(format!(
                        "property {}: key {:?} of Secret {:?} not found",
                        p.name, r.key, r.name
                    ));
                }
            }
        } else if let Some(r) = &from.config_map_key_ref {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            let found = api
                .get_opt(&r.name)
                .await
                .map_err(|e| format!("cannot read ConfigMap {:?}: {e}", r.name))?;
            match found
                .and_then(|c| c.data)
                .and_then(|d| d.get(&r.key).cloned())
            {
                Some(v) => Some(v),
                None if r.optional => None,
                None => {
                    return Err(format!(
                        "property {}: key {:?} of ConfigMap {:?} not found",
                        p.name, r.key, r.name
                    ));
                }
            }
        } else {
            None
        };
        if let Some(v) = value {
            props.insert(p.name.clone(), v);
        }
    }
    Ok(props)
}

/// Watches the Secrets and ConfigMaps the properties name; any change is signalled.
fn watch_references(
    client: &Client,
    config: &Configuration,
    tx: mpsc::UnboundedSender<()>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ns = config.namespace().unwrap_or_default();
    let mut tasks = Vec::new();
    let mut seen = BTreeMap::new();
    for p in &config.spec.properties {
        let Some(from) = &p.value_from else { continue };
        if let Some(r) = &from.secret_key_ref {
            seen.insert(("Secret", r.name.clone()), ());
        }
        if let Some(r) = &from.config_map_key_ref {
            seen.insert(("ConfigMap", r.name.clone()), ());
        }
    }
    for (kind, name) in seen.into_keys() {
        let tx = tx.clone();
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let client = client.clone();
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            // The first event is the current state, which the worker has just read.
            let mut first = true;
            let mut versions = match kind {
                "Secret" => watcher(Api::<Secret>::namespaced(client, &ns), cfg)
                    .default_backoff()
                    .touched_objects()
                    .map(|r| r.ok().and_then(|o| o.resource_version()))
                    .boxed(),
                _ => watcher(Api::<ConfigMap>::namespaced(client, &ns), cfg)
                    .default_backoff()
                    .touched_objects()
                    .map(|r| r.ok().and_then(|o| o.resource_version()))
                    .boxed(),
            };
            let mut last = None;
            while let Some(v) = versions.next().await {
                if v.is_some() && v != last {
                    if !first {
                        let _ = tx.send(());
                    }
                    first = false;
                    last = v;
                }
            }
        }));
    }
    tasks
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

struct WatcherGuard(Vec<tokio::task::JoinHandle<()>>);
