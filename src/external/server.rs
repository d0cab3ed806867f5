//! The agent's `Registration` service, on `<dir>/agent-registration.sock`.

use std::path::{Path, PathBuf};

use dowser_handler_sdk::v0::{
    Empty, RegisterDiscoveryHandlerRequest,
    register_discovery_handler_request::EndpointType,
    registration_server::{Registration as RegistrationService, RegistrationServer},
};
use tonic::{Request, Response, Status};
use tracing::info;

use super::{REGISTRATIONS, registry::Registration};

/// The file, in the handlers' directory, that remembers registrations across restarts.
pub const REMEMBERED: &str = "dowser-registrations.json";

struct Service;

#[tonic::async_trait]
impl RegistrationService for Service {
    async fn register_discovery_handler(
        &self,
        request: Request<RegisterDiscoveryHandlerRequest>,
    ) -> Result<Response<Empty>, Status> {
        let registration = check(request.into_inner()).map_err(Status::invalid_argument)?;
        info!(
            name = %registration.name,
            endpoint = %registration.endpoint,
            shared = registration.shared,
            "discovery handler registered"
        );
        REGISTRATIONS.add(registration);
        Ok(Response::new(Empty {}))
    }
}

/// A registration as the agent keeps it, or why it is refused.
pub fn check(request: RegisterDiscoveryHandlerRequest) -> Result<Registration, String> {
    let name = request.name;
    let valid_name = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid_name {
        return Err(format!(
            "handler name {name:?} must be 1-63 letters, digits, '.', '_' or '-', starting and \
             ending with a letter or digit"
        ));
    }
    let network = match EndpointType::try_from(request.endpoint_type) {
        Ok(EndpointType::Uds) => false,
        Ok(EndpointType::Network) => true,
        Err(_) => return Err(format!("unknown endpoint type {}", request.endpoint_type)),
    };
    let endpoint = request.endpoint;
    if network {
        let url = if endpoint.contains("://") {
            endpoint.clone()
        } else {
            format!("http://{endpoint}")
        };
        match url.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => {
                return Err(format!(
                    "network endpoint {endpoint:?} is not an http(s) URL"
                ));
            }
        }
    } else if !endpoint.starts_with('/') || endpoint.len() > 107 {
        // 108 bytes is the size of sun_path, with its NUL.
        return Err(format!(
            "unix socket endpoint {endpoint:?} must be an absolute path of at most 107 bytes"
        ));
    }
    Ok(Registration {
        name,
        endpoint,
        network,
        shared: request.shared,
    })
}

/// Takes the registrations remembered in `dir` and binds the registration socket there; the
/// returned future serves it until `shutdown` completes.
pub fn listen(
    dir: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    std::fs::create_dir_all(dir)?;
    REGISTRATIONS.remember_in(&dir.join(REMEMBERED));
    let socket = socket(dir);
    let incoming = crate::deviceplugin::bind_unix(&socket)?;
    info!(socket = %socket.display(), "discovery handlers register here");
    Ok(async move {
        let served = tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(Service))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the registration service failed");
        }
        let _ = std::fs::remove_file(&socket);
    })
}

/// The registration socket in `dir`.
pub fn socket(dir: &Path) -> PathBuf {
    dir.join(dowser_handler_sdk::REGISTRATION_SOCKET)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, endpoint: &str, kind: EndpointType) -> RegisterDiscoveryHandlerRequest {
        RegisterDiscoveryHandlerRequest {
            name: name.into(),
            endpoint: endpoint.into(),
            endpoint_type: kind as i32,
            shared: true,
        }
    }

    #[test]
    fn registrations_are_checked_before_they_are_kept() {
        assert!(
            check(request(
                "debugEcho",
                "/var/lib/akri/debugEcho.sock",
                EndpointType::Uds
            ))
            .is_ok()
        );
        assert!(
            check(request(
                "onvif",
                "http://10.1.2.3:10000",
                EndpointType::Network
            ))
            .is_ok()
        );
        assert!(check(request("onvif", "10.1.2.3:10000", EndpointType::Network)).is_ok());
        let refused = [
            request("", "/a.sock", EndpointType::Uds),
            request("bad name", "/a.sock", EndpointType::Uds),
            request("echo", "relative.sock", EndpointType::Uds),
            request("echo", &format!("/{}", "x".repeat(120)), EndpointType::Uds),
            request("echo", "ftp://host/", EndpointType::Network),
            RegisterDiscoveryHandlerRequest {
                endpoint_type: 7,
                ..request("echo", "/a.sock", EndpointType::Uds)
            },
        ];
        for r in refused {
            let shown = format!("{r:?}");
            assert!(check(r).is_err(), "{shown} was accepted");
        }
    }
}
