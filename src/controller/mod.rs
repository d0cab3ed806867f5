//! `dowser controller`: turns Instances into broker workloads next to the hardware, keeps
//! Services in front of them, and reports each Configuration's state in its status.
//!
//! Reading order: [`reconcile`] (the steps of one pass), [`plan`] (every rule, pure and
//! unit-tested), [`apply`] (what each planned action does to the cluster), [`status`] and
//! [`metrics`]. This module wires them up: leader election, watches, the HTTP endpoint.

mod apply;
mod backoff;
pub mod brokers;
mod error;
mod metrics;
mod placement;
mod plan;
mod reconcile;
mod status;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Node, Pod, Service},
};
use kube::{
    Api, Client, ResourceExt,
    api::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt, controller,
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use tokio::{signal::unix, sync::watch, task::JoinHandle};
use tracing::{info, warn};

pub use error::Error;

use self::{
    backoff::Backoff,
    metrics::Metrics,
    reconcile::{Ctx, error_policy, reconcile},
};
use crate::crd::{CONFIGURATION_LABEL, Configuration, DeviceApproval, Instance};

/// The controller's field manager, Lease name and Event reporter.
const MANAGER: &str = "dowser-controller";

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
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..))]
    pub lease_duration_seconds: u64,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "DOWSER_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: String,
    /// How broker pods and Jobs ask for their device: the Instance's extended resource
    /// (device plugins), or a ResourceClaim from the Instance's ResourceClaimTemplate (DRA,
    /// with the agents in `dra` mode).
    #[arg(long, env = "DOWSER_BROKER_DEVICES", value_enum, default_value_t = brokers::BrokerDevices::DevicePlugin)]
    pub broker_devices: brokers::BrokerDevices,
    /// How many Configurations are reconciled at once. Each reconcile holds the lists of
    /// its Configuration's Instances and workloads, so this bounds the controller's memory
    /// and its share of the API server while thousands of devices arrive.
    #[arg(long, env = "DOWSER_CONTROLLER_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
}

/// The task that holds the Lease, and renews or releases it.
type LeaseTask = JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>;

pub async fn run(args: ControllerArgs) -> anyhow::Result<i32> {
    let client = crate::client::for_component("controller").await?;
    if args.broker_devices == brokers::BrokerDevices::Dra {
        crate::apiserver::require::<k8s_openapi::api::resource::v1::ResourceClaimTemplate>(
            &client,
            "--broker-devices dra gives brokers ResourceClaims from ResourceClaimTemplates \
             (resource.k8s.io/v1, Kubernetes 1.34 and later); on this cluster run the \
             controller with --broker-devices devicePlugin (the chart's agent.mode: \
             devicePlugin)",
        )
        .await?;
    }
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
    let (mut leader, lease_task) = lease(&client, &args, &identity).await?;
    // A standby is healthy and ready: it is waiting for its turn.
    ready.store(true, Ordering::Relaxed);
    let mut term = unix::signal(unix::SignalKind::terminate())?;
    if !wait_for_leadership(&mut leader, &mut term, &identity).await? {
        http.abort();
        return Ok(0);
    }
    info!(%identity, "leading");
    metrics.set_leader(true);
    control(client, metrics, &identity, &args, leader, term).await;
    http.abort();
    release(lease_task, &identity).await;
    Ok(0)
}

/// One leader among the replicas: the others wait for the Lease.
async fn lease(
    client: &Client,
    args: &ControllerArgs,
    identity: &str,
) -> anyhow::Result<(watch::Receiver<bool>, LeaseTask)> {
    let lease = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), MANAGER)
        .with_namespace(&args.lease_namespace)
        .with_identity(identity)
        .with_duration(args.lease_duration_seconds)
        .with_grace(renew_slack(args.lease_duration_seconds))
        .with_field_manager(crate::naming::lease_field_manager(identity))
        .build()
        .await?;
    Ok(lease.watch().await)
}

/// How long before the Lease expires the leader renews it: two thirds of its duration, so
/// the leader renews after a third and a renewal has two thirds of the Lease to get through a
/// busy API server before a standby may take over (client-go's defaults leave 10 s of 15).
fn renew_slack(lease_seconds: u64) -> u64 {
    (lease_seconds * 2 / 3).clamp(1, lease_seconds - 1)
}

/// Waits until this replica leads (true) or is told to stop first (false). A standby
/// stops on SIGTERM as the leader does (the kubelet deletes its pod).
async fn wait_for_leadership(
    leader: &mut watch::Receiver<bool>,
    term: &mut unix::Signal,
    identity: &str,
) -> anyhow::Result<bool> {
    info!(%identity, "waiting for leadership");
    while !*leader.borrow_and_update() {
        tokio::select! {
            changed = leader.changed() => {
                if changed.is_err() {
                    anyhow::bail!("leader election stopped");
                }
            }
            _ = term.recv() => {
                info!(%identity, "stopping while standing by");
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Reconciles every Configuration on changes to it and to what it owns, until leadership is
/// lost or the process is told to stop.
async fn control(
    client: Client,
    metrics: Arc<Metrics>,
    identity: &str,
    args: &ControllerArgs,
    mut leader: watch::Receiver<bool>,
    mut term: unix::Signal,
) {
    let (nodes, node_deletions) = watch_nodes(&client);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: Some(identity.to_string()),
        },
    );
    let gauge = metrics.clone();
    let controller = Controller::new(
        Api::<Configuration>::all(client.clone()),
        watcher::Config::default(),
    );
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        metrics,
        recorder,
        backoff: Mutex::new(Backoff::default()),
        broker_devices: args.broker_devices,
        nodes,
        configurations: controller.store(),
    });
    // The label holds the Configuration's name, or a shortened one for names over 63
    // characters: those are looked up among the Configurations of the namespace.
    let configurations = controller.store();
    let by_label = move |labels: &BTreeMap<String, String>, ns: Option<String>| {
        let label = labels.get(CONFIGURATION_LABEL)?;
        let ns = ns.unwrap_or_default();
        let name = if crate::naming::is_shortened(label) {
            configurations
                .state()
                .iter()
                .find(|c| {
                    c.namespace().as_deref() == Some(ns.as_str())
                        && crate::naming::configuration_label(&c.name_any()) == *label
                })?
                .name_any()
        } else {
            label.clone()
        };
        Some(ObjectRef::<Configuration>::new(&name).within(&ns))
    };
    let owned = watcher::Config::default().labels(CONFIGURATION_LABEL);
    info!("controller running");
    let (on_pod, on_job) = (by_label.clone(), by_label.clone());
    controller
        .watches(
            Api::<Instance>::all(client.clone()),
            watcher::Config::default(),
            move |i| {
                let ns = i.namespace().unwrap_or_default();
                Some(ObjectRef::<Configuration>::new(&i.spec.configuration_name).within(&ns))
            },
        )
        // An approval given or revoked concerns the Configuration it names.
        .watches(
            Api::<DeviceApproval>::all(client.clone()),
            watcher::Config::default(),
            move |a| {
                let ns = a.namespace().unwrap_or_default();
                Some(ObjectRef::<Configuration>::new(&a.spec.configuration_name).within(&ns))
            },
        )
        .watches(Api::<Pod>::all(client.clone()), owned.clone(), move |p| {
            on_pod(p.labels(), p.namespace())
        })
        .watches(Api::<Job>::all(client.clone()), owned.clone(), move |j| {
            on_job(j.labels(), j.namespace())
        })
        .watches(Api::<Service>::all(client), owned, move |s| {
            by_label(s.labels(), s.namespace())
        })
        // A Node that goes away concerns every Configuration that may have devices there.
        .reconcile_all_on(node_deletions)
        .trigger_backoff(crate::apiserver::watch_backoff())
        .with_config(controller::Config::default().concurrency(args.concurrency))
        .graceful_shutdown_on(async move {
            tokio::select! {
                _ = async { while leader.changed().await.is_ok() && *leader.borrow() {} } => {
                    // Said at once: in-flight reconciles still finish before the exit.
                    gauge.set_leader(false);
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
}

/// The Nodes (names only) in a store, and a stream that yields when one is deleted. The
/// store fills as the controller polls the stream.
fn watch_nodes(
    client: &Client,
) -> (
    reflector::Store<PartialObjectMeta<Node>>,
    impl Stream<Item = ()> + Send + 'static,
) {
    let (store, writer) = reflector::store();
    let deletions = watcher(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        watcher::Config::default(),
    )
    .backoff(crate::apiserver::watch_backoff())
    // Only the name matters: the rest of a Node's metadata would cost memory per node.
    .modify(|node| {
        node.managed_fields_mut().clear();
        node.labels_mut().clear();
        node.annotations_mut().clear();
    })
    .reflect(writer)
    .filter_map(|e| async move { matches!(e, Ok(watcher::Event::Delete(_))).then_some(()) });
    (store, deletions)
}

/// The leadership receiver went with the controller: the Lease task now releases the
/// Lease, so a replica that starts after this one need not wait for it to expire.
async fn release(lease_task: LeaseTask, identity: &str) {
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!(%identity, "Lease released"),
        Ok(Ok(Err(e))) => {
            warn!(%identity, error = %e, "cannot release the Lease; it expires on its own")
        }
        Ok(Err(e)) => warn!(%identity, error = %e, "Lease task failed"),
        Err(_) => warn!(%identity, "Lease not released within 5 s; it expires on its own"),
    }
}

#[cfg(test)]
mod tests {
    use super::renew_slack;

    #[test]
    fn the_leader_renews_a_third_into_its_lease() {
        for (lease, slack) in [(2, 1), (3, 2), (4, 2), (6, 4), (15, 10), (60, 40)] {
            assert_eq!(renew_slack(lease), slack, "lease of {lease} s");
            assert!(renew_slack(lease) < lease);
        }
    }
}
