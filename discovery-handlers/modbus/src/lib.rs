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
    DiscoveryHandler, Progress, Properties, Snapshot, SnapshotStream, details::ModbusDetails,
};
use futures::StreamExt;

pub use identify::Identity;

/// The Modbus discovery handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct ModbusHandler;

impl DiscoveryHandler for ModbusHandler {
    type Details = ModbusDetails;

    fn discover(&self, details: ModbusDetails, properties: Properties) -> SnapshotStream {
        let interval = std::time::Duration::from_secs(u64::from(details.interval_seconds));
        let memory = rtu::LineMemory::default();
        let progress = properties.progress().clone();
        futures::stream::unfold(
            (details, memory, true),
            move |(details, mut memory, first)| {
                let progress = progress.clone();
                async move {
                    if !first {
                        tokio::time::sleep(interval).await;
                    }
                    let snapshot = round(&details, &mut memory, &progress).await;
                    Some((Ok(snapshot), (details, memory, false)))
                }
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
    round(details, memory, &Progress::disabled()).await
}

/// One round, reporting on `progress` as targets (TCP endpoints, or units of RTU lines) are
/// tried.
async fn round(
    details: &ModbusDetails,
    memory: &mut crate::rtu::LineMemory,
    progress: &Progress,
) -> Snapshot {
    let started = std::time::Instant::now();
    let snapshot = match &details.rtu {
        Some(lines) => rtu::scan(details, lines, memory, progress).await,
        None => tcp::scan(details, progress).await,
    };
    snapshot.with_round(started.elapsed())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dowser_discovery_api::details::modbus::{RtuDetails, SerialLine};
    use dowser_sim::modbus::{ListenerConfig, UnitConfig, serve};

    use super::*;

    #[tokio::test]
    async fn a_tcp_sweep_reports_every_target_tried_and_the_devices_found() {
        let plc = serve(&ListenerConfig::device(
            "127.0.0.1:0".parse().unwrap(),
            vec![
                UnitConfig::identified(1, "Acme", "PLC-100", "1.2"),
                UnitConfig::identified(2, "Acme", "IO-8", "0.9"),
            ],
        ))
        .await
        .unwrap()
        .remove(0);
        // 40 loopback addresses where nothing listens on the PLC's port, and the PLC.
        let details = ModbusDetails {
            targets: vec!["127.0.1.1-127.0.1.40".into(), plc.addr.to_string()],
            ports: vec![plc.addr.port()],
            unit_ids: vec!["1-2".into()],
            max_connections_per_second: 50,
            ..ModbusDetails::default()
        };
        let progress = Progress::enabled();
        let mut stream =
            ModbusHandler.discover(details, Properties::new().with_progress(progress.clone()));
        let round = stream.next();
        tokio::pin!(round);
        let mut midway = Vec::new();
        let snapshot = loop {
            tokio::select! {
                s = &mut round => break s.unwrap().unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    midway.extend(progress.state());
                }
            }
        };
        assert_eq!(snapshot.len(), 2);
        let done = progress.state().unwrap();
        assert_eq!(
            (
                done.round,
                done.total,
                done.tried,
                done.found,
                done.finished
            ),
            // 40 silent endpoints, and the PLC's two unit ids.
            (1, 42, 42, 2, true)
        );
        assert_eq!((done.answered, done.silent()), (2, 40));
        // At 50 connections per second the sweep takes most of a second: it was seen going.
        assert!(
            midway
                .iter()
                .any(|s| !s.finished && s.total == 42 && s.tried > 0 && s.tried < 42),
            "{midway:?}"
        );
        assert!(midway.windows(2).all(|w| w[0].tried <= w[1].tried));
    }

    #[tokio::test]
    async fn units_of_a_line_that_cannot_be_opened_count_as_tried() {
        let details = ModbusDetails {
            rtu: Some(RtuDetails {
                lines: vec![SerialLine {
                    path: "/dev/dowser-no-such-line".into(),
                    baud_rate: 19200,
                    parity: Default::default(),
                    data_bits: 8,
                    stop_bits: 1,
                }],
                inter_frame_delay_ms: None,
            }),
            unit_ids: vec!["1-4".into(), "9".into()],
            ..ModbusDetails::default()
        };
        let progress = Progress::enabled();
        let snapshot = round(&details, &mut rtu::LineMemory::default(), &progress).await;
        assert!(snapshot.is_empty());
        let s = progress.state().unwrap();
        assert_eq!((s.total, s.tried, s.found, s.finished), (5, 5, 0, true));
    }
}
