//! fake-kubelet: what a kubelet does for dowser's end-to-end tests, without containers.
//!
//! - registers a Node with capacity and keeps its Ready condition and Lease fresh;
//! - serves the device-plugin Registration service in `<root>/device-plugins/kubelet.sock`,
//!   follows each plugin's ListAndWatch and publishes its devices in the node's capacity
//!   (all) and allocatable (healthy);
//! - admits pods bound to the node like the kubelet's device manager: Allocate for every
//!   device resource a container requests, UnexpectedAdmissionError when that fails, else
//!   Running, with what each container got recorded in the pod annotation
//!   `fake-kubelet.dowser.dev/allocations`; deleted pods release their devices;
//! - serves PodResources (List, Get, GetAllocatableResources) in
//!   `<root>/pod-resources/kubelet.sock`;
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
    /// Post node status (device-plugin capacity) every this many seconds only, as a real
    /// kubelet does (its nodeStatusUpdateFrequency, 10 s by default). Without it the status
    /// is posted as soon as a device plugin's devices change, which keeps tests fast.
    #[arg(long, value_name = "SECONDS")]
    node_status_update_frequency: Option<f64>,
    /// How long a stopped plugin's resource stays known, in seconds, before it is set to 0
    /// for good. The kubelet's `endpointStopGracePeriod` is a constant 5 minutes; this flag
    /// exists only so that tests need not wait that long.
    #[arg(long, value_name = "SECONDS", default_value = "300")]
    endpoint_stop_grace_period: f64,
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
    let devices = devices::DeviceManager::new(plugin_dir);
    devices.remove_sockets()?;
    devices.start().await?;

    let lister = tonic::transport::Server::builder()
        .add_service(PodResourcesListerServer::new(podresources::Lister(
            devices.clone(),
        )))
        .serve_with_incoming(bind_unix(&resources_dir.join("kubelet.sock"))?);
    let node_spec = node::NodeSpec {
        name: args.node_name.clone(),
        labels,
        cpu: args.cpu,
        memory: args.memory,
        pods: args.pods,
        status_every: args
            .node_status_update_frequency
            .map(Duration::from_secs_f64),
        stop_grace: Duration::from_secs_f64(args.endpoint_stop_grace_period),
    };
    let mut restart = signal(SignalKind::user_defined1())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut node_task = tokio::spawn(node::run(client.clone(), node_spec, devices.clone()));
    let runtime = pods::Runtime::new(args.root_dir.join("run"))?;
    let mut pod_task = tokio::spawn(pods::run(
        client,
        args.node_name.clone(),
        devices.clone(),
        runtime,
    ));
    let mut lister_task = tokio::spawn(lister);
    info!(node = %args.node_name, "fake kubelet running");
    println!("ready");
    loop {
        tokio::select! {
            _ = restart.recv() => devices.restart().await?,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            r = &mut node_task => anyhow::bail!("node task stopped: {r:?}"),
            r = &mut pod_task => anyhow::bail!("pod task stopped: {r:?}"),
            r = &mut lister_task => anyhow::bail!("pod-resources server stopped: {r:?}"),
        }
    }
    Ok(())
}
