use std::collections::BTreeMap;

use dowser_discovery_api::{
    details::Discovery,
    validation::{Rule, add_rules},
};
use k8s_openapi::{
    api::{
        batch::v1::JobSpec,
        core::v1::{PodSpec, ServiceSpec},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time},
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::{list_map, preserve_unknown_object};

/// The most brokers or pods that may use one device at once.
pub const MAX_CAPACITY: u32 = 64;

const SPEC_RULES: &[Rule] = &[
    Rule::new(
        "!has(self.instanceServiceSpec) || has(self.brokerSpec)",
        "instanceServiceSpec needs a brokerSpec: a Service selects the broker pods",
    )
    .at(".instanceServiceSpec"),
    Rule::new(
        "!has(self.configurationServiceSpec) || has(self.brokerSpec)",
        "configurationServiceSpec needs a brokerSpec: a Service selects the broker pods",
    )
    .at(".configurationServiceSpec"),
    Rule::new(
        "!has(self.brokerSpec) || !has(self.brokerSpec.brokerJobSpec) || (!has(self.instanceServiceSpec) && !has(self.configurationServiceSpec))",
        "Services are made for broker pods only; Job brokers run to completion and cannot back a Service",
    ),
];

fn spec_rules(schema: &mut schemars::Schema) {
    add_rules(schema, SPEC_RULES);
}

fn one_broker(schema: &mut schemars::Schema) {
    add_rules(
        schema,
        &[Rule::new(
            "has(self.brokerPodSpec) != has(self.brokerJobSpec)",
            "set exactly one of brokerPodSpec and brokerJobSpec",
        )],
    );
}

fn one_value(schema: &mut schemars::Schema) {
    add_rules(
        schema,
        &[Rule::new(
            "has(self.value) != has(self.valueFrom)",
            "set exactly one of value and valueFrom",
        )],
    );
}

fn one_source(schema: &mut schemars::Schema) {
    add_rules(
        schema,
        &[Rule::new(
            "has(self.secretKeyRef) != has(self.configMapKeyRef)",
            "set exactly one of secretKeyRef and configMapKeyRef",
        )],
    );
}

fn broker_property_names(schema: &mut schemars::Schema) {
    add_rules(
        schema,
        &[Rule::new(
            "self.all(k, k.matches('^[A-Z_][A-Z0-9_]*$'))",
            "brokerProperties keys must be environment variable names: upper case letters, digits and _, not starting with a digit",
        )],
    );
}

fn properties_list(schema: &mut schemars::Schema) {
    list_map(schema, &["name"]);
}

fn default_capacity() -> u32 {
    1
}

fn default_grace() -> u32 {
    30
}

/// What devices to look for, on which nodes, and what to run next to each one.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "dowser.dev",
    version = "v1alpha1",
    kind = "Configuration",
    doc = "A Configuration tells dowser what devices to look for (one discovery handler and its details), on which nodes, and which broker workload to run next to each device found.",
    namespaced,
    status = "ConfigurationStatus",
    shortname = "dwc",
    category = "dowser",
    printcolumn = r#"{"name":"Resource","type":"string","jsonPath":".status.resource","description":"The extended resource a pod requests to get any one device of this Configuration"}"#,
    printcolumn = r#"{"name":"Capacity","type":"integer","jsonPath":".spec.capacity","description":"Brokers or pods that may use one device at once"}"#,
    printcolumn = r#"{"name":"Instances","type":"integer","jsonPath":".status.instances","description":"Devices found"}"#,
    printcolumn = r#"{"name":"Brokers","type":"integer","jsonPath":".status.brokers","description":"Broker pods or Jobs running"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.pendingApprovals","description":"Devices waiting for approval (approval: Manual)"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status","description":"Whether the Configuration is valid"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether every broker that should run is running"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = spec_rules)]
pub struct ConfigurationSpec {
    /// What to look for: exactly one of modbus, opcua, ble, serial, mdns, with its details.
    pub discovery: Discovery,
    /// Values handed to the discovery handler (credentials and the like; `USERNAME` and
    /// `PASSWORD` for a handler that authenticates) and to brokers, from literals, Secrets or
    /// ConfigMaps in the Configuration's namespace. Names are unique. A broker Pod or Job
    /// gets each as an environment variable of the container that holds the device, plain
    /// and suffixed with the Instance hash: a literal as it is, a Secret or ConfigMap key as
    /// a reference (`valueFrom`) that the kubelet reads for the broker. Other pods that
    /// request a device do not get them. A variable the broker spec sets itself is kept,
    /// and the device's own variables and `brokerProperties` win a clash. When a value
    /// changes, the handler restarts with it and the brokers are replaced. Values are never
    /// written to Instances, Events, logs or metrics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), transform = properties_list)]
    pub properties: Vec<Property>,
    /// Which nodes' agents run this discovery. Default: every node with an agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// How many brokers or pods may use one device at the same time.
    #[serde(default = "default_capacity")]
    #[schemars(range(min = 1, max = MAX_CAPACITY))]
    pub capacity: u32,
    /// How long a device may go unseen before a node stops offering it, in seconds. A
    /// device missed by one scan is not gone.
    #[serde(default = "default_grace")]
    #[schemars(range(max = 86400))]
    pub offline_grace_period_seconds: u32,
    /// The workload to run for each device. Absent: devices are only advertised as
    /// resources, for pods of your own that request them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_spec: Option<BrokerSpec>,
    /// A Service made for each Instance, selecting that Instance's broker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub instance_service_spec: Option<ServiceSpec>,
    /// A Service over the broker pods of every Instance of this Configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub configuration_service_spec: Option<ServiceSpec>,
    /// Whether a device found gets its resource and broker at once (`Automatic`) or only
    /// once a person approves it (`Manual`): its Instance is made, with all that discovery
    /// learned, and waits with the condition `Approved=False` until a DeviceApproval of its
    /// name (`kubectl dowser approve`, by an identity with the `dowser-approver` role)
    /// approves its identity. A device whose identity changes (another device answers in its
    /// place) waits again.
    #[serde(default, skip_serializing_if = "is_automatic")]
    pub approval: Approval,
    /// Extra environment variables for every broker, beside the device's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64), transform = broker_property_names, inner(length(max = 4096)))]
    pub broker_properties: BTreeMap<String, String>,
}

/// How a device found gets its resource and broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Approval {
    /// At once.
    #[default]
    Automatic,
    /// Once a person approves it (a DeviceApproval).
    Manual,
}

fn is_automatic(a: &Approval) -> bool {
    *a == Approval::Automatic
}

/// A named value for the discovery handler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = one_value)]
pub struct Property {
    /// The name the handler knows the value by (`USERNAME`, `PASSWORD`...), and the name of
    /// the brokers' environment variable.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Z_][A-Z0-9_]*$"))]
    pub name: String,
    /// A literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub value: Option<String>,
    /// Where to read the value from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<PropertySource>,
}

/// A Secret or ConfigMap key in the Configuration's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = one_source)]
pub struct PropertySource {
    /// A key of a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
    /// A key of a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
}

/// One key of a Secret or ConfigMap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRef {
    /// Name of the Secret or ConfigMap.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The key within it.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
    /// Whether discovery may run when the key does not exist (the property is then absent).
    #[serde(default)]
    pub optional: bool,
}

/// The broker workload: a Pod per device and chosen node, or a Job per device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = one_broker)]
pub struct BrokerSpec {
    /// Pod spec of a long-running broker. A Pod runs on each node chosen for a device (up
    /// to `capacity`), pinned to that node and requesting the device's resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub broker_pod_spec: Option<PodSpec>,
    /// Job spec of a broker that runs once per device (commissioning, firmware checks...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub broker_job_spec: Option<JobSpec>,
}

/// What dowser observed for a Configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the Configuration is valid; the message says what to fix when not) and
    /// `Ready` (every broker that should run is running).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = condition_list)]
    pub conditions: Vec<Condition>,
    /// How many Instances (devices) exist for this Configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    /// How many devices wait for a person's approval (`approval: Manual`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_approvals: Option<u32>,
    /// How many broker Pods or Jobs are running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<u32>,
    /// The extended resource a pod requests to get any one device of this Configuration:
    /// `dowser.dev/<namespace>.<name>`, such as `dowser.dev/default.plc-line3`. When that part
    /// after `dowser.dev/` would be longer than 63 characters, it is its first 49 characters,
    /// `__` and 12 hex digits of a hash of the whole. (One device: the Instance's
    /// `status.resource`, `dowser.dev/<namespace>_<instance>`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Discovery health on each node that runs this Configuration; each agent writes only
    /// its own entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = node_list)]
    pub nodes: Vec<NodeDiscoveryStatus>,
}

fn condition_list(schema: &mut schemars::Schema) {
    list_map(schema, &["type"]);
}

fn node_list(schema: &mut schemars::Schema) {
    list_map(schema, &["node"]);
}

/// Discovery on one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeDiscoveryStatus {
    /// The node.
    pub node: String,
    /// How many devices the node sees.
    #[serde(default)]
    pub devices: u32,
    /// Why discovery does not run or failed on this node; absent when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What a user must act on although discovery runs: targets that answered but could not
    /// be used, each named (such as an OPC UA server that refused the credentials). At most
    /// 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(max = 512)))]
    pub problems: Vec<String>,
    /// Version of the `properties` this node's agent resolved and hands to brokers: a hash
    /// of the literal values and of the versions of the Secrets and ConfigMaps the others
    /// come from (never of their values). A broker on this node is replaced when it changes,
    /// so that it gets the new values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties_version: Option<String>,
    /// When the device count or the error last changed (status is written on change only, so
    /// an unchanged node costs the API server nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<Time>,
    /// What discovery did on this node in its latest round that was written: the targets
    /// it tried, which answered, which a filter left out, which failed
    /// (`kubectl dowser why`). Written with any other change of this entry, after the first
    /// round each time discovery starts (a new spec, a changed Secret), and otherwise at
    /// most every 5 minutes while only these counts change. Absent for a handler that
    /// reports no counts (an external handler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_round: Option<DiscoveryRound>,
}

/// The counts of one discovery round on one node. A target is what the handler tries: a
/// Modbus TCP host and port, a unit on an RTU line, an OPC UA discovery URL or server, a
/// camera or BACnet device that answered a probe; for event-driven handlers (mDNS, BLE,
/// USB serial, udev), each service, advertiser, port or device they know of when the
/// round's snapshot was made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryRound {
    /// When a round first gave these counts (later rounds that give the same counts leave
    /// them, and this time, as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
    /// How long the round took, in milliseconds (handlers that work in rounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u32>,
    /// Targets tried.
    #[serde(default)]
    pub tried: u32,
    /// Targets that answered (the rest were silent: nothing listening, no reply in time).
    #[serde(default)]
    pub answered: u32,
    /// Devices found.
    #[serde(default)]
    pub found: u32,
    /// Targets that answered but could not be used: not the protocol, a malformed answer,
    /// refused credentials (the node's `problems` name those a user must act on).
    #[serde(default)]
    pub failed: u32,
    /// Targets that answered but were left out, by the field of the discovery details whose
    /// filter left them out (such as `vendorNames: 3`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped: BTreeMap<String, u32>,
}

impl DiscoveryRound {
    /// The counts of a round as a handler reported them (`took`: how long it took, for
    /// handlers that work in rounds; `at`: when).
    pub fn of(
        state: &dowser_discovery_api::progress::State,
        took: Option<std::time::Duration>,
        at: Option<Time>,
    ) -> Self {
        let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            at,
            duration_ms: took.map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
            tried: small(state.tried),
            answered: small(state.answered),
            found: small(state.found),
            failed: small(state.failed),
            dropped: state
                .dropped
                .iter()
                .map(|(field, n)| (field.to_string(), small(*n)))
                .collect(),
        }
    }

    /// What the round says, in words a user acts on (`kubectl dowser why`, `dowser
    /// discover`): the devices found, else why none: nothing to try, nothing answered, or
    /// what became of the targets that answered.
    pub fn verdict(&self) -> String {
        let plural =
            |n: u32, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut reasons: Vec<String> = self
            .dropped
            .iter()
            .map(|(field, n)| format!("{n} left out by {field}"))
            .collect();
        if self.failed > 0 {
            reasons.push(format!("{} answered but could not be used", self.failed));
        }
        let targets = plural(self.tried, "target", "targets");
        if self.found > 0 {
            let mut parts = vec![format!("{} found", plural(self.found, "device", "devices"))];
            parts.extend(reasons);
            parts.join("; ")
        } else if self.tried == 0 {
            "nothing to try: the handler saw no target (no address, line, service or device)"
                .to_string()
        } else if self.answered == 0 {
            format!("none of {targets} answered: nothing listening, or no reply in time")
        } else if reasons.is_empty() {
            format!("{} of {targets} answered, none is a device", self.answered)
        } else {
            format!(
                "{} of {targets} answered, none kept: {}",
                self.answered,
                reasons.join(", ")
            )
        }
    }
}
