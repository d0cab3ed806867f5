//! One device plugin per Instance this node offers (`dowser.dev/<namespace>_<instance>`,
//! `capacity` slots) and one per Configuration (`dowser.dev/<namespace>.<configuration>`,
//! every slot of its Instances here; names by [`naming`]). Slots that belong to other nodes, or that a pod holds through the other
//! resource, are reported Unhealthy, so the scheduler only counts slots this node can give.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use kube::{ResourceExt, runtime::reflector::Store};
use tokio::sync::{Mutex, oneshot, watch};
use tonic::Status;
use tracing::{info, warn};

use super::{
    instances::{ClaimError, NodeInstances},
    slots::{self, HeldElsewhere, Holders, Releaser},
};
use crate::{
    crd::{Configuration, Instance},
    device_instance::instance_env,
    deviceplugin::{
        HEALTHY, UNHEALTHY, connect_unix,
        plugin::{Allocator, PluginConfig, run},
        podresources::{
            ListPodResourcesRequest, pod_resources_lister_client::PodResourcesListerClient,
        },
        v1beta1::{self, ContainerAllocateResponse},
    },
    naming,
    slots::slots_of,
};

struct Running {
    /// The namespace of the Instances behind the resource.
    namespace: String,
    devices: watch::Sender<Vec<v1beta1::Device>>,
    /// Dropped to stop the plugin.
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Which resource a plugin serves.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Instance { namespace: String, name: String },
    Configuration { namespace: String, name: String },
}

impl Kind {
    fn namespace(&self) -> &str {
        match self {
            Kind::Instance { namespace, .. } | Kind::Configuration { namespace, .. } => namespace,
        }
    }
}

/// A slot's device id qualified by its Instance's namespace: same-named Instances in two
/// namespaces have the same device ids, and must not share a holder.
fn slot_key(namespace: &str, device_id: &str) -> String {
    format!("{namespace}/{device_id}")
}

pub struct Plugins {
    node: String,
    dir: PathBuf,
    /// How long a socket name may be in `dir` ([`naming::socket_room`]).
    socket_room: usize,
    pod_resources: PathBuf,
    release_grace: Duration,
    instances: Store<Instance>,
    configurations: Store<Configuration>,
    part: Arc<NodeInstances>,
    running: Mutex<BTreeMap<String, Running>>,
    /// Which resource holds each slot here: taken at Allocate, confirmed and freed by
    /// PodResources. One lock, never held across an await.
    holders: std::sync::Mutex<Holders>,
    releaser: Mutex<Releaser>,
    /// Changes when the kubelet restarts (one watch of its socket for all plugins).
    kubelet: watch::Receiver<Option<crate::deviceplugin::KubeletSocket>>,
}

/// Whether plugin sockets fit in `dir`: a unix socket's path holds 107 bytes, and a
/// socket that cannot be bound would never be offered to the kubelet.
pub fn check_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if naming::socket_room(dir).is_none() {
        anyhow::bail!(
            "the device-plugin directory {} is {} bytes long, which leaves no room for plugin sockets: a unix socket path holds at most {} bytes and a plugin socket needs {} of them after the directory (the kubelet's {} leaves {}); give a shorter --device-plugin-dir",
            dir.display(),
            dir.as_os_str().len(),
            naming::MAX_SOCKET_PATH,
            naming::MIN_SOCKET_NAME + 1,
            crate::deviceplugin::DEVICE_PLUGIN_DIR,
            naming::socket_room(std::path::Path::new(crate::deviceplugin::DEVICE_PLUGIN_DIR))
                .unwrap_or_default()
                + 1,
        );
    }
    Ok(())
}

impl Plugins {
    pub fn new(
        node: &str,
        dir: PathBuf,
        pod_resources: PathBuf,
        release_grace: Duration,
        instances: Store<Instance>,
        configurations: Store<Configuration>,
        part: Arc<NodeInstances>,
    ) -> Arc<Self> {
        Arc::new(Self {
            node: node.to_string(),
            pod_resources,
            release_grace,
            instances,
            configurations,
            part,
            running: Mutex::new(BTreeMap::new()),
            holders: std::sync::Mutex::new(Holders::default()),
            releaser: Mutex::new(Releaser::default()),
            kubelet: crate::deviceplugin::kubelet_restarts(&dir),
            // The agent refuses to start without room (`check_dir`); the shortest name then.
            socket_room: naming::socket_room(&dir).unwrap_or(naming::MIN_SOCKET_NAME),
            dir,
        })
    }

    /// The Instances this node offers: it sees the device, or a pod here holds a slot, and
    /// the device is approved (`approval: Manual`).
    fn offered(&self, claims: &BTreeSet<(String, String)>) -> Vec<Arc<Instance>> {
        self.instances
            .state()
            .into_iter()
            .filter(|i| {
                let seen = i
                    .status
                    .as_ref()
                    .is_some_and(|s| s.nodes.contains(&self.node));
                seen || claims.contains(&(i.namespace().unwrap_or_default(), i.name_any()))
            })
            .filter(|i| crate::approval::offered_here(&self.configurations, i))
            .collect()
    }

    /// Starts, updates and stops plugins to match the Instances in the cache.
    pub async fn sync(self: &Arc<Self>) {
        let claims: BTreeSet<(String, String)> = self
            .part
            .claims()
            .await
            .into_iter()
            .map(|(ns, name, _)| (ns, name))
            .collect();
        let holders = self.holders.lock().expect("holders lock").clone();
        let mut desired: BTreeMap<String, (Kind, Vec<v1beta1::Device>)> = BTreeMap::new();
        for instance in self.offered(&claims) {
            let ns = instance.namespace().unwrap_or_default();
            let name = instance.name_any();
            let status = instance.status.clone().unwrap_or_default();
            let mine = slots_of(
                &self.node,
                instance.spec.capacity,
                &status.nodes,
                &status.slots,
            );
            let instance_resource = naming::instance_resource(&ns, &name);
            let config_resource =
                naming::configuration_resource(&ns, &instance.spec.configuration_name);
            let device = |slot: u32, resource: &str| {
                let id = slots::device_id(&name, slot);
                let taken_elsewhere = holders
                    .holder(&slot_key(&ns, &id))
                    .is_some_and(|r| r != resource);
                let healthy = mine.contains(&slot) && !taken_elsewhere;
                v1beta1::Device {
                    id,
                    health: if healthy { HEALTHY } else { UNHEALTHY }.to_string(),
                    topology: None,
                }
            };
            let devices: Vec<_> = (0..instance.spec.capacity)
                .map(|s| device(s, &instance_resource))
                .collect();
            desired.insert(
                instance_resource.clone(),
                (
                    Kind::Instance {
                        namespace: ns.clone(),
                        name: name.clone(),
                    },
                    devices,
                ),
            );
            let entry = desired.entry(config_resource.clone()).or_insert_with(|| {
                (
                    Kind::Configuration {
                        namespace: ns.clone(),
                        name: instance.spec.configuration_name.clone(),
                    },
                    vec![],
                )
            });
            entry
                .1
                .extend((0..instance.spec.capacity).map(|s| device(s, &config_resource)));
        }
        let mut running = self.running.lock().await;
        running.retain(|resource, _| {
            let keep = desired.contains_key(resource);
            if !keep {
                info!(%resource, "device plugin stopped");
            }
            keep
        });
        for (resource, (kind, mut devices)) in desired {
            devices.sort_by(|a, b| a.id.cmp(&b.id));
            if let Some(r) = running.get(&resource) {
                r.devices.send_if_modified(|current| {
                    let changed = *current != devices;
                    if changed {
                        *current = devices.clone();
                    }
                    changed
                });
                continue;
            }
            let (tx, rx) = watch::channel(devices);
            let (stop, stop_rx) = oneshot::channel();
            let config = PluginConfig {
                dir: self.dir.clone(),
                socket_name: naming::plugin_socket(&resource, self.socket_room),
                resource_name: resource.clone(),
            };
            let namespace = kind.namespace().to_string();
            let allocator = Arc::new(SlotAllocator {
                plugins: Arc::downgrade(self),
                kind,
                resource: resource.clone(),
            });
            let task = tokio::spawn(run(config, rx, allocator, self.kubelet.clone(), async {
                // Dropping the sender stops the plugin.
                stop_rx.await.unwrap_or(());
            }));
            info!(%resource, "device plugin started");
            running.insert(
                resource,
                Running {
                    namespace,
                    devices: tx,
                    _stop: stop,
                    task,
                },
            );
        }
    }

    /// Stops every plugin and waits until each has removed its socket: the kubelet sees the
    /// plugins go, and no stale socket is left in its directory.
    pub async fn stop_all(&self) {
        let running = std::mem::take(&mut *self.running.lock().await);
        let tasks: Vec<_> = running.into_values().map(|r| r.task).collect();
        for task in tasks {
            if let Err(e) = task.await {
                warn!(error = %e, "a device plugin ended abnormally");
            }
        }
        info!("device plugins stopped");
    }

    /// Reads PodResources, releases claims no pod has held for the grace period, and
    /// refreshes slot health. Nothing is released while PodResources cannot be read.
    pub async fn check_pod_resources(self: &Arc<Self>) {
        let listed = async {
            let channel = connect_unix(&self.pod_resources).await.ok()?;
            let resp = tokio::time::timeout(
                Duration::from_secs(5),
                PodResourcesListerClient::new(channel).list(ListPodResourcesRequest {}),
            )
            .await
            .ok()?
            .ok()?;
            Some(resp.into_inner())
        }
        .await;
        let Some(listed) = listed else {
            return;
        };
        let claims = self.part.claims().await;
        // Device ids name the Instance, not its namespace: the resource tells which. A
        // resource no plugin serves now counts for every namespace with a claim on that
        // Instance name, so that nothing a pod may hold is released.
        let namespaces: BTreeMap<String, String> = self
            .running
            .lock()
            .await
            .iter()
            .map(|(r, run)| (r.clone(), run.namespace.clone()))
            .collect();
        let mut held = BTreeMap::new();
        for pod in &listed.pod_resources {
            for c in &pod.containers {
                for d in &c.devices {
                    if !d.resource_name.starts_with("dowser.dev/") {
                        continue;
                    }
                    for id in &d.device_ids {
                        let instance = slots::parse_device_id(id).map(|(i, _)| i);
                        let nss: BTreeSet<&str> = match namespaces.get(&d.resource_name) {
                            Some(ns) => [ns.as_str()].into(),
                            None => claims
                                .iter()
                                .filter(|(_, n, _)| Some(n.as_str()) == instance)
                                .map(|(ns, _, _)| ns.as_str())
                                .collect(),
                        };
                        for ns in nss {
                            held.insert(slot_key(ns, id), d.resource_name.clone());
                        }
                    }
                }
            }
        }
        let held_slots: BTreeSet<(String, u32)> = held
            .keys()
            .filter_map(|key| slots::parse_device_id(key))
            .map(|(i, s)| (i.to_string(), s))
            .collect();
        let claimed: BTreeSet<(String, u32)> = claims
            .iter()
            .map(|(ns, n, s)| (slot_key(ns, n), *s))
            .collect();
        let release = self.releaser.lock().await.update(
            &claimed,
            &held_slots,
            Instant::now(),
            self.release_grace,
        );
        let changed = self.holders.lock().expect("holders lock").observe(
            &held,
            Instant::now(),
            self.release_grace,
        );
        for (key, slot) in &release {
            if let Some((ns, name, _)) = claims
                .iter()
                .find(|(ns, n, s)| slot_key(ns, n) == *key && s == slot)
            {
                info!(instance = %name, slot, "no pod holds the slot any more: released");
                if let Err(e) = self.part.release(ns, name, &[*slot]).await {
                    warn!(instance = %name, error = %e, "cannot release slot");
                }
            }
        }
        if changed || !release.is_empty() {
            self.sync().await;
        }
    }

    fn instance(&self, namespace: &str, name: &str) -> Option<Arc<Instance>> {
        self.instances
            .state()
            .into_iter()
            .find(|i| i.name_any() == name && i.namespace().as_deref() == Some(namespace))
    }

    fn configuration(&self, namespace: &str, name: &str) -> Option<Arc<Configuration>> {
        self.configurations
            .state()
            .into_iter()
            .find(|c| c.name_any() == name && c.namespace().as_deref() == Some(namespace))
    }

    /// The resources of the plugins running now.
    pub async fn served(&self) -> BTreeSet<String> {
        self.running.lock().await.keys().cloned().collect()
    }
}

/// How long `Allocate` waits for the API server to record a claim. The kubelet admits pods
/// one at a time and puts no deadline on `Allocate`: without this bound one unanswered
/// write would stall the admission of every pod on the node. A few seconds is far above a
/// healthy write (milliseconds) and far below what a stalled node costs.
pub const CLAIM_DEADLINE: Duration = Duration::from_secs(5);

/// Allocate for one plugin: takes the slots on this node, claims them, then hands out the
/// devices' environment.
struct SlotAllocator {
    plugins: std::sync::Weak<Plugins>,
    kind: Kind,
    resource: String,
}

impl Allocator for SlotAllocator {
    async fn allocate(&self, device_ids: &[String]) -> Result<ContainerAllocateResponse, Status> {
        let plugins = self
            .plugins
            .upgrade()
            .ok_or_else(|| Status::unavailable("the agent is shutting down"))?;
        let mut by_instance: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for id in device_ids {
            let (instance, slot) = slots::parse_device_id(id)
                .ok_or_else(|| Status::invalid_argument(format!("unknown device {id}")))?;
            by_instance
                .entry(instance.to_string())
                .or_default()
                .push(slot);
        }
        // The slots are this resource's before anything else happens: a pod admitted through
        // the other resource meanwhile is refused here, not handed the same slot.
        let keys: Vec<String> = device_ids
            .iter()
            .map(|id| slot_key(self.kind.namespace(), id))
            .collect();
        let taken = plugins
            .holders
            .lock()
            .expect("holders lock")
            .take(&self.resource, &keys, Instant::now())
            .map_err(|held| self.refusal(&plugins, &held))?;
        let result = self.allocate_held(&plugins, by_instance).await;
        if result.is_err() {
            plugins
                .holders
                .lock()
                .expect("holders lock")
                .give_back(&taken);
        } else {
            plugins.part.metrics().allocated();
            // The other resource reports the slots Unhealthy now, not after the next
            // PodResources poll. Not awaited: a sync waits for every Instance's part, which a
            // write to an unanswering API server may hold.
            let me = plugins.clone();
            tokio::spawn(async move { me.sync().await });
        }
        result
    }
}

impl SlotAllocator {
    fn refusal(&self, plugins: &Plugins, held: &HeldElsewhere) -> Status {
        let device = held
            .device
            .split_once('/')
            .map_or(held.device.as_str(), |(_, id)| id);
        let (instance, slot) = slots::parse_device_id(device).unwrap_or((device, 0));
        Status::failed_precondition(format!(
            "slot {slot} of {instance} is in use on node {}: a pod holds it through {} \
             (requested through {})",
            plugins.node, held.resource, self.resource
        ))
    }

    /// Claims the slots (bounded by [`CLAIM_DEADLINE`]) and hands out their environment,
    /// device nodes and mounts.
    async fn allocate_held(
        &self,
        plugins: &Plugins,
        by_instance: BTreeMap<String, Vec<u32>>,
    ) -> Result<ContainerAllocateResponse, Status> {
        let namespace = self.kind.namespace().to_string();
        let mut response = ContainerAllocateResponse::default();
        for (name, wanted) in by_instance {
            let instance = plugins
                .instance(&namespace, &name)
                .ok_or_else(|| Status::not_found(format!("instance {namespace}/{name} is gone")))?;
            let status = instance.status.clone().unwrap_or_default();
            let mine = slots_of(
                &plugins.node,
                instance.spec.capacity,
                &status.nodes,
                &status.slots,
            );
            if let Some(s) = wanted.iter().find(|s| !mine.contains(s)) {
                return Err(Status::failed_precondition(format!(
                    "slot {s} of {name} does not belong to node {}",
                    plugins.node
                )));
            }
            plugins
                .part
                .claim(&namespace, &name, &wanted, CLAIM_DEADLINE)
                .await
                .map_err(|e| match e {
                    ClaimError::Taken { .. } => Status::already_exists(e.to_string()),
                    ClaimError::TimedOut { .. } => Status::unavailable(e.to_string()),
                    ClaimError::Api(_) => {
                        Status::unavailable(format!("cannot claim the slot: {e}"))
                    }
                })?;
            let config = plugins.configuration(&namespace, &instance.spec.configuration_name);
            let broker_properties = config
                .map(|c| c.spec.broker_properties.clone())
                .unwrap_or_default();
            response
                .envs
                .extend(instance_env(&name, &instance.spec, &broker_properties));
            response
                .devices
                .extend(instance.spec.devices.iter().map(|d| v1beta1::DeviceSpec {
                    container_path: d.container_path.clone(),
                    host_path: d.host_path.clone(),
                    permissions: d.permissions.clone(),
                }));
            response
                .mounts
                .extend(instance.spec.mounts.iter().map(|m| v1beta1::Mount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    read_only: m.read_only,
                }));
            info!(resource = %self.resource, instance = %name, slots = ?wanted, "allocated");
        }
        Ok(response)
    }
}
