use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A person's approval of one device found by a Configuration whose `approval` is `Manual`.
/// Named after the Instance it approves; it holds the device's identity at approval, so that
/// a different device answering in its place (another vendor at the same address, a new
/// certificate) is not approved by it. Only identities granted the `dowser-approver` role
/// may create or delete one, and each records who did (checked by the API server).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "dowser.dev",
    version = "v1alpha1",
    kind = "DeviceApproval",
    doc = "A DeviceApproval lets the device of the Instance of the same name get its resource and broker, under a Configuration whose approval is Manual. It records who approved which identity of the device; `kubectl dowser approve` writes one.",
    namespaced,
    shortname = "dwa",
    category = "dowser",
    printcolumn = r#"{"name":"Configuration","type":"string","jsonPath":".spec.configurationName"}"#,
    printcolumn = r#"{"name":"Device","type":"string","jsonPath":".spec.deviceId"}"#,
    printcolumn = r#"{"name":"Approved-By","type":"string","jsonPath":".spec.approvedBy"}"#,
    printcolumn = r#"{"name":"Identity","type":"string","jsonPath":".spec.identity","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceApprovalSpec {
    /// The Configuration whose device this approves.
    #[schemars(length(min = 1, max = 253))]
    pub configuration_name: String,
    /// The device's id, as in its Instance (`spec.deviceId`).
    #[schemars(length(min = 1, max = 1024))]
    pub device_id: String,
    /// The identity approved: the Instance's `status.identity` when it was approved (a hash
    /// of what discovery learned of the device). The device is approved while its Instance
    /// has this identity.
    #[schemars(length(min = 16, max = 64), regex(pattern = r"^[0-9a-f]+$"))]
    pub identity: String,
    /// Who approved it: the user name of the identity that created this object (the API
    /// server refuses any other).
    #[schemars(length(min = 1, max = 512))]
    pub approved_by: String,
    /// Why, for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}
