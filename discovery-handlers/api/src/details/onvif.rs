//! `spec.discovery.onvif`: IP cameras found with WS-Discovery and described over ONVIF.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::defaults::u32_of;
use crate::{FieldError, Filter, validation::Rule, validation::add_rules};

const ONVIF_RULES: &[Rule] = &[Rule::new(
    "self.multicast || (has(self.addresses) && size(self.addresses) > 0)",
    "with multicast off, list the addresses to probe",
)
.at(".addresses")];

fn onvif_rules(schema: &mut schemars::Schema) {
    add_rules(schema, ONVIF_RULES);
}

/// ONVIF cameras (NetworkVideoTransmitter) on the node's networks: found with a WS-Discovery
/// Probe (multicast, and to the listed addresses), followed by their Hello and Bye, then
/// described with GetDeviceInformation and GetCapabilities. A camera is reachable from
/// every node on its network; its id is its WS-Discovery endpoint reference, so it is the
/// same camera when its address changes. Credentials, when the cameras need them, are the
/// properties `USERNAME` and `PASSWORD` (a WS-UsernameToken with a password digest).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = onvif_rules)]
pub struct OnvifDetails {
    /// Also probed by unicast, for cameras on routed networks that multicast does not reach:
    /// IP addresses (`10.0.9.20`), optionally with a port (default 3702).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 64)))]
    pub addresses: Vec<String>,
    /// Whether to probe by multicast (239.255.255.250:3702) and listen for Hello and Bye.
    #[serde(default = "yes")]
    pub multicast: bool,
    /// Keeps cameras by their scopes (`onvif://www.onvif.org/location/line3`): a camera is
    /// kept when any of its scopes passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Filter>,
    /// Keeps cameras by the IP address of their device service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_addresses: Option<Filter>,
    /// Keeps cameras by manufacturer (GetDeviceInformation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturers: Option<Filter>,
    /// Keeps cameras by model (GetDeviceInformation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Filter>,
    /// How long probe answers are collected, in milliseconds.
    #[serde(default = "u32_of::<1500>")]
    #[schemars(range(min = 100, max = 30000))]
    pub probe_window_ms: u32,
    /// How long a camera's SOAP call may take, in milliseconds.
    #[serde(default = "u32_of::<3000>")]
    #[schemars(range(min = 100, max = 60000))]
    pub timeout_ms: u32,
    /// How many cameras are described at the same time.
    #[serde(default = "u32_of::<8>")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: u32,
    /// Seconds between two discovery rounds (a Hello starts one at once).
    #[serde(default = "u32_of::<30>")]
    #[schemars(range(min = 1, max = 86400))]
    pub interval_seconds: u32,
}

fn yes() -> bool {
    true
}

impl super::HandlerDetails for OnvifDetails {
    fn shared(&self) -> bool {
        // A camera is reachable from every node on its network.
        true
    }
}

impl OnvifDetails {
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errors = crate::filter::validate_all(
            path,
            &[
                ("scopes", &self.scopes),
                ("ipAddresses", &self.ip_addresses),
                ("manufacturers", &self.manufacturers),
                ("models", &self.models),
            ],
        );
        for (i, a) in self.addresses.iter().enumerate() {
            if parse_address(a).is_none() {
                errors.push(FieldError::new(
                    format!("{path}.addresses[{i}]"),
                    format!("{a:?} is not an IP address with an optional port (10.0.9.20 or 10.0.9.20:3702)"),
                ));
            }
        }
        errors
    }
}

/// An address of `addresses` as a socket address (port 3702 unless given).
pub fn parse_address(text: &str) -> Option<std::net::SocketAddr> {
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Some(addr);
    }
    text.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| std::net::SocketAddr::new(ip, 3702))
}
