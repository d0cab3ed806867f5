//! Discovery handlers outside the agent: the registration service they register with, the
//! registrations remembered across restarts, and the `external` handler that asks them
//! (`spec.discovery.external`). The protocol is wire-compatible with Akri's `v0`
//! ([`dowser_handler_sdk::v0`]).

mod discover;
mod registry;
mod server;

use std::sync::LazyLock;

use dowser_discovery_api::{
    DiscoveryHandler, Properties, SnapshotStream, details::ExternalDetails,
};
use dowser_handler_sdk::{v0::DiscoverRequest, wire};
use futures::StreamExt;

pub use registry::{Registration, Registrations};
pub use server::{REMEMBERED, check, listen, socket};

/// The handlers registered with this process.
pub static REGISTRATIONS: LazyLock<Registrations> = LazyLock::new(Registrations::default);

/// Snapshots waiting for the worker.
const QUEUED: usize = 4;

/// `spec.discovery.external`: asks every endpoint registered under the details' name.
pub struct ExternalHandler;

impl DiscoveryHandler for ExternalHandler {
    type Details = ExternalDetails;

    fn discover(&self, details: ExternalDetails, properties: Properties) -> SnapshotStream {
        let request = DiscoverRequest {
            discovery_details: details.details,
            discovery_properties: wire::properties_to_wire(&properties),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUED);
        tokio::spawn(discover::run(
            details.name,
            request,
            tx,
            wire::Limits::default(),
        ));
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}

/// Whether the devices of the external handler `details` selects are shared: as the
/// Configuration says, else as the handler registered; `None` until one has registered.
pub fn shared(details: &ExternalDetails) -> Option<bool> {
    details
        .shared
        .or_else(|| REGISTRATIONS.shared(&details.name))
}

/// Waits until [`shared`] knows.
pub async fn registered_sharing(details: &ExternalDetails) -> bool {
    let mut registrations = REGISTRATIONS.subscribe();
    loop {
        if let Some(shared) = shared(details) {
            return shared;
        }
        if registrations.changed().await.is_err() {
            return false;
        }
    }
}
