//! A kubelet device plugin: serves `DevicePlugin` on a unix socket, registers with the
//! kubelet, and registers again whenever the kubelet restarts (a restarting kubelet deletes
//! every socket in the device-plugin directory).

use std::{path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use super::{
    KUBELET_SOCKET, VERSION, bind_unix, connect_unix,
    v1beta1::{
        AllocateRequest, AllocateResponse, ContainerAllocateResponse, Device, DevicePluginOptions,
        Empty, ListAndWatchResponse, PreStartContainerRequest, PreStartContainerResponse,
        PreferredAllocationRequest, PreferredAllocationResponse, RegisterRequest,
        device_plugin_server::{DevicePlugin, DevicePluginServer},
        registration_client::RegistrationClient,
    },
};

/// How often an unregistered plugin tries to register, or to bind its socket.
const RETRY: Duration = Duration::from_secs(1);

/// What a plugin hands out when the kubelet admits a pod.
pub trait Allocator: Send + Sync + 'static {
    /// The container's share of an `Allocate` call: environment, device nodes, mounts for
    /// the given device ids (slots).
    fn allocate(
        &self,
        device_ids: &[String],
    ) -> impl Future<Output = Result<ContainerAllocateResponse, Status>> + Send;
}

/// Where and as what a plugin registers.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// The kubelet's device-plugin directory (holds `kubelet.sock`).
    pub dir: PathBuf,
    /// File name of this plugin's socket in `dir`.
    pub socket_name: String,
    /// The extended resource, such as `dowser.dev/default_plc-line3-39120988d2bc`.
    pub resource_name: String,
}

struct Service<A> {
    devices: watch::Receiver<Vec<Device>>,
    allocator: Arc<A>,
}

type DeviceStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<A: Allocator> DevicePlugin for Service<A> {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(DevicePluginOptions::default()))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let stream = WatchStream::new(self.devices.clone())
            .map(|devices| Ok(ListAndWatchResponse { devices }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        _: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        Ok(Response::new(PreferredAllocationResponse::default()))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for c in &request.into_inner().container_requests {
            container_responses.push(self.allocator.allocate(&c.devices_ids).await?);
        }
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// Serves and registers a plugin until `stop` resolves, then removes its socket. `kubelet`
/// (from [`super::kubelet_restarts`]) changes when the kubelet restarts: the plugin then
/// binds its socket again if it was deleted, and registers again.
pub async fn run<A: Allocator>(
    config: PluginConfig,
    devices: watch::Receiver<Vec<Device>>,
    allocator: Arc<A>,
    mut kubelet: watch::Receiver<Option<super::KubeletSocket>>,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    kubelet.borrow_and_update();
    let socket = config.dir.join(&config.socket_name);
    loop {
        let incoming = match bind_unix(&socket) {
            Ok(i) => i,
            Err(e) => {
                warn!(socket = %socket.display(), error = %e, "cannot bind the device plugin socket; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = &mut stop => return,
                }
            }
        };
        let (quit, quit_rx) = tokio::sync::oneshot::channel::<()>();
        let service = Service {
            devices: devices.clone(),
            allocator: allocator.clone(),
        };
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(service))
                .serve_with_incoming_shutdown(incoming, async {
                    // Sent or dropped, either way the server stops.
                    quit_rx.await.unwrap_or(());
                }),
        );
        let mut registered = false;
        let stopped = loop {
            if !registered {
                match register(&config).await {
                    Ok(()) => {
                        info!(resource = %config.resource_name, "registered with the kubelet");
                        registered = true;
                    }
                    Err(e) => {
                        debug!(resource = %config.resource_name, error = %e, "kubelet not reachable yet")
                    }
                }
            }
            // Registered, the plugin sleeps until the kubelet restarts.
            tokio::select! {
                _ = tokio::time::sleep(RETRY), if !registered => {}
                r = kubelet.changed() => {
                    if r.is_err() {
                        // Nobody watches the kubelet any more: the agent is stopping.
                        (&mut stop).await;
                        break true;
                    }
                    registered = false;
                }
                _ = &mut stop => break true,
            }
            if !socket.exists() {
                info!(resource = %config.resource_name, "plugin socket removed (kubelet restart); registering again");
                break false;
            }
        };
        if quit.send(()).is_err() {
            debug!(resource = %config.resource_name, "the plugin's server had stopped already");
        }
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(resource = %config.resource_name, error = %e, "plugin server failed")
            }
            Err(e) => {
                warn!(resource = %config.resource_name, error = %e, "plugin server ended abnormally")
            }
        }
        if stopped {
            match std::fs::remove_file(&socket) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(socket = %socket.display(), error = %e, "cannot remove the plugin socket")
                }
            }
            return;
        }
    }
}

async fn register(config: &PluginConfig) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = connect_unix(&config.dir.join(KUBELET_SOCKET)).await?;
    RegistrationClient::new(channel)
        .register(RegisterRequest {
            version: VERSION.to_string(),
            endpoint: config.socket_name.clone(),
            resource_name: config.resource_name.clone(),
            options: Some(DevicePluginOptions::default()),
        })
        .await?;
    Ok(())
}
