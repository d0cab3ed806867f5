//! What a device becomes in the cluster: the Instance the agent writes, its resources and
//! the broker's environment. Pure functions: the agent builds every Instance here, and
//! `dowser discover` prints the same.

use std::collections::BTreeMap;

use dowser_discovery_api::{
    Device, DeviceSpec, Mount,
    env::{sanitize, with_hash},
};
use kube::{ResourceExt, api::ObjectMeta};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    crd::{CONFIGURATION_LABEL, Configuration, Instance, InstanceSpec},
    naming,
};

/// A device as the Instance it becomes.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceInstance {
    pub name: String,
    pub device_id: String,
    /// The Instance hash that suffixes its environment variables.
    pub hash: String,
    /// The Instance's extended resource and the Configuration's ([`naming`]).
    pub resources: Vec<String>,
    /// Environment variables a broker of this device gets.
    pub env: BTreeMap<String, String>,
    pub instance: Instance,
    /// The devices a node that sees it publishes for it in DRA mode (ResourceSlice
    /// `spec.devices` entries); filled only where they are shown (`dowser discover`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_slice_devices: Vec<k8s_openapi::api::resource::v1::Device>,
}

/// The name and hash of a device's Instance, computed once per device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceId {
    pub name: String,
    /// The hash over the device id (and node, and the Configuration's name when it is
    /// changed in the Instance's name), which ends the name and suffixes the broker's
    /// environment variables.
    pub hash: String,
}

impl InstanceId {
    /// The Instance of a device of `config`. `node` names the node for devices that are not
    /// shared (their Instance is per node).
    pub fn new(config: &Configuration, shared: bool, node: &str, device_id: &str) -> Self {
        let config = config.name_any();
        let hash = naming::instance_hash(&config, device_id, (!shared).then_some(node));
        let name = naming::instance_name_with_hash(&config, &hash);
        Self { name, hash }
    }
}

/// The Instance a device of `config` becomes, named `id`: what the agent applies.
pub fn instance(
    config: &Configuration,
    shared: bool,
    id: &InstanceId,
    device: &Device,
) -> Instance {
    let config_name = config.name_any();
    Instance {
        metadata: ObjectMeta {
            name: Some(id.name.clone()),
            namespace: config.metadata.namespace.clone(),
            labels: Some(
                [(
                    CONFIGURATION_LABEL.to_string(),
                    naming::configuration_label(&config_name),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: InstanceSpec {
            configuration_name: config_name,
            device_id: device.id.clone(),
            shared,
            capacity: config.spec.capacity,
            properties: device.properties.clone(),
            devices: device.device_specs.clone(),
            mounts: device.mounts.clone(),
        },
        status: None,
    }
}

/// Everything a device of `config` becomes, as `dowser discover` shows it. `node` names the
/// node for devices that are not shared.
pub fn instance_for(
    config: &Configuration,
    shared: bool,
    node: &str,
    device: &Device,
) -> DeviceInstance {
    let id = InstanceId::new(config, shared, node, &device.id);
    let config_name = config.name_any();
    let namespace = config.namespace().unwrap_or_else(|| "default".to_string());
    DeviceInstance {
        resources: vec![
            naming::instance_resource(&namespace, &id.name),
            naming::configuration_resource(&namespace, &config_name),
        ],
        env: broker_env(&device.properties, &config.spec.broker_properties, &id.hash),
        device_id: device.id.clone(),
        instance: instance(config, shared, &id, device),
        hash: id.hash,
        name: id.name,
        resource_slice_devices: Vec::new(),
    }
}

/// The environment a broker gets for one device: the device's properties and the
/// Configuration's `brokerProperties` (device properties win on a clash), each both plain
/// and suffixed with the Instance hash.
pub fn broker_env(
    device_properties: &BTreeMap<String, String>,
    broker_properties: &BTreeMap<String, String>,
    hash: &str,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (k, v) in broker_properties.iter().chain(device_properties) {
        let name = sanitize(k);
        env.insert(with_hash(&name, hash), v.clone());
        env.insert(name, v.clone());
    }
    env
}

/// The environment a broker of the Instance `name` gets ([`broker_env`] with the hash that
/// ends the Instance's name): what a device plugin's `Allocate` answers and what a DRA
/// claim's CDI spec holds.
pub fn instance_env(
    name: &str,
    device: &InstanceSpec,
    broker_properties: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let hash = name.rsplit('-').next().unwrap_or_default();
    broker_env(&device.properties, broker_properties, hash)
}

/// Everything that decides what `Allocate` hands a broker for one device, but the values
/// of the resolved properties, which only the agent knows: they are stood for by their
/// version on the broker's node ([`crate::crd::NodeDiscoveryStatus::properties_version`]).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Given<'a> {
    device_properties: &'a BTreeMap<String, String>,
    devices: &'a [DeviceSpec],
    mounts: &'a [Mount],
    broker_properties: &'a BTreeMap<String, String>,
    properties_version: Option<&'a str>,
}

/// A short hash of what a broker is given for one device: its environment ([`broker_env`]
/// of the device's properties and the Configuration's `brokerProperties`), its device nodes
/// and mounts, and `properties_version`, the version of the Configuration's resolved
/// properties on the broker's node (`None` where it does not count).
///
/// The kubelet keeps a container's `Allocate` answer for all its restarts, so a broker sees
/// a change of these only in a new pod: the controller stamps each broker with this hash
/// and replaces the broker when it changes.
pub fn given_hash(
    device: &InstanceSpec,
    broker_properties: &BTreeMap<String, String>,
    properties_version: Option<&str>,
) -> String {
    let given = Given {
        device_properties: &device.properties,
        devices: &device.devices,
        mounts: &device.mounts,
        broker_properties,
        properties_version,
    };
    short_hash(&given)
}

/// Twelve hex digits of the SHA-256 of `value`'s JSON: a version to compare, not a secret.
pub fn short_hash<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    Sha256::digest(json)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_suffixed_and_device_wins() {
        let device = [("MODBUS_HOST".to_string(), "10.0.0.1".to_string())].into();
        let broker = [
            ("MODBUS_HOST".to_string(), "ignored".to_string()),
            ("LOG_LEVEL".to_string(), "debug".to_string()),
        ]
        .into();
        let env = broker_env(&device, &broker, "abc123");
        assert_eq!(env["MODBUS_HOST"], "10.0.0.1");
        assert_eq!(env["MODBUS_HOST_ABC123"], "10.0.0.1");
        assert_eq!(env["LOG_LEVEL"], "debug");
        assert_eq!(env["LOG_LEVEL_ABC123"], "debug");
        assert_eq!(env.len(), 4);
    }

    fn spec(properties: &[(&str, &str)]) -> InstanceSpec {
        InstanceSpec {
            configuration_name: "plc".into(),
            device_id: "modbus+tcp://10.0.0.1:502/1".into(),
            shared: true,
            capacity: 1,
            properties: properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            devices: vec![],
            mounts: vec![],
        }
    }

    #[test]
    fn what_a_broker_is_given_changes_its_hash_and_nothing_else_does() {
        let device = spec(&[("MODBUS_VENDOR_NAME", "Acme")]);
        let broker: BTreeMap<String, String> = [("POLL_MS".into(), "250".into())].into();
        let base = given_hash(&device, &broker, Some("v1"));
        assert_eq!(base.len(), 12);
        assert_eq!(given_hash(&device, &broker, Some("v1")), base);

        // The device is unchanged when only what no broker gets changes.
        let mut same = device.clone();
        same.capacity = 3;
        same.shared = false;
        assert_eq!(given_hash(&same, &broker, Some("v1")), base);

        let vendor = spec(&[("MODBUS_VENDOR_NAME", "Bcme")]);
        let mut node = device.clone();
        node.devices = vec![DeviceSpec {
            container_path: "/dev/ttyUSB0".into(),
            host_path: "/dev/ttyUSB1".into(),
            permissions: "rw".into(),
        }];
        let mut mounted = device.clone();
        mounted.mounts = vec![Mount {
            container_path: "/run/dev".into(),
            host_path: "/run/dev".into(),
            read_only: true,
        }];
        let other_broker: BTreeMap<String, String> = [("POLL_MS".into(), "500".into())].into();
        for (what, hash) in [
            (
                "a device property",
                given_hash(&vendor, &broker, Some("v1")),
            ),
            ("a device node", given_hash(&node, &broker, Some("v1"))),
            ("a mount", given_hash(&mounted, &broker, Some("v1"))),
            (
                "brokerProperties",
                given_hash(&device, &other_broker, Some("v1")),
            ),
            (
                "the properties' version",
                given_hash(&device, &broker, Some("v2")),
            ),
            ("no properties' version", given_hash(&device, &broker, None)),
        ] {
            assert_ne!(hash, base, "{what}");
        }
    }
}
