//! What a node publishes as ResourceSlices of driver `dowser.dev`: pure functions from the
//! Instances a node sees to pools of devices with the attributes a claim selects on.
//!
//! - A device only this node reaches (`spec.shared: false`) is in the node's pool of its
//!   namespace, `<node>/<namespace>`, a slice with `nodeName`: the kubelet removes it with
//!   the node.
//! - A device several nodes reach is in a pool of its own, `shared/<namespace>/<instance>`,
//!   a slice whose node selector names every node that sees it (by `kubernetes.io/hostname`,
//!   which the kubelet sets to the node's name): a claim can be satisfied on any of them and
//!   the device is allocated once cluster-wide. Of the nodes that see it,
//!   the first by name publishes it; every agent applies that rule, so exactly one does.
//! - An Instance of capacity N is N devices, `<instance>-<slot>`: N claims at once.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{NodeSelector, NodeSelectorRequirement, NodeSelectorTerm},
    resource::v1::{Device, DeviceAttribute, ResourcePool, ResourceSlice, ResourceSliceSpec},
};
use kube::{ResourceExt, api::ObjectMeta};

use super::DRIVER;
use crate::{crd::Instance, device_instance::short_hash, naming::MAX_LABEL};

/// Most devices in one ResourceSlice (`ResourceSliceMaxDevices` of `resource.k8s.io/v1`).
pub const MAX_DEVICES_PER_SLICE: usize = 128;
/// Longest attribute value (`DeviceAttributeMaxValueLength`); longer values are left out.
pub const MAX_ATTRIBUTE_VALUE: usize = 64;
/// Label on every slice an agent publishes: the node whose agent published it.
pub const PUBLISHER_LABEL: &str = "dowser.dev/publisher";
/// The well-known node label a shared device's slice selects its nodes by.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// How a property becomes an attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    String,
    Int,
}

/// Each handler's identity as attributes: (handler, property, attribute, type). The
/// properties are the ones each handler crate documents for brokers.
const IDENTITY: &[(&str, &str, &str, Kind)] = &[
    ("modbus", "MODBUS_VENDOR_NAME", "vendorName", Kind::String),
    ("modbus", "MODBUS_PRODUCT_CODE", "productCode", Kind::String),
    ("modbus", "MODBUS_REVISION", "revision", Kind::String),
    ("modbus", "MODBUS_HOST", "host", Kind::String),
    ("modbus", "MODBUS_PORT", "port", Kind::Int),
    ("modbus", "MODBUS_UNIT_ID", "unitId", Kind::Int),
    ("modbus", "MODBUS_TRANSPORT", "transport", Kind::String),
    ("modbus", "MODBUS_SERIAL_PORT", "serialPort", Kind::String),
    (
        "opcua",
        "OPCUA_APPLICATION_URI",
        "applicationUri",
        Kind::String,
    ),
    (
        "opcua",
        "OPCUA_APPLICATION_NAME",
        "applicationName",
        Kind::String,
    ),
    ("opcua", "OPCUA_PRODUCT_URI", "productUri", Kind::String),
    (
        "opcua",
        "OPCUA_SECURITY_POLICY",
        "securityPolicy",
        Kind::String,
    ),
    ("opcua", "OPCUA_SECURITY_MODE", "securityMode", Kind::String),
    ("opcua", "OPCUA_ENDPOINT_URL", "endpointUrl", Kind::String),
    ("mdns", "MDNS_INSTANCE_NAME", "instanceName", Kind::String),
    ("mdns", "MDNS_SERVICE_TYPE", "serviceType", Kind::String),
    ("mdns", "MDNS_HOST", "host", Kind::String),
    ("mdns", "MDNS_PORT", "port", Kind::Int),
    ("serial", "SERIAL_VID", "vendorId", Kind::String),
    ("serial", "SERIAL_PID", "productId", Kind::String),
    (
        "serial",
        "SERIAL_SERIAL_NUMBER",
        "serialNumber",
        Kind::String,
    ),
    ("ble", "BLE_ADDRESS", "address", Kind::String),
    ("ble", "BLE_NAME", "name", Kind::String),
];

/// An Instance this node sees, with the handler of its Configuration.
#[derive(Clone, Copy, Debug)]
pub struct Seen<'a> {
    pub instance: &'a Instance,
    pub handler: &'a str,
}

/// Which Instance slot a published device is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceRef {
    pub namespace: String,
    pub instance: String,
    pub slot: u32,
}

/// One pool this node publishes.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub name: String,
    /// `Some(node)` for a node's own pool; `None` for a shared device's.
    pub node_name: Option<String>,
    /// The nodes that may use a shared device (its node selector).
    pub nodes: Vec<String>,
    /// Devices by name, each with the slot it is.
    pub devices: BTreeMap<String, (Device, DeviceRef)>,
}

impl Pool {
    /// The Instance slot behind a device of this pool.
    pub fn device(&self, name: &str) -> Option<&DeviceRef> {
        self.devices.get(name).map(|(_, r)| r)
    }
}

/// The pools `node` publishes for the Instances it sees (those whose `status.nodes` hold
/// it; others are ignored), by pool name.
pub fn pools(node: &str, seen: &[Seen<'_>]) -> BTreeMap<String, Pool> {
    let mut pools: BTreeMap<String, Pool> = BTreeMap::new();
    for s in seen {
        let instance = s.instance;
        let status = instance.status.clone().unwrap_or_default();
        if !status.nodes.iter().any(|n| n == node) {
            continue;
        }
        let namespace = instance.namespace().unwrap_or_default();
        let name = instance.name_any();
        let pool = if instance.spec.shared {
            let mut nodes = status.nodes.clone();
            nodes.sort();
            nodes.dedup();
            if nodes.first().map(String::as_str) != Some(node) {
                continue;
            }
            pools
                .entry(format!("shared/{namespace}/{name}"))
                .or_insert_with_key(|key| Pool {
                    name: key.clone(),
                    node_name: None,
                    nodes,
                    devices: BTreeMap::new(),
                })
        } else {
            pools
                .entry(format!("{node}/{namespace}"))
                .or_insert_with_key(|key| Pool {
                    name: key.clone(),
                    node_name: Some(node.to_string()),
                    nodes: Vec::new(),
                    devices: BTreeMap::new(),
                })
        };
        for slot in 0..instance.spec.capacity {
            let device = device(s, &namespace, &name, slot);
            pool.devices.insert(
                device.name.clone(),
                (
                    device,
                    DeviceRef {
                        namespace: namespace.clone(),
                        instance: name.clone(),
                        slot,
                    },
                ),
            );
        }
    }
    pools
}

/// The name of slot `slot` of an Instance in its pool: `<instance>-<slot>`, a DNS label; the
/// start of the Instance name (never its hash) is shortened to make room for the slot.
pub fn device_name(instance: &str, slot: u32) -> String {
    let suffix = format!("-{slot}");
    if instance.len() + suffix.len() <= MAX_LABEL {
        return format!("{instance}{suffix}");
    }
    let (front, hash) = instance.rsplit_once('-').unwrap_or(("", instance));
    let room = MAX_LABEL.saturating_sub(hash.len() + 1 + suffix.len());
    let front = front
        .get(..room.min(front.len()))
        .unwrap_or_default()
        .trim_end_matches(['-', '.']);
    if front.is_empty() {
        format!("{hash}{suffix}")
    } else {
        format!("{front}-{hash}{suffix}")
    }
}

fn string(value: &str) -> Option<DeviceAttribute> {
    (value.len() <= MAX_ATTRIBUTE_VALUE).then(|| DeviceAttribute {
        string: Some(value.to_string()),
        ..DeviceAttribute::default()
    })
}

fn int(value: i64) -> DeviceAttribute {
    DeviceAttribute {
        int: Some(value),
        ..DeviceAttribute::default()
    }
}

/// The attributes of a device: the common ones, then its handler's identity. A string longer
/// than the API allows ([`MAX_ATTRIBUTE_VALUE`]) is left out rather than cut: a claim that
/// compares it must not match a different device that shares its start.
pub fn attributes(
    seen: &Seen<'_>,
    namespace: &str,
    instance: &str,
    slot: u32,
) -> BTreeMap<String, DeviceAttribute> {
    let spec = &seen.instance.spec;
    let mut attributes = BTreeMap::new();
    let mut put = |name: &str, value: Option<DeviceAttribute>| {
        if let Some(value) = value {
            attributes.insert(name.to_string(), value);
        }
    };
    put("configuration", string(&spec.configuration_name));
    put("namespace", string(namespace));
    put("instance", string(instance));
    put("handler", string(seen.handler));
    put("deviceId", string(&spec.device_id));
    put(
        "shared",
        Some(DeviceAttribute {
            bool: Some(spec.shared),
            ..DeviceAttribute::default()
        }),
    );
    put("slot", Some(int(i64::from(slot))));
    for (handler, property, attribute, kind) in IDENTITY {
        if *handler != seen.handler {
            continue;
        }
        let Some(value) = spec.properties.get(*property) else {
            continue;
        };
        let value = match kind {
            Kind::String => string(value),
            Kind::Int => value.parse().ok().map(int),
        };
        put(attribute, value);
    }
    attributes
}

/// Slot `slot` of an Instance as a device of a ResourceSlice.
pub fn device(seen: &Seen<'_>, namespace: &str, instance: &str, slot: u32) -> Device {
    Device {
        name: device_name(instance, slot),
        attributes: Some(attributes(seen, namespace, instance, slot)),
        ..Device::default()
    }
}

/// The name of slice `index` of a pool: `dowser-<hash of the pool>-<index>`.
pub fn slice_name(pool: &str, index: usize) -> String {
    format!("dowser-{}-{index}", short_hash(&pool))
}

/// The generation of a pool's next write: above the generation its slices have now
/// (`current`) and never below the clock (`now_millis`, milliseconds since the epoch). The
/// clock keeps a shared pool moving forward when it changes hands: the node that stops
/// publishing it may delete its slice before the next publisher has read it, and a pool
/// that started again at 1 would look older than the one consumers last saw.
pub fn next_generation(current: Option<i64>, now_millis: i64) -> i64 {
    current.map_or(1, |g| g.saturating_add(1)).max(now_millis)
}

/// The ResourceSlices of a pool at `generation`, [`MAX_DEVICES_PER_SLICE`] devices each (one
/// slice for an empty pool), labelled with the publishing node.
pub fn slices(node: &str, pool: &Pool, generation: i64) -> Vec<ResourceSlice> {
    let devices: Vec<Device> = pool.devices.values().map(|(d, _)| d.clone()).collect();
    let chunks: Vec<Vec<Device>> = if devices.is_empty() {
        vec![Vec::new()]
    } else {
        devices
            .chunks(MAX_DEVICES_PER_SLICE)
            .map(<[Device]>::to_vec)
            .collect()
    };
    let count = i64::try_from(chunks.len()).unwrap_or(i64::MAX);
    // A slice takes exactly one selector term, and a `metadata.name` field requirement only
    // one value: the nodes are named by the label the kubelet sets to the node's name.
    let node_selector = pool.node_name.is_none().then(|| NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: HOSTNAME_LABEL.into(),
                operator: "In".into(),
                values: Some(pool.nodes.clone()),
            }]),
            ..NodeSelectorTerm::default()
        }],
    });
    chunks
        .into_iter()
        .enumerate()
        .map(|(index, devices)| ResourceSlice {
            metadata: ObjectMeta {
                name: Some(slice_name(&pool.name, index)),
                labels: Some(
                    [(
                        PUBLISHER_LABEL.to_string(),
                        crate::naming::configuration_label(node),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: ResourceSliceSpec {
                driver: DRIVER.to_string(),
                pool: ResourcePool {
                    name: pool.name.clone(),
                    generation,
                    resource_slice_count: count,
                },
                node_name: pool.node_name.clone(),
                node_selector: node_selector.clone(),
                devices: Some(devices),
                ..ResourceSliceSpec::default()
            },
        })
        .collect()
}

/// Whether the slices published for a pool already say what `pool` says (apart from the
/// generation): no write is needed.
pub fn up_to_date(node: &str, pool: &Pool, published: &[&ResourceSlice]) -> bool {
    let Some(generation) = published.first().map(|s| s.spec.pool.generation) else {
        return false;
    };
    let wanted = slices(node, pool, generation);
    wanted.len() == published.len()
        && wanted.iter().all(|w| {
            published.iter().any(|p| {
                p.metadata.name == w.metadata.name
                    && p.spec == w.spec
                    && p.labels().get(PUBLISHER_LABEL) == w.labels().get(PUBLISHER_LABEL)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{InstanceSpec, InstanceStatus};

    fn instance(name: &str, shared: bool, capacity: u32, nodes: &[&str]) -> Instance {
        let mut i = Instance::new(
            name,
            InstanceSpec {
                configuration_name: "plc".into(),
                device_id: "modbus+tcp://10.0.7.3:502/1".into(),
                shared,
                capacity,
                properties: [
                    ("MODBUS_VENDOR_NAME", "Acme Automation"),
                    ("MODBUS_PORT", "502"),
                    ("MODBUS_UNIT_ID", "1"),
                    ("MODBUS_HOST", "10.0.7.3"),
                    ("OPCUA_PRODUCT_URI", "urn:not-modbus"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
                devices: Vec::new(),
                mounts: Vec::new(),
            },
        );
        i.metadata.namespace = Some("plant".into());
        i.status = Some(InstanceStatus {
            nodes: nodes.iter().map(ToString::to_string).collect(),
            ..InstanceStatus::default()
        });
        i
    }

    fn seen(i: &Instance) -> Seen<'_> {
        Seen {
            instance: i,
            handler: "modbus",
        }
    }

    #[test]
    fn a_pool_moves_forward_even_when_its_slices_are_gone() {
        // First write of a pool: the clock.
        assert_eq!(next_generation(None, 1_764_000_000_000), 1_764_000_000_000);
        // Written again within the same millisecond, or with a clock behind: one more.
        assert_eq!(
            next_generation(Some(1_764_000_000_000), 1_764_000_000_000),
            1_764_000_000_001
        );
        assert_eq!(next_generation(Some(7), 3), 8);
        // Taken over after its slice was deleted: still above what it was before.
        let before = next_generation(None, 1_764_000_000_000);
        assert!(next_generation(None, 1_764_000_005_000) > before);
    }

    #[test]
    fn a_local_device_is_in_the_nodes_pool_once_per_slot() {
        let i = instance("plc-39120988d2bc", false, 2, &["node-a"]);
        let published = pools("node-a", &[seen(&i)]);
        let pool = &published["node-a/plant"];
        assert_eq!(pool.node_name.as_deref(), Some("node-a"));
        let names: Vec<_> = pool.devices.keys().cloned().collect();
        assert_eq!(names, ["plc-39120988d2bc-0", "plc-39120988d2bc-1"]);
        assert_eq!(
            pool.device("plc-39120988d2bc-1"),
            Some(&DeviceRef {
                namespace: "plant".into(),
                instance: "plc-39120988d2bc".into(),
                slot: 1
            })
        );
        assert!(pools("node-b", &[seen(&i)]).is_empty(), "not seen there");
    }

    #[test]
    fn a_shared_device_is_published_once_by_the_first_node_that_sees_it() {
        let i = instance("plc-39120988d2bc", true, 1, &["node-b", "node-a"]);
        assert!(pools("node-b", &[seen(&i)]).is_empty());
        let published = pools("node-a", &[seen(&i)]);
        let pool = &published["shared/plant/plc-39120988d2bc"];
        assert_eq!(pool.node_name, None);
        assert_eq!(pool.nodes, ["node-a", "node-b"]);
        let slice = &slices("node-a", pool, 1)[0];
        let terms = &slice
            .spec
            .node_selector
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1, "a slice takes exactly one term");
        let requirements = terms[0].match_expressions.as_ref().unwrap();
        assert_eq!(requirements[0].key, "kubernetes.io/hostname");
        assert_eq!(requirements[0].operator, "In");
        assert_eq!(
            requirements[0].values.as_deref(),
            Some(&["node-a".to_string(), "node-b".to_string()][..])
        );
        assert!(
            terms[0].match_fields.is_none(),
            "metadata.name takes one value only"
        );
        assert_eq!(slice.spec.node_name, None);
    }

    #[test]
    fn attributes_are_typed_and_only_the_handlers_own() {
        let i = instance("plc-39120988d2bc", false, 1, &["node-a"]);
        let a = attributes(&seen(&i), "plant", "plc-39120988d2bc", 0);
        assert_eq!(a["vendorName"].string.as_deref(), Some("Acme Automation"));
        assert_eq!(a["port"].int, Some(502));
        assert_eq!(a["unitId"].int, Some(1));
        assert_eq!(a["handler"].string.as_deref(), Some("modbus"));
        assert_eq!(a["namespace"].string.as_deref(), Some("plant"));
        assert_eq!(a["shared"].bool, Some(false));
        assert!(
            !a.contains_key("productUri"),
            "an OPC UA name on a Modbus device"
        );
        for name in a.keys() {
            assert!(
                name.len() <= 32
                    && name.starts_with(|c: char| c.is_ascii_alphabetic())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name} is not a C identifier of at most 32 characters"
            );
        }
    }

    #[test]
    fn a_value_too_long_for_an_attribute_is_left_out_not_cut() {
        let mut i = instance("plc-39120988d2bc", false, 1, &["node-a"]);
        i.spec.device_id = format!("opc.tcp://{}:4840", "h".repeat(80));
        let a = attributes(&seen(&i), "plant", "plc-39120988d2bc", 0);
        assert!(!a.contains_key("deviceId"));
        assert!(a.contains_key("instance"));
    }

    #[test]
    fn device_names_are_dns_labels_that_keep_the_hash() {
        assert_eq!(device_name("plc-39120988d2bc", 0), "plc-39120988d2bc-0");
        let long = format!("{}-39120988d2bc", "a".repeat(50));
        assert_eq!(long.len(), 63);
        let name = device_name(&long, 12);
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("-39120988d2bc-12"), "{name}");
        assert!(crate::naming::is_dns_label(&name), "{name}");
    }

    #[test]
    fn a_large_pool_is_split_into_slices_that_count_each_other() {
        let i = instance("plc-39120988d2bc", false, 300, &["node-a"]);
        let published = pools("node-a", &[seen(&i)]);
        let pool = &published["node-a/plant"];
        let slices = slices("node-a", pool, 4);
        assert_eq!(slices.len(), 3);
        assert!(slices.iter().all(|s| s.spec.pool.resource_slice_count == 3
            && s.spec.pool.generation == 4
            && s.spec.devices.as_ref().unwrap().len() <= MAX_DEVICES_PER_SLICE));
        let total: usize = slices
            .iter()
            .map(|s| s.spec.devices.as_ref().unwrap().len())
            .sum();
        assert_eq!(total, 300);
        let refs: Vec<&ResourceSlice> = slices.iter().collect();
        assert!(up_to_date("node-a", pool, &refs));
        assert!(!up_to_date("node-a", pool, &refs[..2]));
    }
}
