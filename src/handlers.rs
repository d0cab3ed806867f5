//! The handlers built into this binary (one cargo feature each) and the one place that
//! starts discovery for a Configuration.

use dowser_discovery_api::{
    DiscoveryError, FieldError, Properties, SnapshotStream, details::Selected,
};

/// Names of the handlers compiled into this binary.
pub fn enabled() -> Vec<&'static str> {
    [
        #[cfg(feature = "modbus")]
        "modbus",
        #[cfg(feature = "opcua")]
        "opcua",
        #[cfg(feature = "mdns")]
        "mdns",
        #[cfg(feature = "serial")]
        "serial",
        #[cfg(feature = "ble")]
        "ble",
    ]
    .into_iter()
    .collect()
}

fn not_built(name: &str) -> String {
    let enabled = enabled();
    format!(
        "the {name} discovery handler is not available in this dowser binary (it has: {})",
        if enabled.is_empty() {
            "none".to_string()
        } else {
            enabled.join(", ")
        }
    )
}

/// Checks that this binary can run the selected handler, and the handler's own rules.
pub fn validate(selected: Selected<'_>, path: &str) -> Vec<FieldError> {
    match selected {
        #[cfg(feature = "modbus")]
        Selected::Modbus(d) => {
            use dowser_discovery_api::DiscoveryHandler;
            dowser_modbus::ModbusHandler.validate(d, &format!("{path}.modbus"))
        }
        #[cfg(feature = "opcua")]
        Selected::Opcua(d) => {
            use dowser_discovery_api::DiscoveryHandler;
            dowser_opcua::OpcuaHandler.validate(d, &format!("{path}.opcua"))
        }
        #[cfg(feature = "mdns")]
        Selected::Mdns(d) => {
            use dowser_discovery_api::DiscoveryHandler;
            dowser_mdns::MdnsHandler.validate(d, &format!("{path}.mdns"))
        }
        #[cfg(feature = "serial")]
        Selected::Serial(d) => {
            use dowser_discovery_api::DiscoveryHandler;
            dowser_serial::SerialHandler.validate(d, &format!("{path}.serial"))
        }
        #[cfg(feature = "ble")]
        Selected::Ble(d) => {
            use dowser_discovery_api::DiscoveryHandler;
            dowser_ble::BleHandler.validate(d, &format!("{path}.ble"))
        }
        // Reachable in builds without every handler feature.
        #[allow(unreachable_patterns)]
        other => vec![FieldError::new(
            format!("{path}.{}", other.name()),
            not_built(other.name()),
        )],
    }
}

/// Starts discovery for the selected handler.
pub fn discover(
    selected: Selected<'_>,
    properties: Properties,
) -> Result<SnapshotStream, DiscoveryError> {
    match selected {
        #[cfg(feature = "modbus")]
        Selected::Modbus(d) => {
            use dowser_discovery_api::DiscoveryHandler;
            Ok(dowser_modbus::ModbusHandler.discover(d.clone(), properties))
        }
        #[cfg(feature = "opcua")]
        Selected::Opcua(d) => {
            use dowser_discovery_api::DiscoveryHandler;
            Ok(dowser_opcua::OpcuaHandler.discover(d.clone(), properties))
        }
        #[cfg(feature = "mdns")]
        Selected::Mdns(d) => {
            use dowser_discovery_api::DiscoveryHandler;
            Ok(dowser_mdns::MdnsHandler.discover(d.clone(), properties))
        }
        #[cfg(feature = "serial")]
        Selected::Serial(d) => {
            use dowser_discovery_api::DiscoveryHandler;
            Ok(dowser_serial::SerialHandler.discover(d.clone(), properties))
        }
        #[cfg(feature = "ble")]
        Selected::Ble(d) => {
            use dowser_discovery_api::DiscoveryHandler;
            Ok(dowser_ble::BleHandler.discover(d.clone(), properties))
        }
        #[allow(unreachable_patterns)]
        other => Err(DiscoveryError::Unavailable(not_built(other.name()))),
    }
}
