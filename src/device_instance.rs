//! What a device becomes in the cluster: the Instance the agent writes, its resources and
//! the broker's environment. Pure functions: the agent builds every Instance here, and
//! `dowser discover` prints the same.

use std::collections::BTreeMap;

use dowser_discovery_api::{
    Device,
    env::{sanitize, with_hash},
};
use kube::{ResourceExt, api::ObjectMeta};
use serde::Serialize;

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
}

/// The name and hash of a device's Instance, computed once per device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceId {
    pub name: String,
    /// The hash over the device id (and node), which ends the name and suffixes the
    /// broker's environment variables.
    pub hash: String,
}

impl InstanceId {
    /// The Instance of a device of `config`. `node` names the node for devices that are not
    /// shared (their Instance is per node).
    pub fn new(config: &Configuration, shared: bool, node: &str, device_id: &str) -> Self {
        let hash = naming::device_hash(device_id, (!shared).then_some(node));
        let name = naming::instance_name_with_hash(&config.name_any(), &hash);
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
}
