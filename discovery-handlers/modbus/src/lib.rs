//! Modbus discovery for dowser.
//!
//! Modbus RTU: every unit id on every configured serial line, one request at a time per
//! line, identified the same way; those devices are local to the node.
//!
//! Modbus TCP: every target × port × unit id is probed with Read Device Identification
//! (function 0x2B, MEI type 0x0E, basic objects), falling back to a configured register
//! probe. Probes are bounded in time, concurrency and connection rate; a unit that misbehaves
//! costs a timeout and is simply not found.

mod identify;
pub mod rtu;
mod scan;

use dowser_discovery_api::{
    DiscoveryError, DiscoveryHandler, FieldError, Properties, SnapshotStream,
    details::ModbusDetails,
};
use futures::StreamExt;

pub use identify::Identity;
pub use scan::{scan, scan_remembering};

/// The Modbus discovery handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct ModbusHandler;

impl DiscoveryHandler for ModbusHandler {
    type Details = ModbusDetails;

    fn name(&self) -> &'static str {
        "modbus"
    }

    fn shared(&self, details: &ModbusDetails) -> bool {
        dowser_discovery_api::details::Selected::Modbus(details).shared()
    }

    fn validate(&self, details: &ModbusDetails, path: &str) -> Vec<FieldError> {
        // TCP and RTU are both built in; nothing valid is out of reach.
        let _ = (details, path);
        Vec::new()
    }

    fn discover(&self, details: ModbusDetails, _properties: Properties) -> SnapshotStream {
        let path = "spec.discovery.modbus";
        let mut errors = details.validate(path);
        errors.extend(self.validate(&details, path));
        if !errors.is_empty() {
            return futures::stream::once(async move { Err(DiscoveryError::Invalid(errors)) })
                .boxed();
        }
        let interval = std::time::Duration::from_secs(u64::from(details.interval_seconds));
        let memory = rtu::LineMemory::default();
        futures::stream::unfold(
            (details, memory, true),
            move |(details, mut memory, first)| async move {
                if !first {
                    tokio::time::sleep(interval).await;
                }
                let snapshot = scan_remembering(&details, &mut memory).await;
                Some((Ok(snapshot), (details, memory, false)))
            },
        )
        .boxed()
    }
}
