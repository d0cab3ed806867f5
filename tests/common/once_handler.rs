//! A handler served from the test that registers once and never again (as a handler that
//! does not watch for the agent's restarts): it streams the ids in `devices` whenever they
//! change.
use std::{path::Path, pin::Pin};

use dowser_handler_sdk::v0::{
    self, DiscoverRequest, DiscoverResponse,
    discovery_handler_server::{DiscoveryHandler, DiscoveryHandlerServer},
};
use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

pub struct Handler(watch::Receiver<Vec<String>>);

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoverResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DiscoveryHandler for Handler {
    type DiscoverStream = Responses;

    async fn discover(&self, _: Request<DiscoverRequest>) -> Result<Response<Responses>, Status> {
        // Each camera has a device node and a host directory for its broker.
        let stream = tokio_stream::wrappers::WatchStream::new(self.0.clone()).map(|ids| {
            Ok(DiscoverResponse {
                devices: ids
                    .into_iter()
                    .map(|id| v0::Device {
                        properties: [("CAMERA".to_string(), id.clone())].into(),
                        device_specs: vec![v0::DeviceSpec {
                            container_path: "/dev/video0".into(),
                            host_path: format!("/dev/{id}"),
                            permissions: "rw".into(),
                        }],
                        mounts: vec![v0::Mount {
                            container_path: "/calibration".into(),
                            host_path: format!("/var/lib/cams/{id}"),
                            read_only: true,
                        }],
                        id,
                    })
                    .collect(),
            })
        });
        Ok(Response::new(stream.boxed()))
    }
}

/// Serves on `<dir>/<name>.sock` and registers once with the agent there.
pub async fn serve(dir: &Path, name: &str, devices: watch::Receiver<Vec<String>>) {
    let socket = dir.join(format!("{name}.sock"));
    let agent = dir.join("agent-registration.sock");
    let registered = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while !agent.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        registered.is_ok(),
        "the agent never hosted {}",
        agent.display()
    );
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(
        tokio::net::UnixListener::bind(&socket).unwrap(),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DiscoveryHandlerServer::new(Handler(devices)))
            .serve_with_incoming(incoming),
    );
    let channel = dowser_handler_sdk::connect_unix(&agent).await.unwrap();
    v0::registration_client::RegistrationClient::new(channel)
        .register_discovery_handler(v0::RegisterDiscoveryHandlerRequest {
            name: name.into(),
            endpoint: socket.display().to_string(),
            endpoint_type: 0,
            shared: false,
        })
        .await
        .unwrap();
}
