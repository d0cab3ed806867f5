//! Typed `spec.discovery` details of every handler.
//!
//! These types live here, not in the handler crates, so that the CRD always describes all
//! handlers whatever cargo features a binary was built with, and so that validation runs in
//! the controller and in `dowser discover` without any protocol code.

pub mod bacnet;
pub mod ble;
pub mod external;
pub mod mdns;
pub mod modbus;
pub mod onvif;
pub mod opcua;
pub mod serial;
pub mod udev;

use std::sync::LazyLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    FieldError,
    validation::{Rule, add_rules},
};

pub use bacnet::BacnetDetails;
pub use ble::BleDetails;
pub use external::ExternalDetails;
pub use mdns::MdnsDetails;
pub use modbus::ModbusDetails;
pub use onvif::OnvifDetails;
pub use opcua::OpcuaDetails;
pub use serial::SerialDetails;
pub use udev::UdevDetails;

/// The built-in handlers, in the order of `spec.discovery`'s fields. Everything in dowser
/// that lists handlers is made from this one table: their names, [`Discovery`] (and so the
/// CRD and its "exactly one handler" rule), [`Selected`], the agent's `--handlers` values and
/// the handlers a binary registers for its cargo features.
///
/// A row: the field's doc comment (it becomes `kubectl explain`), the field, its name as a
/// string (the same; also the cargo feature of the `dowser` package), the [`Selected`]
/// variant with the details type (which implements [`HandlerDetails`] and has a
/// `validate(&self, path)` for the rules the schema cannot express), and the handler type
/// of the handler's crate (the external handler's, `crate::external`, is the `dowser` crate's:
/// it is the agent's registration service). The table is handed to the macro `$callback`.
#[macro_export]
// The external handler lives in the `dowser` crate (it is the agent's registration service):
// its row names it from there, the one crate that registers handlers.
#[allow(clippy::crate_in_macro_def)]
macro_rules! with_handlers {
    ($callback:ident) => {
        $callback! {
            /// Modbus TCP hosts and Modbus RTU serial lines, identified with Read Device
            /// Identification (function 0x2B/0x0E) or a register probe.
            modbus "modbus" Modbus($crate::details::ModbusDetails) dowser_modbus::ModbusHandler;
            /// OPC UA servers found with FindServers and described with GetEndpoints.
            opcua "opcua" Opcua($crate::details::OpcuaDetails) dowser_opcua::OpcuaHandler;
            /// Bluetooth Low Energy devices seen advertising through BlueZ.
            ble "ble" Ble($crate::details::BleDetails) dowser_ble::BleHandler;
            /// USB serial adapters attached to the node.
            serial "serial" Serial($crate::details::SerialDetails) dowser_serial::SerialHandler;
            /// Services announced over multicast DNS (DNS-SD).
            mdns "mdns" Mdns($crate::details::MdnsDetails) dowser_mdns::MdnsHandler;
            /// Any device the kernel announces on the node, selected by subsystem, device
            /// node, sysfs attributes (its own and its parents'), udev properties and driver.
            udev "udev" Udev($crate::details::UdevDetails) dowser_udev::UdevHandler;
            /// IP cameras found with WS-Discovery and described over ONVIF.
            onvif "onvif" Onvif($crate::details::OnvifDetails) dowser_onvif::OnvifHandler;
            /// BACnet/IP building automation devices found with Who-Is and described with
            /// ReadProperty on their Device object.
            bacnet "bacnet" Bacnet($crate::details::BacnetDetails) dowser_bacnet::BacnetHandler;
            /// A handler in its own process that registered with the node's agent over the
            /// discovery protocol (wire-compatible with Akri's `v0`): Akri's handler images,
            /// `dowser handler <name>`, or a handler of your own.
            external "external" External($crate::details::ExternalDetails) crate::external::ExternalHandler;
        }
    };
}

/// What dowser asks of every handler's details, whatever the protocol.
pub trait HandlerDetails {
    /// Whether a device can be reached from several nodes (one Instance, listing every node
    /// that sees it) or only from the node it is attached to (one Instance per node).
    fn shared(&self) -> bool;
}

macro_rules! discovery_types {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident $key:literal $variant:ident($details:ty) $handler:path;
    )*) => {
        /// Names of all handlers, in the order of `spec.discovery`'s fields.
        pub const HANDLERS: &[&str] = &[$($key),*];

        // The name of a row is its field's name.
        $(const _: () = assert!(same(stringify!($field), $key));)*

        /// What to look for: exactly one handler and its details.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        #[schemars(transform = discovery_rules)]
        pub struct Discovery {
            $(
                $(#[doc = $doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$details>,
            )*
        }

        /// The one handler a [`Discovery`] selects.
        #[derive(Clone, Copy, Debug)]
        pub enum Selected<'a> {
            $($variant(&'a $details),)*
        }

        impl Selected<'_> {
            /// The handler's key in `spec.discovery`.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Selected::$variant(_) => $key,)*
                }
            }

            /// Whether the devices of this handler can be reached from several nodes.
            pub fn shared(&self) -> bool {
                match self {
                    $(Selected::$variant(d) => HandlerDetails::shared(*d),)*
                }
            }

            /// The checks the schema cannot express, with paths under `path`.
            pub fn validate(&self, path: &str) -> Vec<FieldError> {
                let path = format!("{path}.{}", self.name());
                match self {
                    $(Selected::$variant(d) => d.validate(&path),)*
                }
            }

            /// The details as the JSON of `spec.discovery.<name>`, as a registered handler
            /// takes them.
            pub fn details(&self) -> serde_json::Value {
                let value = match self {
                    $(Selected::$variant(d) => serde_json::to_value(d),)*
                };
                value.expect("details serialize to JSON")
            }
        }

        impl Discovery {
            /// The selected handler, or the error the schema reports when not exactly one is set.
            pub fn selected(&self) -> Result<Selected<'_>, FieldError> {
                let set: Vec<Selected<'_>> = [$(self.$field.as_ref().map(Selected::$variant)),*]
                    .into_iter()
                    .flatten()
                    .collect();
                match set.as_slice() {
                    [one] => Ok(*one),
                    _ => Err(FieldError::new("spec.discovery", ONE_HANDLER.message)),
                }
            }
        }
    };
}

with_handlers!(discovery_types);

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The CEL rule that exactly one handler is set, written from [`HANDLERS`].
static ONE_HANDLER: LazyLock<Rule> = LazyLock::new(|| {
    let count: Vec<String> = HANDLERS
        .iter()
        .map(|h| format!("(has(self.{h}) ? 1 : 0)"))
        .collect();
    let rule = format!("{} == 1", count.join(" + "));
    let (last, rest) = HANDLERS.split_last().expect("handlers");
    let message = format!(
        "exactly one discovery handler must be set: {} or {last}",
        rest.join(", ")
    );
    Rule::new(rule.leak(), message.leak())
});

fn discovery_rules(schema: &mut schemars::Schema) {
    add_rules(schema, &[*ONE_HANDLER]);
}

/// serde default helpers shared by the details types.
pub(crate) mod defaults {
    pub fn u32_of<const N: u32>() -> u32 {
        N
    }
}
