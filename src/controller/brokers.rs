//! The objects the controller makes for a Configuration: broker Pods, Jobs and Services.
//! Pure functions: what exists is compared with what these return.

use std::collections::BTreeMap;

use crate::{device_instance, naming};
use dowser_discovery_api::env::{sanitize, with_hash};
use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{
            Affinity, ConfigMapKeySelector, EnvVar, EnvVarSource, NodeAffinity, NodeSelector,
            NodeSelectorRequirement, NodeSelectorTerm, Pod, PodResourceClaim, PodSpec,
            ResourceClaim, ResourceRequirements, SecretKeySelector, Service, ServiceSpec,
        },
        resource::v1::{
            CELDeviceSelector, DeviceClaim, DeviceRequest, DeviceSelector, ExactDeviceRequest,
            ResourceClaimSpec, ResourceClaimTemplate, ResourceClaimTemplateSpec,
        },
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::OwnerReference},
};
use kube::{Resource, ResourceExt, api::ObjectMeta};
use sha2::{Digest, Sha256};

use crate::crd::{CONFIGURATION_LABEL, Configuration, INSTANCE_LABEL, Instance};

/// Label with a broker pod's slot.
pub const SLOT_LABEL: &str = "dowser.dev/slot";
/// Annotation with the hash of the broker spec a pod or Job was made from.
pub const SPEC_HASH: &str = "dowser.dev/spec-hash";
/// Annotation with the node a broker pod was placed on.
pub const NODE_ANNOTATION: &str = "dowser.dev/node";
/// Annotation with the hash of what a broker pod or Job is given for its device
/// ([`device_instance::given_hash`]).
pub const GIVEN_HASH: &str = "dowser.dev/given-hash";

/// How a broker asks for its device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerDevices {
    /// The Instance's extended resource (`dowser.dev/<namespace>_<instance>`), from the
    /// agents' device plugins.
    #[default]
    #[value(name = "devicePlugin", alias = "device-plugin")]
    DevicePlugin,
    /// A ResourceClaim made from the Instance's ResourceClaimTemplate ([`claim_template`]),
    /// allocated from the agents' ResourceSlices (DRA).
    Dra,
}

/// The name of the claim a broker pod's first container is given the device through.
pub const CLAIM_NAME: &str = "dowser-device";

/// The ResourceClaimTemplate of an Instance's brokers in DRA mode: one device of driver
/// `dowser.dev` that is this Instance (any of its slots). Named after the Instance, owned
/// by it, so it goes with it.
pub fn claim_template(instance: &Instance) -> ResourceClaimTemplate {
    let namespace = instance.namespace().unwrap_or_default();
    let name = instance.name_any();
    let expression = format!(
        r#"device.attributes["{d}"].namespace == "{namespace}" && device.attributes["{d}"].instance == "{name}""#,
        d = crate::dra::DRIVER
    );
    ResourceClaimTemplate {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace),
            labels: Some(labels(&instance.spec.configuration_name, Some(&name))),
            owner_references: owner(instance).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: ResourceClaimTemplateSpec {
            metadata: None,
            spec: ResourceClaimSpec {
                devices: Some(DeviceClaim {
                    requests: Some(vec![DeviceRequest {
                        name: "device".into(),
                        exactly: Some(ExactDeviceRequest {
                            device_class_name: crate::dra::DRIVER.into(),
                            selectors: Some(vec![DeviceSelector {
                                cel: Some(CELDeviceSelector { expression }),
                            }]),
                            ..ExactDeviceRequest::default()
                        }),
                        ..DeviceRequest::default()
                    }]),
                    ..DeviceClaim::default()
                }),
            },
        },
    }
}

/// Short hash of any serialisable spec (a change rolls the brokers).
pub fn spec_hash<T: serde::Serialize>(spec: &T) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    let digest = Sha256::digest(json);
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

fn owner<K: Resource<DynamicType = ()>>(object: &K) -> Option<OwnerReference> {
    object.controller_owner_ref(&())
}

fn labels(config: &str, instance: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([(
        CONFIGURATION_LABEL.to_string(),
        naming::configuration_label(config),
    )]);
    if let Some(i) = instance {
        l.insert(INSTANCE_LABEL.to_string(), i.to_string());
    }
    l
}

/// Whether a pod with a Configuration's label is one of the broker pods made here (one per
/// slot), not a pod of a broker Job, which belongs to its Job.
pub fn is_slot_broker(pod: &Pod) -> bool {
    pod.labels().contains_key(SLOT_LABEL)
        && !pod
            .owner_references()
            .iter()
            .any(|o| o.kind == "Job" && o.api_version == "batch/v1")
}

/// The version of the Configuration's resolved properties that the agent of `node` reported;
/// none for a Configuration without properties (there is nothing a broker could miss).
pub fn properties_version<'a>(config: &'a Configuration, node: &str) -> Option<&'a str> {
    if config.spec.properties.is_empty() {
        return None;
    }
    config
        .status
        .as_ref()?
        .nodes
        .iter()
        .find(|n| n.node == node)?
        .properties_version
        .as_deref()
}

/// Whether a broker for `node` must wait for that node's agent to report the version of the
/// properties it resolved. The agent reports it before it writes any Instance, but the
/// controller hears of Instances and Configurations on two watches: a broker made before the
/// report arrives would be stamped without the version and replaced once it does.
pub fn awaits_properties_version(config: &Configuration, node: &str) -> bool {
    !config.spec.properties.is_empty() && properties_version(config, node).is_none()
}

/// Whether a broker was given something else than a broker made now would be. A broker
/// made before brokers were stamped (no hash) is not replaced for it.
pub fn given_changed<K: Resource>(current: &K, wanted: &K) -> bool {
    fn hash<K: Resource>(o: &K) -> Option<&String> {
        o.meta().annotations.as_ref()?.get(GIVEN_HASH)
    }
    matches!((hash(current), hash(wanted)), (Some(c), Some(w)) if c != w)
}

/// The name of the broker pod of a slot.
pub fn pod_name(instance: &str, slot: u32) -> String {
    format!("{instance}-{slot}")
}

/// Makes the first container ask for one device of the Instance.
fn request_device(spec: &mut PodSpec, instance: &Instance, devices: BrokerDevices) {
    if devices == BrokerDevices::Dra {
        let claims = spec.resource_claims.get_or_insert_with(Vec::new);
        if !claims.iter().any(|c| c.name == CLAIM_NAME) {
            claims.push(PodResourceClaim {
                name: CLAIM_NAME.into(),
                resource_claim_template_name: Some(instance.name_any()),
                ..PodResourceClaim::default()
            });
        }
        if let Some(first) = spec.containers.first_mut() {
            let resources = first
                .resources
                .get_or_insert_with(ResourceRequirements::default);
            resources
                .claims
                .get_or_insert_with(Vec::new)
                .push(ResourceClaim {
                    name: CLAIM_NAME.into(),
                    ..ResourceClaim::default()
                });
        }
        return;
    }
    let resource = naming::instance_resource(
        &instance.namespace().unwrap_or_default(),
        &instance.name_any(),
    );
    if let Some(first) = spec.containers.first_mut() {
        let mut resources = first
            .resources
            .clone()
            .unwrap_or_else(ResourceRequirements::default);
        let one = Quantity("1".to_string());
        resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert(resource.clone(), one.clone());
        resources
            .requests
            .get_or_insert_with(BTreeMap::new)
            .insert(resource, one);
        first.resources = Some(resources);
    }
}

/// The Configuration's `properties` as environment variables of the container of a broker
/// that holds the device, named like the device's own: each plain and suffixed with the
/// Instance hash. A literal is given as it is; a Secret or ConfigMap key is given as a
/// reference to that key (`valueFrom`), which the kubelet reads for the broker in its own
/// namespace, the Configuration's: the value never passes through dowser, and no pod but
/// the brokers gets it (a pod that asks for a device itself gets the device's environment
/// only). A variable the container sets itself is left to it; the device's environment
/// from `Allocate` (its properties, `brokerProperties`) comes after, and wins a clash.
fn give_properties(spec: &mut PodSpec, config: &Configuration, instance: &str) {
    let hash = instance.rsplit('-').next().unwrap_or_default();
    let Some(first) = spec.containers.first_mut() else {
        return;
    };
    let env = first.env.get_or_insert_with(Vec::new);
    for p in &config.spec.properties {
        let value_from = p.value_from.as_ref().map(|from| EnvVarSource {
            secret_key_ref: from.secret_key_ref.as_ref().map(|r| SecretKeySelector {
                name: r.name.clone(),
                key: r.key.clone(),
                optional: Some(r.optional),
            }),
            config_map_key_ref: from
                .config_map_key_ref
                .as_ref()
                .map(|r| ConfigMapKeySelector {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    optional: Some(r.optional),
                }),
            ..EnvVarSource::default()
        });
        let name = sanitize(&p.name);
        for name in [with_hash(&name, hash), name] {
            if env.iter().all(|e| e.name != name) {
                env.push(EnvVar {
                    name,
                    value: p.value.clone(),
                    value_from: value_from.clone(),
                });
            }
        }
    }
}

/// The broker pod of one slot of an Instance, pinned to `node` (and annotated with it and
/// with what it is given there), asking for one of the Instance's devices in its first
/// container.
pub fn broker_pod(
    config: &Configuration,
    instance: &Instance,
    spec: &PodSpec,
    slot: u32,
    node: &str,
    devices: BrokerDevices,
) -> Pod {
    let name = instance.name_any();
    let mut spec = spec.clone();
    request_device(&mut spec, instance, devices);
    give_properties(&mut spec, config, &name);
    let pin = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.to_string()]),
        }]),
        ..NodeSelectorTerm::default()
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    affinity.node_affinity = Some(NodeAffinity {
        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
            node_selector_terms: vec![pin],
        }),
        ..affinity.node_affinity.clone().unwrap_or_default()
    });
    let mut l = labels(&config.name_any(), Some(&name));
    l.insert(SLOT_LABEL.into(), slot.to_string());
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&name, slot)),
            namespace: instance.namespace(),
            labels: Some(l),
            annotations: Some(
                [
                    (SPEC_HASH.to_string(), spec_hash(&config.spec.broker_spec)),
                    (NODE_ANNOTATION.to_string(), node.to_string()),
                    (
                        GIVEN_HASH.to_string(),
                        device_instance::given_hash(
                            &instance.spec,
                            &config.spec.broker_properties,
                            properties_version(config, node),
                        ),
                    ),
                ]
                .into(),
            ),
            owner_references: owner(instance).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The Job that runs once for an Instance, named after the spec it runs, so that a new
/// spec makes a new Job, and stamped with what it is given, so that a device whose details
/// changed gets a new run. Its pod asks for one device of the Instance, so it lands on a node
/// that can reach the device and gets the device's environment.
pub fn broker_job(
    config: &Configuration,
    instance: &Instance,
    spec: &k8s_openapi::api::batch::v1::JobSpec,
    devices: BrokerDevices,
) -> Job {
    let name = instance.name_any();
    let hash = spec_hash(spec);
    // A Job runs once for what its device is; its pods are new pods, which get the current
    // values of the properties, so a new version of those does not run it again.
    let given = device_instance::given_hash(&instance.spec, &config.spec.broker_properties, None);
    let mut spec = spec.clone();
    if let Some(pod) = spec.template.spec.as_mut() {
        request_device(pod, instance, devices);
        give_properties(pod, config, &name);
    }
    let mut template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    template_labels.extend(labels(&config.name_any(), Some(&name)));
    spec.template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .labels = Some(template_labels);
    Job {
        metadata: ObjectMeta {
            name: Some(naming::job_name(&name, &hash)),
            namespace: instance.namespace(),
            labels: Some(labels(&config.name_any(), Some(&name))),
            annotations: Some(
                [
                    (SPEC_HASH.to_string(), hash),
                    (GIVEN_HASH.to_string(), given),
                ]
                .into(),
            ),
            owner_references: owner(instance).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The Service in front of one Instance's broker pods.
pub fn instance_service(
    config: &Configuration,
    instance: &Instance,
    spec: &ServiceSpec,
) -> Service {
    let name = instance.name_any();
    let mut spec = spec.clone();
    spec.selector = Some(labels(&config.name_any(), Some(&name)));
    Service {
        metadata: ObjectMeta {
            name: Some(naming::service_name(&name)),
            namespace: instance.namespace(),
            labels: Some(labels(&config.name_any(), Some(&name))),
            owner_references: owner(instance).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The Service over the broker pods of every Instance of a Configuration.
pub fn configuration_service(config: &Configuration, spec: &ServiceSpec) -> Service {
    let mut spec = spec.clone();
    spec.selector = Some(labels(&config.name_any(), None));
    Service {
        metadata: ObjectMeta {
            name: Some(naming::service_name(&config.name_any())),
            namespace: config.namespace(),
            labels: Some(labels(&config.name_any(), None)),
            owner_references: owner(config).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: serde_json::Value, owner_kind: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "p",
                "labels": labels,
                "ownerReferences": [{
                    "apiVersion": if owner_kind == "Job" { "batch/v1" } else { "dowser.dev/v1alpha1" },
                    "kind": owner_kind, "name": "o", "uid": "u",
                }],
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_pods_of_broker_jobs_are_not_slot_brokers() {
        let slot = pod(
            serde_json::json!({CONFIGURATION_LABEL: "c", INSTANCE_LABEL: "c-1", SLOT_LABEL: "0"}),
            "Instance",
        );
        assert!(is_slot_broker(&slot));
        let of_job = pod(
            serde_json::json!({CONFIGURATION_LABEL: "c", INSTANCE_LABEL: "c-1"}),
            "Job",
        );
        assert!(!is_slot_broker(&of_job));
        // A slot label copied into a Job's template does not make its pods ours.
        let copied = pod(
            serde_json::json!({CONFIGURATION_LABEL: "c", SLOT_LABEL: "0"}),
            "Job",
        );
        assert!(!is_slot_broker(&copied));
    }

    #[test]
    fn brokers_get_the_properties_as_references_never_as_values() {
        let config: Configuration = serde_json::from_value(serde_json::json!({
            "apiVersion": "dowser.dev/v1alpha1", "kind": "Configuration",
            "metadata": {"name": "plc", "namespace": "ns"},
            "spec": {
                "discovery": {"modbus": {"targets": ["10.0.7.3"]}},
                "properties": [
                    {"name": "PLC_USER", "value": "operator"},
                    {"name": "PLC_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "login", "key": "pw"}}},
                    {"name": "SITE", "valueFrom": {"configMapKeyRef": {"name": "site", "key": "id", "optional": true}}},
                    {"name": "MINE", "value": "from the Configuration"},
                ],
                "brokerSpec": {"brokerPodSpec": {"containers": [
                    {"name": "broker", "image": "b", "env": [{"name": "MINE", "value": "the broker's"}]},
                    {"name": "sidecar", "image": "s"},
                ]}},
            },
        }))
        .unwrap();
        let instance: Instance = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "plc-0a1b2c3d4e5f", "namespace": "ns"},
            "spec": {"configurationName": "plc", "deviceId": "d", "shared": true, "capacity": 1},
        }))
        .unwrap();
        let spec = config
            .spec
            .broker_spec
            .clone()
            .unwrap()
            .broker_pod_spec
            .unwrap();
        let pod = broker_pod(
            &config,
            &instance,
            &spec,
            0,
            "node-a",
            BrokerDevices::DevicePlugin,
        );
        let containers = &pod.spec.as_ref().unwrap().containers;
        let env = serde_json::to_value(&containers[0].env).unwrap();
        assert_eq!(
            env,
            serde_json::json!([
                {"name": "MINE", "value": "the broker's"},
                {"name": "PLC_USER_0A1B2C3D4E5F", "value": "operator"},
                {"name": "PLC_USER", "value": "operator"},
                {"name": "PLC_PASSWORD_0A1B2C3D4E5F", "valueFrom": {"secretKeyRef": {"name": "login", "key": "pw", "optional": false}}},
                {"name": "PLC_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "login", "key": "pw", "optional": false}}},
                {"name": "SITE_0A1B2C3D4E5F", "valueFrom": {"configMapKeyRef": {"name": "site", "key": "id", "optional": true}}},
                {"name": "SITE", "valueFrom": {"configMapKeyRef": {"name": "site", "key": "id", "optional": true}}},
                {"name": "MINE_0A1B2C3D4E5F", "value": "from the Configuration"},
            ])
        );
        assert_eq!(
            containers[1].env, None,
            "only the container that holds the device"
        );
        // A Job's pod gets them the same way.
        let job_spec: k8s_openapi::api::batch::v1::JobSpec = serde_json::from_value(
            serde_json::json!({"template": {"spec": {"containers": [{"name": "j", "image": "j"}]}}}),
        )
        .unwrap();
        let job = broker_job(&config, &instance, &job_spec, BrokerDevices::DevicePlugin);
        let pod = job.spec.unwrap().template.spec.unwrap();
        let names: Vec<String> = pod.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| e.name.clone())
            .collect();
        assert_eq!(names.len(), 8);
        assert!(names.contains(&"PLC_PASSWORD".to_string()));
    }
}
