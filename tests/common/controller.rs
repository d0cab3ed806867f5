//! A `dowser controller` process.

use std::process::{Child, Command, Stdio};

use super::cluster::Cluster;

pub struct ControllerProcess {
    child: Child,
    pub log: std::path::PathBuf,
}

impl ControllerProcess {
    pub fn start(cluster: &Cluster, dir: &std::path::Path) -> Self {
        Self::replica(cluster, dir, "controller-0")
    }

    /// One replica with its own identity; replicas elect a leader with a 4 s Lease.
    pub fn replica(cluster: &Cluster, dir: &std::path::Path, identity: &str) -> Self {
        let log = dir.join(format!("{identity}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dowser"))
            .arg("controller")
            .args(["--instance-name", identity, "--lease-duration-seconds", "4"])
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("DOWSER_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start dowser controller");
        Self { child, log }
    }

    /// Kills the process (kill -9): no Lease release, no cleanup.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
