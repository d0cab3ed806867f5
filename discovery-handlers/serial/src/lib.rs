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

pub mod ports;
pub mod select;

use std::sync::Arc;

use dowser_discovery_api::{
    DiscoveryError, DiscoveryHandler, Properties, SnapshotStream, details::SerialDetails,
};
use futures::StreamExt;

pub use dowser_udev::{RESCAN, SETTLE, Uevents};
pub use select::{PortFilter, UsbSerialPort};

/// The USB serial discovery handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct SerialHandler;

impl DiscoveryHandler for SerialHandler {
    type Details = SerialDetails;

    /// Yields a snapshot at once, then whenever the matching ports change (noticed by a
    /// uevent, or by the listing every [`RESCAN`]).
    fn discover(&self, details: SerialDetails, properties: Properties) -> SnapshotStream {
        let filter = match PortFilter::new(&details) {
            Ok(f) => f,
            Err(e) => {
                let e = DiscoveryError::Invalid(e.to_string());
                return futures::stream::once(async move { Err(e) }).boxed();
            }
        };
        let progress = properties.progress().clone();
        dowser_udev::watch(Arc::new(move || {
            ports::usb_serial_ports().map(|ports| {
                select::tally(&ports, &filter, &progress);
                select::snapshot(&ports, &filter)
            })
        }))
    }
}
