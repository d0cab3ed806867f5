//! `dowser agent`: runs on every node (DaemonSet). Watches the Configurations that select
//! this node, runs their discovery, writes this node's part of each Instance, and offers
//! each Instance to the kubelet as a device-plugin resource, as devices of the DRA driver
//! `dowser.dev`, or both ([`crate::dra::Mode`]).

mod instances;
mod metrics;
pub mod node_status;
mod plugins;
pub mod presence;
pub mod rounds;
pub mod selector;
pub mod slots;
mod worker;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{core::v1::Node, resource::v1::ResourceSlice};
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::{
    crd::{Configuration, Instance},
    deviceplugin, dra, handlers, validate,
};

/// Options of `dowser agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// This node's name (from the downward API in the DaemonSet).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The kubelet's device-plugin directory.
    #[arg(long, env = "DOWSER_DEVICE_PLUGIN_DIR", default_value = deviceplugin::DEVICE_PLUGIN_DIR)]
    pub device_plugin_dir: PathBuf,
    /// The kubelet's PodResources socket.
    #[arg(long, env = "DOWSER_POD_RESOURCES_SOCKET", default_value = deviceplugin::POD_RESOURCES_SOCKET)]
    pub pod_resources_socket: PathBuf,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "DOWSER_HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    pub health_addr: String,
    /// A claimed slot is released once no pod has held it for this many seconds.
    #[arg(long, default_value_t = 30)]
    pub slot_release_grace_seconds: u64,
    /// How often the kubelet's PodResources is read, in seconds.
    #[arg(long, default_value_t = 5)]
    pub pod_resources_interval_seconds: u64,
    /// How often this node's status is checked for `dowser.dev/` resources the kubelet has
    /// forgotten (left at 0), which are then removed, in seconds.
    #[arg(long, default_value_t = 60)]
    pub node_status_sweep_seconds: u64,
    /// The discovery handlers this node runs, comma-separated (default: every handler built
    /// into this binary). The node refuses a Configuration of another handler and says so
    /// in the Configuration's status.
    #[arg(
        long,
        env = "DOWSER_HANDLERS",
        value_delimiter = ',',
        value_parser = clap::builder::PossibleValuesParser::new(handlers::BUILT_IN.iter().copied()),
    )]
    pub handlers: Option<Vec<String>>,
    /// How devices are offered to the kubelet: device plugins (extended resources), DRA
    /// (ResourceSlices of driver `dowser.dev` and a kubelet DRA plugin), or both.
    #[arg(long, env = "DOWSER_AGENT_MODE", value_enum, default_value_t = dra::Mode::DevicePlugin)]
    pub mode: dra::Mode,
    /// The kubelet's plugin directory; the DRA plugin's socket is `<dir>/dowser.dev/dra.sock`.
    #[arg(long, env = "DOWSER_KUBELET_PLUGINS_DIR", default_value = dra::PLUGINS_DIR)]
    pub kubelet_plugins_dir: PathBuf,
    /// The kubelet's plugin registry, watched by the kubelet for plugins to register.
    #[arg(long, env = "DOWSER_PLUGINS_REGISTRY_DIR", default_value = dra::PLUGINS_REGISTRY_DIR)]
    pub plugins_registry_dir: PathBuf,
    /// The directory of the discovery handlers that run outside the agent: the agent hosts
    /// the registration socket `agent-registration.sock` here and remembers registrations in
    /// `dowser-registrations.json`; handlers usually put their own sockets here. Akri's
    /// handlers find it by the same variable (set it to `/var/lib/akri` for Akri's layout).
    #[arg(
        long,
        env = "DISCOVERY_HANDLERS_DIRECTORY",
        default_value = "/var/lib/dowser/handlers"
    )]
    pub handlers_dir: PathBuf,
    /// Where the container runtime reads CDI specs; prepared claims' specs are written here.
    #[arg(long, env = "DOWSER_CDI_DIR", default_value = dra::CDI_DIR)]
    pub cdi_dir: PathBuf,
}

/// How long the device plugins get to remove their sockets at shutdown.
const PLUGINS_STOP: Duration = Duration::from_secs(5);
/// How soon ResourceSlices are written again after a write failed.
const PUBLISH_RETRY: Duration = Duration::from_secs(5);

struct RunningWorker {
    fingerprint: String,
    stop: oneshot::Sender<worker::Stop>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    /// Tells the worker why it stops and waits until it has.
    async fn stop(self, key: &(String, String), reason: worker::Stop) {
        let configuration = format!("{}/{}", key.0, key.1);
        if self.stop.send(reason).is_err() {
            debug!(%configuration, "discovery had ended already");
        }
        if let Err(e) = self.task.await {
            warn!(%configuration, error = %e, "discovery ended abnormally");
        }
    }
}

/// What a Configuration must be for this node to discover with it.
fn fingerprint(config: &Configuration) -> String {
    serde_json::to_string(&config.spec).unwrap_or_default()
}

/// Why this node does not run a Configuration, if it does not. `enabled`: the handlers this
/// node runs (`None`: all).
fn refusal(config: &Configuration, enabled: Option<&[String]>) -> Option<String> {
    let mut errors = validate::spec(&config.spec);
    if let Ok(selected) = config.spec.discovery.selected() {
        match enabled {
            Some(list) if !list.iter().any(|h| h == selected.name()) => {
                errors.push(dowser_discovery_api::FieldError::new(
                    format!("spec.discovery.{}", selected.name()),
                    format!(
                        "the {} discovery handler is not enabled on this node (agent --handlers {})",
                        selected.name(),
                        list.join(",")
                    ),
                ));
            }
            _ => errors.extend(handlers::validate(selected, "spec.discovery")),
        }
    }
    (!errors.is_empty()).then(|| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

pub async fn run(args: AgentArgs) -> anyhow::Result<i32> {
    if args.mode.device_plugins() {
        plugins::check_dir(&args.device_plugin_dir)?;
    }
    let client = crate::client::for_component("agent").await?;
    if args.mode.dra() {
        crate::apiserver::require::<ResourceSlice>(
            &client,
            "the agent's DRA mode publishes ResourceSlices (resource.k8s.io/v1, Kubernetes 1.34 \
             and later); on this cluster run it with --mode devicePlugin (the chart's \
             agent.mode: devicePlugin)",
        )
        .await?;
    }
    let node = args.node_name.clone();
    let metrics = Arc::new(metrics::Metrics::default());
    let listener = tokio::net::TcpListener::bind(&args.health_addr).await?;
    info!(addr = %listener.local_addr()?, "health and metrics endpoint");
    let render = {
        let metrics = metrics.clone();
        std::sync::Arc::new(move || metrics.render())
    };
    let http = tokio::spawn(crate::telemetry::serve(
        listener,
        metrics.ready.clone(),
        render,
    ));

    // The watches run on their own tasks (a reflector fills its cache only while polled);
    // the loop below hears of changes through these channels.
    let (config_store, config_writer) = reflector::store();
    let (instance_store, instance_writer) = reflector::store();
    let (config_tx, mut config_events) = mpsc::unbounded_channel::<()>();
    let (instance_tx, mut instance_events) = mpsc::unbounded_channel::<()>();
    let (slice_store, slice_writer) = reflector::store::<ResourceSlice>();
    let (slice_tx, mut slice_events) = mpsc::unbounded_channel::<()>();
    let (node_tx, mut node_events) =
        mpsc::unbounded_channel::<(BTreeMap<String, String>, node_status::Entries)>();
    let part = Arc::new(instances::NodeInstances::new(
        client.clone(),
        &node,
        metrics.clone(),
    ));
    // The cache holds the Instances this node takes part in, selected by its label; those
    // written before nodes labelled them get the label first (a paged list, once per start).
    let mut backoff = crate::apiserver::watch_backoff();
    while let Err(e) = part.label_unlabelled().await {
        warn!(error = %e, "cannot label this node's Instances yet; trying again");
        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
    }
    let mut watches = vec![
        tokio::spawn(forward(
            watcher(
                Api::<Configuration>::all(client.clone()),
                watcher::Config::default(),
            )
            .backoff(crate::apiserver::watch_backoff())
            .modify(forget_managed_fields)
            .reflect(config_writer)
            .touched_objects()
            .map(|r| r.map(|_| ())),
            config_tx,
            "configuration",
        )),
        tokio::spawn(forward(
            watcher(
                Api::<Instance>::all(client.clone()),
                watcher::Config::default().labels(part.label()),
            )
            .backoff(crate::apiserver::watch_backoff())
            .modify(forget_managed_fields)
            .reflect(instance_writer)
            .touched_objects()
            .map(|r| r.map(|_| ())),
            instance_tx,
            "instance",
        )),
        tokio::spawn(forward(
            watcher(
                Api::<Node>::all(client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={node}")),
            )
            .backoff(crate::apiserver::watch_backoff())
            .touched_objects()
            .map(|r| r.map(|n| (n.labels().clone(), node_status::entries(&n)))),
            node_tx,
            "node",
        )),
    ];
    if args.mode.dra() {
        watches.push(tokio::spawn(forward(
            watcher(
                Api::<ResourceSlice>::all(client.clone()),
                watcher::Config::default().fields(&format!("spec.driver={}", dra::DRIVER)),
            )
            .backoff(crate::apiserver::watch_backoff())
            .modify(forget_managed_fields)
            .reflect(slice_writer)
            .touched_objects()
            .map(|r| r.map(|_| ())),
            slice_tx,
            "resourceslice",
        )));
    }

    // Nothing is decided before the caches hold what the cluster has: a restarted agent
    // adopts its Instances and slots instead of recreating them.
    let mut node_labels: BTreeMap<String, String> = BTreeMap::new();
    let mut node_resources = node_status::Entries::new();
    config_store.wait_until_ready().await?;
    instance_store.wait_until_ready().await?;
    for instance in instance_store.state() {
        part.adopt(&instance).await;
    }
    metrics.cached_instances(instance_store.len());
    let (changed_tx, mut changed_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(worker::Shared {
        client: client.clone(),
        node: node.clone(),
        part: part.clone(),
        instances: instance_store.clone(),
        metrics: metrics.clone(),
        changed: changed_tx,
    });
    let plugins = args.mode.device_plugins().then(|| {
        plugins::Plugins::new(
            &node,
            args.device_plugin_dir.clone(),
            args.pod_resources_socket.clone(),
            Duration::from_secs(args.slot_release_grace_seconds),
            instance_store.clone(),
            config_store.clone(),
            part.clone(),
        )
    });
    if let Some(plugins) = &plugins {
        plugins.sync().await;
    }
    let (dra_stop, dra_stopped) = oneshot::channel::<()>();
    let (publisher, dra_plugin) = if args.mode.dra() {
        slice_store.wait_until_ready().await?;
        let publisher = dra::publisher::Publisher::new(
            client.clone(),
            &node,
            slice_store.clone(),
            instance_store.clone(),
            config_store.clone(),
        );
        let driver = Arc::new(dra::plugin::Driver {
            client: client.clone(),
            node: node.clone(),
            cdi_dir: args.cdi_dir.clone(),
            slices: slice_store.clone(),
            instances: instance_store.clone(),
            configs: config_store.clone(),
        });
        if let Err(e) = driver.remove_stale_specs().await {
            warn!(error = %e, "cannot list ResourceClaims; stale CDI specs are left for now");
        }
        let sockets =
            dra::plugin::Sockets::new(&args.kubelet_plugins_dir, &args.plugins_registry_dir);
        let task = tokio::spawn(dra::plugin::serve(driver, sockets, async {
            dra_stopped.await.unwrap_or(());
        }));
        (Some(publisher), Some(task))
    } else {
        (None, None)
    };
    let (registration_stop, registration_stopped) = oneshot::channel::<()>();
    let registration = start_registration(&args, async {
        registration_stopped.await.unwrap_or(());
    })?;
    metrics.ready.store(true, Ordering::Relaxed);
    info!(%node, "agent ready");

    let mut workers: BTreeMap<(String, String), RunningWorker> = BTreeMap::new();
    let mut refused: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut pod_resources = tokio::time::interval(Duration::from_secs(
        args.pod_resources_interval_seconds.max(1),
    ));
    let mut node_sweep =
        tokio::time::interval(Duration::from_secs(args.node_status_sweep_seconds.max(1)));
    node_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut dirty = true;
    let mut publish = publisher.is_some();
    let mut publish_retry = tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        if publish && let Some(publisher) = &publisher {
            publish = false;
            while slice_events.try_recv().is_ok() {}
            if let Err(e) = publisher.sync().await {
                warn!(error = %e, "cannot publish ResourceSlices; retrying");
                publish_retry = tokio::time::Instant::now() + PUBLISH_RETRY;
            }
        }
        if dirty {
            dirty = false;
            reconcile_workers(
                &shared,
                args.handlers.as_deref(),
                &config_store,
                &node_labels,
                &mut workers,
                &mut refused,
            )
            .await;
        }
        tokio::select! {
            Some(()) = config_events.recv() => {
                dirty = true;
                publish = publisher.is_some();
            }
            Some(()) = slice_events.recv() => publish = true,
            _ = tokio::time::sleep_until(publish_retry) => {
                publish_retry = tokio::time::Instant::now() + Duration::from_secs(3600);
                publish = publisher.is_some();
            }
            Some((labels, resources)) = node_events.recv() => {
                node_resources = resources;
                if labels != node_labels {
                    node_labels = labels;
                    dirty = true;
                }
            }
            Some(()) = instance_events.recv() => {
                while instance_events.try_recv().is_ok() {}
                metrics.cached_instances(instance_store.len());
                if let Some(plugins) = &plugins {
                    plugins.sync().await;
                }
                publish = publisher.is_some();
            }
            Some(()) = changed_rx.recv() => {
                if let Some(plugins) = &plugins {
                    plugins.sync().await;
                }
            }
            _ = pod_resources.tick(), if plugins.is_some() => {
                if let Some(plugins) = &plugins {
                    plugins.check_pod_resources().await;
                }
            }
            _ = node_sweep.tick(), if plugins.is_some() => {
                let Some(plugins) = &plugins else { continue };
                let served = plugins.served().await;
                let removed = node_status::sweep(
                    &client, &node, &node_resources, &served, &args.pod_resources_socket,
                )
                .await;
                if removed > 0 {
                    // Not read again before the watch reports the patched status.
                    node_resources.clear();
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    info!("shutting down; Instances are left for the next agent to adopt");
    for (key, w) in std::mem::take(&mut workers) {
        w.stop(&key, worker::Stop::Shutdown).await;
    }
    // The plugins go with the process (the kubelet marks their devices unhealthy); their
    // sockets go too. The next agent registers them again. The DRA plugin goes the same
    // way; its ResourceSlices and prepared claims' CDI specs stay for the next agent (the
    // kubelet removes the node's slices if no plugin comes back).
    if let Some(plugins) = &plugins
        && tokio::time::timeout(PLUGINS_STOP, plugins.stop_all())
            .await
            .is_err()
    {
        warn!("device plugins did not stop within {PLUGINS_STOP:?}");
    }
    drop(dra_stop);
    drop(registration_stop);
    if let Some(task) = registration {
        let _ = tokio::time::timeout(PLUGINS_STOP, task).await;
    }
    if let Some(task) = dra_plugin
        && tokio::time::timeout(PLUGINS_STOP, task).await.is_err()
    {
        warn!("the DRA plugin did not stop within {PLUGINS_STOP:?}");
    }
    http.abort();
    for w in watches {
        w.abort();
    }
    Ok(0)
}

/// Hosts the registration service of external handlers, when this node runs them.
#[cfg(feature = "external")]
fn start_registration(
    args: &AgentArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let enabled = args
        .handlers
        .as_ref()
        .is_none_or(|list| list.iter().any(|h| h == "external"));
    if !enabled {
        return Ok(None);
    }
    let serving = crate::external::listen(&args.handlers_dir, shutdown).map_err(|e| {
        anyhow::anyhow!(
            "cannot host the discovery handlers' registration socket in {}: {e}",
            args.handlers_dir.display()
        )
    })?;
    Ok(Some(tokio::spawn(serving)))
}

#[cfg(not(feature = "external"))]
fn start_registration(
    _args: &AgentArgs,
    _shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    Ok(None)
}

/// The caches keep no managedFields: nothing here reads them, and they are a large part of
/// each cached object.
fn forget_managed_fields<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// Drives a watch stream, forwarding each item (errors are logged; the watcher retries).
async fn forward<T, S>(stream: S, tx: mpsc::UnboundedSender<T>, what: &'static str)
where
    S: futures::Stream<Item = Result<T, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(v) => {
                if tx.send(v).is_err() {
                    return;
                }
            }
            Err(e) => warn!(error = %e, "{what} watch"),
        }
    }
}

async fn reconcile_workers(
    shared: &Arc<worker::Shared>,
    enabled: Option<&[String]>,
    configs: &reflector::Store<Configuration>,
    labels: &BTreeMap<String, String>,
    workers: &mut BTreeMap<(String, String), RunningWorker>,
    refused: &mut BTreeMap<(String, String), String>,
) {
    let mut wanted: BTreeMap<(String, String), Arc<Configuration>> = BTreeMap::new();
    for config in configs.state() {
        let key = (config.namespace().unwrap_or_default(), config.name_any());
        if config.metadata.deletion_timestamp.is_some()
            || !selector::matches(config.spec.node_selector.as_ref(), labels)
        {
            continue;
        }
        if let Some(why) = refusal(&config, enabled) {
            if refused.get(&key) != Some(&why) {
                warn!(configuration = %format!("{}/{}", key.0, key.1), %why, "not discovering");
                worker::report_refusal(shared, &config, &why).await;
                refused.insert(key.clone(), why);
            }
            continue;
        }
        refused.remove(&key);
        wanted.insert(key, config);
    }
    let keys: Vec<_> = workers.keys().cloned().collect();
    for key in keys {
        let stale = match wanted.get(&key) {
            None => Some(worker::Stop::Deselected),
            Some(c) if fingerprint(c) != workers[&key].fingerprint => Some(worker::Stop::Replaced),
            Some(_) => None,
        };
        if let Some(reason) = stale {
            let w = workers.remove(&key).expect("listed");
            w.stop(&key, reason).await;
            shared.metrics.forget(&key.0, &key.1);
            info!(configuration = %format!("{}/{}", key.0, key.1), ?reason, "discovery stopped");
        }
    }
    for (key, config) in wanted {
        if workers.contains_key(&key) {
            continue;
        }
        let (stop, stop_rx) = oneshot::channel();
        let fp = fingerprint(&config);
        info!(configuration = %format!("{}/{}", key.0, key.1), "discovery started");
        let task = tokio::spawn(worker::run(shared.clone(), config, stop_rx));
        workers.insert(
            key,
            RunningWorker {
                fingerprint: fp,
                stop,
                task,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modbus_config() -> Configuration {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "dowser.dev/v1alpha1",
            "kind": "Configuration",
            "metadata": {"name": "line3", "namespace": "default"},
            "spec": {"discovery": {"modbus": {"targets": ["10.0.7.1"]}}},
        }))
        .unwrap()
    }

    #[test]
    fn a_node_refuses_the_handlers_it_does_not_run() {
        let config = modbus_config();
        let only_ble = ["ble".to_string(), "mdns".to_string()];
        assert_eq!(
            refusal(&config, Some(&only_ble)).as_deref(),
            Some(
                "spec.discovery.modbus: the modbus discovery handler is not enabled on this node \
                 (agent --handlers ble,mdns)"
            )
        );
        let with_modbus = ["modbus".to_string()];
        assert_eq!(refusal(&config, Some(&with_modbus)), None);
        assert_eq!(refusal(&config, None), None);
    }

    #[test]
    fn unknown_handler_names_are_rejected_at_start() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cmd {
            #[command(flatten)]
            agent: AgentArgs,
        }
        let ok = Cmd::try_parse_from(["agent", "--node-name", "a", "--handlers", "modbus,mdns"])
            .unwrap();
        assert_eq!(
            ok.agent.handlers,
            Some(vec!["modbus".to_string(), "mdns".to_string()])
        );
        let err = Cmd::try_parse_from(["agent", "--node-name", "a", "--handlers", "modbus,zigbee"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("invalid value 'zigbee'"), "{err}");
    }
}
