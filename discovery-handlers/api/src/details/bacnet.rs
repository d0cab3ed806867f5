//! `spec.discovery.bacnet`: BACnet/IP devices found with Who-Is and read with ReadProperty.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::defaults::u32_of;
use crate::{FieldError, Filter, validation::Rule, validation::add_rules};

const BACNET_RULES: &[Rule] = &[Rule::new(
    "!has(self.instanceRange) || self.instanceRange.low <= self.instanceRange.high",
    "instanceRange.low must not be above instanceRange.high",
)
.at(".instanceRange")];

fn bacnet_rules(schema: &mut schemars::Schema) {
    add_rules(schema, BACNET_RULES);
}

/// BACnet/IP devices (building automation controllers): a global Who-Is (broadcast on the
/// node's networks, through the listed BBMDs and to the listed addresses) answered by I-Am,
/// then each device's identity read with ReadProperty on its Device object. A device is
/// reachable from every node on its network; its id is `bacnet://<device instance>`, the
/// same when its address changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = bacnet_rules)]
pub struct BacnetDetails {
    /// Broadcast addresses the Who-Is is sent to (default: `255.255.255.255`, the node's
    /// local networks). An empty list sends no broadcast.
    #[serde(default = "global_broadcast")]
    #[schemars(length(max = 32), inner(length(min = 7, max = 15)))]
    pub broadcast_addresses: Vec<String>,
    /// BBMDs that spread the Who-Is on their networks (Distribute-Broadcast-To-Network):
    /// `10.1.0.1` or `10.1.0.1:47808`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 7, max = 21)))]
    pub bbmds: Vec<String>,
    /// Devices the Who-Is is sent to directly: `10.0.7.5` or `10.0.7.5:47808`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 7, max = 21)))]
    pub addresses: Vec<String>,
    /// The UDP port dowser listens on for I-Am (broadcast answers go to the BACnet port) and
    /// the port of addresses that name none.
    #[serde(default = "u32_of::<47808>")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u32,
    /// Only devices whose instance is in this range answer (the Who-Is limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_range: Option<InstanceRange>,
    /// Keeps devices of these vendor identifiers (ASHRAE's list: 5 is Johnson Controls...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub vendor_ids: Vec<u32>,
    /// Keeps devices by the Device object's vendor-name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_names: Option<Filter>,
    /// Keeps devices by model-name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_names: Option<Filter>,
    /// Keeps devices by object-name (the device's name on the site).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_names: Option<Filter>,
    /// Keeps devices by location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<Filter>,
    /// How long I-Am answers are collected, in milliseconds.
    #[serde(default = "u32_of::<2000>")]
    #[schemars(range(min = 100, max = 30000))]
    pub window_ms: u32,
    /// How long one ReadProperty may take, in milliseconds.
    #[serde(default = "u32_of::<1000>")]
    #[schemars(range(min = 100, max = 30000))]
    pub timeout_ms: u32,
    /// How many devices are read at the same time.
    #[serde(default = "u32_of::<8>")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: u32,
    /// Seconds between two discovery rounds.
    #[serde(default = "u32_of::<60>")]
    #[schemars(range(min = 1, max = 86400))]
    pub interval_seconds: u32,
}

/// Device instances, both ends included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceRange {
    /// The lowest device instance asked for.
    #[schemars(range(max = 4194302))]
    pub low: u32,
    /// The highest device instance asked for.
    #[schemars(range(max = 4194302))]
    pub high: u32,
}

fn global_broadcast() -> Vec<String> {
    vec!["255.255.255.255".into()]
}

impl super::HandlerDetails for BacnetDetails {
    fn shared(&self) -> bool {
        // A controller is reachable from every node on its network.
        true
    }
}

impl BacnetDetails {
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errors = crate::filter::validate_all(
            path,
            &[
                ("vendorNames", &self.vendor_names),
                ("modelNames", &self.model_names),
                ("objectNames", &self.object_names),
                ("locations", &self.locations),
            ],
        );
        for (i, a) in self.broadcast_addresses.iter().enumerate() {
            if a.parse::<std::net::Ipv4Addr>().is_err() {
                errors.push(FieldError::new(
                    format!("{path}.broadcastAddresses[{i}]"),
                    format!("{a:?} is not an IPv4 address"),
                ));
            }
        }
        for (list, items) in [("bbmds", &self.bbmds), ("addresses", &self.addresses)] {
            for (i, a) in items.iter().enumerate() {
                if parse_address(a, 47808).is_none() {
                    errors.push(FieldError::new(
                        format!("{path}.{list}[{i}]"),
                        format!("{a:?} is not an IPv4 address with an optional port (10.0.7.5 or 10.0.7.5:47808)"),
                    ));
                }
            }
        }
        errors
    }
}

/// `ip` or `ip:port` as a socket address.
pub fn parse_address(text: &str, port: u16) -> Option<std::net::SocketAddrV4> {
    if let Ok(a) = text.parse::<std::net::SocketAddrV4>() {
        return Some(a);
    }
    text.parse::<std::net::Ipv4Addr>()
        .ok()
        .map(|ip| std::net::SocketAddrV4::new(ip, port))
}
