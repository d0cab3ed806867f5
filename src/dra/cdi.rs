//! The CDI spec a prepared claim gets: pure functions from a claim's devices to the file
//! the container runtime reads ([CDI specification] v0.6.0: `cdiVersion`, `kind`, `devices`
//! with `containerEdits` of `env`, `deviceNodes` and `mounts`).
//!
//! One file per claim, `dowser.dev-<claim uid>.json`, in the runtime's CDI directory: each
//! device of the claim is a CDI device `dowser.dev/device=<claim uid>-<device>`, so two
//! claims never share an entry and unpreparing one removes exactly its file.
//!
//! [CDI specification]: https://github.com/cncf-tags/container-device-interface/blob/main/SPEC.md

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use dowser_discovery_api::{DeviceSpec, Mount};
use serde::{Deserialize, Serialize};

use super::DRIVER;

/// The CDI version written: the first with everything used here (`hostPath` of device
/// nodes, 0.5.0) that containerd 1.7 and 2.x read.
pub const CDI_VERSION: &str = "0.6.0";
/// The CDI kind of every dowser device.
pub const KIND: &str = "dowser.dev/device";

/// What a container gets for one device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edits {
    pub env: BTreeMap<String, String>,
    pub devices: Vec<DeviceSpec>,
    pub mounts: Vec<Mount>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<CdiDevice>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CdiDevice {
    pub name: String,
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<CdiMount>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    pub host_path: String,
    pub permissions: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CdiMount {
    pub host_path: String,
    pub container_path: String,
    pub options: Vec<String>,
}

/// The file that holds a claim's CDI spec.
pub fn spec_path(dir: &Path, claim_uid: &str) -> PathBuf {
    dir.join(format!("{DRIVER}-{claim_uid}.json"))
}

/// The claim uid of one of this driver's spec files, or `None` for anyone else's file.
pub fn claim_of(file_name: &str) -> Option<&str> {
    file_name
        .strip_prefix(DRIVER)?
        .strip_prefix('-')?
        .strip_suffix(".json")
        .filter(|uid| !uid.is_empty())
}

/// The CDI device name of a claim's device.
fn cdi_name(claim_uid: &str, device: &str) -> String {
    format!("{claim_uid}-{device}")
}

/// The fully qualified CDI device id the kubelet hands the runtime.
pub fn device_id(claim_uid: &str, device: &str) -> String {
    format!("{KIND}={}", cdi_name(claim_uid, device))
}

/// The spec of a claim whose devices are `devices` (device name → what it gives).
pub fn spec(claim_uid: &str, devices: &BTreeMap<String, Edits>) -> Spec {
    Spec {
        cdi_version: CDI_VERSION.to_string(),
        kind: KIND.to_string(),
        devices: devices
            .iter()
            .map(|(name, edits)| CdiDevice {
                name: cdi_name(claim_uid, name),
                container_edits: ContainerEdits {
                    env: edits.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    device_nodes: edits
                        .devices
                        .iter()
                        .map(|d| DeviceNode {
                            path: d.container_path.clone(),
                            host_path: d.host_path.clone(),
                            permissions: d.permissions.clone(),
                        })
                        .collect(),
                    mounts: edits
                        .mounts
                        .iter()
                        .map(|m| CdiMount {
                            host_path: m.host_path.clone(),
                            container_path: m.container_path.clone(),
                            options: vec![
                                "rbind".to_string(),
                                if m.read_only { "ro" } else { "rw" }.to_string(),
                            ],
                        })
                        .collect(),
                },
            })
            .collect(),
    }
}

/// Writes a claim's spec so that a runtime never reads half of it (a temporary file renamed
/// over the old one; the runtime skips names that do not end in `.json`).
pub fn write(dir: &Path, claim_uid: &str, spec: &Spec) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = spec_path(dir, claim_uid);
    let tmp = dir.join(format!(".{DRIVER}-{claim_uid}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(spec)?)?;
    std::fs::rename(&tmp, &path)
}

/// Removes a claim's spec; a spec that is not there is removed already.
pub fn remove(dir: &Path, claim_uid: &str) -> std::io::Result<()> {
    match std::fs::remove_file(spec_path(dir, claim_uid)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The claim uids that have a spec of this driver in `dir`.
pub fn claims_with_specs(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut uids: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(claim_of).map(String::from))
        .collect();
    uids.sort();
    uids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits() -> Edits {
        Edits {
            env: [("MODBUS_HOST".to_string(), "10.0.7.3".to_string())].into(),
            devices: vec![DeviceSpec {
                container_path: "/dev/ttyUSB0".into(),
                host_path: "/dev/ttyUSB3".into(),
                permissions: "rw".into(),
            }],
            mounts: vec![Mount {
                container_path: "/run/dbus".into(),
                host_path: "/run/dbus".into(),
                read_only: true,
            }],
        }
    }

    #[test]
    fn a_claims_spec_gives_each_device_its_environment_nodes_and_mounts() {
        let uid = "0b9c7f0e-5d1a-4c3e-9f1e-2a7c9d1b4e55";
        let spec = spec(uid, &[("plc-39120988d2bc-0".to_string(), edits())].into());
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "cdiVersion": "0.6.0",
                "kind": "dowser.dev/device",
                "devices": [{
                    "name": format!("{uid}-plc-39120988d2bc-0"),
                    "containerEdits": {
                        "env": ["MODBUS_HOST=10.0.7.3"],
                        "deviceNodes": [{"path": "/dev/ttyUSB0", "hostPath": "/dev/ttyUSB3", "permissions": "rw"}],
                        "mounts": [{"hostPath": "/run/dbus", "containerPath": "/run/dbus", "options": ["rbind", "ro"]}],
                    },
                }],
            })
        );
        assert_eq!(
            device_id(uid, "plc-39120988d2bc-0"),
            format!("dowser.dev/device={uid}-plc-39120988d2bc-0")
        );
    }

    #[test]
    fn specs_are_written_whole_found_again_and_removed() {
        let dir = std::env::temp_dir().join(format!("dowser-cdi-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spec = spec("uid-1", &[("d-0".to_string(), edits())].into());
        write(&dir, "uid-1", &spec).unwrap();
        std::fs::write(dir.join("vendor.com-gpu.json"), "{}").unwrap();
        assert_eq!(claims_with_specs(&dir), ["uid-1"]);
        let read: Spec =
            serde_json::from_slice(&std::fs::read(spec_path(&dir, "uid-1")).unwrap()).unwrap();
        assert_eq!(read, spec);
        remove(&dir, "uid-1").unwrap();
        remove(&dir, "uid-1").unwrap();
        assert!(claims_with_specs(&dir).is_empty());
        assert!(
            dir.join("vendor.com-gpu.json").exists(),
            "not ours to remove"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
