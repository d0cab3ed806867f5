//! fake-kubelet: what a kubelet does for dowser's end-to-end tests, without containers.
//! It follows the Kubernetes 1.35 kubelet; tests/fake-kubelet/README.md lists each behaviour
//! with the kubelet source it follows, and the flags.
//!
//! - registers a Node and keeps its Lease fresh; computes the node status every
//!   `--node-status-update-frequency` (10 s) with device-plugin capacity (all devices) and
//!   allocatable (healthy devices); a stopped plugin's devices stay in capacity, allocatable
//!   0, for `--endpoint-stop-grace-period` (5 minutes), then 0 for good;
//! - serves the device-plugin Registration service in `<root>/device-plugins/kubelet.sock`:
//!   dials each plugin and reads its options before answering, then follows its ListAndWatch;
//! - admits pods bound to the node: the device manager allocates each container's devices
//!   (init containers first, limits only, Allocate without a deadline), then the general
//!   predicates check the fit on the node's allocatable; failures are the pod's
//!   UnexpectedAdmissionError or OutOf<resource>; what each container got is recorded in the
//!   pod annotation `fake-kubelet.dowser.dev/allocations`;
//! - runs imaginary containers (`sleep N`, `true`, `false` complete; anything else runs),
//!   restarts them per the restart policy with the devices they had, and frees the devices of
//!   pods that completed or were deleted once their containers stopped (preStop hooks run);
//! - serves PodResources (List of active pods, GetAllocatableResources of healthy devices,
//!   Get behind `KubeletPodResourcesGet`) in `<root>/pod-resources/kubelet.sock`;
//! - on SIGUSR1, restarts like a kubelet: every plugin socket is deleted and registrations
//!   are dropped, so plugins must register again;
//! - started again on the same root directory, resumes from its checkpoint: pods whose
//!   containers still run (`<root>/run`, the runtime's state) are adopted; after a node
//!   reboot (that state gone) pods bound to the node are admitted again, and fail with
//!   UnexpectedAdmissionError while the plugins of their devices have not registered again.

mod devices;
mod node;
mod podresources;
mod pods;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use clap::Parser;
use dowser::deviceplugin::{
    bind_unix, podresources::pod_resources_lister_server::PodResourcesListerServer,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

#[derive(Parser, Debug)]
struct Args {
    /// Kubeconfig of the cluster.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Name of the Node to register.
    #[arg(long)]
    node_name: String,
    /// Directory standing in for /var/lib/kubelet (device-plugins/ and pod-resources/).
    #[arg(long)]
    root_dir: PathBuf,
    /// Node labels, `key=value` (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    #[arg(long, default_value = "4")]
    cpu: String,
    #[arg(long, default_value = "8Gi")]
    memory: String,
    #[arg(long, default_value = "110")]
    pods: String,
    /// How often the node status is computed, in seconds (the kubelet's
    /// `nodeStatusUpdateFrequency`); a changed status is posted then.
    #[arg(long, value_name = "SECONDS", default_value = "10")]
    node_status_update_frequency: f64,
    /// How long a stopped plugin's devices stay in the node's capacity, in seconds. The
    /// kubelet's `endpointStopGracePeriod` is a constant 5 minutes; this flag exists only so
    /// that tests need not wait that long.
    #[arg(long, value_name = "SECONDS", default_value = "300")]
    endpoint_stop_grace_period: f64,
    /// Feature gates, `Name=true|false` separated by commas, as the kubelet's
    /// `--feature-gates`. Known: KubeletPodResourcesGet (beta in 1.35, on by default).
    #[arg(long, value_delimiter = ',')]
    feature_gates: Vec<String>,
}

async fn client(kubeconfig: &PathBuf) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let labels: BTreeMap<String, String> = args
        .labels
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let client = client(&args.kubeconfig).await?;
    let plugin_dir = args.root_dir.join("device-plugins");
    let resources_dir = args.root_dir.join("pod-resources");
    std::fs::create_dir_all(&resources_dir)?;
    let mut get_enabled = true;
    for gate in &args.feature_gates {
        match gate.split_once('=') {
            Some(("KubeletPodResourcesGet", v)) => get_enabled = v.parse()?,
            _ => anyhow::bail!("unknown feature gate {gate:?}"),
        }
    }
    let devices = devices::DeviceManager::new(
        plugin_dir,
        Duration::from_secs_f64(args.endpoint_stop_grace_period),
    );
    devices.remove_sockets()?;
    devices.start().await?;

    let active = pods::ActivePods::default();
    let lister = tonic::transport::Server::builder()
        .add_service(PodResourcesListerServer::new(podresources::Lister {
            devices: devices.clone(),
            pods: active.clone(),
            get_enabled,
        }))
        .serve_with_incoming(bind_unix(&resources_dir.join("kubelet.sock"))?);
    let node_spec = node::NodeSpec {
        name: args.node_name.clone(),
        labels,
        cpu: args.cpu,
        memory: args.memory,
        pods: args.pods,
        status_every: Duration::from_secs_f64(args.node_status_update_frequency),
    };
    let mut restart = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut node_task = tokio::spawn(node::run(
        client.clone(),
        node_spec.clone(),
        devices.clone(),
    ));
    let runtime = pods::Runtime::new(args.root_dir.join("run"))?;
    let mut pod_task = tokio::spawn(pods::run(pods::Kubelet {
        client: client.clone(),
        node: args.node_name.clone(),
        devices: devices.clone(),
        runtime,
        active,
        sources_ready: Default::default(),
    }));
    let mut lister_task = tokio::spawn(lister);
    info!(node = %args.node_name, "fake kubelet running");
    println!("ready");
    loop {
        tokio::select! {
            _ = restart.recv() => {
                // A new kubelet process: its node status loop starts over and posts at once
                // (`wait.JitterUntil` runs `syncNodeStatus` first, then every period).
                node_task.abort();
                devices.restart().await?;
                node_task = tokio::spawn(node::run(client.clone(), node_spec.clone(), devices.clone()));
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            r = &mut node_task => anyhow::bail!("node task stopped: {r:?}"),
            r = &mut pod_task => anyhow::bail!("pod task stopped: {r:?}"),
            r = &mut lister_task => anyhow::bail!("pod-resources server stopped: {r:?}"),
        }
    }
    Ok(())
}
