//! A `dowser controller` process.

use std::process::{Child, Command, Stdio};

use super::cluster::Cluster;

pub struct ControllerProcess {
    child: Child,
    pub log: std::path::PathBuf,
}

impl ControllerProcess {
    pub fn start(cluster: &Cluster, dir: &std::path::Path) -> Self {
        let log = dir.join("controller.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dowser"))
            .arg("controller")
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("DOWSER_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start dowser controller");
        Self { child, log }
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
