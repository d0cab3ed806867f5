//! Discovery handlers in their own process.
//!
//! A node's agent hosts `Registration` on a unix socket; a handler serves `DiscoveryHandler`
//! (on a unix socket or the network) and registers its name and endpoint. For each
//! Configuration that selects the handler (`spec.discovery.external.name`) the agent calls
//! `Discover` with the Configuration's details and properties, and the handler streams the full
//! list of devices it sees whenever it changes. The protocol ([`v0`]) is wire-compatible with
//! Akri's, so Akri's handlers register with dowser's agent and handlers written with this
//! crate register with Akri's.
//!
//! A handler written in Rust implements [`DiscoveryHandler`](dowser_discovery_api::DiscoveryHandler)
//! (the trait dowser's built-in handlers implement, so any of them can run this way) and
//! calls [`run`]:
//!
//! ```no_run
//! # use dowser_discovery_api::{DiscoveryHandler, Properties, Snapshot, SnapshotStream};
//! # use futures::StreamExt;
//! #[derive(serde::Deserialize)]
//! struct EchoDetails { descriptions: Vec<String> }
//!
//! struct Echo;
//!
//! impl DiscoveryHandler for Echo {
//!     type Details = EchoDetails;
//!     fn discover(&self, details: EchoDetails, _: Properties) -> SnapshotStream {
//!         let devices = details.descriptions.into_iter().map(|d| dowser_discovery_api::Device {
//!             id: d, ..Default::default()
//!         });
//!         futures::stream::iter([Ok(Snapshot::new(devices.collect()))])
//!             .chain(futures::stream::pending())
//!             .boxed()
//!     }
//! }
//!
//! # async fn main_() -> Result<(), dowser_handler_sdk::Error> {
//! let options = dowser_handler_sdk::Options::from_env("echo", false);
//! dowser_handler_sdk::run(Echo, options).await
//! # }
//! ```

mod connect;
mod serve;
pub mod wire;

/// The protocol's messages and gRPC services (package `v0`).
pub mod v0 {
    tonic::include_proto!("v0");
}

pub use connect::{connect, connect_unix};
pub use serve::{Error, Listen, Options, run};

/// The environment variable naming the directory of the agent's registration socket and of
/// handlers' sockets (Akri's name for it, so that Akri's handler images work unchanged).
pub const DIRECTORY_ENV: &str = "DISCOVERY_HANDLERS_DIRECTORY";
/// The directory when [`DIRECTORY_ENV`] is not set.
pub const DEFAULT_DIRECTORY: &str = "/var/lib/dowser/handlers";
/// The agent's registration socket in that directory.
pub const REGISTRATION_SOCKET: &str = "agent-registration.sock";
