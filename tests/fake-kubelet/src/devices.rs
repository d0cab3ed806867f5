//! The kubelet's device manager: the Registration service, a ListAndWatch stream per
//! registered plugin, device assignment to containers and the Allocate call, and a
//! checkpoint of assignments that survives a restart.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use dowser::deviceplugin::{
    HEALTHY, KUBELET_SOCKET, VERSION, bind_unix, connect_unix,
    v1beta1::{
        AllocateRequest, ContainerAllocateRequest, ContainerAllocateResponse, Empty,
        RegisterRequest,
        device_plugin_client::DevicePluginClient,
        registration_server::{Registration, RegistrationServer},
    },
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{Mutex, Notify},
    task::JoinHandle,
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// Devices of one registered resource.
#[derive(Default)]
struct Plugin {
    endpoint: PathBuf,
    /// device id → healthy
    devices: BTreeMap<String, bool>,
    stream: Option<JoinHandle<()>>,
    /// When its plugin went away (`endpoint.go` `setStopTime`); `None` while registered.
    stopped: Option<Instant>,
}

/// Devices assigned to one container, and what the plugin answered.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub resource: String,
    pub device_ids: Vec<String>,
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    #[serde(default)]
    pub devices: Vec<serde_json::Value>,
    #[serde(default)]
    pub mounts: Vec<serde_json::Value>,
}

/// Everything assigned to one pod.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodAssignment {
    pub namespace: String,
    pub name: String,
    /// container → its assignments
    pub containers: BTreeMap<String, Vec<Assignment>>,
}

#[derive(Default)]
struct State {
    plugins: HashMap<String, Plugin>,
    /// pod uid → assignment
    pods: BTreeMap<String, PodAssignment>,
}

/// The device manager, shared by the kubelet's tasks.
pub struct DeviceManager {
    dir: PathBuf,
    checkpoint: PathBuf,
    state: Mutex<State>,
    /// Woken whenever node capacity may have changed.
    pub changed: Notify,
    registration: Mutex<Option<JoinHandle<()>>>,
}

impl DeviceManager {
    pub fn new(dir: PathBuf) -> Arc<Self> {
        let checkpoint = dir.join("kubelet_internal_checkpoint");
        let pods: BTreeMap<String, PodAssignment> = std::fs::read(&checkpoint)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // Like the kubelet's device manager reading its checkpoint: the resources it names
        // are known, with no devices (capacity 0) until their plugin registers again, and
        // their endpoint counts as stopped from now (`newStoppedEndpointImpl`).
        let plugins = pods
            .values()
            .flat_map(|p| p.containers.values().flatten())
            .map(|a| {
                let plugin = Plugin {
                    stopped: Some(Instant::now()),
                    ..Plugin::default()
                };
                (a.resource.clone(), plugin)
            })
            .collect();
        Arc::new(Self {
            dir,
            checkpoint,
            state: Mutex::new(State { plugins, pods }),
            changed: Notify::new(),
            registration: Mutex::new(None),
        })
    }

    /// Serves Registration on `<dir>/kubelet.sock`.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let incoming = bind_unix(&self.dir.join(KUBELET_SOCKET))?;
        let server = tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(Registrar(self.clone())))
            .serve_with_incoming(incoming);
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                warn!(error = %e, "registration server stopped");
            }
        });
        *self.registration.lock().await = Some(task);
        Ok(())
    }

    /// Deletes everything in the plugin directory but the checkpoint, as the kubelet does when
    /// its device manager starts.
    pub fn remove_sockets(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path != self.checkpoint {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// What a kubelet restart does to device plugins: its sockets are deleted (plugins must
    /// notice and register again), connections dropped, resources no longer offered.
    pub async fn restart(self: &Arc<Self>) -> anyhow::Result<()> {
        if let Some(task) = self.registration.lock().await.take() {
            task.abort();
        }
        {
            let mut state = self.state.lock().await;
            for plugin in state.plugins.values_mut() {
                if let Some(s) = plugin.stream.take() {
                    s.abort();
                }
                plugin.devices.clear();
                plugin.stopped = Some(Instant::now());
            }
        }
        self.remove_sockets()?;
        self.changed.notify_one();
        tokio::time::sleep(Duration::from_millis(200)).await;
        info!("restarted: plugin sockets deleted, waiting for registrations");
        self.start().await
    }

    /// Extended resources and their (capacity, allocatable).
    pub async fn resources(&self) -> BTreeMap<String, (usize, usize)> {
        let state = self.state.lock().await;
        state
            .plugins
            .iter()
            .map(|(r, p)| {
                let healthy = p.devices.values().filter(|h| **h).count();
                (r.clone(), (p.devices.len(), healthy))
            })
            .collect()
    }

    /// Forgets the resources whose plugin went away more than `grace` ago and returns them,
    /// once: the kubelet's `GetCapacity` lists them as deleted when its
    /// `endpointStopGracePeriod` has expired, and its node status then sets them to 0.
    pub async fn forget_stopped(&self, grace: Duration) -> Vec<String> {
        let mut state = self.state.lock().await;
        let gone: Vec<String> = state
            .plugins
            .iter()
            .filter(|(_, p)| p.stopped.is_some_and(|t| t.elapsed() > grace))
            .map(|(r, _)| r.clone())
            .collect();
        for r in &gone {
            state.plugins.remove(r);
        }
        gone
    }

    pub async fn assignment(&self, uid: &str) -> Option<PodAssignment> {
        self.state.lock().await.pods.get(uid).cloned()
    }

    pub async fn assignments(&self) -> BTreeMap<String, PodAssignment> {
        self.state.lock().await.pods.clone()
    }

    /// Every device of every resource, as (resource, ids).
    pub async fn all_devices(&self) -> Vec<(String, Vec<String>)> {
        let state = self.state.lock().await;
        state
            .plugins
            .iter()
            .map(|(r, p)| (r.clone(), p.devices.keys().cloned().collect()))
            .collect()
    }

    /// Frees a pod's devices.
    pub async fn release(&self, uid: &str) {
        let mut state = self.state.lock().await;
        if state.pods.remove(uid).is_some() {
            self.save(&state);
        }
    }

    fn save(&self, state: &State) {
        if let Ok(bytes) = serde_json::to_vec(&state.pods) {
            let tmp = self.checkpoint.with_extension("tmp");
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(tmp, &self.checkpoint);
            }
        }
    }

    /// Admits a pod the way the kubelet's device manager does: for each container and each
    /// extended resource it requests, pick healthy devices no other pod holds and call the
    /// plugin's Allocate. The error is the pod's UnexpectedAdmissionError message.
    pub async fn admit(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
        requests: &[(String, Vec<(String, usize)>)],
    ) -> Result<PodAssignment, String> {
        let mut state = self.state.lock().await;
        if let Some(existing) = state.pods.get(uid) {
            return Ok(existing.clone());
        }
        let held: BTreeSet<(String, String)> = state
            .pods
            .values()
            .flat_map(|p| p.containers.values().flatten())
            .flat_map(|a| a.device_ids.iter().map(|d| (a.resource.clone(), d.clone())))
            .collect();
        let mut planned: Vec<(String, String, Vec<String>, PathBuf)> = Vec::new();
        let mut taken: BTreeSet<(String, String)> = BTreeSet::new();
        for (container, resources) in requests {
            for (resource, count) in resources {
                let free: Vec<String> = state
                    .plugins
                    .get(resource)
                    .map(|p| {
                        p.devices
                            .iter()
                            .filter(|(id, healthy)| {
                                **healthy
                                    && !held.contains(&(resource.clone(), (*id).clone()))
                                    && !taken.contains(&(resource.clone(), (*id).clone()))
                            })
                            .map(|(id, _)| id.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                if free.len() < *count {
                    return Err(format!(
                        "Allocate failed due to requested number of devices unavailable for {resource}. Requested: {count}, Available: {}, which is unexpected",
                        free.len()
                    ));
                }
                let chosen: Vec<String> = free.into_iter().take(*count).collect();
                taken.extend(chosen.iter().map(|d| (resource.clone(), d.clone())));
                let endpoint = state.plugins[resource].endpoint.clone();
                planned.push((container.clone(), resource.clone(), chosen, endpoint));
            }
        }
        let mut pod = PodAssignment {
            namespace: namespace.to_string(),
            name: name.to_string(),
            containers: requests.iter().map(|(c, _)| (c.clone(), vec![])).collect(),
        };
        for (container, resource, ids, endpoint) in planned {
            let response = allocate(&endpoint, &ids)
                .await
                .map_err(|e| format!("Allocate failed due to {e}, which is unexpected"))?;
            pod.containers.entry(container).or_default().push(Assignment {
                resource,
                device_ids: ids,
                envs: response.envs.into_iter().collect(),
                devices: response
                    .devices
                    .iter()
                    .map(|d| serde_json::json!({"containerPath": d.container_path, "hostPath": d.host_path, "permissions": d.permissions}))
                    .collect(),
                mounts: response
                    .mounts
                    .iter()
                    .map(|m| serde_json::json!({"containerPath": m.container_path, "hostPath": m.host_path, "readOnly": m.read_only}))
                    .collect(),
            });
        }
        state.pods.insert(uid.to_string(), pod.clone());
        self.save(&state);
        Ok(pod)
    }

    /// Admits again, after a node reboot, a pod admitted before (its devices are in the
    /// checkpoint but its containers are gone): like the kubelet's device manager, the pod
    /// keeps its devices only if their plugin has registered again and reports them healthy;
    /// otherwise admission fails, and the pod's devices are freed. The error is the pod's
    /// UnexpectedAdmissionError message.
    pub async fn readmit(&self, uid: &str) -> Result<(), String> {
        let mut state = self.state.lock().await;
        let Some(pod) = state.pods.get(uid).cloned() else {
            return Ok(());
        };
        for a in pod.containers.values().flatten() {
            let Some(plugin) = state.plugins.get(&a.resource) else {
                return Err(self.refuse(
                    &mut state,
                    uid,
                    "cannot allocate unregistered device",
                    &a.resource,
                ));
            };
            let healthy: BTreeSet<&String> = plugin
                .devices
                .iter()
                .filter(|(_, h)| **h)
                .map(|(id, _)| id)
                .collect();
            let why = if healthy.is_empty() {
                "no healthy devices present; cannot allocate unhealthy devices"
            } else if !a.device_ids.iter().all(|d| healthy.contains(d)) {
                "previously allocated devices are no longer healthy; cannot allocate unhealthy devices"
            } else {
                continue;
            };
            return Err(self.refuse(&mut state, uid, why, &a.resource));
        }
        Ok(())
    }

    fn refuse(&self, state: &mut State, uid: &str, why: &str, resource: &str) -> String {
        state.pods.remove(uid);
        self.save(state);
        format!("Allocate failed due to {why} {resource}, which is unexpected")
    }

    async fn register(self: &Arc<Self>, req: RegisterRequest) -> Result<(), Status> {
        if req.version != VERSION {
            return Err(Status::invalid_argument(format!(
                "unsupported device plugin API version {:?}",
                req.version
            )));
        }
        let endpoint = self.dir.join(&req.endpoint);
        let resource = req.resource_name.clone();
        info!(%resource, endpoint = %endpoint.display(), "plugin registered");
        let me = self.clone();
        let task_resource = resource.clone();
        let task_endpoint = endpoint.clone();
        let stream = tokio::spawn(async move {
            me.watch_plugin(task_resource, task_endpoint).await;
        });
        let mut state = self.state.lock().await;
        let plugin = state.plugins.entry(resource).or_default();
        if let Some(old) = plugin.stream.replace(stream) {
            old.abort();
        }
        plugin.endpoint = endpoint;
        plugin.stopped = None;
        Ok(())
    }

    async fn watch_plugin(self: Arc<Self>, resource: String, endpoint: PathBuf) {
        let result: anyhow::Result<()> = async {
            let channel = connect_unix(&endpoint).await?;
            let mut client = DevicePluginClient::new(channel);
            client.get_device_plugin_options(Empty {}).await?;
            let mut stream = client.list_and_watch(Empty {}).await?.into_inner();
            while let Some(update) = stream.next().await {
                let update = update?;
                let mut state = self.state.lock().await;
                if let Some(plugin) = state.plugins.get_mut(&resource) {
                    plugin.devices = update
                        .devices
                        .iter()
                        .map(|d| (d.id.clone(), d.health == HEALTHY))
                        .collect();
                }
                drop(state);
                self.changed.notify_one();
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            warn!(%resource, error = %e, "plugin stream ended");
        }
        // A plugin that went away offers nothing until it registers again.
        if let Some(plugin) = self.state.lock().await.plugins.get_mut(&resource) {
            plugin.devices.clear();
            plugin.stopped = Some(Instant::now());
        }
        self.changed.notify_one();
    }
}

async fn allocate(
    endpoint: &std::path::Path,
    ids: &[String],
) -> Result<ContainerAllocateResponse, String> {
    let channel = tokio::time::timeout(Duration::from_secs(10), connect_unix(endpoint))
        .await
        .map_err(|_| "a timeout connecting to the device plugin".to_string())?
        .map_err(|e| format!("rpc error: {e}"))?;
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        DevicePluginClient::new(channel).allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: ids.to_vec(),
            }],
        }),
    )
    .await
    .map_err(|_| "a timeout calling Allocate".to_string())?
    .map_err(|s| format!("rpc error: code = {:?} desc = {}", s.code(), s.message()))?;
    response
        .into_inner()
        .container_responses
        .into_iter()
        .next()
        .ok_or_else(|| "an empty Allocate response".to_string())
}

struct Registrar(Arc<DeviceManager>);

#[tonic::async_trait]
impl Registration for Registrar {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        self.0.register(request.into_inner()).await?;
        Ok(Response::new(Empty {}))
    }
}
