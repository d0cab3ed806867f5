//! The trait every discovery handler implements.

use std::{collections::BTreeMap, pin::Pin};

use futures::Stream;

use crate::{FieldError, Snapshot};

/// Resolved `properties` of a Configuration (credentials and the like), by name.
pub type Properties = BTreeMap<String, String>;

/// A never-ending stream of full snapshots. Polled handlers yield one per interval;
/// event-driven handlers yield whenever the set of devices changes, and repeat the current
/// snapshot every second or so: the agent counts a device as seen when a snapshot holds it,
/// so one that is never repeated goes offline after the grace period.
pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, DiscoveryError>> + Send>>;

/// Why a discovery round could not produce a snapshot. A device that misbehaves is never an
/// error of the round: it is simply not found.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The details are not valid; the handler will not run.
    #[error("invalid discovery details: {}", display_errors(.0))]
    Invalid(Vec<FieldError>),
    /// Something the handler needs on this node is missing (an adapter, a bus, a port).
    #[error("{0}")]
    Unavailable(String),
    /// Any other failure of a round (it is retried at the next interval).
    #[error("{0}")]
    Failed(String),
}

fn display_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A discovery handler: one protocol, no Kubernetes.
pub trait DiscoveryHandler: Send + Sync + 'static {
    /// The typed `spec.discovery.<name>` of a Configuration.
    type Details: Clone + Send + Sync + 'static;

    /// The handler's key in `spec.discovery` (`modbus`, `opcua`, ...).
    fn name(&self) -> &'static str;

    /// Whether a device is reachable from several nodes (one Instance, listing every node
    /// that sees it) or only from the node it is attached to (one Instance per node).
    fn shared(&self, details: &Self::Details) -> bool;

    /// What this handler cannot do with details that are valid in themselves (a transport
    /// this build or platform lacks). The rules of the details themselves are checked by
    /// their own `validate` in [`crate::details`], shared by every binary.
    /// `path` is the field path of the details, used as the prefix of every error.
    fn validate(&self, details: &Self::Details, path: &str) -> Vec<FieldError>;

    /// Starts discovery. The stream yields a full snapshot per round, forever.
    fn discover(&self, details: Self::Details, properties: Properties) -> SnapshotStream;
}
