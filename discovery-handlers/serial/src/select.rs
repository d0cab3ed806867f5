//! Which ports are kept, what each one is called and what a broker gets: pure rules over
//! the ports enumerated by [`crate::ports`].

use std::collections::BTreeMap;

use dowser_discovery_api::{
    CompiledFilter, Device, DeviceSpec, Progress, Snapshot, Verdict, details::SerialDetails, env,
};

/// A USB serial port as the node shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsbSerialPort {
    /// The device node (`/dev/ttyUSB0`).
    pub port_name: String,
    pub vid: u16,
    pub pid: u16,
    /// The adapter's USB serial number, when it has one.
    pub serial_number: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    /// Where the adapter is plugged in: bus and port chain as sysfs names them (`1-2.3`).
    pub location: Option<String>,
    /// The USB interface the port belongs to (multi-port adapters have one per port).
    pub interface: Option<u8>,
}

/// Why the filters of details nobody validated cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(transparent)]
    Pattern(#[from] regex::Error),
    #[error("{0:?} is not a USB id")]
    UsbId(String),
}

/// The filters of a Configuration, ready to apply.
#[derive(Clone, Debug, Default)]
pub struct PortFilter {
    vendor_ids: Vec<u16>,
    product_ids: Vec<u16>,
    serial_numbers: CompiledFilter,
    manufacturers: CompiledFilter,
    products: CompiledFilter,
    port_names: CompiledFilter,
}

impl PortFilter {
    /// Compiles the details' filters. The details must have been validated.
    pub fn new(details: &SerialDetails) -> Result<Self, FilterError> {
        let compile = |f: &Option<dowser_discovery_api::Filter>| {
            dowser_discovery_api::compile_optional(f.as_ref())
        };
        let hex = |ids: &[String]| {
            ids.iter()
                .map(|s| u16::from_str_radix(s, 16).map_err(|_| FilterError::UsbId(s.clone())))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            vendor_ids: hex(&details.vendor_ids)?,
            product_ids: hex(&details.product_ids)?,
            serial_numbers: compile(&details.serial_numbers)?,
            manufacturers: compile(&details.manufacturers)?,
            products: compile(&details.products)?,
            port_names: compile(&details.port_names)?,
        })
    }

    pub fn accepts(&self, port: &UsbSerialPort) -> bool {
        self.dropped_by(port).is_none()
    }

    /// The details' field of the first filter that leaves a port out; `None` when it
    /// passes.
    pub fn dropped_by(&self, port: &UsbSerialPort) -> Option<&'static str> {
        if !(self.vendor_ids.is_empty() || self.vendor_ids.contains(&port.vid)) {
            Some("vendorIds")
        } else if !(self.product_ids.is_empty() || self.product_ids.contains(&port.pid)) {
            Some("productIds")
        } else if !self.serial_numbers.accepts(port.serial_number.as_deref()) {
            Some("serialNumbers")
        } else if !self.manufacturers.accepts(port.manufacturer.as_deref()) {
            Some("manufacturers")
        } else if !self.products.accepts(port.product.as_deref()) {
            Some("products")
        } else if !self.port_names.accepts(Some(&port.port_name)) {
            Some("portNames")
        } else {
            None
        }
    }
}

/// The identity an adapter keeps across unplugging and re-enumeration:
/// `VID:PID:SERIAL` when it has a serial number, else `VID:PID@<bus>-<ports>`, the physical
/// USB port it is plugged into. A port on a further interface of a multi-port adapter gets
/// `:ifNN` appended.
pub fn serial_number_id(port: &UsbSerialPort) -> Option<String> {
    let serial = port.serial_number.as_deref()?;
    Some(format!(
        "{:04x}:{:04x}:{serial}{}",
        port.vid,
        port.pid,
        interface_suffix(port)
    ))
}

/// The identity by physical USB port (see [`serial_number_id`]). Without a known location
/// (which sysfs always has for USB devices) the device node stands in.
pub fn physical_id(port: &UsbSerialPort) -> String {
    let place = match &port.location {
        Some(l) => l.clone(),
        None => port
            .port_name
            .strip_prefix("/dev/")
            .unwrap_or(&port.port_name)
            .to_string(),
    };
    format!(
        "{:04x}:{:04x}@{place}{}",
        port.vid,
        port.pid,
        interface_suffix(port)
    )
}

fn interface_suffix(port: &UsbSerialPort) -> String {
    match port.interface {
        Some(i) if i > 0 => format!(":if{i:02}"),
        _ => String::new(),
    }
}

/// The devices of a set of ports: filtered, identified, with their environment and device
/// node. Adapters that share a serial number (cheap ones often carry a default such as
/// `0001`) cannot be told apart by it: each of them is identified by its physical port.
pub fn devices(ports: &[UsbSerialPort], filter: &PortFilter) -> Vec<Device> {
    let kept: Vec<&UsbSerialPort> = ports.iter().filter(|p| filter.accepts(p)).collect();
    let mut by_serial: BTreeMap<String, usize> = BTreeMap::new();
    for p in &kept {
        if let Some(id) = serial_number_id(p) {
            *by_serial.entry(id).or_default() += 1;
        }
    }
    kept.into_iter()
        .map(|p| {
            let id = match serial_number_id(p) {
                Some(id) if by_serial[&id] == 1 => id,
                _ => physical_id(p),
            };
            device(id, p)
        })
        .collect()
}

/// A snapshot of the devices of a set of ports.
pub fn snapshot(ports: &[UsbSerialPort], filter: &PortFilter) -> Snapshot {
    Snapshot::new(devices(ports, filter))
}

/// Reports one look at the ports as a round: each USB serial port is a target, found or
/// left out by a filter.
pub fn tally(ports: &[UsbSerialPort], filter: &PortFilter, progress: &Progress) {
    let round = progress.round(ports.len());
    for port in ports {
        round.target(match filter.dropped_by(port) {
            Some(field) => Verdict::Dropped(field),
            None => Verdict::Found(1),
        });
    }
}

fn device(id: String, port: &UsbSerialPort) -> Device {
    let mut properties = BTreeMap::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            properties.insert(env::prefixed("SERIAL", key), v);
        }
    };
    put("PORT", Some(port.port_name.clone()));
    put("VID", Some(format!("{:04x}", port.vid)));
    put("PID", Some(format!("{:04x}", port.pid)));
    put("SERIAL_NUMBER", port.serial_number.clone());
    put("MANUFACTURER", port.manufacturer.clone());
    put("PRODUCT", port.product.clone());
    put("USB_PATH", port.location.clone());
    put("INTERFACE", port.interface.map(|i| i.to_string()));
    Device {
        id,
        properties,
        device_specs: vec![DeviceSpec {
            container_path: port.port_name.clone(),
            host_path: port.port_name.clone(),
            permissions: "rw".to_string(),
        }],
        mounts: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use dowser_discovery_api::Filter;

    use super::*;

    fn ftdi() -> UsbSerialPort {
        UsbSerialPort {
            port_name: "/dev/ttyUSB0".into(),
            vid: 0x0403,
            pid: 0x6001,
            serial_number: Some("A10K3XYZ".into()),
            manufacturer: Some("FTDI".into()),
            product: Some("FT232R USB UART".into()),
            location: Some("1-2".into()),
            interface: Some(0),
        }
    }

    fn ch340() -> UsbSerialPort {
        UsbSerialPort {
            port_name: "/dev/ttyUSB1".into(),
            vid: 0x1a86,
            pid: 0x7523,
            serial_number: None,
            manufacturer: None,
            product: Some("USB Serial".into()),
            location: Some("1-3.1".into()),
            interface: Some(0),
        }
    }

    fn all() -> PortFilter {
        PortFilter::new(&SerialDetails::default()).unwrap()
    }

    fn ids(devices: &[Device]) -> Vec<&str> {
        devices.iter().map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn serial_number_names_an_adapter_else_its_usb_port() {
        let d = devices(&[ftdi(), ch340()], &all());
        assert_eq!(ids(&d), ["0403:6001:A10K3XYZ", "1a86:7523@1-3.1"]);
    }

    #[test]
    fn re_enumeration_keeps_the_id_and_changes_the_node() {
        let before = devices(&[ftdi(), ch340()], &all());
        let mut moved_ftdi = ftdi();
        moved_ftdi.port_name = "/dev/ttyUSB1".into();
        let mut moved_ch340 = ch340();
        moved_ch340.port_name = "/dev/ttyUSB0".into();
        let after = devices(&[moved_ftdi, moved_ch340], &all());
        assert_eq!(ids(&before), ids(&after));
        assert_eq!(after[0].properties["SERIAL_PORT"], "/dev/ttyUSB1");
        assert_eq!(after[0].device_specs[0].host_path, "/dev/ttyUSB1");
        assert_ne!(before[0], after[0]);
    }

    #[test]
    fn shared_serial_numbers_fall_back_to_the_usb_port() {
        let mut a = ftdi();
        a.serial_number = Some("0001".into());
        let mut b = a.clone();
        b.port_name = "/dev/ttyUSB1".into();
        b.location = Some("1-4".into());
        let d = devices(&[a.clone(), b], &all());
        assert_eq!(ids(&d), ["0403:6001@1-2", "0403:6001@1-4"]);
        // Alone, it is known by its serial number again.
        assert_eq!(ids(&devices(&[a], &all())), ["0403:6001:0001"]);
    }

    #[test]
    fn ports_of_a_multi_port_adapter_are_distinct() {
        let mut a = ftdi();
        a.pid = 0x6010;
        let mut b = a.clone();
        b.port_name = "/dev/ttyUSB1".into();
        b.interface = Some(1);
        let d = devices(&[a, b], &all());
        assert_eq!(ids(&d), ["0403:6010:A10K3XYZ", "0403:6010:A10K3XYZ:if01"]);
    }

    #[test]
    fn environment_has_only_what_the_adapter_tells() {
        let d = devices(&[ftdi(), ch340()], &all());
        let env: Vec<_> = d[0]
            .properties
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            env,
            [
                "SERIAL_INTERFACE=0",
                "SERIAL_MANUFACTURER=FTDI",
                "SERIAL_PID=6001",
                "SERIAL_PORT=/dev/ttyUSB0",
                "SERIAL_PRODUCT=FT232R USB UART",
                "SERIAL_SERIAL_NUMBER=A10K3XYZ",
                "SERIAL_USB_PATH=1-2",
                "SERIAL_VID=0403",
            ]
        );
        assert!(!d[1].properties.contains_key("SERIAL_SERIAL_NUMBER"));
        assert!(!d[1].properties.contains_key("SERIAL_MANUFACTURER"));
        assert_eq!(
            d[1].device_specs,
            [DeviceSpec {
                container_path: "/dev/ttyUSB1".into(),
                host_path: "/dev/ttyUSB1".into(),
                permissions: "rw".into()
            }]
        );
    }

    fn filter(f: impl FnOnce(&mut SerialDetails)) -> PortFilter {
        let mut d = SerialDetails::default();
        f(&mut d);
        PortFilter::new(&d).unwrap()
    }

    fn include(p: &str) -> Option<Filter> {
        Some(Filter {
            include: vec![p.into()],
            exclude: vec![],
        })
    }

    #[test]
    fn filters() {
        let ports = [ftdi(), ch340()];
        let kept = |f: PortFilter| {
            devices(&ports, &f)
                .into_iter()
                .map(|d| d.properties["SERIAL_VID"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kept(filter(|d| d.vendor_ids = vec!["1a86".into()])),
            ["1a86"]
        );
        assert_eq!(
            kept(filter(|d| d.product_ids = vec!["6001".into()])),
            ["0403"]
        );
        // Adapters without a serial number or manufacturer fail an include on it.
        assert_eq!(
            kept(filter(|d| d.serial_numbers = include("A1.*"))),
            ["0403"]
        );
        assert_eq!(
            kept(filter(|d| d.manufacturers = include("FTDI"))),
            ["0403"]
        );
        assert_eq!(
            kept(filter(|d| d.products = include("USB Serial"))),
            ["1a86"]
        );
        assert_eq!(
            kept(filter(|d| d.port_names = include("/dev/ttyUSB1"))),
            ["1a86"]
        );
        let exclude_ftdi = filter(|d| {
            d.manufacturers = Some(Filter {
                include: vec![],
                exclude: vec!["FTDI".into()],
            })
        });
        assert_eq!(kept(exclude_ftdi), ["1a86"]);
    }
}
