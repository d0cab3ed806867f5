//! `dowser handler <name>`: a built-in handler in its own process, serving the discovery
//! protocol and registered with the node's agent, so that it runs in its own container with
//! its own privileges (`spec.discovery.external.name: <name>` selects it).

use std::{net::SocketAddr, path::PathBuf};

use dowser_discovery_api::{DiscoveryError, DiscoveryHandler, Properties, SnapshotStream};
use dowser_handler_sdk::{Listen, Options};
use futures::StreamExt;

use crate::{handlers, validate};

#[derive(clap::Args, Debug)]
pub struct HandlerArgs {
    /// The built-in handler to run.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(
        handlers::BUILT_IN.iter().copied().filter(|h| *h != "external")
    ))]
    pub handler: String,
    /// The agent's registration socket (default: `agent-registration.sock` in
    /// `$DISCOVERY_HANDLERS_DIRECTORY`, itself `/var/lib/dowser/handlers` by default).
    #[arg(long)]
    pub registration_socket: Option<PathBuf>,
    /// The name to register as, which Configurations select with
    /// `spec.discovery.external.name` (default: the handler's own).
    #[arg(long)]
    pub register_as: Option<String>,
    /// The unix socket to serve on (default: `<name>.sock` beside the registration socket).
    #[arg(long, conflicts_with = "listen")]
    pub socket: Option<PathBuf>,
    /// Serve over TCP on this address instead of a unix socket.
    #[arg(long, requires = "advertise")]
    pub listen: Option<SocketAddr>,
    /// The URL the agent reaches `--listen` by (`http://10.1.2.3:10000`).
    #[arg(long, requires = "listen")]
    pub advertise: Option<String>,
    /// Register the devices as reachable from several nodes (one Instance for all) rather
    /// than attached to this one. A Configuration's `external.shared` overrides it.
    #[arg(long)]
    pub shared: bool,
}

impl HandlerArgs {
    fn options(&self) -> Options {
        let name = self
            .register_as
            .clone()
            .unwrap_or_else(|| self.handler.clone());
        let mut options = Options::from_env(&name, self.shared);
        if let Some(socket) = &self.registration_socket {
            options.registration_socket = socket.clone();
            if let Some(dir) = socket.parent() {
                options.listen = Listen::Unix(dir.join(format!("{name}.sock")));
            }
        }
        if let Some(socket) = &self.socket {
            options.listen = Listen::Unix(socket.clone());
        }
        if let (Some(bind), Some(advertise)) = (self.listen, &self.advertise) {
            options.listen = Listen::Network {
                bind,
                advertise: advertise.clone(),
            };
        }
        options
    }
}

/// A built-in handler behind the protocol: the details it is sent are checked as a
/// Configuration's would be (schema, CEL rules, the handler's own checks) before it runs.
struct BuiltIn {
    name: String,
}

impl DiscoveryHandler for BuiltIn {
    type Details = serde_json::Value;

    fn discover(&self, details: serde_json::Value, properties: Properties) -> SnapshotStream {
        let refused =
            |why: String| futures::stream::iter([Err(DiscoveryError::Invalid(why))]).boxed();
        let document = serde_json::json!({
            "apiVersion": "dowser.dev/v1alpha1",
            "kind": "Configuration",
            "metadata": {"name": "external"},
            "spec": {"discovery": {self.name.as_str(): details}},
        });
        let config = match validate::configuration(&document) {
            Ok(config) => config,
            Err(errors) => {
                let errors: Vec<String> = errors
                    .iter()
                    .map(|e| {
                        e.to_string()
                            .replace(&format!("spec.discovery.{}", self.name), "details")
                    })
                    .collect();
                return refused(errors.join("; "));
            }
        };
        let selected = match config.spec.discovery.selected() {
            Ok(s) => s,
            Err(e) => return refused(e.to_string()),
        };
        match handlers::discover(selected, properties) {
            Ok(stream) => stream,
            Err(e) => futures::stream::iter([Err(e)]).boxed(),
        }
    }
}

pub async fn run(args: HandlerArgs) -> anyhow::Result<i32> {
    let options = args.options();
    eprintln!(
        "serving the {} handler as {:?} on {}; registering with {}",
        args.handler,
        options.name,
        match &options.listen {
            Listen::Unix(path) => path.display().to_string(),
            Listen::Network { advertise, .. } => advertise.clone(),
        },
        options.registration_socket.display()
    );
    let handler = BuiltIn {
        name: args.handler.clone(),
    };
    tokio::select! {
        served = dowser_handler_sdk::run(handler, options) => served?,
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate() => {}
    }
    Ok(0)
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
