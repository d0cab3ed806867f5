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
mod tcp;

use dowser_discovery_api::{
    DiscoveryHandler, Properties, Snapshot, SnapshotStream, details::ModbusDetails,
};
use futures::StreamExt;

pub use identify::Identity;

/// The Modbus discovery handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct ModbusHandler;

impl DiscoveryHandler for ModbusHandler {
    type Details = ModbusDetails;

    fn discover(&self, details: ModbusDetails, _properties: Properties) -> SnapshotStream {
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

/// Scans once (Modbus TCP targets or RTU lines) and returns what answered. Unreachable,
/// silent or misbehaving devices are simply absent from the snapshot.
pub async fn scan(details: &ModbusDetails) -> Snapshot {
    scan_remembering(details, &mut crate::rtu::LineMemory::default()).await
}

/// One round that remembers, between rounds, what each serial line had (see
/// [`crate::rtu::LineMemory`]).
pub async fn scan_remembering(
    details: &ModbusDetails,
    memory: &mut crate::rtu::LineMemory,
) -> Snapshot {
    let started = std::time::Instant::now();
    let snapshot = match &details.rtu {
        Some(lines) => rtu::scan(details, lines, memory).await,
        None => tcp::scan(details).await,
    };
    snapshot.with_round(started.elapsed())
}
