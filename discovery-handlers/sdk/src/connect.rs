//! Channels to an agent or a handler.

use std::{path::Path, time::Duration};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::v0::register_discovery_handler_request::EndpointType;

/// How long connecting may take.
const CONNECT: Duration = Duration::from_secs(5);

/// A channel over a unix socket.
pub async fn connect_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by tonic and not used: the connector dials the socket.
    Endpoint::from_static("http://[::1]:50051")
        .connect_timeout(CONNECT)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// A channel to a registered endpoint: a unix socket path, or a URL (`http://host:port`;
/// a bare `host:port` is taken as `http://`).
pub async fn connect(
    endpoint: &str,
    kind: EndpointType,
) -> Result<Channel, tonic::transport::Error> {
    match kind {
        EndpointType::Uds => connect_unix(Path::new(endpoint)).await,
        EndpointType::Network => {
            let url = if endpoint.contains("://") {
                endpoint.to_string()
            } else {
                format!("http://{endpoint}")
            };
            Endpoint::from_shared(url)?
                .connect_timeout(CONNECT)
                .connect()
                .await
        }
    }
}
