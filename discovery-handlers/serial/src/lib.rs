//! USB-serial discovery for dowser.
//!
//! Enumerates the node's serial ports through udev (the `serialport` crate) and keeps the
//! USB ones that pass the Configuration's filters: vendor and product ids, serial number,
//! manufacturer, product and device node. An adapter is identified by `VID:PID:serial`
//! when it has a serial number, else by the physical USB port it is plugged into, so that
//! a re-enumeration (`ttyUSB0` → `ttyUSB1`) is the same device with a new device node.
//!
//! Hotplug is noticed by a cheap rescan of udev's database every [`RESCAN_EVERY`]: it
//! works wherever udev's data is readable, including containers that receive no uevents.
//! A snapshot is yielded first at once, then only when the set of devices changes.
//!
//! Brokers get the device node and `SERIAL_PORT`, `SERIAL_VID`, `SERIAL_PID`,
//! `SERIAL_SERIAL_NUMBER`, `SERIAL_MANUFACTURER`, `SERIAL_PRODUCT` and `SERIAL_USB_PORT`.

pub mod adapter;

use std::time::Duration;

use dowser_discovery_api::{
    DiscoveryError, DiscoveryHandler, FieldError, Properties, Snapshot, SnapshotStream,
    details::SerialDetails,
};
use futures::StreamExt;

pub use adapter::{Adapter, Selection};

/// How often udev's database is read again to notice adapters plugged in or pulled out.
pub const RESCAN_EVERY: Duration = Duration::from_millis(500);

/// The serial discovery handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct SerialHandler;

/// The USB serial ports of this node, as udev describes them.
pub fn enumerate() -> Result<Vec<Adapter>, DiscoveryError> {
    let ports = serialport::available_ports()
        .map_err(|e| DiscoveryError::Unavailable(format!("cannot list serial ports: {e}")))?;
    Ok(ports
        .into_iter()
        .filter_map(|p| match p.port_type {
            serialport::SerialPortType::UsbPort(usb) => Some(Adapter {
                port_name: p.port_name,
                vid: usb.vid,
                pid: usb.pid,
                serial_number: usb.serial_number,
                manufacturer: usb.manufacturer,
                product: usb.product,
                usb_port: usb.location.map(|l| {
                    let chain: Vec<String> = l.port_chain().iter().map(u8::to_string).collect();
                    format!("{}-{}", l.bus_id(), chain.join("."))
                }),
                interface: usb.interface,
            }),
            _ => None,
        })
        .collect())
}

async fn scan(selection: &Selection) -> Result<Snapshot, DiscoveryError> {
    let adapters = tokio::task::spawn_blocking(enumerate)
        .await
        .map_err(|e| DiscoveryError::Failed(format!("serial port scan: {e}")))??;
    Ok(selection.snapshot(&adapters))
}

impl DiscoveryHandler for SerialHandler {
    type Details = SerialDetails;

    fn name(&self) -> &'static str {
        "serial"
    }

    fn shared(&self, details: &SerialDetails) -> bool {
        dowser_discovery_api::details::Selected::Serial(details).shared()
    }

    fn validate(&self, details: &SerialDetails, path: &str) -> Vec<FieldError> {
        // Every valid configuration can be scanned.
        let _ = (details, path);
        Vec::new()
    }

    fn discover(&self, details: SerialDetails, _properties: Properties) -> SnapshotStream {
        let errors = details.validate("spec.discovery.serial");
        if !errors.is_empty() {
            return futures::stream::once(async move { Err(DiscoveryError::Invalid(errors)) })
                .boxed();
        }
        let selection = match Selection::new(&details) {
            Ok(s) => s,
            Err(e) => {
                return futures::stream::once(async move { Err(DiscoveryError::Failed(e)) })
                    .boxed();
            }
        };
        // The first scan is yielded at once; later ones only when they differ from the
        // last one yielded. A failed scan is reported each time it fails.
        futures::stream::unfold(
            (selection, None::<Snapshot>),
            |(selection, mut last)| async move {
                loop {
                    if last.is_some() {
                        tokio::time::sleep(RESCAN_EVERY).await;
                    }
                    match scan(&selection).await {
                        Ok(s) if last.as_ref() == Some(&s) => continue,
                        Ok(s) => {
                            last = Some(s.clone());
                            return Some((Ok(s), (selection, last)));
                        }
                        Err(e) => {
                            if last.is_none() {
                                tokio::time::sleep(RESCAN_EVERY).await;
                            }
                            return Some((Err(e), (selection, last)));
                        }
                    }
                }
            },
        )
        .boxed()
    }
}
