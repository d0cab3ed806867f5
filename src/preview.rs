//! What a device becomes in the cluster: the Instance, its resources and the broker's
//! environment. Pure functions used by `dowser discover` and the agent.

use std::collections::BTreeMap;

use dowser_discovery_api::{Device, env, naming};
use kube::api::ObjectMeta;
use serde::Serialize;

use crate::crd::{CONFIGURATION_LABEL, Configuration, Instance, InstanceSpec};

/// A device as the Instance it would become.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstancePreview {
    pub name: String,
    pub device_id: String,
    /// The Instance hash that suffixes its environment variables.
    pub hash: String,
    /// `dowser.dev/<instance>` and `dowser.dev/<configuration>`.
    pub resources: Vec<String>,
    /// Environment variables a broker of this device gets.
    pub env: BTreeMap<String, String>,
    pub instance: Instance,
}

/// Builds the Instance a device of `config` becomes. `node` names the node for devices that
/// are not shared (their Instance is per node).
pub fn instance_for(
    config: &Configuration,
    shared: bool,
    node: &str,
    device: &Device,
) -> InstancePreview {
    let config_name = config.metadata.name.clone().unwrap_or_default();
    let node_part = (!shared).then_some(node);
    let name = naming::instance_name(&config_name, &device.id, node_part);
    let hash = naming::device_hash(&device.id, node_part);
    let instance = Instance {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: config.metadata.namespace.clone(),
            labels: Some([(CONFIGURATION_LABEL.to_string(), config_name.clone())].into()),
            ..ObjectMeta::default()
        },
        spec: InstanceSpec {
            configuration_name: config_name.clone(),
            device_id: device.id.clone(),
            shared,
            capacity: config.spec.capacity,
            properties: device.properties.clone(),
            devices: device.device_specs.clone(),
            mounts: device.mounts.clone(),
        },
        status: None,
    };
    InstancePreview {
        resources: vec![
            naming::instance_resource(&name),
            naming::configuration_resource(&config_name),
        ],
        env: env::broker_env(&device.properties, &config.spec.broker_properties, &hash),
        device_id: device.id.clone(),
        hash,
        name,
        instance,
    }
}
