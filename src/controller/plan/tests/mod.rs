//! The planner's rules, one table per rule. Each row builds what exists with the `mk_*`
//! builders and says which actions the plan makes (as their one-line descriptions).

mod approval;
mod dra;
mod objects;
mod pods;
mod status;

use std::{collections::BTreeSet, time::Instant};

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::ResourceExt;
use serde_json::{Value, json};

use super::{Inputs, Plan, plan};
use crate::{
    controller::{backoff::Backoff, brokers},
    crd::{CONFIGURATION_LABEL, Configuration, Instance},
};

const NS: &str = "ns";

/// A valid Configuration `plc` (Modbus discovery) with `spec` merged over its spec.
fn mk_config(spec: Value) -> Configuration {
    let mut c = json!({
        "apiVersion": "dowser.dev/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": "plc", "namespace": NS, "uid": "uid-plc", "generation": 3},
        "spec": {"discovery": {"modbus": {"targets": ["10.0.7.3:502"]}}},
    });
    if let Value::Object(more) = spec {
        c["spec"].as_object_mut().unwrap().extend(more);
    }
    serde_json::from_value(c).unwrap()
}

/// A broker pod spec running `image`.
fn pod_broker(image: &str) -> Value {
    json!({"brokerSpec": {"brokerPodSpec": {"containers": [{"name": "b", "image": image}]}}})
}

/// A broker Job spec running `image`.
fn job_broker(image: &str) -> Value {
    json!({"brokerSpec": {"brokerJobSpec": {"template": {"spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "b", "image": image}],
    }}}}})
}

/// An Instance of `plc` seen by `nodes`, with slots claimed as given.
fn mk_instance(name: &str, capacity: u32, nodes: &[&str], claims: &[(u32, &str)]) -> Instance {
    let slots: serde_json::Map<String, Value> = claims
        .iter()
        .map(|(slot, node)| (slot.to_string(), json!(node)))
        .collect();
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"), "resourceVersion": "7",
            "labels": {CONFIGURATION_LABEL: "plc"},
        },
        "spec": {"configurationName": "plc", "deviceId": name, "shared": true, "capacity": capacity},
        "status": {"nodes": nodes, "slots": slots},
    }))
    .unwrap()
}

/// `instance` with the device property `key` = `value`.
fn with_property(mut instance: Instance, key: &str, value: &str) -> Instance {
    instance.spec.properties.insert(key.into(), value.into());
    instance
}

/// `config` as its nodes' agents reported the version of its properties: (node, version).
fn with_versions(mut config: Configuration, versions: &[(&str, &str)]) -> Configuration {
    let nodes = versions
        .iter()
        .map(|(node, version)| crate::crd::NodeDiscoveryStatus {
            node: node.to_string(),
            properties_version: Some(version.to_string()),
            ..Default::default()
        })
        .collect();
    config.status = Some(crate::crd::ConfigurationStatus {
        nodes,
        ..Default::default()
    });
    config
}

/// The broker pod the planner makes for `slot` of `instance` on `node`, as the API server
/// then shows it: bound to the node, in `phase`.
fn mk_broker(
    config: &Configuration,
    instance: &Instance,
    slot: u32,
    node: &str,
    phase: &str,
) -> Pod {
    let spec = config
        .spec
        .broker_spec
        .as_ref()
        .unwrap()
        .broker_pod_spec
        .as_ref()
        .unwrap();
    let mut pod = brokers::broker_pod(
        config,
        instance,
        spec,
        slot,
        node,
        brokers::BrokerDevices::DevicePlugin,
    );
    pod.spec.as_mut().unwrap().node_name = Some(node.into());
    pod.status = Some(serde_json::from_value(json!({"phase": phase})).unwrap());
    pod
}

/// The broker Job the planner makes for the Instance `instance` of `config`.
fn mk_job(config: &Configuration, instance: &str) -> Job {
    let broker = config.spec.broker_spec.as_ref().unwrap();
    let spec = broker.broker_job_spec.as_ref().unwrap();
    brokers::broker_job(
        config,
        &mk_instance(instance, 1, &[], &[]),
        spec,
        brokers::BrokerDevices::DevicePlugin,
    )
}

fn mk_service(name: &str) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": NS}})).unwrap()
}

fn deleting<K: kube::Resource>(mut object: K) -> K {
    object.meta_mut().deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    object
}

/// Everything the planner reads, owned.
struct World {
    config: Configuration,
    instances: Vec<Instance>,
    nodes: BTreeSet<String>,
    pods: Vec<Pod>,
    jobs: Vec<Job>,
    services: Vec<Service>,
    approvals: Vec<crate::crd::DeviceApproval>,
    backoff: Backoff,
    now: Instant,
    devices: brokers::BrokerDevices,
}

impl World {
    /// `config` on nodes a, b and c.
    fn new(config: Configuration) -> Self {
        World {
            config,
            instances: vec![],
            nodes: ["a", "b", "c"].map(String::from).into(),
            pods: vec![],
            jobs: vec![],
            services: vec![],
            approvals: vec![],
            backoff: Backoff::default(),
            now: Instant::now(),
            devices: brokers::BrokerDevices::DevicePlugin,
        }
    }

    fn instance(mut self, instance: Instance) -> Self {
        self.instances.push(instance);
        self
    }

    /// A broker pod of slot `slot` of the Instance `instance` of this world on `node`.
    fn broker(mut self, instance: &str, slot: u32, node: &str, phase: &str) -> Self {
        let i = self
            .instances
            .iter()
            .find(|i| i.name_any() == instance)
            .unwrap();
        self.pods
            .push(mk_broker(&self.config, i, slot, node, phase));
        self
    }

    fn plan(&self) -> Plan {
        plan(&Inputs {
            config: &self.config,
            instances: &self.instances,
            nodes: &self.nodes,
            pods: &self.pods,
            jobs: &self.jobs,
            services: &self.services,
            approvals: &self.approvals,
            backoff: &self.backoff,
            now: self.now,
            now_utc: Timestamp::UNIX_EPOCH,
            devices: self.devices,
        })
    }

    fn actions(&self) -> Vec<String> {
        self.plan()
            .actions
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn with_pods(mut self, pods: impl FnOnce(&World) -> Vec<Pod>) -> Self {
        self.pods = pods(&self);
        self
    }

    fn with_jobs(mut self, jobs: Vec<Job>) -> Self {
        self.jobs = jobs;
        self
    }

    fn with_services(mut self, services: Vec<Service>) -> Self {
        self.services = services;
        self
    }

    fn with_instances(mut self, instances: Vec<Instance>) -> Self {
        self.instances = instances;
        self
    }
}

/// Checks each row: its world plans exactly the expected actions.
fn check(rows: Vec<(&str, World, &[&str])>) {
    for (what, world, expected) in rows {
        assert_eq!(world.actions(), expected, "{what}");
    }
}

fn ready_of(plan: &Plan) -> (String, String, String) {
    let c = plan
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}
