//! `spec.discovery.ble`: Bluetooth Low Energy advertisements seen through BlueZ.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::defaults::u32_of;
use crate::{FieldError, Filter, validation::list_set};

/// Bluetooth Low Energy devices that advertise within range of the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BleDetails {
    /// BlueZ adapter to scan with (`hci0`). Default: the first adapter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^hci[0-9]{1,3}$"))]
    pub adapter: Option<String>,
    /// Keeps devices by advertised local name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Filter>,
    /// Keeps devices by address (`AA:BB:CC:DD:EE:FF`, upper case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Filter>,
    /// Keeps devices that advertise at least one of these service UUIDs (128-bit form,
    /// lower case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        transform = list_set,
        inner(regex(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"))
    )]
    pub service_uuids: Vec<String>,
    /// Keeps devices whose manufacturer data carries one of these company identifiers
    /// (Bluetooth SIG assigned numbers, 0 to 65535).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), transform = list_set)]
    pub manufacturer_ids: Vec<u16>,
    /// Ignores devices heard weaker than this, in dBm. RSSI is used for this filter only;
    /// it never goes into an Instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -127, max = 20))]
    pub min_rssi: Option<i32>,
    /// A device counts as present while it has advertised within this many seconds.
    #[serde(default = "u32_of::<30>")]
    #[schemars(range(min = 1, max = 3600))]
    pub presence_window_seconds: u32,
}

impl super::HandlerDetails for BleDetails {
    fn shared(&self) -> bool {
        // A BLE device is heard by every node in radio range; it is not attached to one.
        true
    }
}

impl BleDetails {
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        crate::filter::validate_all(
            path,
            &[("names", &self.names), ("addresses", &self.addresses)],
        )
    }
}
