//! The kubelet's DRA plugin for driver `dowser.dev`: registration through the kubelet's
//! plugin registry (`pluginregistration/v1`, type `DRAPlugin`), and the `v1.DRAPlugin`
//! gRPC service.
//!
//! `NodePrepareResources` reads each claim's allocation, finds the Instance behind each
//! allocated device (by the `namespace`, `instance` attributes of the published device),
//! writes the claim's CDI spec (the broker environment, device nodes and mounts of a device
//! plugin's `Allocate`) and answers with its CDI device ids; `NodeUnprepareResources`
//! removes the spec. Both are idempotent: the kubelet retries, and calls again after its
//! own restart.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::reflector::{ObjectRef, Store},
};
use tokio::io::DuplexStream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use super::{
    DRIVER, cdi,
    registration::{
        InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
        registration_server::{Registration, RegistrationServer},
    },
    v1::{
        Claim, Device, NodePrepareResourceResponse, NodePrepareResourcesRequest,
        NodePrepareResourcesResponse, NodeUnprepareResourceResponse, NodeUnprepareResourcesRequest,
        NodeUnprepareResourcesResponse,
        dra_plugin_server::{DraPlugin, DraPluginServer},
    },
};
use crate::{
    crd::{Configuration, Instance},
    device_instance::instance_env,
    deviceplugin::bind_unix,
};

/// The gRPC service the plugin offers (`DRAPluginService` of `k8s.io/kubelet/pkg/apis/dra/v1`).
pub const SERVICE: &str = "v1.DRAPlugin";
/// The plugin type of the registration (`pluginregistration/v1`).
pub const PLUGIN_TYPE: &str = "DRAPlugin";
/// How often the plugin checks that its sockets are still there.
const SOCKET_CHECK: Duration = Duration::from_secs(5);

/// What the plugin reads to prepare a claim.
pub struct Driver {
    pub client: Client,
    pub node: String,
    pub cdi_dir: PathBuf,
    pub slices: Store<ResourceSlice>,
    pub instances: Store<Instance>,
    pub configs: Store<Configuration>,
}

/// Where the plugin's sockets are.
#[derive(Clone, Debug)]
pub struct Sockets {
    /// `<plugins dir>/dowser.dev/dra.sock`: the DRA service.
    pub endpoint: PathBuf,
    /// `<registry dir>/dowser.dev-reg.sock`: the registration the kubelet watches for.
    pub registration: PathBuf,
}

impl Sockets {
    pub fn new(plugins_dir: &Path, registry_dir: &Path) -> Self {
        Self {
            endpoint: plugins_dir.join(DRIVER).join("dra.sock"),
            registration: registry_dir.join(format!("{DRIVER}-reg.sock")),
        }
    }
}

impl Driver {
    /// The Instance slot behind a device of a published pool, from the device's attributes.
    fn instance_of(&self, pool: &str, device: &str) -> Result<Arc<Instance>, String> {
        let published = self
            .slices
            .state()
            .into_iter()
            .filter(|s| s.spec.pool.name == pool)
            .find_map(|s| {
                s.spec
                    .devices
                    .iter()
                    .flatten()
                    .find(|d| d.name == device)
                    .cloned()
            })
            .ok_or_else(|| format!("device {pool}/{device} is not published any more"))?;
        let attribute = |name: &str| {
            published
                .attributes
                .as_ref()
                .and_then(|a| a.get(name))
                .and_then(|a| a.string.clone())
                .ok_or_else(|| format!("device {pool}/{device} has no {name} attribute"))
        };
        let namespace = attribute("namespace")?;
        let name = attribute("instance")?;
        let instance = self
            .instances
            .get(&ObjectRef::new(&name).within(&namespace))
            .ok_or_else(|| format!("Instance {namespace}/{name} of device {device} is gone"))?;
        let seen = instance
            .status
            .as_ref()
            .is_some_and(|s| s.nodes.contains(&self.node));
        if !seen {
            return Err(format!(
                "Instance {namespace}/{name} (device {device}) is not reachable from node {}",
                self.node
            ));
        }
        Ok(instance)
    }

    /// Prepares one claim: its CDI spec written, its devices returned.
    async fn prepare(&self, claim: &Claim) -> Result<Vec<Device>, String> {
        let what = format!("ResourceClaim {}/{}", claim.namespace, claim.name);
        let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), &claim.namespace);
        let found = api
            .get(&claim.name)
            .await
            .map_err(|e| format!("cannot read {what}: {e}"))?;
        if found.uid().as_deref() != Some(claim.uid.as_str()) {
            return Err(format!(
                "{what} is uid {}, not {} (deleted and created again)",
                found.uid().unwrap_or_default(),
                claim.uid
            ));
        }
        let results: Vec<_> = found
            .status
            .and_then(|s| s.allocation)
            .and_then(|a| a.devices)
            .and_then(|d| d.results)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.driver == DRIVER)
            .collect();
        if results.is_empty() {
            return Err(format!("{what} has no {DRIVER} device allocated"));
        }
        let mut edits = BTreeMap::new();
        let mut devices = Vec::new();
        for result in results {
            let instance = self.instance_of(&result.pool, &result.device)?;
            let broker_properties = self
                .configs
                .get(
                    &ObjectRef::new(&instance.spec.configuration_name)
                        .within(&instance.namespace().unwrap_or_default()),
                )
                .map(|c| c.spec.broker_properties.clone())
                .unwrap_or_default();
            edits.insert(
                result.device.clone(),
                cdi::Edits {
                    env: instance_env(&instance.name_any(), &instance.spec, &broker_properties),
                    devices: instance.spec.devices.clone(),
                    mounts: instance.spec.mounts.clone(),
                },
            );
            devices.push(Device {
                cdi_device_ids: vec![cdi::device_id(&claim.uid, &result.device)],
                request_names: vec![result.request],
                pool_name: result.pool,
                device_name: result.device,
                share_id: None,
            });
        }
        cdi::write(&self.cdi_dir, &claim.uid, &cdi::spec(&claim.uid, &edits))
            .map_err(|e| format!("cannot write the CDI spec of {what}: {e}"))?;
        info!(claim = %format!("{}/{}", claim.namespace, claim.name), devices = devices.len(), "prepared");
        Ok(devices)
    }

    /// Removes the CDI specs of claims that no longer exist (prepared before a restart and
    /// deleted meanwhile). Specs of claims that still exist stay: their pods keep running.
    pub async fn remove_stale_specs(&self) -> Result<usize, kube::Error> {
        let specs = cdi::claims_with_specs(&self.cdi_dir);
        if specs.is_empty() {
            return Ok(0);
        }
        let claims: Api<ResourceClaim> = Api::all(self.client.clone());
        let live: Vec<String> = claims
            .list_metadata(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|c| c.metadata.uid)
            .collect();
        let mut removed = 0;
        for uid in specs.iter().filter(|u| !live.contains(u)) {
            match cdi::remove(&self.cdi_dir, uid) {
                Ok(()) => removed += 1,
                Err(e) => warn!(claim_uid = %uid, error = %e, "cannot remove a stale CDI spec"),
            }
        }
        if removed > 0 {
            info!(removed, "removed the CDI specs of claims that are gone");
        }
        Ok(removed)
    }
}

struct Service(Arc<Driver>);

#[tonic::async_trait]
impl DraPlugin for Service {
    async fn node_prepare_resources(
        &self,
        request: Request<NodePrepareResourcesRequest>,
    ) -> Result<Response<NodePrepareResourcesResponse>, Status> {
        let mut claims = std::collections::HashMap::new();
        for claim in request.into_inner().claims {
            let answer = match self.0.prepare(&claim).await {
                Ok(devices) => NodePrepareResourceResponse {
                    devices,
                    error: String::new(),
                },
                Err(error) => {
                    warn!(claim = %format!("{}/{}", claim.namespace, claim.name), %error, "not prepared");
                    NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error,
                    }
                }
            };
            claims.insert(claim.uid, answer);
        }
        Ok(Response::new(NodePrepareResourcesResponse { claims }))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<NodeUnprepareResourcesRequest>,
    ) -> Result<Response<NodeUnprepareResourcesResponse>, Status> {
        let mut claims = std::collections::HashMap::new();
        for claim in request.into_inner().claims {
            let error = match cdi::remove(&self.0.cdi_dir, &claim.uid) {
                Ok(()) => {
                    info!(claim = %format!("{}/{}", claim.namespace, claim.name), "unprepared");
                    String::new()
                }
                Err(e) => format!("cannot remove the CDI spec: {e}"),
            };
            claims.insert(claim.uid, NodeUnprepareResourceResponse { error });
        }
        Ok(Response::new(NodeUnprepareResourcesResponse { claims }))
    }
}

struct Registrar {
    endpoint: String,
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: PLUGIN_TYPE.to_string(),
            name: DRIVER.to_string(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec![SERVICE.to_string()],
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            info!("registered with the kubelet as DRA driver {DRIVER}");
        } else {
            warn!(error = %status.error, "the kubelet refused the DRA plugin");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// Serves the DRA service and the registration until `stop`, binding the sockets again when
/// they disappear; removes both at the end (the registration first, so that the kubelet
/// stops calling before the service goes).
pub async fn serve(driver: Arc<Driver>, sockets: Sockets, stop: impl Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let servers = match start(&driver, &sockets) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot bind the DRA plugin's sockets; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(SOCKET_CHECK) => continue,
                    _ = &mut stop => return,
                }
            }
        };
        let stopped = loop {
            tokio::select! {
                _ = tokio::time::sleep(SOCKET_CHECK) => {}
                _ = &mut stop => break true,
            }
            if !sockets.endpoint.exists() || !sockets.registration.exists() {
                warn!("a DRA plugin socket was removed; binding again");
                break false;
            }
        };
        for (quit, task) in servers {
            let _ = quit.send(());
            let _ = task.await;
        }
        if stopped {
            for path in [&sockets.registration, &sockets.endpoint] {
                if let Err(e) = std::fs::remove_file(path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    warn!(socket = %path.display(), error = %e, "cannot remove a socket");
                }
            }
            return;
        }
    }
}

/// The size of the in-process pipe between the shim and the registration server.
const PIPE_BUFFER: usize = 64 * 1024;

/// One kubelet connection to the registration socket: its requests through the authority
/// shim to the server, the server's answers back unchanged.
async fn shim(kubelet: tokio::net::UnixStream, server: DuplexStream) {
    let (from_kubelet, mut to_kubelet) = kubelet.into_split();
    let (mut from_server, to_server) = tokio::io::split(server);
    let (up, down) = tokio::join!(
        super::authority::rewrite(from_kubelet, to_server),
        tokio::io::copy(&mut from_server, &mut to_kubelet),
    );
    if let Err(e) = up.and(down.map(|_| ())) {
        debug!(error = %e, "registration connection ended");
    }
}

type Server = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
);

/// Binds the service first, then the registration: the kubelet calls the endpoint as soon as
/// it has read the registration.
fn start(driver: &Arc<Driver>, sockets: &Sockets) -> std::io::Result<Vec<Server>> {
    for path in [&sockets.endpoint, &sockets.registration] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let endpoint = bind_unix(&sockets.endpoint)?;
    let mut registration = bind_unix(&sockets.registration)?;
    // Each connection to the registration socket goes through the authority shim
    // ([`super::authority`]) to the server, over an in-process pipe.
    let (conns_tx, conns) = tokio::sync::mpsc::unbounded_channel::<std::io::Result<DuplexStream>>();
    let accept = tokio::spawn(async move {
        while let Some(conn) = registration.next().await {
            match conn {
                Ok(unix) => {
                    let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
                    if conns_tx.send(Ok(theirs)).is_err() {
                        return;
                    }
                    tokio::spawn(shim(unix, ours));
                }
                Err(e) => warn!(error = %e, "cannot accept on the registration socket"),
            }
        }
    });
    let (quit_a, rx_a) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DraPluginServer::new(Service(driver.clone())))
            .serve_with_incoming_shutdown(endpoint, async {
                rx_a.await.unwrap_or(());
            }),
    );
    let (quit_b, rx_b) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(RegistrationServer::new(Registrar {
            endpoint: sockets.endpoint.display().to_string(),
        }))
        .serve_with_incoming_shutdown(UnboundedReceiverStream::new(conns), async {
            rx_b.await.unwrap_or(());
        });
    let registrar = tokio::spawn(async move {
        let served = server.await;
        accept.abort();
        served
    });
    info!(endpoint = %sockets.endpoint.display(), registration = %sockets.registration.display(), "DRA plugin serving");
    Ok(vec![(quit_b, registrar), (quit_a, service)])
}
