//! Discovery of one Configuration on this node: runs its handler, turns snapshots into
//! Instance writes through [`Presence`], applies the grace period, and reports this node's
//! discovery health in the Configuration's status (on change only).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use dowser_discovery_api::{
    Device, DiscoveryError, Progress, Properties, Snapshot, details::Selected,
};
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{instances::NodeInstances, metrics::Metrics, presence::Presence, rounds::Rounds};
use crate::{
    apiserver,
    crd::{CONFIGURATION_LABEL, Configuration, DiscoveryRound, Instance, NodeDiscoveryStatus},
    device_instance::{InstanceId, instance},
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

impl Shared {
    /// Tells the plugin manager that Instances of this node changed.
    fn wake_plugins(&self) {
        if self.changed.send(()).is_err() {
            debug!("the plugin manager has stopped");
        }
    }
}

/// This node's discovery health, written to `status.nodes[]` of the Configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Health {
    devices: usize,
    error: Option<String>,
    /// What the handler's last round found a user must act on.
    problems: Vec<String>,
    /// The version of the properties resolved last ([`properties_version`]).
    properties_version: Option<String>,
}

/// Why `spec.properties` could not be resolved.
#[derive(Debug, thiserror::Error)]
enum PropertyError {
    #[error("cannot read {kind} {name:?}: {source}")]
    Read {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("property {property}: key {key:?} of {kind} {name:?} not found")]
    Missing {
        property: String,
        kind: &'static str,
        key: String,
        name: String,
    },
}

/// What ends one discovery session of a worker.
enum Next {
    /// Resolve the properties and start the handler again.
    Restart,
    Stop(Stop),
}

/// Runs discovery for one Configuration until told to stop.
pub async fn run(
    shared: Arc<Shared>,
    config: Arc<Configuration>,
    mut stop: oneshot::Receiver<Stop>,
) {
    let selected = match config.spec.discovery.selected() {
        Ok(s) => s,
        Err(e) => {
            report_refusal(&shared, &config, &e.to_string()).await;
            return;
        }
    };
    let (refs_tx, mut refs_changed) = mpsc::unbounded_channel();
    let _watchers = WatcherGuard(watch_references(&shared.client, &config, refs_tx));
    let shared_devices = match handlers::shared(selected) {
        Some(shared_devices) => shared_devices,
        None => {
            // An external handler that has not registered yet: it decides.
            report_refusal(
                &shared,
                &config,
                &format!(
                    "waiting for a discovery handler named {:?} to register with this node's agent",
                    selected.details()["name"].as_str().unwrap_or_default()
                ),
            )
            .await;
            tokio::select! {
                shared_devices = handlers::registered_sharing(selected) => shared_devices,
                reason = &mut stop => {
                    if reason.unwrap_or(Stop::Shutdown) == Stop::Deselected {
                        clear_report(&shared, &config).await;
                    }
                    return;
                }
            }
        }
    };
    let mut worker = Worker::new(shared, config.clone(), shared_devices);
    worker.adopt();
    let reason = loop {
        match worker.session(selected, &mut refs_changed, &mut stop).await {
            Next::Restart => continue,
            Next::Stop(reason) => break reason,
        }
    };
    worker.finish(reason).await;
}

/// Instances written at once. A first scan of a plant finds hundreds of devices; written one
/// at a time (two round trips each) 1,000 took about 30 s.
const WRITES_IN_FLIGHT: usize = 8;

/// How long a worker waits to resolve the properties again when it could not.
const PROPERTIES_RETRY: Duration = Duration::from_secs(30);

/// One Configuration's discovery on this node: the devices it reports, their Instances and
/// its last reported health.
struct Worker {
    shared: Arc<Shared>,
    config: Arc<Configuration>,
    namespace: String,
    name: String,
    /// Whether the devices are reachable from several nodes.
    shared_devices: bool,
    grace: Duration,
    presence: Presence,
    /// The Instance of each device in `presence`, computed once per device.
    ids: BTreeMap<String, InstanceId>,
    last_health: Option<Health>,
    /// What the handler's last snapshot said a user must act on.
    problems: Vec<String>,
    /// The version of the properties the handler runs with (none before they resolve).
    properties_version: Option<String>,
    /// Whether the error reported last is that the properties could not be resolved.
    properties_failed: bool,
    /// Devices gone whose Instance this node failed to leave (the API server was away), with
    /// that Instance's name: retried on every scan until the write goes through.
    unleft: BTreeMap<String, String>,
    /// The counts of the handler's rounds, and when they are written.
    rounds: Rounds,
    /// When the health written last changed.
    changed_at: Option<Time>,
    /// Where the running handler reports its rounds.
    progress: Progress,
}

impl Worker {
    fn new(shared: Arc<Shared>, config: Arc<Configuration>, shared_devices: bool) -> Self {
        // What this node reported before a restart stands until the properties resolve: if
        // they cannot, the brokers here keep running as they are.
        let entry = config
            .status
            .as_ref()
            .and_then(|s| s.nodes.iter().find(|n| n.node == shared.node));
        let properties_version = entry.and_then(|n| n.properties_version.clone());
        let rounds = Rounds::resume(entry.and_then(|n| n.last_round.clone()), Instant::now());
        Self {
            namespace: config.namespace().unwrap_or_default(),
            name: config.name_any(),
            grace: Duration::from_secs(config.spec.offline_grace_period_seconds.into()),
            shared,
            config,
            shared_devices,
            presence: Presence::default(),
            ids: BTreeMap::new(),
            last_health: None,
            problems: Vec::new(),
            properties_version,
            properties_failed: false,
            unleft: BTreeMap::new(),
            rounds,
            progress: Progress::enabled(),
            changed_at: None,
        }
    }

    /// Takes over the devices this node reported before a restart (nothing is written).
    fn adopt(&mut self) {
        let node = &self.shared.node;
        let label = crate::naming::configuration_label(&self.name);
        let adopted: Vec<Device> = self
            .shared
            .instances
            .state()
            .iter()
            .filter(|i| i.namespace().as_deref() == Some(self.namespace.as_str()))
            .filter(|i| i.labels().get(CONFIGURATION_LABEL) == Some(&label))
            .filter(|i| i.status.as_ref().is_some_and(|s| s.nodes.contains(node)))
            .map(|i| Device {
                id: i.spec.device_id.clone(),
                properties: i.spec.properties.clone(),
                device_specs: i.spec.devices.clone(),
                mounts: i.spec.mounts.clone(),
            })
            .collect();
        if !adopted.is_empty() {
            info!(
                configuration = %format!("{}/{}", self.namespace, self.name),
                devices = adopted.len(),
                "adopted devices reported before"
            );
        }
        for device in &adopted {
            self.id_of(&device.id);
        }
        self.presence.adopt(adopted, Instant::now());
    }

    /// Resolves the properties and runs the handler until a referenced Secret or ConfigMap
    /// changes, the handler's stream ends, or the worker is told to stop.
    async fn session(
        &mut self,
        selected: Selected<'_>,
        refs_changed: &mut mpsc::UnboundedReceiver<()>,
        stop: &mut oneshot::Receiver<Stop>,
    ) -> Next {
        let properties = match resolve_properties(&self.shared.client, &self.config).await {
            Ok((properties, version)) => {
                // Said before any Instance is written with them: the controller replaces
                // the brokers of this node, which then get the new values.
                self.properties_version = Some(version);
                // A property error is over; any other stands until a round says otherwise.
                let error = match &self.last_health {
                    Some(h) if !self.properties_failed => h.error.clone(),
                    _ => None,
                };
                self.properties_failed = false;
                let health = self.health(error);
                self.report_if_changed(health).await;
                properties
            }
            Err(e) => {
                self.properties_failed = true;
                let health = self.health(Some(e.to_string()));
                self.report_if_changed(health).await;
                return tokio::select! {
                    Some(()) = refs_changed.recv() => Next::Restart,
                    _ = tokio::time::sleep(PROPERTIES_RETRY) => Next::Restart,
                    reason = stop => Next::Stop(reason.unwrap_or(Stop::Shutdown)),
                };
            }
        };
        self.progress = Progress::enabled();
        self.rounds.restarted();
        let properties = properties.with_progress(self.progress.clone());
        let mut stream = match handlers::discover(selected, properties) {
            Ok(s) => s,
            Err(e) => {
                report_refusal(&self.shared, &self.config, &e.to_string()).await;
                return Next::Stop(stop.await.unwrap_or(Stop::Shutdown));
            }
        };
        loop {
            let expiry = until(self.presence.next_expiry(self.grace));
            tokio::select! {
                next = stream.next() => match next {
                    Some(result) => self.on_snapshot(result).await,
                    None => return Next::Restart,
                },
                _ = expiry => self.on_expiry().await,
                Some(()) = refs_changed.recv() => {
                    info!(
                        configuration = %format!("{}/{}", self.namespace, self.name),
                        "a referenced Secret or ConfigMap changed: discovering again"
                    );
                    return Next::Restart;
                }
                reason = &mut *stop => return Next::Stop(reason.unwrap_or(Stop::Shutdown)),
            }
        }
    }

    /// A round ended: writes what changed, repairs drift, retries failed leaves and
    /// reports the node's health if it changed.
    async fn on_snapshot(&mut self, result: Result<Snapshot, DiscoveryError>) {
        let snapshot = match result {
            Ok(snapshot) => snapshot,
            Err(e) => {
                self.shared.metrics.discovery_error();
                let health = self.health(Some(e.to_string()));
                self.report_if_changed(health).await;
                return;
            }
        };
        self.shared.metrics.scanned(
            &self.namespace,
            &self.name,
            snapshot.len(),
            snapshot.round(),
        );
        if let Some(state) = self.progress.state() {
            self.rounds
                .observed(&state, snapshot.round(), Time(Timestamp::now()));
        }
        self.problems = snapshot.problems().to_vec();
        let changed = self.presence.observe(&snapshot, Instant::now());
        for device in &changed {
            self.id_of(&device.id);
        }
        self.write_all(&changed).await;
        // Repair drift: a device this node sees must list this node. Those just written are
        // listed, though the cache may not show it yet.
        let written: BTreeSet<&str> = changed.iter().map(|d| d.id.as_str()).collect();
        let unlisted: Vec<Device> = self
            .presence
            .devices()
            .filter(|d| !written.contains(d.id.as_str()) && !self.lists_this_node(&d.id))
            .cloned()
            .collect();
        self.write_all(&unlisted).await;
        self.retry_leaves().await;
        let health = self.health(None);
        self.report_if_changed(health).await;
    }

    /// Devices unseen for the grace period leave their Instances.
    async fn on_expiry(&mut self) {
        for device_id in self.presence.expire(Instant::now(), self.grace) {
            let id = self.ids.remove(&device_id).unwrap_or_else(|| {
                InstanceId::new(
                    &self.config,
                    self.shared_devices,
                    &self.shared.node,
                    &device_id,
                )
            });
            info!(
                instance = %id.name,
                device = %device_id,
                "device not seen for the grace period: leaving"
            );
            if let Err(e) = self.shared.part.leave(&self.namespace, &id.name).await {
                warn!(
                    instance = %id.name,
                    error = %e,
                    "cannot leave instance; retried after the next scan"
                );
                self.unleft.insert(device_id, id.name);
            }
            self.shared.wake_plugins();
        }
        let health = self.health(self.last_health.as_ref().and_then(|h| h.error.clone()));
        self.report_if_changed(health).await;
    }

    /// This node's discovery health now, with `error`.
    fn health(&self, error: Option<String>) -> Health {
        Health {
            devices: self.presence.len(),
            problems: if error.is_none() {
                self.problems.clone()
            } else {
                Vec::new()
            },
            error,
            properties_version: self.properties_version.clone(),
        }
    }

    /// Writes this node's health to the Configuration, unless it is what was written last
    /// and the counts of the rounds are not due ([`Rounds`]).
    async fn report_if_changed(&mut self, health: Health) {
        let now = Instant::now();
        let changed = self.last_health.as_ref() != Some(&health);
        if changed || self.rounds.due(now) {
            if changed || self.changed_at.is_none() {
                self.changed_at = Some(Time(Timestamp::now()));
            }
            let round = self.rounds.to_write(now);
            let at = self.changed_at.clone();
            report(&self.shared, &self.config, &health, at, round).await;
            self.last_health = Some(health);
        }
    }

    /// The Instance of a device, computed on its first use.
    fn id_of(&mut self, device_id: &str) -> &InstanceId {
        if !self.ids.contains_key(device_id) {
            let id = InstanceId::new(
                &self.config,
                self.shared_devices,
                &self.shared.node,
                device_id,
            );
            self.ids.insert(device_id.to_string(), id);
        }
        &self.ids[device_id]
    }

    /// The cached Instance of a device, if the agent's cache holds it.
    fn cached(&self, device_id: &str) -> Option<Arc<Instance>> {
        let id = self.ids.get(device_id)?;
        let key = ObjectRef::<Instance>::new(&id.name).within(&self.namespace);
        self.shared.instances.get(&key)
    }

    /// Whether the cached Instance of a device lists this node.
    fn lists_this_node(&self, device_id: &str) -> bool {
        self.cached(device_id).is_some_and(|i| {
            i.status
                .as_ref()
                .is_some_and(|s| s.nodes.contains(&self.shared.node))
        })
    }

    async fn write_all(&self, devices: &[Device]) {
        futures::stream::iter(devices)
            .for_each_concurrent(WRITES_IN_FLIGHT, |device| self.write(device))
            .await;
    }

    /// Applies the Instance a device becomes and joins it (each skipped when the cache shows
    /// it done).
    async fn write(&self, device: &Device) {
        let Some(id) = self.ids.get(&device.id) else {
            return;
        };
        let wanted = instance(&self.config, self.shared_devices, id, device);
        let current = self.cached(&device.id);
        match self
            .shared
            .part
            .upsert(&self.config, &wanted, current.as_deref())
            .await
        {
            Ok(()) => self.shared.wake_plugins(),
            Err(e) => warn!(device = %device.id, error = %e, "cannot write instance"),
        }
    }

    /// Leaves again the Instances of devices that left while their leave failed; a device
    /// that came back is no longer to leave.
    async fn retry_leaves(&mut self) {
        let presence = &self.presence;
        self.unleft.retain(|id, _| !presence.contains(id));
        let unleft: Vec<(String, String)> = self
            .unleft
            .iter()
            .map(|(d, n)| (d.clone(), n.clone()))
            .collect();
        for (device_id, name) in unleft {
            match self.shared.part.leave(&self.namespace, &name).await {
                Ok(()) => {
                    info!(
                        instance = %name,
                        device = %device_id,
                        "left the instance of a device gone while the API server was unreachable"
                    );
                    self.unleft.remove(&device_id);
                    self.shared.wake_plugins();
                }
                Err(e) => warn!(instance = %name, error = %e, "cannot leave instance yet"),
            }
        }
    }

    /// The worker stops: a Configuration no longer meant for this node leaves its Instances
    /// and its entry in the Configuration's status.
    async fn finish(&self, reason: Stop) {
        if reason != Stop::Deselected {
            return;
        }
        for device in self.presence.devices() {
            let Some(id) = self.ids.get(&device.id) else {
                continue;
            };
            if let Err(e) = self.shared.part.leave(&self.namespace, &id.name).await {
                warn!(instance = %id.name, error = %e, "cannot leave instance");
            }
        }
        self.shared.wake_plugins();
        clear_report(&self.shared, &self.config).await;
    }
}

/// Sleeps until `at`; forever when there is nothing to wait for.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// This node's part of a Configuration's status.
#[derive(Serialize)]
struct NodesPart<'a> {
    nodes: &'a [NodeDiscoveryStatus],
}

/// Applies this node's entry of `status.nodes` in the Configuration (none: removes it).
async fn apply_node_status(
    shared: &Shared,
    config: &Configuration,
    entry: Option<NodeDiscoveryStatus>,
) -> Result<(), kube::Error> {
    let api: Api<Configuration> = Api::namespaced(
        shared.client.clone(),
        &config.namespace().unwrap_or_default(),
    );
    let nodes: Vec<NodeDiscoveryStatus> = entry.into_iter().collect();
    let status = NodesPart { nodes: &nodes };
    apiserver::apply_status(
        &api,
        &config.name_any(),
        shared.part.manager(),
        true,
        status,
    )
    .await?;
    shared.metrics.wrote();
    Ok(())
}

/// Writes this node's entry of `status.nodes` in the Configuration.
async fn report(
    shared: &Shared,
    config: &Configuration,
    health: &Health,
    last_change: Option<Time>,
    last_round: Option<DiscoveryRound>,
) {
    let entry = NodeDiscoveryStatus {
        node: shared.node.clone(),
        devices: u32::try_from(health.devices).unwrap_or(u32::MAX),
        error: health.error.clone(),
        problems: health.problems.clone(),
        properties_version: health.properties_version.clone(),
        last_change: last_change.or_else(|| Some(Time(Timestamp::now()))),
        last_round,
    };
    if let Err(e) = apply_node_status(shared, config, Some(entry)).await {
        warn!(error = %e, "cannot write discovery health");
    }
}

/// Reports why this node does not discover with a Configuration.
pub async fn report_refusal(shared: &Shared, config: &Configuration, why: &str) {
    let health = Health {
        devices: 0,
        error: Some(why.to_string()),
        problems: Vec::new(),
        properties_version: None,
    };
    report(shared, config, &health, None, None).await;
}

/// Removes this node's entry of `status.nodes` in the Configuration.
async fn clear_report(shared: &Shared, config: &Configuration) {
    if let Err(e) = apply_node_status(shared, config, None).await {
        warn!(error = %e, "cannot remove this node's discovery health");
    }
}

/// The version of a Configuration's resolved properties, from where each came from: a
/// literal (the value, which the spec shows anyway), or a Secret or ConfigMap key with the
/// resourceVersion of that object (`None`: it does not exist). Never from a value read from
/// a Secret or ConfigMap: the version is written to the Configuration's status, which more
/// people may read than the Secret.
fn properties_version(sources: &[(&str, String)]) -> String {
    crate::device_instance::short_hash(&sources)
}

/// Resolves `spec.properties` from literals, Secrets and ConfigMaps of the Configuration's
/// namespace, with their version ([`properties_version`]). The error says which key is
/// missing.
async fn resolve_properties(
    client: &Client,
    config: &Configuration,
) -> Result<(Properties, String), PropertyError> {
    let ns = config.namespace().unwrap_or_default();
    let mut props = Properties::new();
    let mut sources = Vec::new();
    for p in &config.spec.properties {
        if let Some(v) = &p.value {
            props.insert(p.name.clone(), v.clone());
            sources.push((p.name.as_str(), format!("value {v}")));
            continue;
        }
        let Some(from) = &p.value_from else { continue };
        let (kind, name, key, optional, found) = if let Some(r) = &from.secret_key_ref {
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let found = api.get_opt(&r.name).await.map(|s| {
                s.map(|s| {
                    let value = s
                        .data
                        .and_then(|d| d.get(&r.key).cloned())
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned());
                    (s.metadata.resource_version, value)
                })
            });
            ("Secret", &r.name, &r.key, r.optional, found)
        } else if let Some(r) = &from.config_map_key_ref {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            let found = api.get_opt(&r.name).await.map(|c| {
                c.map(|c| {
                    let value = c.data.and_then(|d| d.get(&r.key).cloned());
                    (c.metadata.resource_version, value)
                })
            });
            ("ConfigMap", &r.name, &r.key, r.optional, found)
        } else {
            continue;
        };
        let version = match &found {
            Ok(Some((Some(v), _))) => v.as_str(),
            _ => "none",
        };
        sources.push((p.name.as_str(), format!("{kind} {name} {key} {version}")));
        match found.map(|f| f.and_then(|(_, value)| value)) {
            Ok(Some(v)) => {
                props.insert(p.name.clone(), v);
            }
            Ok(None) if optional => {}
            Ok(None) => {
                return Err(PropertyError::Missing {
                    property: p.name.clone(),
                    kind,
                    key: key.clone(),
                    name: name.clone(),
                });
            }
            Err(source) => {
                return Err(PropertyError::Read {
                    kind,
                    name: name.clone(),
                    source,
                });
            }
        }
    }
    Ok((props, properties_version(&sources)))
}

/// Watches the Secrets and ConfigMaps the properties name; any change is signalled.
fn watch_references(
    client: &Client,
    config: &Configuration,
    tx: mpsc::UnboundedSender<()>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ns = config.namespace().unwrap_or_default();
    let mut tasks = Vec::new();
    let mut seen = BTreeSet::new();
    for p in &config.spec.properties {
        let Some(from) = &p.value_from else { continue };
        if let Some(r) = &from.secret_key_ref {
            seen.insert(("Secret", r.name.clone()));
        }
        if let Some(r) = &from.config_map_key_ref {
            seen.insert(("ConfigMap", r.name.clone()));
        }
    }
    for (kind, name) in seen {
        let tx = tx.clone();
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let client = client.clone();
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            // The first event is the current state, which the worker has just read.
            let mut first = true;
            let mut versions = match kind {
                "Secret" => watcher(Api::<Secret>::namespaced(client, &ns), cfg)
                    .backoff(crate::apiserver::watch_backoff())
                    .touched_objects()
                    .map(|r| r.ok().and_then(|o| o.resource_version()))
                    .boxed(),
                _ => watcher(Api::<ConfigMap>::namespaced(client, &ns), cfg)
                    .backoff(crate::apiserver::watch_backoff())
                    .touched_objects()
                    .map(|r| r.ok().and_then(|o| o.resource_version()))
                    .boxed(),
            };
            let mut last = None;
            while let Some(v) = versions.next().await {
                if v.is_some() && v != last {
                    if !first && tx.send(()).is_err() {
                        // The worker is gone.
                        return;
                    }
                    first = false;
                    last = v;
                }
            }
        }));
    }
    tasks
}

/// Stops the reference watches with the worker.
struct WatcherGuard(Vec<tokio::task::JoinHandle<()>>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::properties_version;

    #[test]
    fn the_properties_version_follows_their_sources() {
        let secret = |rv: &str| ("PASSWORD", format!("Secret login pw {rv}"));
        let literal = |v: &str| ("SITE", format!("value {v}"));
        let base = properties_version(&[secret("41"), literal("north")]);
        assert_eq!(base, properties_version(&[secret("41"), literal("north")]));
        for (what, other) in [
            (
                "the Secret changed",
                properties_version(&[secret("42"), literal("north")]),
            ),
            (
                "a literal changed",
                properties_version(&[secret("41"), literal("south")]),
            ),
            (
                "the Secret is gone",
                properties_version(&[secret("none"), literal("north")]),
            ),
            ("a property less", properties_version(&[secret("41")])),
        ] {
            assert_ne!(other, base, "{what}");
        }
    }
}
