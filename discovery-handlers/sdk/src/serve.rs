//! Serving `DiscoveryHandler` and staying registered with the node's agent.

use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use dowser_discovery_api::{Device, DiscoveryError, DiscoveryHandler};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use crate::{
    connect_unix,
    v0::{
        DiscoverRequest, DiscoverResponse, RegisterDiscoveryHandlerRequest,
        discovery_handler_server::{DiscoveryHandler as DiscoveryService, DiscoveryHandlerServer},
        register_discovery_handler_request::EndpointType,
        registration_client::RegistrationClient,
    },
    wire,
};

/// How often the agent's registration socket is looked at: a new socket is a restarted
/// agent, which is registered with again.
const WATCH_AGENT: Duration = Duration::from_secs(1);
/// How long to wait before trying to register again after a failure.
const REGISTER_RETRY: Duration = Duration::from_secs(1);

/// Where a handler serves and whom it registers with.
#[derive(Clone, Debug)]
pub struct Options {
    /// The name Configurations select it by.
    pub name: String,
    /// Whether its devices can be reached from several nodes.
    pub shared: bool,
    /// The agent's registration socket.
    pub registration_socket: PathBuf,
    /// Where the handler serves `DiscoveryHandler`.
    pub listen: Listen,
}

/// Where a handler serves `DiscoveryHandler`.
#[derive(Clone, Debug)]
pub enum Listen {
    /// A unix socket (the usual case: a container beside the agent sharing its directory).
    Unix(PathBuf),
    /// A TCP address, and the URL the agent reaches it by (`http://10.1.2.3:10000`).
    Network { bind: SocketAddr, advertise: String },
}

impl Options {
    /// The directory layout Akri's handlers use: the directory is `$DISCOVERY_HANDLERS_DIRECTORY`
    /// (default `/var/lib/dowser/handlers`), the agent's socket `agent-registration.sock` in
    /// it and the handler's `<name>.sock`.
    pub fn from_env(name: &str, shared: bool) -> Self {
        let dir = std::env::var_os(crate::DIRECTORY_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(crate::DEFAULT_DIRECTORY));
        Self::in_directory(&dir, name, shared)
    }

    /// That layout in `dir`.
    pub fn in_directory(dir: &Path, name: &str, shared: bool) -> Self {
        Self {
            name: name.to_string(),
            shared,
            registration_socket: dir.join(crate::REGISTRATION_SOCKET),
            listen: Listen::Unix(dir.join(format!("{name}.sock"))),
        }
    }

    fn request(&self) -> RegisterDiscoveryHandlerRequest {
        let (endpoint, kind) = match &self.listen {
            Listen::Unix(path) => (path.display().to_string(), EndpointType::Uds),
            Listen::Network { advertise, .. } => (advertise.clone(), EndpointType::Network),
        };
        RegisterDiscoveryHandlerRequest {
            name: self.name.clone(),
            endpoint,
            endpoint_type: kind as i32,
            shared: self.shared,
        }
    }
}

/// Why a handler stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("serving the discovery handler failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Serves `handler` and keeps it registered with the agent: at start (retrying until the
/// agent answers), whenever the agent's registration socket is replaced (the agent
/// restarted) and whenever the agent drops a discovery stream. Runs until the server fails.
pub async fn run<H: DiscoveryHandler>(handler: H, options: Options) -> Result<(), Error> {
    let (again_tx, again_rx) = mpsc::channel(1);
    let service = DiscoveryHandlerServer::new(Service {
        handler: Arc::new(handler),
        name: options.name.clone(),
        register_again: again_tx,
    });
    let server = tonic::transport::Server::builder().add_service(service);
    let serving = match &options.listen {
        Listen::Unix(path) => {
            // The directory is shared with the agent, which may not have made it yet.
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::Listen(path.display().to_string(), e))?;
            }
            if path.exists() {
                std::fs::remove_file(path)
                    .map_err(|e| Error::Listen(path.display().to_string(), e))?;
            }
            let listener = tokio::net::UnixListener::bind(path)
                .map_err(|e| Error::Listen(path.display().to_string(), e))?;
            let incoming = UnixListenerStream::new(listener);
            tokio::spawn(server.serve_with_incoming(incoming))
        }
        Listen::Network { bind, .. } => {
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .map_err(|e| Error::Listen(bind.to_string(), e))?;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tokio::spawn(server.serve_with_incoming(incoming))
        }
    };
    info!(name = %options.name, listen = ?options.listen, "discovery handler serving");
    let registering = tokio::spawn(stay_registered(options, again_rx));
    let result = serving.await;
    registering.abort();
    match result {
        Ok(served) => served.map_err(Error::from),
        Err(e) => panic!("the discovery handler's server panicked: {e}"),
    }
}

/// Registers, then registers again when the agent's socket changes or the agent asks for it
/// by dropping a stream.
async fn stay_registered(options: Options, mut again: mpsc::Receiver<()>) {
    let request = options.request();
    let mut registered_with = None;
    loop {
        let socket = identity(&options.registration_socket);
        if socket.is_some() && socket != registered_with {
            match register(&options.registration_socket, &request).await {
                Ok(()) => {
                    info!(name = %request.name, endpoint = %request.endpoint, "registered with the agent");
                    registered_with = socket;
                }
                Err(e) => {
                    debug!(error = %e, "cannot register with the agent yet");
                    tokio::time::sleep(REGISTER_RETRY).await;
                    continue;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_AGENT) => {}
            Some(()) = again.recv() => registered_with = None,
        }
    }
}

/// Which socket file the agent has now, if any: device, inode and change time (a file
/// system may give a new socket the inode of the one removed before it, as ext4 does).
fn identity(path: &Path) -> Option<(u64, u64, i64, i64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

async fn register(
    socket: &Path,
    request: &RegisterDiscoveryHandlerRequest,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = connect_unix(socket).await?;
    let mut client = RegistrationClient::new(channel);
    client
        .register_discovery_handler(Request::new(request.clone()))
        .await?;
    Ok(())
}

struct Service<H> {
    handler: Arc<H>,
    name: String,
    register_again: mpsc::Sender<()>,
}

/// Responses waiting to be sent on one stream.
const QUEUED: usize = 4;

#[tonic::async_trait]
impl<H: DiscoveryHandler> DiscoveryService for Service<H> {
    type DiscoverStream = ReceiverStream<Result<DiscoverResponse, Status>>;

    async fn discover(
        &self,
        request: Request<DiscoverRequest>,
    ) -> Result<Response<Self::DiscoverStream>, Status> {
        let request = request.into_inner();
        // An empty text is a handler given no details: as `{}`.
        let text = match request.discovery_details.trim() {
            "" => "{}",
            text => text,
        };
        let details: H::Details = serde_yaml::from_str(text).map_err(|e| {
            Status::invalid_argument(format!(
                "invalid discovery details for the {} handler: {e}",
                self.name
            ))
        })?;
        let properties = wire::properties_from_wire(request.discovery_properties);
        let mut snapshots = self.handler.discover(details, properties).peekable();
        // Details the handler refuses at once are refused as the call's answer.
        if let Some(Some(Err(DiscoveryError::Invalid(_)))) =
            std::pin::Pin::new(&mut snapshots).peek().now_or_never()
            && let Some(Err(DiscoveryError::Invalid(why))) = snapshots.next().await
        {
            return Err(Status::invalid_argument(why));
        }
        let (tx, rx) = mpsc::channel(QUEUED);
        let again = self.register_again.clone();
        let name = self.name.clone();
        tokio::spawn(async move {
            let mut sent: Option<Vec<Device>> = None;
            loop {
                let item = tokio::select! {
                    item = snapshots.next() => item,
                    () = tx.closed() => break,
                };
                let message = match item {
                    None => break,
                    Some(Ok(snapshot)) => {
                        if sent.as_deref() == Some(snapshot.devices()) {
                            continue;
                        }
                        for problem in snapshot.problems() {
                            warn!(handler = %name, %problem, "discovery");
                        }
                        let devices = snapshot.into_devices();
                        let message = DiscoverResponse {
                            devices: devices.iter().map(wire::device_to_wire).collect(),
                        };
                        sent = Some(devices);
                        Ok(message)
                    }
                    Some(Err(DiscoveryError::Invalid(why))) => Err(Status::invalid_argument(why)),
                    Some(Err(e)) => {
                        // The round is retried by the handler; the agent keeps what it has.
                        warn!(handler = %name, error = %e, "discovery round failed");
                        continue;
                    }
                };
                let last = message.is_err();
                if tx.send(message).await.is_err() {
                    break;
                }
                if last {
                    return;
                }
            }
            if tx.is_closed() {
                // The agent dropped the stream: it may have restarted.
                let _ = again.try_send(());
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
