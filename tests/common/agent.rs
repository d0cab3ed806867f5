//! `dowser agent` processes next to fake kubelets, with the identity `deploy/` gives them.

use std::process::{Child, Command, Stdio};

use super::cluster::{Cluster, FakeKubelet};

pub struct Agent {
    pub node: String,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub health: std::net::SocketAddr,
    child: Child,
    log: std::path::PathBuf,
}

impl Agent {
    /// Starts `dowser agent` for a fake kubelet's node.
    pub fn start(cluster: &Cluster, kubelet: &FakeKubelet) -> Agent {
        Self::start_logging(cluster, kubelet, "info,kube=warn")
    }

    /// Starts `dowser agent` with its log filter (`DOWSER_LOG`) set to `filter`.
    pub fn start_logging(cluster: &Cluster, kubelet: &FakeKubelet, filter: &str) -> Agent {
        Self::start_with(cluster, kubelet, filter, &[])
    }

    /// [`Agent::start_logging`] with more command-line arguments.
    pub fn start_with(
        cluster: &Cluster,
        kubelet: &FakeKubelet,
        filter: &str,
        args: &[&str],
    ) -> Agent {
        let log = kubelet.root.join("agent.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let health = super::free_addr();
        let child = Command::new(env!("CARGO_BIN_EXE_dowser"))
            .arg("agent")
            .arg("--device-plugin-dir")
            .arg(kubelet.plugin_dir())
            .arg("--pod-resources-socket")
            .arg(kubelet.pod_resources_socket())
            .args([
                "--health-addr",
                &health.to_string(),
                "--slot-release-grace-seconds",
                "2",
            ])
            .args(["--pod-resources-interval-seconds", "1"])
            .arg("--handlers-dir")
            .arg(handlers_dir(kubelet))
            .args(args)
            .env("NODE_NAME", &kubelet.node)
            .env(
                "KUBECONFIG",
                cluster.service_account_kubeconfig("dowser-agent"),
            )
            .env("DOWSER_LOG", filter)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start dowser agent");
        Agent {
            node: kubelet.node.clone(),
            health,
            child,
            log,
        }
    }

    /// Kills the agent without letting it clean up (kill -9).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id, to read its /proc entries.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET a path of the health endpoint: (status line, body).
    pub fn get(&self, path: &str) -> (String, String) {
        super::http_get(self.health, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The node's directory of external discovery handlers (the agent's registration socket).
pub fn handlers_dir(kubelet: &FakeKubelet) -> std::path::PathBuf {
    kubelet.root.join("handlers")
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}
