//! The pure part: which adapters are kept, their stable identity and what a broker gets.

use std::collections::BTreeMap;

use dowser_discovery_api::{
    CompiledFilter, Device, DeviceSpec, Snapshot, details::SerialDetails, env::printable_value,
};

/// The longest value handed to a broker or used in an id, in bytes.
pub const MAX_VALUE_BYTES: usize = 128;

/// A USB serial port as the node enumerates it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adapter {
    /// The device node (`/dev/ttyUSB0`); it may change when the adapter is plugged in again.
    pub port_name: String,
    pub vid: u16,
    pub pid: u16,
    pub serial_number: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    /// The physical USB port, as the kernel names the USB device (`1-2`, `1-1.3`: bus,
    /// then the ports from the root hub down).
    pub usb_port: Option<String>,
    /// The USB interface of this port, for adapters with several ports.
    pub interface: Option<u8>,
}

/// The filters of a Configuration, compiled.
#[derive(Clone, Debug)]
pub struct Selection {
    vendor_ids: Vec<u16>,
    product_ids: Vec<u16>,
    serial_numbers: CompiledFilter,
    manufacturers: CompiledFilter,
    products: CompiledFilter,
    port_names: CompiledFilter,
}

fn hex_ids(ids: &[String], field: &str) -> Result<Vec<u16>, String> {
    ids.iter()
        .map(|id| {
            u16::from_str_radix(id, 16).map_err(|_| format!("{field}: {id:?} is not 4 hex digits"))
        })
        .collect()
}

impl Selection {
    pub fn new(details: &SerialDetails) -> Result<Self, String> {
        let compile = |f: &Option<dowser_discovery_api::Filter>| {
            f.as_ref()
                .map(|f| f.compile().map_err(|e| e.to_string()))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        Ok(Self {
            vendor_ids: hex_ids(&details.vendor_ids, "vendorIds")?,
            product_ids: hex_ids(&details.product_ids, "productIds")?,
            serial_numbers: compile(&details.serial_numbers)?,
            manufacturers: compile(&details.manufacturers)?,
            products: compile(&details.products)?,
            port_names: compile(&details.port_names)?,
        })
    }

    /// Whether the Configuration keeps this adapter.
    pub fn keeps(&self, a: &Adapter) -> bool {
        (self.vendor_ids.is_empty() || self.vendor_ids.contains(&a.vid))
            && (self.product_ids.is_empty() || self.product_ids.contains(&a.pid))
            && self.serial_numbers.accepts(a.serial_number.as_deref())
            && self.manufacturers.accepts(a.manufacturer.as_deref())
            && self.products.accepts(a.product.as_deref())
            && self.port_names.accepts(Some(&a.port_name))
    }

    /// The snapshot of the kept adapters.
    pub fn snapshot(&self, adapters: &[Adapter]) -> Snapshot {
        Snapshot::new(
            adapters
                .iter()
                .filter(|a| self.keeps(a))
                .map(device)
                .collect(),
        )
    }
}

fn clean(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(|v| printable_value(v, MAX_VALUE_BYTES))
        .filter(|v| !v.is_empty())
}

/// The stable identity of an adapter: `usb:VID:PID:SERIAL` when it has a serial number,
/// else `usb:VID:PID@PORT` with the physical USB port it is plugged into, so that the same
/// adapter seen again under another device node (`ttyUSB0` → `ttyUSB1`) is the same
/// device. A port of a multi-port adapter adds its interface (`#if01`). With neither a
/// serial number nor a known USB port, only the device node is left.
pub fn device_id(a: &Adapter) -> String {
    let base = match (clean(&a.serial_number), &a.usb_port) {
        (Some(sn), _) => format!("usb:{:04x}:{:04x}:{sn}", a.vid, a.pid),
        (None, Some(port)) => format!("usb:{:04x}:{:04x}@{port}", a.vid, a.pid),
        (None, None) => format!("usb:{:04x}:{:04x}@{}", a.vid, a.pid, a.port_name),
    };
    match a.interface {
        Some(n) if n != 0 => format!("{base}#if{n:02}"),
        _ => base,
    }
}

/// The device a broker gets: its properties and the device node.
pub fn device(a: &Adapter) -> Device {
    let mut properties = BTreeMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            properties.insert(k.to_string(), v);
        }
    };
    put("SERIAL_PORT", Some(a.port_name.clone()));
    put("SERIAL_VID", Some(format!("{:04x}", a.vid)));
    put("SERIAL_PID", Some(format!("{:04x}", a.pid)));
    put("SERIAL_SERIAL_NUMBER", clean(&a.serial_number));
    put("SERIAL_MANUFACTURER", clean(&a.manufacturer));
    put("SERIAL_PRODUCT", clean(&a.product));
    put("SERIAL_USB_PORT", a.usb_port.clone());
    Device {
        id: device_id(a),
        properties,
        device_specs: vec![DeviceSpec {
            container_path: a.port_name.clone(),
            host_path: a.port_name.clone(),
            permissions: "rw".to_string(),
        }],
        mounts: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ftdi() -> Adapter {
        Adapter {
            port_name: "/dev/ttyUSB0".into(),
            vid: 0x0403,
            pid: 0x6001,
            serial_number: Some("A10K5ZQ1".into()),
            manufacturer: Some("FTDI".into()),
            product: Some("FT232R USB UART".into()),
            usb_port: Some("1-2".into()),
            interface: Some(0),
        }
    }

    fn ch340() -> Adapter {
        Adapter {
            port_name: "/dev/ttyUSB1".into(),
            vid: 0x1a86,
            pid: 0x7523,
            serial_number: None,
            manufacturer: None,
            product: Some("USB Serial".into()),
            usb_port: Some("1-1.3".into()),
            interface: None,
        }
    }

    fn details(json: serde_json::Value) -> SerialDetails {
        serde_json::from_value(json).unwrap()
    }

    fn kept(json: serde_json::Value) -> Vec<String> {
        let s = Selection::new(&details(json)).unwrap();
        s.snapshot(&[ftdi(), ch340()])
            .devices()
            .iter()
            .map(|d| d.id.clone())
            .collect()
    }

    #[test]
    fn identity_is_the_serial_number_else_the_usb_port() {
        assert_eq!(device_id(&ftdi()), "usb:0403:6001:A10K5ZQ1");
        assert_eq!(device_id(&ch340()), "usb:1a86:7523@1-1.3");
        let moved = Adapter {
            port_name: "/dev/ttyUSB7".into(),
            ..ch340()
        };
        assert_eq!(device_id(&moved), device_id(&ch340()));
        let second_port = Adapter {
            interface: Some(1),
            ..ftdi()
        };
        assert_eq!(device_id(&second_port), "usb:0403:6001:A10K5ZQ1#if01");
        let nowhere = Adapter {
            usb_port: None,
            ..ch340()
        };
        assert_eq!(device_id(&nowhere), "usb:1a86:7523@/dev/ttyUSB1");
    }

    #[test]
    fn a_broker_gets_the_facts_and_the_device_node() {
        let d = device(&ftdi());
        assert_eq!(d.properties["SERIAL_PORT"], "/dev/ttyUSB0");
        assert_eq!(d.properties["SERIAL_VID"], "0403");
        assert_eq!(d.properties["SERIAL_PID"], "6001");
        assert_eq!(d.properties["SERIAL_SERIAL_NUMBER"], "A10K5ZQ1");
        assert_eq!(d.properties["SERIAL_MANUFACTURER"], "FTDI");
        assert_eq!(d.properties["SERIAL_PRODUCT"], "FT232R USB UART");
        assert_eq!(d.properties["SERIAL_USB_PORT"], "1-2");
        assert_eq!(d.device_specs[0].host_path, "/dev/ttyUSB0");
        assert_eq!(d.device_specs[0].container_path, "/dev/ttyUSB0");
        assert!(
            !device(&ch340())
                .properties
                .contains_key("SERIAL_SERIAL_NUMBER")
        );
    }

    #[test]
    fn strings_from_the_device_are_printable_and_bounded() {
        let hostile = Adapter {
            serial_number: Some(format!("AB\nC\u{7}{}", "x".repeat(1000))),
            manufacturer: Some("\u{1b}[31m".into()),
            ..ftdi()
        };
        let d = device(&hostile);
        let sn = &d.properties["SERIAL_SERIAL_NUMBER"];
        assert!(sn.starts_with("ABC") && sn.len() == MAX_VALUE_BYTES);
        assert!(d.id.len() < MAX_VALUE_BYTES + 20);
        assert_eq!(d.properties["SERIAL_MANUFACTURER"], "[31m");
        // A serial number of control characters only is no serial number.
        let blank = Adapter {
            serial_number: Some("\u{0}\u{0}".into()),
            ..ftdi()
        };
        assert_eq!(device_id(&blank), "usb:0403:6001@1-2");
    }

    #[test]
    fn filters() {
        let both = vec!["usb:0403:6001:A10K5ZQ1", "usb:1a86:7523@1-1.3"];
        assert_eq!(kept(serde_json::json!({})), both);
        assert_eq!(kept(serde_json::json!({"vendorIds": ["0403"]})), both[..1]);
        assert_eq!(kept(serde_json::json!({"productIds": ["7523"]})), both[1..]);
        assert_eq!(
            kept(serde_json::json!({"serialNumbers": {"include": ["A10.*"]}})),
            both[..1]
        );
        assert_eq!(
            kept(serde_json::json!({"serialNumbers": {"exclude": ["A10.*"]}})),
            both[1..]
        );
        assert_eq!(
            kept(serde_json::json!({"manufacturers": {"include": ["FTDI"]}})),
            both[..1]
        );
        assert_eq!(
            kept(serde_json::json!({"products": {"include": ["USB Serial"]}})),
            both[1..]
        );
        assert_eq!(
            kept(serde_json::json!({"portNames": {"include": ["/dev/ttyUSB[1-9][0-9]*"]}})),
            both[1..]
        );
        assert!(
            kept(serde_json::json!({"vendorIds": ["0403"], "productIds": ["7523"]})).is_empty()
        );
    }
}
