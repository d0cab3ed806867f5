//! The kubelet's device manager (`pkg/kubelet/cm/devicemanager`, Kubernetes 1.35): the
//! Registration service and one client per registered plugin (`plugin/v1beta1`), device
//! health, capacity for the node status with the stopped-endpoint grace period, device
//! assignment to containers with the Allocate call, and a checkpoint that survives a restart.
//! tests/fake-kubelet/README.md lists which kubelet function each behaviour follows.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dowser::deviceplugin::{
    HEALTHY, KUBELET_SOCKET, VERSION, bind_unix, connect_unix,
    v1beta1::{
        AllocateRequest, ContainerAllocateRequest, Empty, RegisterRequest,
        device_plugin_client::DevicePluginClient,
        registration_server::{Registration, RegistrationServer},
    },
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::{sync::Mutex, task::JoinHandle};
use tonic::{Request, Response, Status, transport::Channel};
use tracing::{info, warn};

/// How long the kubelet dials a plugin before it gives up on a registration
/// (`plugin/v1beta1/client.go` `dial`).
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// One registered plugin (`endpoint.go` `endpointImpl`): the connection, and when it
/// stopped. (The plugin's options are read at registration; PreStartContainer and
/// GetPreferredAllocation, which they can ask for, are not emulated: dowser's plugins ask
/// for neither.) An endpoint read from the checkpoint has no connection and is stopped.
struct Endpoint {
    client: Option<DevicePluginClient<Channel>>,
    stopped: Option<Instant>,
}

/// The Registration server's client for a resource (`plugin/v1beta1/server.go` `clients`).
struct PluginClient {
    id: u64,
    stream: Option<JoinHandle<()>>,
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

/// The checkpoint file: pod devices and the resources registered (`checkpoint/checkpoint.go`).
#[derive(Default, Serialize, Deserialize)]
struct Checkpoint {
    pods: BTreeMap<String, PodAssignment>,
    registered: BTreeSet<String>,
}

#[derive(Default)]
struct State {
    endpoints: HashMap<String, Endpoint>,
    clients: HashMap<String, PluginClient>,
    healthy: HashMap<String, BTreeSet<String>>,
    unhealthy: HashMap<String, BTreeSet<String>>,
    /// pod uid → assignment
    pods: BTreeMap<String, PodAssignment>,
}

impl State {
    /// `manager.go` `isDevicePluginResource`: registered, or allocated before.
    fn is_device_plugin_resource(&self, resource: &str) -> bool {
        self.healthy.contains_key(resource)
            || self
                .pods
                .values()
                .flat_map(|p| p.containers.values().flatten())
                .any(|a| a.resource == resource)
    }

    /// `pod_devices.go` `devices`: every device held, by resource.
    fn allocated(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut all: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for a in self
            .pods
            .values()
            .flat_map(|p| p.containers.values().flatten())
        {
            all.entry(a.resource.clone())
                .or_default()
                .extend(a.device_ids.iter().cloned());
        }
        all
    }

    /// `manager.go` `markResourceUnhealthy`.
    fn mark_unhealthy(&mut self, resource: &str) {
        let healthy = self.healthy.insert(resource.into(), BTreeSet::new());
        self.unhealthy
            .entry(resource.into())
            .or_default()
            .extend(healthy.unwrap_or_default());
    }
}

/// What the node status gets from the device manager (`manager.go` `GetCapacity`).
pub struct Capacity {
    /// resource → (capacity, allocatable)
    pub live: BTreeMap<String, (usize, usize)>,
    /// Resources whose endpoint's grace period has expired: capacity 0 from now on.
    pub removed: Vec<String>,
}

/// Why a container's devices could not be assigned: the message of the pod's
/// UnexpectedAdmissionError (`Allocate failed due to <this>, which is unexpected`).
pub type AllocateError = String;

/// The device manager, shared by the kubelet's tasks.
pub struct DeviceManager {
    dir: PathBuf,
    checkpoint: PathBuf,
    grace: Duration,
    state: Mutex<State>,
    registration: Mutex<Option<JoinHandle<()>>>,
    ids: AtomicU64,
}

impl DeviceManager {
    /// `grace`: how long a stopped plugin's devices stay in the node's capacity
    /// (`endpointStopGracePeriod`, 5 minutes in the kubelet).
    pub fn new(dir: PathBuf, grace: Duration) -> Arc<Self> {
        let checkpoint = dir.join("kubelet_internal_checkpoint");
        Arc::new(Self {
            state: Mutex::new(Self::read_checkpoint(&checkpoint)),
            dir,
            checkpoint,
            grace,
            registration: Mutex::new(None),
            ids: AtomicU64::new(1),
        })
    }

    /// `manager.go` `readCheckpoint`: the pods' devices, and every resource registered
    /// before with no devices (capacity 0) and a stopped endpoint until its plugin registers
    /// again.
    fn read_checkpoint(path: &std::path::Path) -> State {
        let checkpoint: Checkpoint = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut state = State {
            pods: checkpoint.pods,
            ..State::default()
        };
        for resource in checkpoint.registered {
            state.healthy.insert(resource.clone(), BTreeSet::new());
            state.unhealthy.insert(resource.clone(), BTreeSet::new());
            state.endpoints.insert(
                resource,
                Endpoint {
                    client: None,
                    stopped: Some(Instant::now()),
                },
            );
        }
        state
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

    /// Deletes the sockets in the plugin directory, as the kubelet does when its device
    /// manager starts (`manager.go` `CleanupPluginDirectory`).
    pub fn remove_sockets(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::FileTypeExt;
        std::fs::create_dir_all(&self.dir)?;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_socket() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// What a kubelet restart does to device plugins: connections dropped, its sockets
    /// deleted (plugins must notice and register again), and the device manager starts
    /// again from its checkpoint.
    pub async fn restart(self: &Arc<Self>) -> anyhow::Result<()> {
        if let Some(task) = self.registration.lock().await.take() {
            task.abort();
        }
        {
            let mut state = self.state.lock().await;
            self.save(&state);
            for client in state.clients.values_mut() {
                if let Some(s) = client.stream.take() {
                    s.abort();
                }
            }
            *state = Self::read_checkpoint(&self.checkpoint);
        }
        self.remove_sockets()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        info!("restarted: plugin sockets deleted, waiting for registrations");
        self.start().await
    }

    /// `manager.go` `GetCapacity`, called on every node status update: capacity counts all
    /// devices, allocatable the healthy ones; a stopped endpoint's resource stays (all its
    /// devices unhealthy) until its grace period ends, then it is reported removed once and
    /// forgotten.
    pub async fn capacity(&self) -> Capacity {
        let mut state = self.state.lock().await;
        let mut live = BTreeMap::new();
        let mut removed = BTreeSet::new();
        let resources: BTreeSet<String> = state
            .healthy
            .keys()
            .chain(state.unhealthy.keys())
            .cloned()
            .collect();
        for resource in resources {
            let expired = match state.endpoints.get(&resource) {
                None => true,
                Some(e) => e.stopped.is_some_and(|t| t.elapsed() > self.grace),
            };
            if expired {
                removed.insert(resource);
                continue;
            }
            let healthy = state.healthy.get(&resource).map_or(0, BTreeSet::len);
            let unhealthy = state.unhealthy.get(&resource).map_or(0, BTreeSet::len);
            live.insert(resource, (healthy + unhealthy, healthy));
        }
        for resource in &removed {
            state.endpoints.remove(resource);
            state.healthy.remove(resource);
            state.unhealthy.remove(resource);
        }
        if !removed.is_empty() {
            self.save(&state);
        }
        Capacity {
            live,
            removed: removed.into_iter().collect(),
        }
    }

    /// `manager.go` `GetAllocatableDevices`: the healthy devices of each resource.
    pub async fn allocatable_devices(&self) -> Vec<(String, Vec<String>)> {
        let state = self.state.lock().await;
        state
            .healthy
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(r, ids)| (r.clone(), ids.iter().cloned().collect()))
            .collect()
    }

    /// The devices of every container of a pod (`manager.go` `GetDevices`).
    pub async fn container_devices(&self, uid: &str) -> BTreeMap<String, Vec<Assignment>> {
        self.state
            .lock()
            .await
            .pods
            .get(uid)
            .map(|p| p.containers.clone())
            .unwrap_or_default()
    }

    /// `manager.go` `UpdateAllocatedDevices`: frees the devices of every pod that is not
    /// active any more.
    pub async fn update_allocated(&self, active: &BTreeSet<String>) {
        let mut state = self.state.lock().await;
        let before = state.pods.len();
        state.pods.retain(|uid, _| active.contains(uid));
        if state.pods.len() != before {
            self.save(&state);
        }
    }

    /// Every device held by a pod, by resource: what `sanitizeNodeAllocatable` raises the
    /// node's allocatable to before the fit predicate.
    pub async fn allocated(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.state.lock().await.allocated()
    }

    fn save(&self, state: &State) {
        let checkpoint = Checkpoint {
            pods: state.pods.clone(),
            registered: state.healthy.keys().cloned().collect(),
        };
        if let Ok(bytes) = serde_json::to_vec(&checkpoint) {
            let tmp = self.checkpoint.with_extension("tmp");
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(tmp, &self.checkpoint);
            }
        }
    }

    /// `manager.go` `allocateContainerResources` for one container: for each device-plugin
    /// resource in its limits (an unregistered one is skipped), the devices it already has
    /// (a container restart, a node reboot) or new healthy, free ones, and the plugin's
    /// Allocate for new ones — called with no deadline, as the kubelet does.
    /// `reusable` carries the devices of init containers that app containers may take.
    pub async fn allocate_container(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
        container: &str,
        limits: &[(String, usize)],
        reusable: &mut BTreeMap<String, BTreeSet<String>>,
    ) -> Result<(), AllocateError> {
        for (resource, needed) in limits {
            let (ids, client) = {
                let mut state = self.state.lock().await;
                if !state.is_device_plugin_resource(resource) {
                    continue;
                }
                match self
                    .devices_to_allocate(&mut state, uid, container, resource, *needed, reusable)?
                {
                    None => continue,
                    Some(ids) => {
                        let client = state
                            .endpoints
                            .get(resource)
                            .and_then(|e| e.stopped.is_none().then(|| e.client.clone()).flatten());
                        (ids, client)
                    }
                }
            };
            let Some(mut client) = client else {
                return Err(format!("endpoint {resource} is stopped"));
            };
            let response = client
                .allocate(AllocateRequest {
                    container_requests: vec![ContainerAllocateRequest {
                        devices_ids: ids.clone(),
                    }],
                })
                .await
                .map_err(|s| format!("rpc error: code = {:?} desc = {}", s.code(), s.message()))?
                .into_inner();
            let Some(response) = response.container_responses.into_iter().next() else {
                return Err("no containers return in allocation response".into());
            };
            let mut state = self.state.lock().await;
            let pod = state
                .pods
                .entry(uid.to_string())
                .or_insert_with(|| PodAssignment {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    containers: BTreeMap::new(),
                });
            pod.containers.entry(container.to_string()).or_default().push(Assignment {
                resource: resource.clone(),
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
            self.save(&state);
        }
        Ok(())
    }

    /// `manager.go` `devicesToAllocate`: `None` when the container has its devices already.
    fn devices_to_allocate(
        &self,
        state: &mut State,
        uid: &str,
        container: &str,
        resource: &str,
        required: usize,
        reusable: &mut BTreeMap<String, BTreeSet<String>>,
    ) -> Result<Option<Vec<String>>, AllocateError> {
        let held: Option<BTreeSet<String>> = state.pods.get(uid).and_then(|p| {
            let ids: BTreeSet<String> = p
                .containers
                .get(container)?
                .iter()
                .filter(|a| a.resource == resource)
                .flat_map(|a| a.device_ids.iter().cloned())
                .collect();
            (!ids.is_empty()).then_some(ids)
        });
        let mut needed = required;
        if let Some(held) = &held {
            if held.len() != required {
                return Err(format!(
                    "pod {uid:?} container {container:?} changed request for resource {resource:?} from {} to {required}",
                    held.len()
                ));
            }
            needed = 0;
        }
        let Some(healthy) = state.healthy.get(resource) else {
            return Err(format!("cannot allocate unregistered device {resource}"));
        };
        if healthy.is_empty() {
            return Err(format!(
                "no healthy devices present; cannot allocate unhealthy devices {resource}"
            ));
        }
        if let Some(held) = &held
            && !held.is_subset(healthy)
        {
            return Err(format!(
                "previously allocated devices are no longer healthy; cannot allocate unhealthy devices {resource}"
            ));
        }
        if needed == 0 {
            return Ok(None);
        }
        let mut chosen: Vec<String> = Vec::new();
        if let Some(reuse) = reusable.get_mut(resource) {
            while chosen.len() < needed {
                let Some(id) = reuse.pop_first() else { break };
                chosen.push(id);
            }
            if chosen.len() == needed {
                return Ok(Some(chosen));
            }
        }
        let in_use = state.allocated().remove(resource).unwrap_or_default();
        let available: Vec<&String> = healthy
            .iter()
            .filter(|d| !in_use.contains(*d) && !chosen.contains(d))
            .collect();
        let missing = needed - chosen.len();
        if available.len() < missing {
            return Err(format!(
                "requested number of devices unavailable for {resource}. Requested: {missing}, Available: {}",
                available.len()
            ));
        }
        chosen.extend(available.into_iter().take(missing).cloned());
        Ok(Some(chosen))
    }

    /// After an init container's allocation: `pod_devices.go`
    /// `addContainerAllocatedResources` (a regular init container's devices may be reused by
    /// the next containers) or `removeContainerAllocatedResources` (an app container, or a
    /// restartable init container, keeps its devices).
    pub async fn reuse(
        &self,
        uid: &str,
        container: &str,
        reusable: &mut BTreeMap<String, BTreeSet<String>>,
        keep: bool,
    ) {
        let state = self.state.lock().await;
        let Some(assignments) = state
            .pods
            .get(uid)
            .and_then(|p| p.containers.get(container))
        else {
            return;
        };
        for a in assignments {
            let set = reusable.entry(a.resource.clone()).or_default();
            for id in &a.device_ids {
                if keep {
                    set.remove(id);
                } else {
                    set.insert(id.clone());
                }
            }
        }
    }

    /// `plugin/v1beta1/server.go` `Register` and `handler.go` `connectClient`: the version and resource
    /// name are checked, the new client replaces the resource's client, the kubelet dials
    /// the plugin and asks its options (`manager.go` `PluginConnected`), and only then
    /// answers; the stream is followed in the background.
    async fn register(self: &Arc<Self>, req: RegisterRequest) -> Result<(), Status> {
        if req.version != VERSION {
            return Err(Status::unknown(format!(
                "requested device plugin API version {:?} is not supported by kubelet. Supported versions are [\"v1beta1\"]",
                req.version
            )));
        }
        let resource = req.resource_name.clone();
        if !is_extended_resource_name(&resource) {
            return Err(Status::unknown(format!(
                "the ResourceName {resource:?} is invalid"
            )));
        }
        let endpoint = self.dir.join(&req.endpoint);
        info!(%resource, endpoint = %endpoint.display(), "registration request");
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        self.state
            .lock()
            .await
            .clients
            .insert(resource.clone(), PluginClient { id, stream: None });
        let connected = async {
            let channel = tokio::time::timeout(DIAL_TIMEOUT, connect_unix(&endpoint))
                .await
                .map_err(|_| "failed to dial device plugin: context deadline exceeded".to_string())?
                .map_err(|e| format!("failed to dial device plugin: {e}"))?;
            let mut client = DevicePluginClient::new(channel);
            let options = client
                .get_device_plugin_options(Empty {})
                .await
                .map_err(|s| format!("failed to get device plugin options: {}", s.message()))?
                .into_inner();
            Ok::<_, String>((client, options))
        }
        .await;
        let (client, options) = match connected {
            Ok(c) => c,
            Err(e) => {
                warn!(%resource, error = %e, "failed to connect to new client");
                self.state.lock().await.clients.remove(&resource);
                return Err(Status::unknown(e));
            }
        };
        let mut state = self.state.lock().await;
        state.endpoints.insert(
            resource.clone(),
            Endpoint {
                client: Some(client.clone()),
                stopped: None,
            },
        );
        let me = self.clone();
        let task_resource = resource.clone();
        let stream = tokio::spawn(async move { me.run_client(task_resource, client).await });
        match state.clients.get_mut(&resource) {
            Some(c) if c.id == id => c.stream = Some(stream),
            // Replaced by a newer registration meanwhile.
            _ => stream.abort(),
        }
        info!(%resource, ?options, "device plugin connected");
        Ok(())
    }

    /// `plugin/v1beta1/client.go` `Run` then `handler.go` `runClient`: follows ListAndWatch;
    /// when the stream ends, the resource's current client is disconnected — which, after a
    /// newer registration, is that newer client, as in the kubelet.
    async fn run_client(
        self: Arc<Self>,
        resource: String,
        mut client: DevicePluginClient<Channel>,
    ) {
        let result: Result<(), Status> = async {
            let mut stream = client.list_and_watch(Empty {}).await?.into_inner();
            while let Some(update) = stream.next().await {
                let update = update?;
                let mut state = self.state.lock().await;
                let mut healthy = BTreeSet::new();
                let mut unhealthy = BTreeSet::new();
                for d in update.devices {
                    if d.health == HEALTHY {
                        healthy.insert(d.id);
                    } else {
                        unhealthy.insert(d.id);
                    }
                }
                state.healthy.insert(resource.clone(), healthy);
                state.unhealthy.insert(resource.clone(), unhealthy);
                self.save(&state);
            }
            Err(Status::unavailable("stream ended"))
        }
        .await;
        if let Err(e) = result {
            warn!(%resource, error = %e.message(), "ListAndWatch ended unexpectedly for device plugin");
        }
        let mut state = self.state.lock().await;
        let Some(current) = state.clients.remove(&resource) else {
            return;
        };
        // `PluginDisconnected`: every device unhealthy, the endpoint stopped now.
        if state.endpoints.contains_key(&resource) {
            state.mark_unhealthy(&resource);
            if let Some(e) = state.endpoints.get_mut(&resource) {
                e.stopped = Some(Instant::now());
            }
        }
        drop(state);
        if let Some(stream) = current.stream {
            // Closing that client's connection ends its stream (a no-op for this one).
            stream.abort();
        }
    }
}

/// `v1helper.IsExtendedResourceName`: a domain-prefixed name outside `kubernetes.io/`, not
/// `requests.`-prefixed.
pub fn is_extended_resource_name(name: &str) -> bool {
    let Some((domain, _)) = name.split_once('/') else {
        return false;
    };
    !(domain == "kubernetes.io"
        || domain.ends_with(".kubernetes.io")
        || name.starts_with("requests."))
}

struct Registrar(Arc<DeviceManager>);

#[tonic::async_trait]
impl Registration for Registrar {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        self.0.register(request.into_inner()).await?;
        Ok(Response::new(Empty {}))
    }
}
