//! The node's USB serial ports, read from sysfs by `serialport` (no udev database needed,
//! so a container with the host's `/sys` and `/dev` sees them).

use std::path::Path;

use dowser_discovery_api::DiscoveryError;

use crate::select::UsbSerialPort;

const SYS_CLASS: &str = "/sys/class";

/// Every USB serial port of the node. Serial ports on other buses (on-board UARTs, PCI
/// cards, Bluetooth RFCOMM) are left out.
pub fn usb_serial_ports() -> Result<Vec<UsbSerialPort>, DiscoveryError> {
    if !Path::new(SYS_CLASS).is_dir() {
        return Err(DiscoveryError::Unavailable(format!(
            "{SYS_CLASS} does not exist: USB serial discovery needs the node's sysfs at /sys"
        )));
    }
    // No tty class at all means no serial ports (serialport would panic on it).
    if !Path::new(SYS_CLASS).join("tty").is_dir() {
        return Ok(Vec::new());
    }
    let ports = serialport::available_ports()
        .map_err(|e| DiscoveryError::Failed(format!("cannot list serial ports: {e}")))?;
    Ok(ports
        .into_iter()
        .filter_map(|p| match p.port_type {
            serialport::SerialPortType::UsbPort(usb) => Some(UsbSerialPort {
                port_name: p.port_name,
                vid: usb.vid,
                pid: usb.pid,
                serial_number: usb.serial_number.filter(|s| !s.trim().is_empty()),
                manufacturer: usb.manufacturer.filter(|s| !s.trim().is_empty()),
                product: usb.product.filter(|s| !s.trim().is_empty()),
                location: usb.location.map(|l| l.to_string()),
                interface: usb.interface,
            }),
            _ => None,
        })
        .collect())
}
