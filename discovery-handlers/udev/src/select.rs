//! Which devices are kept, how they are grouped, what identifies them and what a broker gets.
//! No I/O here.
//!
//! Identity must survive re-enumeration (`video0` becoming `video2` after a replug) and
//! reboots: a device under a USB device is known by `VID:PID:SERIAL` (or, without a serial
//! number, by the physical port it is plugged into, `1-3.2`) and its interface number; any
//! other device by its parent's path under `/sys/devices` (a platform or PCI device, fixed
//! by the hardware). Kernel names and numbers never enter an id.

use std::collections::{BTreeMap, BTreeSet};

use dowser_discovery_api::{
    CompiledFilter, Device, DeviceSpec, Progress, Snapshot, Verdict,
    details::{UdevDetails, udev::GroupBy},
    env::printable_value,
};

use crate::sysfs::SysDevice;

/// Longest value handed to a broker.
const MAX_VALUE_BYTES: usize = 1024;

/// The filters of a Configuration, compiled once.
#[derive(Debug, Default)]
pub struct Selection {
    pub subsystems: Vec<String>,
    device_nodes: CompiledFilter,
    drivers: CompiledFilter,
    attributes: Vec<(String, CompiledFilter)>,
    parent_attributes: Vec<(String, CompiledFilter)>,
    properties: Vec<(String, CompiledFilter)>,
    group_by: GroupBy,
}

impl Selection {
    pub fn new(details: &UdevDetails) -> Result<Self, String> {
        let one = |f: &Option<dowser_discovery_api::Filter>| {
            dowser_discovery_api::compile_optional(f.as_ref()).map_err(|e| e.to_string())
        };
        let named = |list: &[dowser_discovery_api::details::udev::ValueFilter]| {
            list.iter()
                .map(|v| {
                    Ok((
                        v.name.clone(),
                        v.filter().compile().map_err(|e| e.to_string())?,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok(Self {
            subsystems: details.subsystems.clone(),
            device_nodes: one(&details.device_nodes)?,
            drivers: one(&details.drivers)?,
            attributes: named(&details.attributes)?,
            parent_attributes: named(&details.parent_attributes)?,
            properties: named(&details.properties)?,
            group_by: details.group_by,
        })
    }

    /// The attributes to read on each device.
    pub fn attribute_names(&self) -> BTreeSet<String> {
        self.attributes.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The attributes to read on each device and its parents.
    pub fn parent_attribute_names(&self) -> BTreeSet<String> {
        self.parent_attributes
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether a device passes every filter.
    pub fn keeps(&self, d: &SysDevice) -> bool {
        self.dropped_by(d).is_none()
    }

    /// Reports one look at the devices as a round: each device with a node is a target,
    /// found or left out by a filter.
    pub fn tally(&self, devices: &[SysDevice], progress: &Progress) {
        let with_node: Vec<&SysDevice> = devices.iter().filter(|d| d.devnode.is_some()).collect();
        let round = progress.round(with_node.len());
        for d in with_node {
            round.target(match self.dropped_by(d) {
                Some(field) => Verdict::Dropped(field),
                None => Verdict::Found(1),
            });
        }
    }

    /// The details' field of the first filter that leaves a device out; `None` when it
    /// passes.
    pub fn dropped_by(&self, d: &SysDevice) -> Option<&'static str> {
        let drivers: Vec<&str> = d
            .driver
            .iter()
            .chain(d.parents.iter().filter_map(|p| p.driver.as_ref()))
            .map(String::as_str)
            .collect();
        let driver_ok = if drivers.is_empty() {
            self.drivers.accepts(None)
        } else {
            drivers.iter().any(|v| self.drivers.accepts(Some(v)))
        };
        if !self.device_nodes.accepts(d.devnode.as_deref()) {
            Some("deviceNodes")
        } else if !driver_ok {
            Some("drivers")
        } else if !self
            .attributes
            .iter()
            .all(|(n, f)| f.accepts(d.attributes.get(n).map(String::as_str)))
        {
            Some("attributes")
        } else if !self
            .parent_attributes
            .iter()
            .all(|(n, f)| f.accepts(nearest_attribute(d, n)))
        {
            Some("parentAttributes")
        } else if !self
            .properties
            .iter()
            .all(|(n, f)| f.accepts(d.properties.get(n).map(String::as_str)))
        {
            Some("properties")
        } else {
            None
        }
    }

    /// The snapshot of the kept devices, grouped.
    pub fn snapshot(&self, devices: &[SysDevice]) -> Snapshot {
        let mut groups: BTreeMap<String, Vec<&SysDevice>> = BTreeMap::new();
        // Only devices with a node are something a broker can open.
        for d in devices
            .iter()
            .filter(|d| d.devnode.is_some() && self.keeps(d))
        {
            groups.entry(group_of(d)).or_default().push(d);
        }
        let mut out = Vec::new();
        for members in groups.values_mut() {
            members.sort_by_key(|a| natural(&a.sysname));
            match self.group_by {
                GroupBy::Parent => out.push(device(members, None)),
                GroupBy::Device => {
                    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
                    for m in members.iter() {
                        let n = index.entry(m.subsystem.as_str()).or_default();
                        out.push(device(&[m], Some(*n)));
                        *n += 1;
                    }
                }
            }
        }
        Snapshot::new(out)
    }
}

/// The value of an attribute on the device or its nearest parent that has it.
fn nearest_attribute<'a>(d: &'a SysDevice, name: &str) -> Option<&'a str> {
    std::iter::once(d)
        .chain(d.parents.iter())
        .find_map(|x| x.attributes.get(name))
        .map(String::as_str)
}

/// The parent a device is grouped under: the nearest parent device (a USB interface, a
/// platform device), or the device itself when it has none.
fn group_of(d: &SysDevice) -> String {
    d.parents
        .first()
        .map(|p| p.syspath.clone())
        .unwrap_or_else(|| d.syspath.clone())
}

/// A kernel name split into text and numbers, so that `video10` sorts after `video2`.
fn natural(name: &str) -> (String, u64) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (text, number) = name.split_at(name.len() - digits);
    (text.to_string(), number.parse().unwrap_or(0))
}

/// The USB device (not interface) a device hangs off, if any.
fn usb_device(d: &SysDevice) -> Option<&SysDevice> {
    d.parents.iter().find(|p| {
        p.devtype.as_deref() == Some("usb_device")
            || (p.attributes.contains_key("idVendor") && p.attributes.contains_key("idProduct"))
    })
}

/// The stable id of a group of devices (all under one parent); `index` numbers a device
/// among those of its subsystem in the group when devices are not grouped.
pub fn stable_id(first: &SysDevice, index: Option<usize>) -> String {
    let mut id = match usb_device(first) {
        Some(usb) => {
            let a = |k: &str| usb.attributes.get(k).map(String::as_str).unwrap_or("");
            let serial = a("serial").trim();
            let mut id = if serial.is_empty() {
                format!(
                    "udev://usb/{}:{}@{}",
                    a("idVendor"),
                    a("idProduct"),
                    usb.sysname
                )
            } else {
                format!("udev://usb/{}:{}:{serial}", a("idVendor"), a("idProduct"))
            };
            // The interface the device is under, by its number.
            if let Some(intf) = first
                .parents
                .iter()
                .take_while(|p| p.syspath != usb.syspath)
                .find(|p| p.attributes.contains_key("bInterfaceNumber"))
            {
                id.push_str(&format!("/if{}", intf.attributes["bInterfaceNumber"]));
            }
            id
        }
        None => {
            let parent = first.parents.first().unwrap_or(first);
            let path = parent
                .syspath
                .split_once("/devices/")
                .map(|(_, p)| p)
                .unwrap_or(&parent.syspath);
            format!("udev://{path}")
        }
    };
    id.push_str(&format!("/{}", first.subsystem));
    if let Some(n) = index {
        id.push_str(&format!("#{n}"));
    }
    id
}

/// The device of a group (its members sorted by kernel name).
fn device(members: &[&SysDevice], index: Option<usize>) -> Device {
    let first = members[0];
    let mut properties = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            properties.insert(k.to_string(), printable_value(v, MAX_VALUE_BYTES));
        }
    };
    let nodes: Vec<&str> = members
        .iter()
        .filter_map(|m| m.devnode.as_deref())
        .collect();
    put("UDEV_DEVNODE", nodes.first().copied().unwrap_or(""));
    put("UDEV_DEVNODES", &nodes.join(","));
    put(
        "UDEV_DEVPATH",
        first.syspath.strip_prefix("/sys").unwrap_or(&first.syspath),
    );
    put("UDEV_SUBSYSTEM", &first.subsystem);
    let driver = first
        .driver
        .as_deref()
        .or_else(|| first.parents.iter().find_map(|p| p.driver.as_deref()))
        .unwrap_or("");
    put("UDEV_DRIVER", driver);
    let links: Vec<&str> = members
        .iter()
        .flat_map(|m| m.links.iter().map(String::as_str))
        .collect();
    put("UDEV_LINKS", &links.join(","));
    for (k, key) in [
        ("ID_MODEL", "UDEV_MODEL"),
        ("ID_VENDOR", "UDEV_VENDOR"),
        ("ID_SERIAL", "UDEV_SERIAL"),
    ] {
        put(
            key,
            first.properties.get(k).map(String::as_str).unwrap_or(""),
        );
    }
    if let Some(usb) = usb_device(first) {
        let a = |k: &str| usb.attributes.get(k).map(String::as_str).unwrap_or("");
        put("UDEV_USB_VENDOR_ID", a("idVendor"));
        put("UDEV_USB_PRODUCT_ID", a("idProduct"));
        put("UDEV_USB_SERIAL", a("serial"));
        put("UDEV_USB_MANUFACTURER", a("manufacturer"));
        put("UDEV_USB_PRODUCT", a("product"));
        put("UDEV_USB_PORT", &usb.sysname);
    }
    let mut device_specs = BTreeSet::new();
    for m in members {
        let Some(node) = &m.devnode else { continue };
        device_specs.insert(spec(node, node));
        for link in &m.links {
            device_specs.insert(spec(link, node));
        }
    }
    Device {
        id: stable_id(first, index),
        properties,
        device_specs: device_specs.into_iter().collect(),
        mounts: Vec::new(),
    }
}

fn spec(container: &str, host: &str) -> DeviceSpec {
    DeviceSpec {
        container_path: container.to_string(),
        host_path: host.to_string(),
        permissions: "rw".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(path: &str, subsystem: &str) -> SysDevice {
        SysDevice {
            syspath: path.into(),
            subsystem: subsystem.into(),
            sysname: path.rsplit('/').next().unwrap().into(),
            ..SysDevice::default()
        }
    }

    fn attrs(mut d: SysDevice, list: &[(&str, &str)]) -> SysDevice {
        for (k, v) in list {
            d.attributes.insert(k.to_string(), v.to_string());
        }
        d
    }

    /// A camera's video node `n` on USB port `port`, serial number `serial`.
    fn camera(port: &str, n: u32, serial: &str) -> SysDevice {
        let usb_path = format!("/sys/devices/pci0000:00/0000:00:14.0/usb1/{port}");
        let mut usb = attrs(
            at(&usb_path, "usb"),
            &[
                ("idVendor", "046d"),
                ("idProduct", "0825"),
                ("serial", serial),
            ],
        );
        usb.devtype = Some("usb_device".into());
        let mut intf = attrs(
            at(&format!("{usb_path}/{port}:1.0"), "usb"),
            &[("bInterfaceNumber", "00")],
        );
        intf.devtype = Some("usb_interface".into());
        intf.driver = Some("uvcvideo".into());
        let mut d = at(
            &format!("{usb_path}/{port}:1.0/video4linux/video{n}"),
            "video4linux",
        );
        d.devnode = Some(format!("/dev/video{n}"));
        d.parents = vec![intf, usb];
        d
    }

    fn details(json: serde_json::Value) -> Selection {
        Selection::new(&serde_json::from_value(json).unwrap()).unwrap()
    }

    #[test]
    fn a_camera_is_one_device_with_both_nodes_and_keeps_its_id_when_replugged() {
        let s = details(serde_json::json!({
            "subsystems": ["video4linux"],
            "parentAttributes": [{"name": "idVendor", "include": ["046d"]}],
        }));
        let snap = s.snapshot(&[camera("1-3", 0, "A1B2"), camera("1-3", 1, "A1B2")]);
        assert_eq!(snap.len(), 1);
        let d = &snap.devices()[0];
        assert_eq!(d.id, "udev://usb/046d:0825:A1B2/if00/video4linux");
        assert_eq!(d.properties["UDEV_DEVNODES"], "/dev/video0,/dev/video1");
        assert_eq!(d.properties["UDEV_DRIVER"], "uvcvideo");
        assert_eq!(d.device_specs.len(), 2);
        // Another port, other kernel numbers: the same device.
        let again = s.snapshot(&[camera("1-4", 2, "A1B2"), camera("1-4", 3, "A1B2")]);
        assert_eq!(again.devices()[0].id, d.id);
        // Another vendor is left out.
        let other = details(serde_json::json!({
            "subsystems": ["video4linux"],
            "parentAttributes": [{"name": "idVendor", "exclude": ["046d"]}],
        }));
        assert!(other.snapshot(&[camera("1-3", 0, "A1B2")]).is_empty());
    }

    #[test]
    fn without_a_serial_number_the_usb_port_identifies_and_devices_can_stand_alone() {
        let s = details(serde_json::json!({"subsystems": ["video4linux"], "groupBy": "Device"}));
        let snap = s.snapshot(&[camera("1-3.2", 1, ""), camera("1-3.2", 0, "")]);
        let ids: Vec<&str> = snap.devices().iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "udev://usb/046d:0825@1-3.2/if00/video4linux#0",
                "udev://usb/046d:0825@1-3.2/if00/video4linux#1"
            ]
        );
        assert_eq!(snap.devices()[0].properties["UDEV_DEVNODE"], "/dev/video0");
    }

    #[test]
    fn filters_on_nodes_drivers_attributes_and_properties() {
        let mut gpio = at("/sys/devices/platform/gpio-mockup.0/gpiochip0", "gpio");
        gpio.devnode = Some("/dev/gpiochip0".into());
        gpio.parents = vec![at("/sys/devices/platform/gpio-mockup.0", "platform")];
        gpio.properties
            .insert("ID_PATH".into(), "platform-gpio-mockup.0".into());
        gpio = attrs(gpio, &[("label", "gpio-mockup-A")]);
        let keep = |j| details(j).keeps(&gpio);
        assert!(keep(
            serde_json::json!({"subsystems": ["gpio"], "deviceNodes": {"include": ["/dev/gpiochip[0-9]+"]}})
        ));
        assert!(!keep(
            serde_json::json!({"subsystems": ["gpio"], "deviceNodes": {"exclude": ["/dev/gpiochip0"]}})
        ));
        assert!(keep(
            serde_json::json!({"subsystems": ["gpio"], "attributes": [{"name": "label", "include": ["gpio-mockup-.*"]}]})
        ));
        assert!(!keep(
            serde_json::json!({"subsystems": ["gpio"], "attributes": [{"name": "missing", "include": [".*"]}]})
        ));
        assert!(keep(
            serde_json::json!({"subsystems": ["gpio"], "properties": [{"name": "ID_PATH", "include": ["platform-.*"]}]})
        ));
        assert!(!keep(
            serde_json::json!({"subsystems": ["gpio"], "drivers": {"include": ["uvcvideo"]}})
        ));
        let d = details(serde_json::json!({"subsystems": ["gpio"]})).snapshot(&[gpio.clone()]);
        assert_eq!(d.devices()[0].id, "udev://platform/gpio-mockup.0/gpio");
    }

    #[test]
    fn udev_links_reach_the_broker_as_paths_to_the_node() {
        let mut cam = camera("1-3", 0, "A1B2");
        cam.links = vec!["/dev/v4l/by-id/usb-046d_C270_A1B2-video-index0".into()];
        let snap = details(serde_json::json!({"subsystems": ["video4linux"]})).snapshot(&[cam]);
        let specs = &snap.devices()[0].device_specs;
        assert!(specs.iter().any(|s| s.container_path
            == "/dev/v4l/by-id/usb-046d_C270_A1B2-video-index0"
            && s.host_path == "/dev/video0"));
    }
}
