//! The node's devices as sysfs and the udev database show them (the I/O edge; decisions are
//! in [`crate::select`]).
//!
//! A device is a directory under `/sys/devices` with a `uevent` file; the devices of a
//! subsystem are the links in `/sys/class/<subsystem>` (class devices) or
//! `/sys/bus/<subsystem>/devices` (bus devices), as libudev enumerates them. Its kernel
//! properties are its `uevent` file (`DEVNAME`, `MAJOR`, `MINOR`, `DEVTYPE`, `DRIVER`...);
//! udev's own (`ID_*`) and its links (`/dev/v4l/by-id/...`) are in the udev database,
//! `/run/udev/data/c<major>:<minor>` (`b` for block devices, `+<subsystem>:<name>` for devices
//! without a node), in lines `E:KEY=value` and `S:link` (systemd's `sd-device` format).
//! Attributes are the device directory's regular files; only those a Configuration names,
//! and those that identify a USB device, are read.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Component, Path, PathBuf},
};

use dowser_discovery_api::DiscoveryError;

/// Where sysfs is.
const SYS: &str = "/sys";
/// Where the udev database is, unless `DOWSER_UDEV_DB` says otherwise.
pub const UDEV_DB: &str = "/run/udev/data";
/// Longest attribute value read (sysfs attributes are at most a page).
const MAX_ATTRIBUTE_BYTES: u64 = 4096;
/// Most devices looked at per subsystem (a node with more is not a leaf-device node).
const MAX_DEVICES: usize = 4096;

/// The attributes read on every parent, to know a USB device.
pub const USB_ATTRIBUTES: &[&str] = &[
    "idVendor",
    "idProduct",
    "serial",
    "manufacturer",
    "product",
    "bInterfaceNumber",
];

/// A device as sysfs and the udev database show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SysDevice {
    /// `/sys/devices/...`
    pub syspath: String,
    pub subsystem: String,
    /// The kernel's name (`video0`).
    pub sysname: String,
    pub devtype: Option<String>,
    pub driver: Option<String>,
    /// `/dev/...`, when the device has a node.
    pub devnode: Option<String>,
    /// The uevent's properties, then the udev database's.
    pub properties: BTreeMap<String, String>,
    /// udev's links to the node (`/dev/v4l/by-id/...`).
    pub links: Vec<String>,
    /// The attributes asked for that the device has.
    pub attributes: BTreeMap<String, String>,
    /// Its parent devices, the nearest first.
    pub parents: Vec<SysDevice>,
}

/// Reads devices from sysfs and the udev database.
pub struct Reader {
    sys: PathBuf,
    db: PathBuf,
}

impl Default for Reader {
    fn default() -> Self {
        Self {
            sys: PathBuf::from(SYS),
            db: std::env::var_os("DOWSER_UDEV_DB")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(UDEV_DB)),
        }
    }
}

impl Reader {
    /// Every device of these subsystems, with the named attributes of the device and
    /// `parent_attributes` of each parent too.
    pub fn devices(
        &self,
        subsystems: &[String],
        attributes: &BTreeSet<String>,
        parent_attributes: &BTreeSet<String>,
    ) -> Result<Vec<SysDevice>, DiscoveryError> {
        if !self.sys.join("devices").is_dir() {
            return Err(DiscoveryError::Unavailable(format!(
                "{}/devices does not exist: udev discovery needs the node's sysfs at /sys",
                self.sys.display()
            )));
        }
        let mut own: BTreeSet<String> = attributes.clone();
        own.extend(parent_attributes.iter().cloned());
        let mut up: BTreeSet<String> = parent_attributes.clone();
        up.extend(USB_ATTRIBUTES.iter().map(|s| s.to_string()));
        let mut seen = BTreeSet::new();
        // Siblings share their parents (a camera's two nodes, its interface and USB device):
        // each parent is read once per listing.
        let mut known = BTreeMap::new();
        let mut out = Vec::new();
        for subsystem in subsystems {
            for dir in [
                self.sys.join("class").join(subsystem),
                self.sys.join("bus").join(subsystem).join("devices"),
            ] {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten().take(MAX_DEVICES) {
                    let Some(path) = resolve(&entry.path()) else {
                        continue;
                    };
                    if !seen.insert(path.clone()) {
                        continue;
                    }
                    if let Some(mut d) = self.device(&path, &own) {
                        if &d.subsystem != subsystem {
                            continue;
                        }
                        d.parents = self.parents(&path, &up, &mut known);
                        out.push(d);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.syspath.cmp(&b.syspath));
        Ok(out)
    }

    /// One device: its uevent, udev database entry and the named attributes. None when the
    /// directory is not a device (or went away while being read).
    fn device(&self, path: &Path, attributes: &BTreeSet<String>) -> Option<SysDevice> {
        let uevent = std::fs::read_to_string(path.join("uevent")).ok()?;
        let mut properties: BTreeMap<String, String> = uevent
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let subsystem = link_name(&path.join("subsystem"))
            .or_else(|| properties.get("SUBSYSTEM").cloned())
            .unwrap_or_default();
        let sysname = path.file_name()?.to_string_lossy().into_owned();
        let driver = link_name(&path.join("driver")).or_else(|| properties.get("DRIVER").cloned());
        let devnode = properties.get("DEVNAME").map(|n| {
            if n.starts_with('/') {
                n.clone()
            } else {
                format!("/dev/{n}")
            }
        });
        let mut links = Vec::new();
        let id = match (properties.get("MAJOR"), properties.get("MINOR")) {
            (Some(major), Some(minor)) => {
                let kind = if subsystem == "block" { 'b' } else { 'c' };
                format!("{kind}{major}:{minor}")
            }
            _ => format!("+{subsystem}:{sysname}"),
        };
        if let Ok(db) = std::fs::read_to_string(self.db.join(id)) {
            for line in db.lines() {
                if let Some(link) = line.strip_prefix("S:") {
                    links.push(format!("/dev/{link}"));
                } else if let Some((k, v)) = line.strip_prefix("E:").and_then(|p| p.split_once('='))
                {
                    properties.insert(k.to_string(), v.to_string());
                }
            }
        }
        links.sort();
        links.dedup();
        Some(SysDevice {
            syspath: path.display().to_string(),
            devtype: properties.get("DEVTYPE").cloned(),
            subsystem,
            sysname,
            driver,
            devnode,
            properties,
            links,
            attributes: read_attributes(path, attributes),
            parents: Vec::new(),
        })
    }

    /// The parent devices of `path`, nearest first, up to `/sys/devices`.
    fn parents(
        &self,
        path: &Path,
        attributes: &BTreeSet<String>,
        known: &mut BTreeMap<PathBuf, Option<SysDevice>>,
    ) -> Vec<SysDevice> {
        let top = self.sys.join("devices");
        let mut out = Vec::new();
        let mut at = path.parent();
        while let Some(dir) = at {
            if !dir.starts_with(&top) || dir == top {
                break;
            }
            let parent = known.entry(dir.to_path_buf()).or_insert_with(|| {
                dir.join("uevent")
                    .is_file()
                    .then(|| self.device(dir, attributes))
                    .flatten()
            });
            if let Some(d) = parent {
                out.push(d.clone());
            }
            at = dir.parent();
        }
        out
    }
}

/// The target of a sysfs link, with `..` resolved lexically (sysfs links are relative and
/// lead to real directories).
fn resolve(link: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(link).ok()?;
    let joined = if target.is_absolute() {
        target
    } else {
        link.parent()?.join(target)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Some(out)
}

/// The last component of a link's target (`subsystem` → `video4linux`).
fn link_name(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

fn read_attributes(dir: &Path, names: &BTreeSet<String>) -> BTreeMap<String, String> {
    use std::io::Read;
    let mut out = BTreeMap::new();
    for name in names {
        // A name is one file of the device's own directory.
        if name.contains('/') || name.starts_with('.') {
            continue;
        }
        let path = dir.join(name);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let mut bytes = Vec::new();
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        if file
            .take(MAX_ATTRIBUTE_BYTES)
            .read_to_end(&mut bytes)
            .is_err()
        {
            continue;
        }
        let text = String::from_utf8_lossy(&bytes);
        out.insert(name.clone(), text.trim_end().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs tree in the shapes the kernel gives: a UVC camera's two video nodes under its
    /// USB interface, with a udev database entry for the first.
    fn tree() -> (tempfile::TempDir, Reader) {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let usb = sys.join("devices/pci0000:00/0000:00:14.0/usb1/1-3");
        let intf = usb.join("1-3:1.0");
        let write = |p: PathBuf, s: &str| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        write(
            usb.join("uevent"),
            "DEVTYPE=usb_device\nDEVNAME=bus/usb/001/004\n",
        );
        write(usb.join("idVendor"), "046d\n");
        write(usb.join("serial"), "A1B2C3D4\n");
        write(
            intf.join("uevent"),
            "DEVTYPE=usb_interface\nDRIVER=uvcvideo\n",
        );
        write(intf.join("bInterfaceNumber"), "00\n");
        for (n, minor) in [("video0", 0), ("video1", 1)] {
            let d = intf.join("video4linux").join(n);
            write(
                d.join("uevent"),
                &format!("MAJOR=81\nMINOR={minor}\nDEVNAME={n}\n"),
            );
            write(d.join("name"), "HD Webcam C270\n");
            std::os::unix::fs::symlink(
                "../../../../../../../../class/video4linux",
                d.join("subsystem"),
            )
            .unwrap();
            let class = sys.join("class/video4linux");
            std::fs::create_dir_all(&class).unwrap();
            std::os::unix::fs::symlink(
                format!("../../devices/pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.0/video4linux/{n}"),
                class.join(n),
            )
            .unwrap();
        }
        let db = dir.path().join("db");
        write(
            db.join("c81:0"),
            "S:v4l/by-id/usb-046d_C270_A1B2C3D4-video-index0\nE:ID_V4L_CAPABILITIES=:capture:\n",
        );
        let reader = Reader { sys, db };
        (dir, reader)
    }

    #[test]
    fn class_devices_are_read_with_their_parents_and_udev_entry() {
        let (_dir, reader) = tree();
        let names: BTreeSet<String> = ["name".to_string()].into();
        let devices = reader
            .devices(&["video4linux".into()], &names, &BTreeSet::new())
            .unwrap();
        assert_eq!(devices.len(), 2);
        let d = &devices[0];
        assert_eq!(d.sysname, "video0");
        assert_eq!(d.subsystem, "video4linux");
        assert_eq!(d.devnode.as_deref(), Some("/dev/video0"));
        assert_eq!(d.attributes["name"], "HD Webcam C270");
        assert_eq!(d.properties["ID_V4L_CAPABILITIES"], ":capture:");
        assert_eq!(
            d.links,
            ["/dev/v4l/by-id/usb-046d_C270_A1B2C3D4-video-index0"]
        );
        assert_eq!(d.parents.len(), 2, "{:?}", d.parents);
        assert_eq!(d.parents[0].driver.as_deref(), Some("uvcvideo"));
        assert_eq!(d.parents[0].attributes["bInterfaceNumber"], "00");
        assert_eq!(d.parents[1].attributes["idVendor"], "046d");
        assert_eq!(d.parents[1].devtype.as_deref(), Some("usb_device"));
        assert!(devices[1].links.is_empty());
    }

    #[test]
    fn a_subsystem_the_node_lacks_has_no_devices() {
        let (_dir, reader) = tree();
        let none = reader
            .devices(&["gpio".into()], &BTreeSet::new(), &BTreeSet::new())
            .unwrap();
        assert!(none.is_empty());
    }
}
