//! `spec.discovery.external`: a handler outside the agent, registered over the discovery
//! protocol (wire-compatible with Akri's `v0`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::FieldError;

/// Longest `details` text passed to a handler, in bytes.
pub const MAX_DETAILS_BYTES: usize = 65_536;

/// A discovery handler that runs in its own process (a container beside the agent, or
/// anywhere the agent can reach) and registered with the node's agent under `name`. The
/// agent calls its `Discover` with `details` and the resolved properties, and treats the
/// devices it streams like any other handler's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalDetails {
    /// The name the handler registered with (`RegisterDiscoveryHandlerRequest.name`). Every
    /// endpoint registered under this name on a node is asked, and their devices merged.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
    )]
    pub name: String,
    /// Passed to the handler unchanged as `discovery_details`: the text the handler parses
    /// (YAML for Akri's handlers and dowser's own, such as `descriptions: [foo, bar]`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 65536))]
    pub details: String,
    /// Whether the devices are reachable from several nodes (one Instance each, listing every
    /// node that sees it) or attached to one node (one Instance per node). Unset: as the
    /// handler said when it registered (`shared`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
}

impl super::HandlerDetails for ExternalDetails {
    fn shared(&self) -> bool {
        // What the handler registered decides when the Configuration does not; the agent
        // asks its registrations (this is the answer without one).
        self.shared.unwrap_or(false)
    }
}

impl ExternalDetails {
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.details.len() > MAX_DETAILS_BYTES {
            errors.push(FieldError::new(
                format!("{path}.details"),
                format!("must be at most {MAX_DETAILS_BYTES} bytes"),
            ));
        }
        errors
    }
}
