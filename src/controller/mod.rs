//! `dowser controller`: turns Instances into broker workloads next to the hardware, keeps
//! Services in front of them, and reports each Configuration's state in its status.

pub mod brokers;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{Node, Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::ObjectRef,
        watcher,
    },
};
use serde_json::json;
use tracing::{info, warn};

use crate::{
    agent::slots,
    crd::{CONFIGURATION_LABEL, Configuration, ConfigurationStatus, INSTANCE_LABEL, Instance},
    validate,
};

const MANAGER: &str = "dowser-controller";
/// Annotation with the node a broker pod was placed on.
const NODE_ANNOTATION: &str = "dowser.dev/node";

/// Options of `dowser controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// This replica's identity in the leader Lease and in Events (the pod name in a
    /// Deployment). Default: host name and process id.
    #[arg(long, env = "POD_NAME")]
    pub instance_name: Option<String>,
    /// Namespace of the leader Lease `dowser-controller`.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// How long a leader's Lease lasts without renewal, in seconds; a standby takes over
    /// within about this time after the leader dies.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "DOWSER_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: String,
}

/// Counters of the controller, for `/metrics`.
#[derive(Default)]
struct Metrics {
    leader: AtomicBool,
    reconciles: AtomicU64,
    errors: AtomicU64,
    brokers_created: AtomicU64,
    brokers_removed: AtomicU64,
}

impl Metrics {
    fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        out.push_str("# HELP dowser_controller_leader Whether this replica leads.\n# TYPE dowser_controller_leader gauge\n");
        out.push_str(&format!(
            "dowser_controller_leader {}\n",
            u8::from(self.leader.load(Ordering::Relaxed))
        ));
        for (name, help, v) in [
            (
                "dowser_controller_reconciles_total",
                "Configurations reconciled.",
                g(&self.reconciles),
            ),
            (
                "dowser_controller_reconcile_errors_total",
                "Reconciles that failed.",
                g(&self.errors),
            ),
            (
                "dowser_controller_brokers_created_total",
                "Broker pods created.",
                g(&self.brokers_created),
            ),
            (
                "dowser_controller_brokers_removed_total",
                "Broker pods removed or replaced.",
                g(&self.brokers_removed),
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            ));
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Backoff of the controller's watches after an error: 0.5 s, doubling up to 5 s, back to
/// 0.5 s once events flow. Only the leader watches, so the short cap costs the API server
/// little; with the watcher's default (up to 30 s, reset after 2 min of quiet) the
/// controller took a minute or more to see the changes made during an API server outage.
fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .without_max_times()
        .into()
}

/// Failed brokers: when each may be replaced again.
#[derive(Default)]
struct Backoff {
    failures: HashMap<(String, String), (u32, Instant)>,
}

impl Backoff {
    /// Records a failure; returns how long to wait before replacing the broker.
    fn failed(&mut self, key: (String, String)) -> Duration {
        let entry = self.failures.entry(key).or_insert((0, Instant::now()));
        entry.0 += 1;
        let wait = Duration::from_secs(5 * 2u64.saturating_pow(entry.0.min(6) - 1))
            .min(Duration::from_secs(300));
        entry.1 = Instant::now() + wait;
        wait
    }

    fn wait_left(&self, key: &(String, String)) -> Option<Duration> {
        self.failures
            .get(key)
            .and_then(|(_, until)| until.checked_duration_since(Instant::now()))
    }
}

struct Ctx {
    client: Client,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    backoff: Mutex<Backoff>,
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<i32> {
    let client = crate::client::for_component("controller").await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(&args.health_addr).await?;
    let render = {
        let metrics = metrics.clone();
        Arc::new(move || metrics.render())
    };
    let http = tokio::spawn(crate::telemetry::serve(listener, ready.clone(), render));
    let identity = args.instance_name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    // One leader among the replicas: the others wait for the Lease.
    let lease = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "dowser-controller")
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration_seconds)
        .with_grace((args.lease_duration_seconds / 3).max(1))
        .with_field_manager(MANAGER)
        .build()
        .await?;
    let (mut leader, lease_task) = lease.watch().await;
    // A standby is healthy and ready: it is waiting for its turn.
    ready.store(true, Ordering::Relaxed);
    info!(%identity, "waiting for leadership");
    // A standby stops on SIGTERM as the leader does (the kubelet deletes its pod).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    while !*leader.borrow_and_update() {
        tokio::select! {
            changed = leader.changed() => {
                if changed.is_err() {
                    anyhow::bail!("leader election stopped");
                }
            }
            _ = term.recv() => {
                info!(%identity, "stopping while standing by");
                http.abort();
                return Ok(0);
            }
        }
    }
    info!(%identity, "leading");
    metrics.leader.store(true, Ordering::Relaxed);
    let configs: Api<Configuration> = Api::all(client.clone());
    let instances_api: Api<Instance> = Api::all(client.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: Some(identity.clone()),
        },
    );
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        metrics: metrics.clone(),
        recorder,
        backoff: Mutex::new(Backoff::default()),
    });
    let by_label = |labels: &BTreeMap<String, String>, ns: Option<String>| {
        labels
            .get(CONFIGURATION_LABEL)
            .map(|c| ObjectRef::<Configuration>::new(c).within(&ns.unwrap_or_default()))
    };
    info!("controller running");
    // A Node that goes away concerns every Configuration that may have devices there.
    let node_deletions = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .backoff(watch_backoff())
        .filter_map(|e| async move { matches!(e, Ok(watcher::Event::Delete(_))).then_some(()) });
    Controller::new(configs, watcher::Config::default())
        .watches(
            instances_api,
            watcher::Config::default(),
            move |i: Instance| by_label(i.labels(), i.namespace()),
        )
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(CONFIGURATION_LABEL),
            move |p| by_label(p.labels(), p.namespace()),
        )
        .watches(
            Api::<Job>::all(client.clone()),
            watcher::Config::default().labels(CONFIGURATION_LABEL),
            move |j| by_label(j.labels(), j.namespace()),
        )
        .watches(
            Api::<Service>::all(client.clone()),
            watcher::Config::default().labels(CONFIGURATION_LABEL),
            move |s| by_label(s.labels(), s.namespace()),
        )
        .reconcile_all_on(node_deletions)
        .trigger_backoff(watch_backoff())
        .graceful_shutdown_on(async move {
            tokio::select! {
                _ = async { while leader.changed().await.is_ok() && *leader.borrow() {} } => {
                    warn!("lost leadership: stopping");
                }
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
    http.abort();
    // The leadership receiver went with the controller: the Lease task now releases the
    // Lease, so a replica that starts after this one need not wait for it to expire.
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!(%identity, "Lease released"),
        Ok(Ok(Err(e))) => {
            warn!(%identity, error = %e, "cannot release the Lease; it expires on its own")
        }
        Ok(Err(e)) => warn!(%identity, error = %e, "Lease task failed"),
        Err(_) => warn!(%identity, "Lease not released within 5 s; it expires on its own"),
    }
    Ok(0)
}

fn error_policy(_: Arc<Configuration>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.errors.fetch_add(1, Ordering::Relaxed);
    warn!(%error, "will retry");
    Action::requeue(Duration::from_secs(5))
}

async fn event(ctx: &Ctx, config: &Configuration, type_: EventType, reason: &str, note: String) {
    let e = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&e, &config.object_ref(&())).await {
        warn!(error = %err, "cannot publish event");
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    old: &[Condition],
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

async fn reconcile(config: Arc<Configuration>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
    if config.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = config.namespace().unwrap_or_default();
    let name = config.name_any();
    let old = config.status.clone().unwrap_or_default();
    let generation = config.metadata.generation;
    let errors = validate::spec(&config.spec);
    // Read fresh, not from a cache: a reconcile triggered by an Instance change must see
    // that change (a cache may not have it yet, and nothing would trigger again).
    let instances: Vec<Instance> = Api::<Instance>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("{CONFIGURATION_LABEL}={name}")))
        .await?
        .items;
    if !errors.is_empty() {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let was_accepted = old
            .conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "False" && c.message == message);
        if !was_accepted {
            event(
                &ctx,
                &config,
                EventType::Warning,
                "InvalidConfiguration",
                message.clone(),
            )
            .await;
        }
        let status = ConfigurationStatus {
            observed_generation: generation,
            conditions: vec![
                condition(
                    "Accepted",
                    false,
                    "InvalidConfiguration",
                    &message,
                    generation,
                    &old.conditions,
                ),
                condition(
                    "Ready",
                    false,
                    "InvalidConfiguration",
                    "the Configuration is not valid",
                    generation,
                    &old.conditions,
                ),
            ],
            instances: Some(instances.len() as u32),
            brokers: Some(0),
            nodes: vec![],
        };
        write_status(&ctx, &config, &old, status).await?;
        return Ok(Action::await_change());
    }

    // Nodes that are gone for good can neither leave their Instances nor release their
    // slots: the controller does it for them, so that their brokers move elsewhere.
    let alive: std::collections::BTreeSet<String> = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    let mut instances = instances;
    for instance in &mut instances {
        forget_gone_nodes(&ctx, &config, instance, &alive).await?;
    }
    instances.retain(|i| i.metadata.deletion_timestamp.is_none());

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = ListParams::default().labels(&format!("{CONFIGURATION_LABEL}={name}"));
    let mut requeue: Option<Duration> = None;
    let mut running = 0usize;

    // Broker pods: one per slot, on the node that slot belongs to.
    let existing: BTreeMap<String, Pod> = pods
        .list(&selector)
        .await?
        .items
        .into_iter()
        .filter(brokers::is_slot_broker)
        .map(|p| (p.name_any(), p))
        .collect();
    let mut wanted: BTreeMap<String, (Pod, String)> = BTreeMap::new();
    if let Some(spec) = config
        .spec
        .broker_spec
        .as_ref()
        .and_then(|b| b.broker_pod_spec.as_ref())
    {
        for instance in &instances {
            let status = instance.status.clone().unwrap_or_default();
            for (slot, node) in
                slots::broker_nodes(instance.spec.capacity, &status.nodes, &status.slots)
            {
                if let Some(node) = node {
                    let mut pod = brokers::broker_pod(&config, instance, spec, slot, &node);
                    pod.annotations_mut()
                        .insert(NODE_ANNOTATION.into(), node.clone());
                    wanted.insert(pod.name_any(), (pod, node));
                }
            }
        }
    }
    let desired_pods = wanted.len();
    for (pod_name, (pod, node)) in &wanted {
        let key = (ns.clone(), pod_name.clone());
        match existing.get(pod_name) {
            None => {
                if let Some(wait) = ctx.backoff.lock().expect("backoff").wait_left(&key) {
                    requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
                    continue;
                }
                match pods.create(&PostParams::default(), pod).await {
                    Ok(_) => {
                        ctx.metrics.brokers_created.fetch_add(1, Ordering::Relaxed);
                        info!(pod = %pod_name, %node, "broker created");
                        event(
                            &ctx,
                            &config,
                            EventType::Normal,
                            "BrokerScheduled",
                            format!(
                                "broker {pod_name} for {} on node {node}",
                                pod.labels()[INSTANCE_LABEL]
                            ),
                        )
                        .await;
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(current) if current.metadata.deletion_timestamp.is_some() => {}
            Some(current) => {
                let placed = current.annotations().get(NODE_ANNOTATION);
                let same_spec = current.annotations().get(brokers::SPEC_HASH)
                    == pod.annotations().get(brokers::SPEC_HASH);
                let phase = current
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                if placed != Some(node) {
                    delete_pod(&ctx, &pods, pod_name).await?;
                    event(
                        &ctx,
                        &config,
                        EventType::Normal,
                        "BrokerRehomed",
                        format!("broker {pod_name} moves to node {node}"),
                    )
                    .await;
                } else if !same_spec {
                    delete_pod(&ctx, &pods, pod_name).await?;
                    event(
                        &ctx,
                        &config,
                        EventType::Normal,
                        "BrokerUpdated",
                        format!("broker {pod_name} restarts with the new broker spec"),
                    )
                    .await;
                } else if phase == "Failed" {
                    let wait = ctx.backoff.lock().expect("backoff").failed(key);
                    delete_pod(&ctx, &pods, pod_name).await?;
                    event(
                        &ctx,
                        &config,
                        EventType::Warning,
                        "BrokerFailed",
                        format!("broker {pod_name} failed; replaced in {}s", wait.as_secs()),
                    )
                    .await;
                    requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
                } else if phase == "Running" {
                    running += 1;
                }
            }
        }
    }
    for (pod_name, pod) in &existing {
        let on_gone_node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| !alive.contains(n));
        if on_gone_node {
            // No kubelet will ever confirm this deletion, whether the pod is unwanted or its
            // slot moves to another node (same pod name): without it, the slot's broker
            // waits for the pod garbage collector of kube-controller-manager.
            let _ = pods
                .delete(
                    pod_name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::default()
                    },
                )
                .await;
        }
        if !wanted.contains_key(pod_name) && pod.metadata.deletion_timestamp.is_none() {
            delete_pod(&ctx, &pods, pod_name).await?;
            let node = pod
                .annotations()
                .get(NODE_ANNOTATION)
                .cloned()
                .unwrap_or_default();
            let instance = pod
                .labels()
                .get(INSTANCE_LABEL)
                .cloned()
                .unwrap_or_default();
            let device_still_there = instances.iter().any(|i| i.name_any() == instance);
            if device_still_there {
                // Its node no longer sees the device: the slot is freed, then the broker is
                // made again where the device is still seen.
                info!(pod = %pod_name, %node, "broker leaves a node that lost the device");
                event(
                    &ctx,
                    &config,
                    EventType::Normal,
                    "BrokerRehomed",
                    format!(
                        "broker {pod_name} leaves node {node}, which no longer sees {instance}"
                    ),
                )
                .await;
            } else {
                info!(pod = %pod_name, "broker removed");
                event(
                    &ctx,
                    &config,
                    EventType::Normal,
                    "BrokerRemoved",
                    format!("broker {pod_name}: {instance} is gone"),
                )
                .await;
            }
        }
    }

    // Job brokers: one Job per Instance and broker spec.
    let existing_jobs: Vec<Job> = jobs.list(&selector).await?.items;
    let mut wanted_jobs = Vec::new();
    if let Some(spec) = config
        .spec
        .broker_spec
        .as_ref()
        .and_then(|b| b.broker_job_spec.as_ref())
    {
        for instance in &instances {
            wanted_jobs.push(brokers::broker_job(&config, instance, spec));
        }
    }
    for job in &wanted_jobs {
        if !existing_jobs.iter().any(|j| j.name_any() == job.name_any()) {
            match jobs.create(&PostParams::default(), job).await {
                Ok(_) => {
                    event(
                        &ctx,
                        &config,
                        EventType::Normal,
                        "BrokerJobCreated",
                        format!("job {}", job.name_any()),
                    )
                    .await
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    for job in &existing_jobs {
        if !wanted_jobs.iter().any(|w| w.name_any() == job.name_any()) {
            let dp = DeleteParams::background();
            let _ = jobs.delete(&job.name_any(), &dp).await;
        }
    }
    let jobs_alive = existing_jobs
        .iter()
        .filter(|j| wanted_jobs.iter().any(|w| w.name_any() == j.name_any()))
        .count();

    // Services.
    let mut wanted_services = Vec::new();
    if let Some(spec) = &config.spec.instance_service_spec {
        wanted_services.extend(
            instances
                .iter()
                .map(|i| brokers::instance_service(&config, i, spec)),
        );
    }
    if let Some(spec) = &config.spec.configuration_service_spec
        && !instances.is_empty()
    {
        wanted_services.push(brokers::configuration_service(&config, spec));
    }
    for svc in &wanted_services {
        let mut body = serde_json::to_value(svc).unwrap_or_default();
        body["apiVersion"] = json!("v1");
        body["kind"] = json!("Service");
        services
            .patch(
                &svc.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(body),
            )
            .await?;
    }
    for svc in services.list(&selector).await?.items {
        if !wanted_services
            .iter()
            .any(|w| w.name_any() == svc.name_any())
        {
            let _ = services
                .delete(&svc.name_any(), &DeleteParams::default())
                .await;
        }
    }

    let brokers = if wanted_jobs.is_empty() {
        running
    } else {
        jobs_alive
    };
    let (ready, reason, message) = match &config.spec.broker_spec {
        None => (
            true,
            "NoBrokers",
            "devices are advertised; no broker is requested".to_string(),
        ),
        Some(_) if !wanted_jobs.is_empty() => (
            true,
            "JobsCreated",
            format!("{} broker Jobs", wanted_jobs.len()),
        ),
        Some(_) if desired_pods == 0 => (false, "NoDevices", "no device found yet".to_string()),
        Some(_) => (
            running == desired_pods,
            if running == desired_pods {
                "BrokersRunning"
            } else {
                "BrokersStarting"
            },
            format!("{running} of {desired_pods} broker pods running"),
        ),
    };
    let status = ConfigurationStatus {
        observed_generation: generation,
        conditions: vec![
            condition(
                "Accepted",
                true,
                "Valid",
                "the Configuration is valid",
                generation,
                &old.conditions,
            ),
            condition(
                "Ready",
                ready,
                reason,
                &message,
                generation,
                &old.conditions,
            ),
        ],
        instances: Some(instances.len() as u32),
        brokers: Some(brokers as u32),
        nodes: vec![],
    };
    write_status(&ctx, &config, &old, status).await?;
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Removes nodes that no longer exist from an Instance's `status.nodes` and their claims from
/// `status.slots` (with the Instance's resourceVersion as a precondition); deletes the
/// Instance when no node is left.
async fn forget_gone_nodes(
    ctx: &Ctx,
    config: &Configuration,
    instance: &mut Instance,
    alive: &std::collections::BTreeSet<String>,
) -> Result<(), kube::Error> {
    let status = instance.status.clone().unwrap_or_default();
    let gone: std::collections::BTreeSet<String> = status
        .nodes
        .iter()
        .chain(status.slots.values())
        .filter(|n| !alive.contains(*n))
        .cloned()
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    let api: Api<Instance> = Api::namespaced(
        ctx.client.clone(),
        &instance.namespace().unwrap_or_default(),
    );
    let name = instance.name_any();
    let nodes: Vec<&String> = status.nodes.iter().filter(|n| !gone.contains(*n)).collect();
    if nodes.is_empty() {
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: instance.uid(),
                resource_version: instance.resource_version(),
            }),
            ..DeleteParams::default()
        };
        api.delete(&name, &dp).await?;
        instance.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    } else {
        let slots: serde_json::Map<String, serde_json::Value> = status
            .slots
            .iter()
            .filter(|(_, n)| gone.contains(*n))
            .map(|(s, _)| (s.clone(), serde_json::Value::Null))
            .collect();
        let patch = json!({
            "metadata": {"resourceVersion": instance.resource_version()},
            "status": {"nodes": nodes, "slots": slots},
        });
        *instance = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    let gone: Vec<String> = gone.into_iter().collect();
    info!(instance = %name, nodes = ?gone, "nodes that no longer exist removed");
    event(
        ctx,
        config,
        EventType::Normal,
        "NodeGone",
        format!(
            "{name}: node(s) {} no longer exist; their slots are freed",
            gone.join(", ")
        ),
    )
    .await;
    Ok(())
}

async fn delete_pod(ctx: &Ctx, pods: &Api<Pod>, name: &str) -> Result<(), kube::Error> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            ctx.metrics.brokers_removed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes the controller's part of the status (conditions and counts) when it changed.
async fn write_status(
    ctx: &Ctx,
    config: &Configuration,
    old: &ConfigurationStatus,
    new: ConfigurationStatus,
) -> Result<(), kube::Error> {
    let same = old.observed_generation == new.observed_generation
        && old.instances == new.instances
        && old.brokers == new.brokers
        && new.conditions.iter().all(|c| {
            old.conditions.iter().any(|o| {
                o.type_ == c.type_
                    && o.status == c.status
                    && o.reason == c.reason
                    && o.message == c.message
                    && o.observed_generation == c.observed_generation
            })
        });
    if same {
        return Ok(());
    }
    let api: Api<Configuration> =
        Api::namespaced(ctx.client.clone(), &config.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": "dowser.dev/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": config.name_any()},
        "status": {
            "observedGeneration": new.observed_generation,
            "conditions": new.conditions,
            "instances": new.instances,
            "brokers": new.brokers,
        },
    });
    api.patch_status(
        &config.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn watches_back_off_to_five_seconds_and_start_over_once_events_flow() {
        let mut b = watch_backoff();
        let waits: Vec<u64> = b.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }
}
