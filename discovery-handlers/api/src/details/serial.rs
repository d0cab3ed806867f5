//! `spec.discovery.serial`: USB serial adapters attached to the node.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{FieldError, Filter, validation::list_set};

/// USB serial adapters (FTDI, CP210x, CH340, CDC-ACM...) attached to the node. Each one is
/// local to its node and its device node is passed to the broker container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SerialDetails {
    /// Keeps adapters with one of these USB vendor ids (4 hex digits, lower case: `0403`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), transform = list_set, inner(regex(pattern = r"^[0-9a-f]{4}$")))]
    pub vendor_ids: Vec<String>,
    /// Keeps adapters with one of these USB product ids (4 hex digits, lower case: `6001`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), transform = list_set, inner(regex(pattern = r"^[0-9a-f]{4}$")))]
    pub product_ids: Vec<String>,
    /// Keeps adapters by USB serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_numbers: Option<Filter>,
    /// Keeps adapters by USB manufacturer string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturers: Option<Filter>,
    /// Keeps adapters by USB product string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub products: Option<Filter>,
    /// Keeps adapters by device node (`/dev/ttyUSB[0-9]+`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_names: Option<Filter>,
}

impl super::HandlerDetails for SerialDetails {
    fn shared(&self) -> bool {
        // An adapter is plugged into one node.
        false
    }
}

impl SerialDetails {
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        crate::filter::validate_all(
            path,
            &[
                ("serialNumbers", &self.serial_numbers),
                ("manufacturers", &self.manufacturers),
                ("products", &self.products),
                ("portNames", &self.port_names),
            ],
        )
    }
}
