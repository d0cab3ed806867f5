//! Modbus RTU: units on the node's serial lines. One scanner per line at a time (a line is a
//! shared bus); lines are scanned in parallel. Devices found are local to the node, and the
//! line's device node goes with them to the broker container.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use dowser_discovery_api::{
    Device, DeviceSpec, Progress, Snapshot,
    details::{
        ModbusDetails,
        modbus::{Parity, RtuDetails, SerialLine},
    },
    progress::{Round, Verdict},
};
use tokio_modbus::client::{Client, Context, rtu};
use tokio_serial::{DataBits, SerialPortBuilderExt, StopBits};
use tracing::{debug, warn};

use crate::identify::{IdentityFilter, UnitOutcome, add_identity, probe_unit};

/// Silence between frames: the configured one, else 3.5 character times (11 bits each),
/// and a fixed 1.75 ms above 19200 baud (Modbus over serial line 1.02, 2.5.1.1).
pub fn inter_frame_delay(rtu: &RtuDetails, baud: u32) -> Duration {
    match rtu.inter_frame_delay_ms {
        Some(ms) => Duration::from_millis(ms.into()),
        None if baud > 19200 => Duration::from_micros(1750),
        None => Duration::from_micros(3_500_000 * 11 / u64::from(baud.max(1))),
    }
}

fn open(line: &SerialLine) -> Result<Context, tokio_serial::Error> {
    let port = tokio_serial::new(&line.path, line.baud_rate)
        .parity(match line.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .data_bits(if line.data_bits == 7 {
            DataBits::Seven
        } else {
            DataBits::Eight
        })
        .stop_bits(if line.stop_bits == 2 {
            StopBits::Two
        } else {
            StopBits::One
        })
        .open_native_async()?;
    Ok(rtu::attach(port))
}

/// The device id of a unit on a line: `modbus+rtu://<port>/<unit>`, where the port is the
/// line's device node without `/dev/`.
pub fn device_id(line: &SerialLine, unit: u8) -> String {
    let port = line.path.strip_prefix("/dev/").unwrap_or(&line.path);
    format!("modbus+rtu://{port}/{unit}")
}

/// What the last scan of each line found. A broker that talks to a unit holds the line open
/// exclusively; the agent cannot scan it then, and the units last seen on it are kept rather
/// than reported gone (which would take their broker away after the grace period).
#[derive(Debug, Default)]
pub struct LineMemory {
    last: HashMap<String, Vec<Device>>,
}

enum LineScan {
    /// The devices found, and how many unit ids were tried.
    Scanned(Vec<Device>, usize),
    /// Another process holds the line open exclusively.
    Busy,
    /// The line cannot be opened (missing, no permission, bad settings).
    Unavailable,
}

/// Scans every line once, reporting each unit id tried (or not tried: a line busy, missing
/// or gone) on `progress`.
pub async fn scan(
    details: &ModbusDetails,
    rtu: &RtuDetails,
    memory: &mut LineMemory,
    progress: &Progress,
) -> Snapshot {
    let filter = IdentityFilter::new(details);
    let units = details.unit_id_list().len();
    let round = progress.round(rtu.lines.len() * units);
    let scans = rtu.lines.iter().map(|line| async {
        let scanned = scan_line(details, rtu, line, &filter, &round).await;
        let tried = match &scanned {
            LineScan::Scanned(_, tried) => *tried,
            _ => 0,
        };
        // Units of a line that could not be opened (or was lost) are silent.
        round.targets(units - tried, Verdict::Silent);
        scanned
    });
    let results = futures::future::join_all(scans).await;
    let mut devices = Vec::new();
    for (line, result) in rtu.lines.iter().zip(results) {
        match result {
            LineScan::Scanned(found, _) => {
                devices.extend(found.iter().cloned());
                memory.last.insert(line.path.clone(), found);
            }
            LineScan::Busy => {
                let kept = memory.last.get(&line.path).cloned().unwrap_or_default();
                debug!(line = %line.path, units = kept.len(), "line held by another process: keeping the units last seen on it");
                devices.extend(kept);
            }
            LineScan::Unavailable => {
                memory.last.remove(&line.path);
            }
        }
    }
    Snapshot::new(devices)
}

async fn scan_line(
    details: &ModbusDetails,
    rtu: &RtuDetails,
    line: &SerialLine,
    filter: &IdentityFilter,
    round: &Round,
) -> LineScan {
    let request_timeout = Duration::from_millis(details.request_timeout_ms.into());
    let gap = inter_frame_delay(rtu, line.baud_rate);
    let mut ctx = match open(line) {
        Ok(c) => c,
        // serialport reports EBUSY (TIOCEXCL) and a held flock as NoDevice; a missing node is
        // NotFound.
        Err(e) if e.kind == tokio_serial::ErrorKind::NoDevice => return LineScan::Busy,
        Err(e) => {
            warn!(line = %line.path, error = %e, "cannot open serial line");
            return LineScan::Unavailable;
        }
    };
    let mut devices = Vec::new();
    let mut tried = 0;
    for unit in details.unit_id_list() {
        tried += 1;
        let outcome = probe_unit(
            &mut ctx,
            unit,
            details.register_probe.as_ref(),
            request_timeout,
            async || {
                tokio::time::sleep(gap.max(request_timeout / 4)).await;
                open(line).ok()
            },
        )
        .await;
        match outcome {
            UnitOutcome::Present(identity) => {
                let identity = identity.unwrap_or_default();
                if let Some(filter) = filter.dropped_by(&identity) {
                    round.target(Verdict::Dropped(filter));
                } else {
                    let mut properties = BTreeMap::from([
                        ("MODBUS_TRANSPORT".to_string(), "rtu".to_string()),
                        ("MODBUS_SERIAL_PORT".to_string(), line.path.clone()),
                        ("MODBUS_BAUD_RATE".to_string(), line.baud_rate.to_string()),
                        (
                            "MODBUS_PARITY".to_string(),
                            format!("{:?}", line.parity).to_ascii_lowercase(),
                        ),
                        ("MODBUS_DATA_BITS".to_string(), line.data_bits.to_string()),
                        ("MODBUS_STOP_BITS".to_string(), line.stop_bits.to_string()),
                        ("MODBUS_UNIT_ID".to_string(), unit.to_string()),
                    ]);
                    add_identity(&identity, &mut properties);
                    devices.push(Device {
                        id: device_id(line, unit),
                        properties,
                        device_specs: vec![DeviceSpec {
                            container_path: line.path.clone(),
                            host_path: line.path.clone(),
                            permissions: "rw".to_string(),
                        }],
                        mounts: vec![],
                    });
                    round.target(Verdict::Found(1));
                }
            }
            // A unit id nobody answers on a serial line is silence, not an exception.
            UnitOutcome::Absent => round.target(Verdict::Found(0)),
            UnitOutcome::Broken { silent } => {
                let broken = if silent {
                    Verdict::Silent
                } else {
                    Verdict::Failed
                };
                // A late reply must not be read as the next unit's answer: close the line
                // (the port is opened exclusively) and open it again after a silence.
                let _ = ctx.disconnect().await;
                tokio::time::sleep(gap.max(request_timeout / 4)).await;
                match open(line) {
                    Ok(c) => ctx = c,
                    Err(e) => {
                        debug!(line = %line.path, error = %e, "cannot reopen serial line");
                        round.target(broken);
                        break;
                    }
                }
                round.target(broken);
            }
        }
        tokio::time::sleep(gap).await;
    }
    LineScan::Scanned(devices, tried)
}
