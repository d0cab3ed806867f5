//! A kubelet device plugin: serves `DevicePlugin` on a unix socket, registers with the
//! kubelet, and registers again whenever the kubelet restarts (a restarting kubelet deletes
//! every socket in the device-plugin directory) or stops listening to it (it ended the
//! ListAndWatch stream of the plugin's latest registration without restarting).

use std::{
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

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
    /// The extended resource, such as `dowser.dev/plc-line3-39120988d2bc`.
    pub resource_name: String,
}

/// The ListAndWatch streams of a plugin: the number of the newest one opened, and whether
/// it is still open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Streams {
    newest: u64,
    open: bool,
}

/// Marks its stream closed when the kubelet lets go of it (the response stream is dropped).
struct StreamGuard {
    streams: Arc<watch::Sender<Streams>>,
    number: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.streams.send_if_modified(|s| {
            let newest = s.newest == self.number;
            if newest {
                s.open = false;
            }
            newest
        });
    }
}

/// When a registered plugin registers again because the kubelet holds no ListAndWatch
/// stream of its latest registration: the kubelet ended it without restarting (a newer
/// registration of the resource replaced it, or an error), and the resource stays at
/// allocatable 0 until the plugin registers again. Waits [`Watchdog::FIRST`] after the
/// registration or the end of the stream (the kubelet opens its stream right after it
/// answers `Register`), then doubles the wait up to [`Watchdog::MOST`] while registrations
/// get no lasting stream. Pure: the caller feeds it what it sees.
#[derive(Debug, Default)]
struct Watchdog {
    /// Since when no stream of the latest registration has been open.
    quiet_since: Option<Instant>,
    /// Since when one has been open.
    open_since: Option<Instant>,
    /// Registrations in a row that got no lasting stream.
    attempts: u32,
}

impl Watchdog {
    const FIRST: Duration = Duration::from_secs(2);
    const MOST: Duration = Duration::from_secs(60);
    /// A stream open this long means the kubelet took the registration.
    const LASTING: Duration = Duration::from_secs(30);

    /// The plugin (re)registered at `now`.
    fn registered(&mut self, now: Instant) {
        self.quiet_since = Some(now);
        self.open_since = None;
    }

    /// Whether a stream of the latest registration is open at `now`.
    fn observe(&mut self, open: bool, now: Instant) {
        if open {
            self.quiet_since = None;
            let since = *self.open_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= Self::LASTING {
                self.attempts = 0;
            }
        } else {
            if let Some(since) = self.open_since.take()
                && now.saturating_duration_since(since) >= Self::LASTING
            {
                self.attempts = 0;
            }
            self.quiet_since.get_or_insert(now);
        }
    }

    /// When to register again (`None` while a stream is open).
    fn due(&self) -> Option<Instant> {
        let wait = Self::FIRST
            .saturating_mul(1 << self.attempts.min(16))
            .min(Self::MOST);
        self.quiet_since.map(|since| since + wait)
    }

    /// The plugin registers again at `now`.
    fn retried(&mut self, now: Instant) {
        self.attempts = self.attempts.saturating_add(1);
        self.registered(now);
    }
}

struct Service<A> {
    devices: watch::Receiver<Vec<Device>>,
    allocator: Arc<A>,
    streams: Arc<watch::Sender<Streams>>,
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
        let mut number = 0;
        self.streams.send_modify(|s| {
            s.newest += 1;
            s.open = true;
            number = s.newest;
        });
        let guard = StreamGuard {
            streams: self.streams.clone(),
            number,
        };
        let stream = WatchStream::new(self.devices.clone()).map(move |devices| {
            let _open = &guard;
            Ok(ListAndWatchResponse { devices })
        });
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
    let streams = Arc::new(watch::channel(Streams::default()).0);
    let mut seen = streams.subscribe();
    let mut watchdog = Watchdog::default();
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
            streams: streams.clone(),
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
        // Streams numbered above this one were opened for the latest registration.
        let mut before = 0;
        let stopped = loop {
            if !registered {
                // Read first: the kubelet may open its stream before `Register` returns.
                before = streams.borrow().newest;
                match register(&config).await {
                    Ok(()) => {
                        info!(resource = %config.resource_name, "registered with the kubelet");
                        registered = true;
                        watchdog.registered(Instant::now());
                        let s = *seen.borrow_and_update();
                        watchdog.observe(s.open && s.newest > before, Instant::now());
                    }
                    Err(e) => {
                        debug!(resource = %config.resource_name, error = %e, "kubelet not reachable yet")
                    }
                }
            }
            // Registered, the plugin sleeps until the kubelet restarts or lets go of its
            // stream.
            let due = if registered { watchdog.due() } else { None };
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = tokio::time::sleep(RETRY), if !registered => {}
                _ = tokio::time::sleep_until(due.unwrap_or(far).into()), if due.is_some() => {
                    warn!(resource = %config.resource_name, "the kubelet holds no ListAndWatch stream of this plugin; registering again");
                    watchdog.retried(Instant::now());
                    registered = false;
                }
                _ = seen.changed() => {
                    let s = *seen.borrow_and_update();
                    watchdog.observe(s.open && s.newest > before, Instant::now());
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_stream_that_ends_brings_a_registration_after_the_first_wait() {
        let t0 = Instant::now();
        let mut w = Watchdog::default();
        w.registered(t0);
        w.observe(true, t0);
        assert_eq!(w.due(), None, "a stream is open");
        w.observe(false, t0 + secs(40));
        assert_eq!(w.due(), Some(t0 + secs(40) + Watchdog::FIRST));
    }

    #[test]
    fn a_registration_without_a_stream_is_retried_with_a_growing_wait() {
        let t0 = Instant::now();
        let mut w = Watchdog::default();
        w.registered(t0);
        w.observe(false, t0);
        let mut now = t0;
        let mut waits = vec![];
        for _ in 0..7 {
            let due = w.due().unwrap();
            waits.push(due - now);
            now = due;
            w.retried(now);
        }
        assert_eq!(
            waits,
            [2, 4, 8, 16, 32, 60, 60].map(secs),
            "doubling from {:?} up to {:?}",
            Watchdog::FIRST,
            Watchdog::MOST
        );
    }

    #[test]
    fn a_lasting_stream_starts_the_waits_over() {
        let t0 = Instant::now();
        let mut w = Watchdog::default();
        w.registered(t0);
        w.retried(t0 + secs(2));
        w.retried(t0 + secs(6));
        // Taken: the stream stays open, then ends long after.
        w.observe(true, t0 + secs(7));
        w.observe(false, t0 + secs(100));
        assert_eq!(w.due(), Some(t0 + secs(100) + Watchdog::FIRST));
        // A stream that ends at once does not.
        let mut w = Watchdog::default();
        w.registered(t0);
        w.retried(t0 + secs(2));
        w.observe(true, t0 + secs(3));
        w.observe(false, t0 + secs(4));
        assert_eq!(w.due(), Some(t0 + secs(4) + secs(4)));
    }

    #[test]
    fn the_wait_counts_from_the_registration_while_no_stream_opened() {
        let t0 = Instant::now();
        let mut w = Watchdog::default();
        w.registered(t0);
        w.observe(false, t0 + secs(1));
        assert_eq!(w.due(), Some(t0 + Watchdog::FIRST));
    }
}
