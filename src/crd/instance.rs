use std::collections::BTreeMap;

use dowser_discovery_api::{DeviceSpec, Mount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::{list_map, list_set};

/// One device found by a Configuration, and the nodes that can reach it.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "dowser.dev",
    version = "v1alpha1",
    kind = "Instance",
    doc = "An Instance is one device found by a Configuration: its stable identity, the connection details handed to brokers, the nodes that can reach it and which node holds each of its slots. Its extended resource (status.resource, dowser.dev/<namespace>_<instance name>) schedules pods next to it.",
    namespaced,
    status = "InstanceStatus",
    shortname = "dwi",
    category = "dowser",
    printcolumn = r#"{"name":"Configuration","type":"string","jsonPath":".spec.configurationName"}"#,
    printcolumn = r#"{"name":"Device","type":"string","jsonPath":".spec.deviceId","description":"Stable identity of the device"}"#,
    printcolumn = r#"{"name":"Shared","type":"boolean","jsonPath":".spec.shared","description":"Whether several nodes can reach the device"}"#,
    printcolumn = r#"{"name":"Capacity","type":"integer","jsonPath":".spec.capacity"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","jsonPath":".status.nodes","description":"Nodes that see the device"}"#,
    printcolumn = r#"{"name":"Approved","type":"string","jsonPath":".status.conditions[?(@.type==\"Approved\")].reason","description":"Under approval: Manual, Approved, Pending or IdentityChanged"}"#,
    printcolumn = r#"{"name":"Resource","type":"string","jsonPath":".status.resource","priority":1,"description":"The extended resource a pod requests to get this device"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSpec {
    /// The Configuration that found the device.
    #[schemars(length(min = 1, max = 253))]
    pub configuration_name: String,
    /// Stable identity of the device within its handler (`modbus+tcp://10.0.7.3:502/1`,
    /// an OPC UA applicationUri, a BLE address...).
    #[schemars(length(min = 1, max = 1024))]
    pub device_id: String,
    /// Whether several nodes can reach the device (network devices) or only one (devices
    /// attached to a node).
    pub shared: bool,
    /// How many brokers or pods may use the device at once.
    #[schemars(range(min = 1, max = super::MAX_CAPACITY))]
    pub capacity: u32,
    /// Connection details handed to brokers as environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Device nodes passed into broker containers (local devices only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSpec>,
    /// Host paths mounted into broker containers (local devices only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

/// Which nodes see the device and which node holds each slot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Nodes that currently see the device. Each agent adds and removes only its own node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = list_set)]
    pub nodes: Vec<String>,
    /// Slot number (0 to capacity-1) → node whose pod holds it. A slot is claimed by the node
    /// that admitted a pod to it and released once no pod holds it; unclaimed slots are
    /// shared out over `nodes` by one deterministic rule that every agent applies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<String, String>,
    /// The extended resource a pod requests to get this device:
    /// `dowser.dev/<namespace>_<instance>`, shortened like the Configuration's
    /// `status.resource` when the part after `dowser.dev/` would be longer than 63 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The device's identity now: a hash of what discovery learned of it (`spec`), which a
    /// DeviceApproval names to approve this device and no other (written by the controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The identity a DeviceApproval approved, under `approval: Manual`; nodes offer the
    /// device only while it is `identity` (written by the controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_identity: Option<String>,
    /// Conditions of the Instance: `Approved` under `approval: Manual` (False with reason
    /// `Pending` or `IdentityChanged`, and what to do, while the device waits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = condition_list)]
    pub conditions: Vec<Condition>,
}

fn condition_list(schema: &mut schemars::Schema) {
    list_map(schema, &["type"]);
}
