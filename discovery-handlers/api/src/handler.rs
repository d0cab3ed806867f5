//! The trait every discovery handler implements.

use std::pin::Pin;

use futures::Stream;

use serde::de::DeserializeOwned;

use crate::Snapshot;
pub use crate::properties::Properties;

/// A never-ending stream of full snapshots. Polled handlers yield one per interval, with
/// the time the round took ([`Snapshot::with_round`]); event-driven handlers yield whenever
/// the set of devices changes, without a round, and a device in their latest snapshot counts
/// as seen until a snapshot lacks it.
pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, DiscoveryError>> + Send>>;

/// Why a discovery round could not produce a snapshot. A device that misbehaves is never an
/// error of the round: it is simply not found.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The details are not what the handler takes; it will not run. Details are validated
    /// before discovery starts, so this is a handler given details nobody checked.
    #[error("invalid discovery details: {0}")]
    Invalid(String),
    /// Something the handler needs on this node is missing (an adapter, a bus, a port).
    #[error("{0}")]
    Unavailable(String),
    /// Any other failure of a round (it is retried at the next interval).
    #[error("{0}")]
    Failed(String),
}

/// A discovery handler: one protocol, no Kubernetes. Its details have been validated (the
/// schema, then their own `validate`) before `discover` is called.
pub trait DiscoveryHandler: Send + Sync + 'static {
    /// The typed `spec.discovery.<name>` of a Configuration.
    type Details: DeserializeOwned + Send + Sync + 'static;

    /// Starts discovery with the Configuration's resolved `properties` (credentials and
    /// the like: see [`Properties`]). The stream yields a full snapshot per round, forever.
    fn discover(&self, details: Self::Details, properties: Properties) -> SnapshotStream;
}

/// A handler as a registry holds it, whatever its details type: they come as the JSON of
/// `spec.discovery.<name>`. Every [`DiscoveryHandler`] is one; a handler that registers at
/// run time (out of process) implements it directly.
pub trait AnyHandler: Send + Sync + 'static {
    /// Starts discovery with the details as JSON.
    fn start(
        &self,
        details: serde_json::Value,
        properties: Properties,
    ) -> Result<SnapshotStream, DiscoveryError>;
}

impl<H: DiscoveryHandler> AnyHandler for H {
    fn start(
        &self,
        details: serde_json::Value,
        properties: Properties,
    ) -> Result<SnapshotStream, DiscoveryError> {
        let details =
            serde_json::from_value(details).map_err(|e| DiscoveryError::Invalid(e.to_string()))?;
        Ok(self.discover(details, properties))
    }
}
