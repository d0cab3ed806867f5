//! What a kubelet does with the containers of dowser's own pods (the agent DaemonSet and
//! the controller Deployment of `deploy/`) on fake nodes, whose containers never run: each
//! Running pod gets its process (`dowser` with the pod's args and environment, the token of
//! its ServiceAccount, the node's kubelet directories for its host paths), and a pod that
//! is deleted gets SIGTERM, as a kubelet stops a container.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt, api::ListParams};

use crate::common::cluster::{Cluster, FakeKubelet, INSTALL_NAMESPACE};

struct Container {
    pod: String,
    child: Child,
}

#[derive(Default)]
struct State {
    /// pod uid → its running process
    running: BTreeMap<String, Container>,
    /// (pod, exit status) of the processes stopped because their pod was deleted
    stopped: Vec<(String, ExitStatus)>,
    /// (pod, log file) of every process started
    logs: Vec<(String, PathBuf)>,
}

pub struct Workloads {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

/// Where a fake node keeps its kubelet directories, by node name.
#[derive(Clone)]
struct Node {
    plugin_dir: PathBuf,
    pod_resources: PathBuf,
    log_dir: PathBuf,
}

impl Workloads {
    /// Follows the pods of `dowser-system` on these kubelets' nodes.
    pub async fn run(cluster: &Cluster, kubelets: &[&FakeKubelet]) -> Workloads {
        let client = cluster.client().await;
        let nodes: BTreeMap<String, Node> = kubelets
            .iter()
            .map(|k| {
                (
                    k.node.clone(),
                    Node {
                        plugin_dir: k.plugin_dir(),
                        pod_resources: k.pod_resources_socket(),
                        log_dir: k.root.clone(),
                    },
                )
            })
            .collect();
        let identities: BTreeMap<String, PathBuf> = ["dowser-agent", "dowser-controller"]
            .into_iter()
            .map(|sa| (sa.to_string(), cluster.service_account_kubeconfig(sa)))
            .collect();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client, INSTALL_NAMESPACE);
            loop {
                if let Ok(list) = pods.list(&ListParams::default()).await {
                    // Stopping a process waits for it: not on the runtime's threads.
                    let (s, n, i) = (shared.clone(), nodes.clone(), identities.clone());
                    let _ =
                        tokio::task::spawn_blocking(move || sync(&s, &list.items, &n, &i)).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Workloads { state, task }
    }

    /// Pods whose process runs.
    pub fn running(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.running.values().map(|c| c.pod.clone()).collect()
    }

    /// (pod, exit status) of the processes stopped with their pods.
    pub fn stopped(&self) -> Vec<(String, ExitStatus)> {
        self.state.lock().unwrap().stopped.clone()
    }

    pub fn logs(&self) -> String {
        let state = self.state.lock().unwrap();
        state
            .logs
            .iter()
            .map(|(pod, path)| {
                format!(
                    "--- {pod} ---\n{}\n",
                    std::fs::read_to_string(path).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Workloads {
    fn drop(&mut self) {
        self.task.abort();
        let mut state = self.state.lock().unwrap();
        for c in state.running.values_mut() {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }
}

fn sync(
    state: &Mutex<State>,
    pods: &[Pod],
    nodes: &BTreeMap<String, Node>,
    identities: &BTreeMap<String, PathBuf>,
) {
    let mut state = state.lock().unwrap();
    let live: BTreeMap<String, &Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.uid()?, p)))
        .collect();
    // Deleted pods: their containers get SIGTERM, then are waited for.
    let gone: Vec<String> = state
        .running
        .keys()
        .filter(|uid| !live.contains_key(*uid))
        .cloned()
        .collect();
    for uid in gone {
        let mut c = state.running.remove(&uid).unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &c.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = c.child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                // terminationGracePeriodSeconds is over.
                let _ = c.child.kill();
                break c.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        state.stopped.push((c.pod, status));
    }
    // Running pods without a process: start it.
    for (uid, pod) in live {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if !running || state.running.contains_key(&uid) {
            continue;
        }
        let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .and_then(|n| nodes.get(n).map(|k| (n.clone(), k.clone())))
        else {
            continue;
        };
        let (child, log) = start(pod, &node.0, &node.1, identities);
        state.logs.push((pod.name_any(), log));
        state.running.insert(
            uid,
            Container {
                pod: pod.name_any(),
                child,
            },
        );
    }
}

/// Starts the pod's first container as a process.
fn start(
    pod: &Pod,
    node_name: &str,
    node: &Node,
    identities: &BTreeMap<String, PathBuf>,
) -> (Child, PathBuf) {
    let spec = pod.spec.as_ref().unwrap();
    let container = &spec.containers[0];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dowser"));
    cmd.args(container.args.clone().unwrap_or_default());
    for e in container.env.clone().unwrap_or_default() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("spec.nodeName") => node_name.to_string(),
                Some("metadata.name") => pod.name_any(),
                Some("metadata.namespace") => pod.namespace().unwrap_or_default(),
                other => panic!("env {} from {other:?}", e.name),
            },
            _ => String::new(),
        };
        cmd.env(&e.name, value);
    }
    // Every pod of a node shares 127.0.0.1 here: each gets its own port.
    cmd.env("DOWSER_HEALTH_ADDR", crate::common::free_addr().to_string());
    // The host paths of the node.
    cmd.env("DOWSER_DEVICE_PLUGIN_DIR", &node.plugin_dir);
    cmd.env("DOWSER_POD_RESOURCES_SOCKET", &node.pod_resources);
    let handlers = node.plugin_dir.parent().unwrap().join("handlers");
    cmd.env("DISCOVERY_HANDLERS_DIRECTORY", handlers);
    let sa = spec.service_account_name.clone().unwrap_or_default();
    cmd.env(
        "KUBECONFIG",
        identities
            .get(&sa)
            .unwrap_or_else(|| panic!("no identity for ServiceAccount {sa}")),
    );
    cmd.env("DOWSER_LOG", "info,kube=warn");
    let log = node.log_dir.join(format!("{}.log", pod.name_any()));
    let file = std::fs::File::create(&log).unwrap();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start the pod's process");
    (child, log)
}
