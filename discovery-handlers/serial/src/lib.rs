//! USB serial adapter discovery for dowser.
//!
//! The node's USB serial ports are read from sysfs (through `serialport`): vendor and
//! product id, serial number, manufacturer and product strings, the physical USB port and
//! interface. An adapter is known by `VID:PID:SERIAL`, or by the USB port it is plugged
//! into when it has no serial number, so that a re-enumeration (`ttyUSB0` → `ttyUSB1`) is
//! the same device with a new device node. Ports are listed again as soon as a uevent says
//! something was plugged or unplugged, and every second as well, since uevents do not reach
//! the handler everywhere (a container outside the host's network namespace) and the
//! kernel drops them when the socket overflows. A snapshot is yielded only when the ports
//! differ from the last one: the agent takes an event-driven snapshot as the state until
//! the next, so an unchanged node costs one sysfs listing a second and no wake-up of the
//! agent. Devices are local to their node; the device node goes to the broker container.

mod hotplug;
pub mod ports;
pub mod select;

use std::time::Duration;

use dowser_discovery_api::{
    DiscoveryError, DiscoveryHandler, Properties, Snapshot, SnapshotStream, details::SerialDetails,
};
use futures::StreamExt;
use tracing::{debug, warn};

pub use hotplug::Uevents;
pub use select::{PortFilter, UsbSerialPort};

/// The longest a plug or unplug goes unnoticed when no uevent arrives (the ports are listed
/// again; nothing is yielded unless they changed).
pub const RESCAN: Duration = Duration::from_secs(1);

/// A uevent can arrive before sysfs and /dev show its change (the kernel announces a
/// removal before it takes the device out of sysfs): ports are listed again this long after
/// the last uevent.
pub const SETTLE: Duration = Duration::from_millis(100);

/// The USB serial discovery handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct SerialHandler;

impl DiscoveryHandler for SerialHandler {
    type Details = SerialDetails;

    /// Yields a snapshot at once, then whenever the matching ports change (noticed by a
    /// uevent, or by the listing every [`RESCAN`]).
    fn discover(&self, details: SerialDetails, _properties: Properties) -> SnapshotStream {
        let filter = match PortFilter::new(&details) {
            Ok(f) => f,
            Err(e) => {
                let e = DiscoveryError::Invalid(e.to_string());
                return futures::stream::once(async move { Err(e) }).boxed();
            }
        };
        let state = Watch {
            filter,
            uevents: None,
            started: false,
            settling: false,
            last_error: None,
            last: None,
        };
        futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await;
            Some((item, state))
        })
        .boxed()
    }
}

struct Watch {
    filter: PortFilter,
    uevents: Option<Uevents>,
    started: bool,
    /// A uevent came; one more look after [`SETTLE`].
    settling: bool,
    last_error: Option<String>,
    /// The last snapshot yielded.
    last: Option<Snapshot>,
}

impl Watch {
    async fn next(&mut self) -> Result<Snapshot, DiscoveryError> {
        loop {
            if !self.started {
                self.started = true;
                self.uevents = match Uevents::open() {
                    Ok(u) => Some(u),
                    Err(e) => {
                        debug!(error = %e, "no uevents; rescanning every {RESCAN:?}");
                        None
                    }
                };
            } else {
                self.wait().await;
            }
            match tokio::task::spawn_blocking(ports::usb_serial_ports).await {
                Ok(Ok(ports)) => {
                    self.last_error = None;
                    let snapshot = select::snapshot(&ports, &self.filter);
                    if self.last.as_ref() != Some(&snapshot) {
                        self.last = Some(snapshot.clone());
                        return Ok(snapshot);
                    }
                }
                Ok(Err(e)) => {
                    // An error is reported when it starts or changes, not every second.
                    let text = e.to_string();
                    if self.last_error.as_ref() != Some(&text) {
                        self.last_error = Some(text);
                        // After an error the ports are reported again, changed or not.
                        self.last = None;
                        return Err(e);
                    }
                }
                Err(e) => return Err(DiscoveryError::Failed(format!("port scan failed: {e}"))),
            }
        }
    }

    /// Until a uevent arrives, or [`SETTLE`] after the last one, or [`RESCAN`] has passed.
    async fn wait(&mut self) {
        let pause = if self.settling { SETTLE } else { RESCAN };
        let Some(uevents) = &self.uevents else {
            tokio::time::sleep(RESCAN).await;
            return;
        };
        self.settling = tokio::select! {
            r = uevents.changed() => match r {
                Ok(()) => true,
                Err(e) => {
                    warn!(error = %e, "uevent socket failed; rescanning every {RESCAN:?}");
                    self.uevents = None;
                    false
                }
            },
            _ = tokio::time::sleep(pause) => false,
        };
    }
}
