//! The kubelet's device-plugin API (v1beta1) and pod-resources API (v1), and the unix-socket
//! plumbing both sides of them use.

pub mod plugin;

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// Generated from `proto/deviceplugin-v1beta1.proto`.
#[allow(clippy::all, missing_docs)]
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");
}

/// Generated from `proto/podresources-v1.proto`.
#[allow(clippy::all, missing_docs)]
pub mod podresources {
    tonic::include_proto!("v1");
}

/// Protobuf over gRPC like `tonic_prost::ProstCodec`, with a 1 KiB first buffer instead of
/// 8 KiB. The agent serves one device plugin per Instance, each with a ListAndWatch stream
/// open for as long as the kubelet runs, and each stream keeps its encode buffer: with 100
/// Instances the default size alone held 0.8 MiB (heap profile). The messages are small
/// (a list of slots); a buffer grows when one is not.
#[derive(Debug, Clone)]
pub struct SmallCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// The buffer sizes of [`SmallCodec`]: 1 KiB to start with, tonic's default yield threshold.
fn small_buffers() -> tonic::codec::BufferSettings {
    tonic::codec::BufferSettings::new(1024, 32 * 1024)
}

impl<T, U> tonic::codec::Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Encoder;
    type Decoder = <tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<T, U>::raw_encoder(small_buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<T, U>::raw_decoder(small_buffers())
    }
}

/// The device-plugin API version a plugin registers with.
pub const VERSION: &str = "v1beta1";
/// Health of a device the kubelet may hand out.
pub const HEALTHY: &str = "Healthy";
/// Health of a device the kubelet must not hand out.
pub const UNHEALTHY: &str = "Unhealthy";
/// Where the kubelet serves Registration and plugins put their sockets.
pub const DEVICE_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// The kubelet's own socket in [`DEVICE_PLUGIN_DIR`].
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// The kubelet's pod-resources socket.
pub const POD_RESOURCES_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";

/// Identifies one binding of the kubelet's socket: inode, change time (s, ns).
pub type KubeletSocket = (u64, i64, i64);

/// How often [`kubelet_restarts`] looks at the kubelet's socket.
pub const KUBELET_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Which kubelet is serving in `dir`: the inode and change time of its `kubelet.sock`
/// (`None` while there is none; a new socket may reuse the inode number of the old one). A
/// restarting kubelet deletes every socket in the directory and binds a new `kubelet.sock`,
/// so a change tells every plugin to check its socket and register again.
/// One task looks once every [`KUBELET_CHECK`] for all plugins, so that an idle node with
/// many plugins is not woken once a second per plugin. The task ends when every receiver is
/// gone.
pub fn kubelet_restarts(dir: &Path) -> tokio::sync::watch::Receiver<Option<KubeletSocket>> {
    use std::os::unix::fs::MetadataExt;
    let socket = dir.join(KUBELET_SOCKET);
    let binding = move || {
        std::fs::metadata(&socket)
            .ok()
            .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
    };
    let (tx, rx) = tokio::sync::watch::channel(binding());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(KUBELET_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => return,
            }
            tx.send_if_modified(|seen| {
                let now = binding();
                let changed = *seen != now;
                *seen = now;
                changed
            });
        }
    });
    rx
}

/// A gRPC channel to a unix socket (the URI is a placeholder that gRPC requires).
pub async fn connect_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::from_static("http://[::1]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// Binds a unix socket for a gRPC server, replacing a stale socket file.
pub fn bind_unix(path: &Path) -> std::io::Result<tokio_stream::wrappers::UnixListenerStream> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    Ok(tokio_stream::wrappers::UnixListenerStream::new(listener))
}
