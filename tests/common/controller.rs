//! A `dowser controller` process, with the identity `deploy/` gives it.

use std::process::{Child, Command, Stdio};

use super::cluster::Cluster;

pub struct ControllerProcess {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub health: std::net::SocketAddr,
    child: Child,
    pub log: std::path::PathBuf,
}

impl ControllerProcess {
    pub fn start(cluster: &Cluster, dir: &std::path::Path) -> Self {
        Self::replica(cluster, dir, "controller-0")
    }

    /// One replica with its own identity; replicas elect a leader with a 4 s Lease.
    pub fn replica(cluster: &Cluster, dir: &std::path::Path, identity: &str) -> Self {
        Self::replica_logging(cluster, dir, identity, "info,kube=warn")
    }

    /// One replica with its log filter (`DOWSER_LOG`) set to `filter`.
    pub fn replica_logging(
        cluster: &Cluster,
        dir: &std::path::Path,
        identity: &str,
        filter: &str,
    ) -> Self {
        let log = dir.join(format!("{identity}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let health = super::free_addr();
        let child = Command::new(env!("CARGO_BIN_EXE_dowser"))
            .arg("controller")
            .arg("--health-addr")
            .arg(health.to_string())
            .args(["--instance-name", identity, "--lease-duration-seconds", "6"])
            .env(
                "KUBECONFIG",
                cluster.service_account_kubeconfig("dowser-controller"),
            )
            // As the Deployment in deploy/ sets it: the Lease lives in dowser's namespace.
            .env("POD_NAMESPACE", super::cluster::INSTALL_NAMESPACE)
            .env("DOWSER_LOG", filter)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start dowser controller");
        Self { health, child, log }
    }

    /// Kills the process (kill -9): no Lease release, no cleanup.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process as the kubelet does (SIGTERM) and returns how it exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }

    pub fn get(&self, path: &str) -> (String, String) {
        super::http_get(self.health, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
