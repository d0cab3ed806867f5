//! `spec.discovery.mdns`: services announced over multicast DNS (DNS-SD).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::defaults::u32_of;
use crate::{FieldError, Filter, validation::Rule, validation::add_rules};

const MDNS_RULES: &[Rule] = &[Rule::new(
    "self.txtRecords.all(r, self.txtRecords.exists_one(o, o.key == r.key))",
    "each TXT key may be filtered only once",
)
.at(".txtRecords")];

fn mdns_rules(schema: &mut schemars::Schema) {
    add_rules(schema, MDNS_RULES);
}

/// Services announced over mDNS / DNS-SD on the node's networks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = mdns_rules)]
pub struct MdnsDetails {
    /// Service types to browse, fully qualified: `_opcua-tcp._tcp.local.`,
    /// `_modbus._tcp.local.`, `_http._tcp.local.`.
    #[schemars(
        length(min = 1, max = 16),
        inner(regex(pattern = r"^_[A-Za-z0-9-]{1,15}\._(tcp|udp)\.local\.$"))
    )]
    pub service_types: Vec<String>,
    /// Keeps services by instance name (the part before the service type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_names: Option<Filter>,
    /// Keeps services whose TXT records have these keys, with values that pass the filter.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub txt_records: Vec<TxtRecordFilter>,
    /// TXT records longer than this many bytes (key and value) are left out of the broker's
    /// environment.
    #[serde(default = "u32_of::<255>")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_txt_value_bytes: u32,
    /// Network interfaces to browse on, by name (`eth0`, `enp3s0`, `lo`). Absent: every
    /// interface that is up and has an address, loopback included. On a node with a pod
    /// network, `include` the plant-facing interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Filter>,
}

/// A TXT key that must be present, and a filter on its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TxtRecordFilter {
    /// The TXT key (case-insensitive, as DNS-SD specifies).
    #[schemars(length(min = 1, max = 255))]
    pub key: String,
    /// Regular expressions matched against the whole value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub include: Vec<String>,
    /// Regular expressions that drop a service when they match the whole value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub exclude: Vec<String>,
}

impl TxtRecordFilter {
    pub fn filter(&self) -> Filter {
        Filter {
            include: self.include.clone(),
            exclude: self.exclude.clone(),
        }
    }
}

impl super::HandlerDetails for MdnsDetails {
    fn shared(&self) -> bool {
        // A service is reachable from every node on its network.
        true
    }
}

impl MdnsDetails {
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errors = crate::filter::validate_all(
            path,
            &[
                ("instanceNames", &self.instance_names),
                ("interfaces", &self.interfaces),
            ],
        );
        for (i, r) in self.txt_records.iter().enumerate() {
            errors.extend(r.filter().validate(&format!("{path}.txtRecords[{i}]")));
        }
        errors
    }
}
