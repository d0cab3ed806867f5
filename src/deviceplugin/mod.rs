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
