//! A real local control plane for end-to-end tests: booted with `tests/cluster/up.sh` into a
//! temporary directory and stopped with `tests/cluster/down.sh` when dropped, or an existing
//! one given by `DOWSER_TEST_KUBECONFIG` (with `DOWSER_KUBECTL`), which is left running.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    state: Option<tempfile::TempDir>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_env(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Cluster {
    /// Boots a control plane (or attaches to the one in `DOWSER_TEST_KUBECONFIG`).
    pub fn start() -> Self {
        if let Ok(kubeconfig) = std::env::var("DOWSER_TEST_KUBECONFIG") {
            let kubectl = std::env::var("DOWSER_KUBECTL").unwrap_or_else(|_| "kubectl".into());
            return Self {
                kubeconfig: kubeconfig.into(),
                kubectl: kubectl.into(),
                state: None,
            };
        }
        let state = tempfile::Builder::new()
            .prefix("dowser-cluster-")
            .tempdir()
            .expect("temporary directory");
        let up = Command::new(repo().join("tests/cluster/up.sh"))
            .arg(state.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run tests/cluster/up.sh");
        if !up.status.success() {
            let _ = Command::new(repo().join("tests/cluster/down.sh"))
                .arg(state.path())
                .status();
            panic!(
                "the local control plane did not boot (tests/cluster/up.sh):\n{}",
                String::from_utf8_lossy(&up.stderr)
            );
        }
        let env = read_env(&state.path().join("env"));
        Self {
            kubeconfig: env["KUBECONFIG"].clone().into(),
            kubectl: env["KUBECTL"].clone().into(),
            state: Some(state),
        }
    }

    /// Runs kubectl against the cluster, with `stdin` as its input.
    pub fn kubectl(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl and panics with its output unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args, "");
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`Self::kubectl_ok`], retried for up to `seconds` (for what the API server
    /// publishes asynchronously, such as a new CRD's OpenAPI schema).
    pub fn kubectl_eventually(&self, args: &[&str], seconds: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        loop {
            let out = self.kubectl(args, "");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            let _ = Command::new(repo().join("tests/cluster/down.sh"))
                .arg(state.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
