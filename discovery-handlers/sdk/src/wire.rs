//! Between dowser's [`Device`]s and the protocol's messages, and the limits an agent puts on
//! what a handler sends: a handler is another program, so nothing it sends is trusted.

use std::collections::{BTreeMap, HashMap};

use dowser_discovery_api::{Device, DeviceSpec, Mount, Properties, env};

use crate::v0;

/// What an agent accepts from one handler endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest message, in bytes (the gRPC decoder refuses anything larger).
    pub message_bytes: usize,
    /// Most devices in one response; the rest are dropped and reported.
    pub devices: usize,
    /// Longest device id, in bytes.
    pub id_bytes: usize,
    /// Most properties of one device.
    pub properties: usize,
    /// Longest property value, in bytes.
    pub value_bytes: usize,
    /// Most mounts plus device specs of one device.
    pub paths: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            message_bytes: 4 * 1024 * 1024,
            devices: 4096,
            id_bytes: 1024,
            properties: 64,
            value_bytes: 4096,
            paths: 32,
        }
    }
}

/// A response made into devices, with what was refused and why.
#[derive(Debug, Default)]
pub struct Accepted {
    pub devices: Vec<Device>,
    /// What a user should know about the response (devices refused, properties renamed).
    pub problems: Vec<String>,
}

/// Makes a handler's response into devices, refusing what breaks `limits` or cannot be a
/// device: an empty or overlong id, more properties or paths than allowed, a relative path,
/// permissions other than `r`, `w`, `m`. A property name that is not an environment variable
/// name is made one (`serial-number` → `SERIAL_NUMBER`), as brokers get them as variables.
pub fn accept(response: v0::DiscoverResponse, limits: &Limits) -> Accepted {
    let mut accepted = Accepted::default();
    let total = response.devices.len();
    if total > limits.devices {
        accepted.problems.push(format!(
            "sent {total} devices in one response; only the first {} are kept",
            limits.devices
        ));
    }
    let mut refused: Vec<String> = Vec::new();
    let mut renamed = 0usize;
    for device in response.devices.into_iter().take(limits.devices) {
        match device_from_wire(device, limits) {
            Ok((device, n)) => {
                renamed += n;
                accepted.devices.push(device);
            }
            Err(why) => refused.push(why),
        }
    }
    if let Some(first) = refused.first() {
        accepted.problems.push(format!(
            "{} device(s) refused, the first because {first}",
            refused.len()
        ));
    }
    if renamed > 0 {
        accepted.problems.push(format!(
            "{renamed} property name(s) were not environment variable names and were made ones"
        ));
    }
    accepted
}

fn device_from_wire(device: v0::Device, limits: &Limits) -> Result<(Device, usize), String> {
    if device.id.is_empty() {
        return Err("its id is empty".into());
    }
    let shown = shorten(&device.id);
    if device.id.len() > limits.id_bytes {
        return Err(format!(
            "its id {shown:?} is longer than {} bytes",
            limits.id_bytes
        ));
    }
    if device.properties.len() > limits.properties {
        return Err(format!(
            "device {shown:?} has {} properties (at most {})",
            device.properties.len(),
            limits.properties
        ));
    }
    if device.mounts.len() + device.device_specs.len() > limits.paths {
        return Err(format!(
            "device {shown:?} has more than {} mounts and device specs",
            limits.paths
        ));
    }
    let mut properties = BTreeMap::new();
    let mut renamed = 0;
    for (key, value) in device.properties {
        if value.len() > limits.value_bytes {
            return Err(format!(
                "property {key:?} of device {shown:?} is longer than {} bytes",
                limits.value_bytes
            ));
        }
        let name = if env::is_valid(&key) {
            key
        } else {
            renamed += 1;
            env::sanitize(&key)
        };
        properties.insert(name, value);
    }
    let mut device_specs = Vec::new();
    for spec in device.device_specs {
        check_path(&spec.host_path, &shown)?;
        check_path(&spec.container_path, &shown)?;
        let permissions = if spec.permissions.is_empty() {
            // The device plugin API's default.
            "rwm".to_string()
        } else {
            spec.permissions
        };
        if !permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(format!(
                "device {shown:?} asks for permissions {permissions:?} (any of r, w, m)"
            ));
        }
        device_specs.push(DeviceSpec {
            container_path: spec.container_path,
            host_path: spec.host_path,
            permissions,
        });
    }
    let mut mounts = Vec::new();
    for mount in device.mounts {
        check_path(&mount.host_path, &shown)?;
        check_path(&mount.container_path, &shown)?;
        mounts.push(Mount {
            container_path: mount.container_path,
            host_path: mount.host_path,
            read_only: mount.read_only,
        });
    }
    device_specs.sort();
    mounts.sort();
    Ok((
        Device {
            id: device.id,
            properties,
            device_specs,
            mounts,
        },
        renamed,
    ))
}

fn check_path(path: &str, device: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.split('/').any(|part| part == "..") || path.contains('\0') {
        return Err(format!(
            "device {device:?} names the path {:?} (absolute, without `..`)",
            shorten(path)
        ));
    }
    Ok(())
}

/// At most 80 characters of a string a handler sent, for messages.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

/// A device as the protocol sends it.
pub fn device_to_wire(device: &Device) -> v0::Device {
    v0::Device {
        id: device.id.clone(),
        properties: device
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        mounts: device
            .mounts
            .iter()
            .map(|m| v0::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                read_only: m.read_only,
            })
            .collect(),
        device_specs: device
            .device_specs
            .iter()
            .map(|d| v0::DeviceSpec {
                container_path: d.container_path.clone(),
                host_path: d.host_path.clone(),
                permissions: d.permissions.clone(),
            })
            .collect(),
    }
}

/// The properties as a request carries them.
pub fn properties_to_wire(properties: &Properties) -> HashMap<String, v0::ByteData> {
    properties
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                v0::ByteData {
                    vec: Some(v.as_bytes().to_vec()),
                },
            )
        })
        .collect()
}

/// The properties of a request. Values are text to dowser's handlers; bytes that are not
/// UTF-8 are replaced (U+FFFD), and a property without bytes is empty.
pub fn properties_from_wire(wire: HashMap<String, v0::ByteData>) -> Properties {
    wire.into_iter()
        .map(|(k, v)| {
            let value = String::from_utf8_lossy(&v.vec.unwrap_or_default()).into_owned();
            (k, value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(id: &str) -> v0::Device {
        v0::Device {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_device_goes_over_the_wire_and_back_unchanged() {
        let device = Device {
            id: "cam-1".into(),
            properties: [(
                "ONVIF_DEVICE_SERVICE_URL".to_string(),
                "http://x".to_string(),
            )]
            .into(),
            device_specs: vec![DeviceSpec {
                container_path: "/dev/video0".into(),
                host_path: "/dev/video0".into(),
                permissions: "rw".into(),
            }],
            mounts: vec![Mount {
                container_path: "/data".into(),
                host_path: "/var/lib/cam".into(),
                read_only: true,
            }],
        };
        let response = v0::DiscoverResponse {
            devices: vec![device_to_wire(&device)],
        };
        let accepted = accept(response, &Limits::default());
        assert_eq!(accepted.devices, [device]);
        assert!(accepted.problems.is_empty());
    }

    #[test]
    fn what_breaks_the_limits_is_refused_and_said() {
        let limits = Limits {
            devices: 3,
            ..Limits::default()
        };
        let mut bad_path = wire("b");
        bad_path.mounts.push(v0::Mount {
            container_path: "/x".into(),
            host_path: "../../etc".into(),
            read_only: false,
        });
        let mut renamed = wire("c");
        renamed
            .properties
            .insert("serial-number".into(), "42".into());
        let response = v0::DiscoverResponse {
            devices: vec![wire(""), bad_path, renamed, wire("d"), wire("e")],
        };
        let accepted = accept(response, &limits);
        let ids: Vec<&str> = accepted.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["c"]);
        assert_eq!(accepted.devices[0].properties["SERIAL_NUMBER"], "42");
        assert_eq!(
            accepted.problems,
            [
                "sent 5 devices in one response; only the first 3 are kept",
                "2 device(s) refused, the first because its id is empty",
                "1 property name(s) were not environment variable names and were made ones",
            ]
        );
    }

    #[test]
    fn permissions_default_as_in_the_device_plugin_api_and_others_are_refused() {
        let mut d = wire("tty");
        d.device_specs.push(v0::DeviceSpec {
            container_path: "/dev/ttyUSB0".into(),
            host_path: "/dev/ttyUSB0".into(),
            permissions: String::new(),
        });
        let accepted = accept(
            v0::DiscoverResponse {
                devices: vec![d.clone()],
            },
            &Limits::default(),
        );
        assert_eq!(accepted.devices[0].device_specs[0].permissions, "rwm");
        d.device_specs[0].permissions = "rwx".into();
        let refused = accept(
            v0::DiscoverResponse { devices: vec![d] },
            &Limits::default(),
        );
        assert!(refused.devices.is_empty());
        assert!(
            refused.problems[0].contains("permissions \"rwx\""),
            "{:?}",
            refused.problems
        );
    }

    #[test]
    fn properties_travel_as_bytes() {
        let properties: Properties = [("USERNAME", "op"), ("PASSWORD", "pw")]
            .into_iter()
            .collect();
        let back = properties_from_wire(properties_to_wire(&properties));
        assert_eq!(back.get("USERNAME"), Some("op"));
        let mut wire = HashMap::new();
        wire.insert("EMPTY".to_string(), v0::ByteData { vec: None });
        assert_eq!(properties_from_wire(wire).get("EMPTY"), Some(""));
    }
}
