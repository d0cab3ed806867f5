//! Typed `spec.discovery` details of every handler.
//!
//! These types live here, not in the handler crates, so that the CRD always describes all
//! handlers whatever cargo features a binary was built with, and so that validation runs in
//! the controller and in `dowser discover` without any protocol code.

pub mod ble;
pub mod mdns;
pub mod modbus;
pub mod opcua;
pub mod serial;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    FieldError,
    validation::{Rule, add_rules},
};

pub use ble::BleDetails;
pub use mdns::MdnsDetails;
pub use modbus::ModbusDetails;
pub use opcua::OpcuaDetails;
pub use serial::SerialDetails;

/// Names of all handlers, in the order of `spec.discovery`'s fields.
pub const HANDLERS: [&str; 5] = ["modbus", "opcua", "ble", "serial", "mdns"];

const DISCOVERY_RULES: &[Rule] = &[Rule::new(
    "(has(self.modbus) ? 1 : 0) + (has(self.opcua) ? 1 : 0) + (has(self.ble) ? 1 : 0) + (has(self.serial) ? 1 : 0) + (has(self.mdns) ? 1 : 0) == 1",
    "exactly one discovery handler must be set: modbus, opcua, ble, serial or mdns",
)];

fn discovery_rules(schema: &mut schemars::Schema) {
    add_rules(schema, DISCOVERY_RULES);
}

/// What to look for: exactly one handler and its details.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = discovery_rules)]
pub struct Discovery {
    /// Modbus TCP hosts and Modbus RTU serial lines, identified with Read Device
    /// Identification (function 0x2B/0x0E) or a register probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modbus: Option<ModbusDetails>,
    /// OPC UA servers found with FindServers and described with GetEndpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opcua: Option<OpcuaDetails>,
    /// Bluetooth Low Energy devices seen advertising through BlueZ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ble: Option<BleDetails>,
    /// USB serial adapters attached to the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialDetails>,
    /// Services announced over multicast DNS (DNS-SD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mdns: Option<MdnsDetails>,
}

/// The one handler a [`Discovery`] selects.
#[derive(Clone, Copy, Debug)]
pub enum Selected<'a> {
    Modbus(&'a ModbusDetails),
    Opcua(&'a OpcuaDetails),
    Ble(&'a BleDetails),
    Serial(&'a SerialDetails),
    Mdns(&'a MdnsDetails),
}

impl Selected<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Selected::Modbus(_) => "modbus",
            Selected::Opcua(_) => "opcua",
            Selected::Ble(_) => "ble",
            Selected::Serial(_) => "serial",
            Selected::Mdns(_) => "mdns",
        }
    }

    /// Whether the devices of this handler can be reached from several nodes. This is the
    /// one place that decides it for every handler.
    pub fn shared(&self) -> bool {
        match self {
            // A TCP device is reachable from every node on its network; an RTU unit hangs off
            // one node's serial line.
            Selected::Modbus(d) => d.rtu.is_none(),
            Selected::Opcua(_) | Selected::Mdns(_) => true,
            // A BLE device is heard by every node in radio range; it is not attached to one.
            Selected::Ble(_) => true,
            Selected::Serial(_) => false,
        }
    }

    /// The checks the schema cannot express, with paths under `path`.
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let path = format!("{path}.{}", self.name());
        match self {
            Selected::Modbus(d) => d.validate(&path),
            Selected::Opcua(d) => d.validate(&path),
            Selected::Ble(d) => d.validate(&path),
            Selected::Serial(d) => d.validate(&path),
            Selected::Mdns(d) => d.validate(&path),
        }
    }
}

impl Discovery {
    /// The selected handler, or the error the schema reports when not exactly one is set.
    pub fn selected(&self) -> Result<Selected<'_>, FieldError> {
        let mut set = Vec::new();
        if let Some(d) = &self.modbus {
            set.push(Selected::Modbus(d));
        }
        if let Some(d) = &self.opcua {
            set.push(Selected::Opcua(d));
        }
        if let Some(d) = &self.ble {
            set.push(Selected::Ble(d));
        }
        if let Some(d) = &self.serial {
            set.push(Selected::Serial(d));
        }
        if let Some(d) = &self.mdns {
            set.push(Selected::Mdns(d));
        }
        match set.as_slice() {
            [one] => Ok(*one),
            _ => Err(FieldError::new(
                "spec.discovery",
                DISCOVERY_RULES[0].message.to_string(),
            )),
        }
    }
}

/// serde default helpers shared by the details types.
pub(crate) mod defaults {
    pub fn u32_of<const N: u32>() -> u32 {
        N
    }
}
