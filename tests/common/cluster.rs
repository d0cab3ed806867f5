//! A real local control plane for end-to-end tests: booted with `tests/cluster/up.sh` into a
//! temporary directory and stopped with `tests/cluster/down.sh` when dropped, or an existing
//! one given by `DOWSER_TEST_KUBECONFIG` (with `DOWSER_KUBECTL`, `DOWSER_HELM`), which is
//! left running.
//!
//! dowser's own processes never run as the cluster's administrator here: they get tokens of
//! the ServiceAccounts in `deploy/`, bound to the RBAC rules there
//! ([`Cluster::service_account_kubeconfig`]), so every end-to-end test also proves that
//! those rules are enough. Fake kubelets and the tests' own clients stay administrators.

use serde::Deserialize;
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Mutex,
};

/// The namespace of dowser's own objects in `deploy/` (ServiceAccounts, the Lease).
pub const INSTALL_NAMESPACE: &str = "dowser-system";

/// The README's command that lets the agents read the Secrets and ConfigMaps of namespace
/// `default`, where the tests' Configurations live.
pub const PROPERTIES_BINDING: &str = "kubectl -n default create rolebinding dowser-agent-properties --clusterrole=dowser-agent-properties --serviceaccount=dowser-system:dowser-agent";

/// Admission plugins a hardened cluster enables beyond the defaults: the rules in `deploy/`
/// must hold there too (whoever sets owner references must be allowed to delete the object).
const EXTRA_ADMISSION: &str = "--enable-admission-plugins=OwnerReferencesPermissionEnforcement";

pub struct Cluster {
    /// The administrator's kubeconfig.
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
    state: Option<tempfile::TempDir>,
    /// Working directory for fake kubelets and the like, removed with the cluster.
    scratch: tempfile::TempDir,
    /// Kubeconfigs of `deploy/`'s ServiceAccounts, by name (empty until the first is asked for).
    identities: Mutex<BTreeMap<String, PathBuf>>,
}

/// Flags for a fake kubelet that posts its node status every second: the kubelet's own
/// `nodeStatusUpdateFrequency` setting (10 s by default), for tests that wait on node
/// capacity many times.
pub const STATUS_EVERY_SECOND: &[&str] = &["--node-status-update-frequency", "1"];

/// A fake kubelet process (tests/fake-kubelet) serving one Node. It behaves like a real
/// kubelet (tests/fake-kubelet/README.md) unless a test gives it flags.
pub struct FakeKubelet {
    pub node: String,
    /// Stands in for /var/lib/kubelet: `device-plugins/`, `pod-resources/`.
    pub root: PathBuf,
    /// The flags it was started with (a restart of the node keeps them).
    pub flags: Vec<String>,
    child: std::process::Child,
}

impl FakeKubelet {
    pub fn plugin_dir(&self) -> PathBuf {
        self.root.join("device-plugins")
    }

    pub fn pod_resources_socket(&self) -> PathBuf {
        self.root.join("pod-resources/kubelet.sock")
    }

    /// Restarts like a kubelet: plugin sockets deleted, registrations dropped.
    pub fn restart(&self) {
        let status = Command::new("kill")
            .args(["-USR1", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Kills the process without letting it clean up (kill -9), as a power loss does.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fake-kubelet binary: `DOWSER_FAKE_KUBELET`, or next to the test binaries.
fn fake_kubelet_binary() -> PathBuf {
    if let Ok(p) = std::env::var("DOWSER_FAKE_KUBELET") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("fake-kubelet");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p fake-kubelet` (tests/test.sh does)",
        bin.display()
    );
    bin
}

pub fn repo() -> PathBuf {
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
            let helm = std::env::var("DOWSER_HELM").unwrap_or_else(|_| "helm".into());
            return Self {
                kubeconfig: kubeconfig.into(),
                kubectl: kubectl.into(),
                helm: helm.into(),
                state: None,
                scratch: tempfile::tempdir().unwrap(),
                identities: Mutex::default(),
            };
        }
        let state = spare::take()
            .unwrap_or_else(|| spare::boot().finish().unwrap_or_else(|e| panic!("{e}")));
        // The next test of this binary gets a control plane booted while this one runs.
        spare::prepare();
        let env = read_env(&state.path().join("env"));
        Self {
            kubeconfig: env["KUBECONFIG"].clone().into(),
            kubectl: env["KUBECTL"].clone().into(),
            helm: env["HELM"].clone().into(),
            state: Some(state),
            scratch: tempfile::tempdir().unwrap(),
            identities: Mutex::default(),
        }
    }

    /// A kubeconfig with a token of `deploy/`'s ServiceAccount `name` (`dowser-agent`,
    /// `dowser-controller`). The first call installs what `kubectl apply -k deploy/` installs
    /// for identities (the namespace, ServiceAccounts, ClusterRoles, Roles and their bindings;
    /// not the workloads: the tests run the processes themselves) and the README's
    /// RoleBinding for properties in `default`.
    pub fn service_account_kubeconfig(&self, name: &str) -> PathBuf {
        let mut identities = self.identities.lock().unwrap();
        if identities.is_empty() {
            self.install_identities();
        }
        if let Some(path) = identities.get(name) {
            return path.clone();
        }
        let token = self.kubectl_ok(&[
            "create",
            "token",
            name,
            "-n",
            INSTALL_NAMESPACE,
            "--duration=24h",
        ]);
        let admin: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&self.kubeconfig).unwrap()).unwrap();
        let cluster = admin["clusters"][0]["cluster"].clone();
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "dowser", "cluster": cluster}],
            "users": [{"name": name, "user": {"token": token.trim()}}],
            "contexts": [{"name": name, "context": {"cluster": "dowser", "user": name}}],
            "current-context": name,
        });
        let path = self.scratch.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, serde_json::to_string_pretty(&kubeconfig).unwrap()).unwrap();
        identities.insert(name.to_string(), path.clone());
        path
    }

    /// A person who approves devices in `namespace`: the ServiceAccount `name` in the install
    /// namespace, bound to the ClusterRole `dowser-approver` there. Returns its kubeconfig and
    /// its user name.
    pub fn approver(&self, name: &str, namespace: &str) -> (PathBuf, String) {
        self.kubectl_ok(&["create", "serviceaccount", name, "-n", INSTALL_NAMESPACE]);
        self.kubectl_ok(&[
            "create",
            "rolebinding",
            &format!("{name}-approves"),
            "-n",
            namespace,
            "--clusterrole=dowser-approver",
            &format!("--serviceaccount={INSTALL_NAMESPACE}:{name}"),
        ]);
        let user = format!("system:serviceaccount:{INSTALL_NAMESPACE}:{name}");
        (self.service_account_kubeconfig(name), user)
    }

    fn install_identities(&self) {
        let deploy = repo().join("deploy");
        let all = self.kubectl_ok(&["kustomize", deploy.to_str().unwrap()]);
        let kinds = [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ];
        let items: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&all)
            .map(|doc| serde_json::Value::deserialize(doc).expect("kustomize output parses"))
            .filter(|o| kinds.contains(&o["kind"].as_str().unwrap_or_default()))
            .collect();
        assert!(
            items.iter().any(|o| o["kind"] == "ClusterRole"),
            "no RBAC in deploy/"
        );
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        let out = self.kubectl(&["apply", "-f", "-"], &list.to_string());
        assert!(
            out.status.success(),
            "kubectl apply (RBAC of deploy/): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let args: Vec<&str> = PROPERTIES_BINDING.split_whitespace().skip(1).collect();
        let out = self.kubectl(&args, "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success()
                || stderr.contains("AlreadyExists")
                || stderr.contains("already exists"),
            "{PROPERTIES_BINDING}: {stderr}"
        );
    }

    /// Installs the CRDs from `crds/` and waits until they are served.
    pub fn apply_crds(&self) {
        let crds = repo().join("crds");
        self.kubectl_ok(&[
            "apply",
            "--server-side",
            "--field-manager=dowser-test",
            "-f",
            crds.to_str().unwrap(),
        ]);
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/configurations.dowser.dev",
            "crd/instances.dowser.dev",
            "--timeout=60s",
        ]);
    }

    /// A client for the cluster, as its administrator.
    pub async fn client(&self) -> kube::Client {
        Self::client_of(&self.kubeconfig).await
    }

    /// A client with the identity of a kubeconfig (see [`Self::service_account_kubeconfig`]).
    pub async fn client_of(kubeconfig: &std::path::Path) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Starts a fake kubelet for a Node with these labels, with a real kubelet's defaults;
    /// returns once it serves. Started again for the same node, it resumes from the same root
    /// directory (its checkpoint).
    pub fn fake_kubelet(&self, node: &str, labels: &[(&str, &str)]) -> FakeKubelet {
        self.fake_kubelet_with(node, labels, &[])
    }

    /// [`Self::fake_kubelet`] with fake-kubelet flags (tests/fake-kubelet/README.md), such as
    /// [`STATUS_EVERY_SECOND`].
    pub fn fake_kubelet_with(
        &self,
        node: &str,
        labels: &[(&str, &str)],
        flags: &[&str],
    ) -> FakeKubelet {
        let root = self.scratch.path().join(node);
        std::fs::create_dir_all(&root).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.scratch.path().join(format!("{node}.log")))
            .unwrap();
        let mut cmd = Command::new(fake_kubelet_binary());
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--node-name", node])
            .arg("--root-dir")
            .arg(&root)
            .args(flags)
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in labels {
            cmd.args(["--label", &format!("{k}={v}")]);
        }
        let child = cmd.spawn().expect("start fake-kubelet");
        let kubelet = FakeKubelet {
            node: node.to_string(),
            root,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            child,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !kubelet.plugin_dir().join("kubelet.sock").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "fake-kubelet for {node} did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        kubelet
    }

    /// The log of a fake kubelet, for failure messages.
    pub fn kubelet_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.scratch.path().join(format!("{node}.log"))).unwrap_or_default()
    }

    /// Runs kubectl against the cluster, with `stdin` as its input.
    pub fn kubectl(&self, args: &[&str], stdin: &str) -> Output {
        let mut command = Command::new(&self.kubectl);
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        kubectl_output(&mut command, stdin)
    }

    /// Runs kubectl and panics with its output unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        stdout_of_success(args, self.kubectl(args, ""))
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

/// The directory with kubectl and helm: `DOWSER_K8S_BIN`, else the cached build of
/// `tests/cluster/build-binaries.sh` (built if missing).
pub fn k8s_bin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("DOWSER_K8S_BIN") {
            return dir.into();
        }
        let out = Command::new(repo().join("tests/cluster/build-binaries.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/cluster/build-binaries.sh");
        assert!(
            out.status.success(),
            "tests/cluster/build-binaries.sh failed: kubectl and helm are needed"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout.lines().last().expect("a bin directory").into()
    })
    .clone()
}

/// Runs a `command` (kubectl, helm) with `stdin` as its input and collects its output.
pub fn kubectl_output(command: &mut Command, stdin: &str) -> Output {
    let mut child = command
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

/// The stdout of a kubectl run with `args`; panics with its stderr unless it succeeded.
pub fn stdout_of_success(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One control plane booted ahead for the next test of this test binary. The end-to-end tests
/// of a binary run one at a time (`common::serial`) and each boots its own control plane,
/// ~13 s that are mostly waiting for the API server: booting the next one while a test runs
/// hides that. Whatever is left at the end of the binary is stopped at exit.
mod spare {
    use super::{EXTRA_ADMISSION, repo};
    use std::{
        process::{Child, Command, Stdio},
        sync::{Mutex, Once},
    };

    static SPARE: Mutex<Option<Boot>> = Mutex::new(None);
    static AT_EXIT: Once = Once::new();

    /// `tests/cluster/up.sh` running (or done) in its state directory.
    pub struct Boot {
        up: Child,
        state: tempfile::TempDir,
    }

    pub fn boot() -> Boot {
        let state = tempfile::Builder::new()
            .prefix("dowser-cluster-")
            .tempdir()
            .expect("temporary directory");
        let apiserver_args = match std::env::var("DOWSER_APISERVER_ARGS") {
            Ok(more) => format!("{more} {EXTRA_ADMISSION}"),
            Err(_) => EXTRA_ADMISSION.to_string(),
        };
        let up = Command::new(repo().join("tests/cluster/up.sh"))
            .arg(state.path())
            .env("DOWSER_APISERVER_ARGS", apiserver_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tests/cluster/up.sh");
        Boot { up, state }
    }

    impl Boot {
        /// Waits for the boot; a failed one is stopped and its log returned.
        pub fn finish(self) -> Result<tempfile::TempDir, String> {
            let Boot { up, state } = self;
            let out = up.wait_with_output().expect("wait for tests/cluster/up.sh");
            if out.status.success() {
                return Ok(state);
            }
            stop(state.path());
            Err(format!(
                "the local control plane did not boot (tests/cluster/up.sh):\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Stops the control plane of a state directory (`tests/cluster/down.sh`).
    pub fn stop(state: &std::path::Path) {
        let _ = Command::new(repo().join("tests/cluster/down.sh"))
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// The control plane booted ahead, if there is one and it came up.
    pub fn take() -> Option<tempfile::TempDir> {
        let boot = SPARE.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        match boot.finish() {
            Ok(state) => Some(state),
            Err(e) => {
                eprintln!("the control plane booted ahead failed; booting another\n{e}");
                None
            }
        }
    }

    /// Starts booting the next test's control plane.
    pub fn prepare() {
        AT_EXIT.call_once(|| {
            // SAFETY: registers a plain function; it runs once, at process exit.
            unsafe { libc::atexit(stop_at_exit) };
        });
        let mut spare = SPARE.lock().unwrap_or_else(|e| e.into_inner());
        if spare.is_none() {
            *spare = Some(boot());
        }
    }

    /// At exit: a boot still running is told to stop (up.sh then stops what it started),
    /// a finished one is stopped with down.sh.
    extern "C" fn stop_at_exit() {
        let Some(Boot { mut up, state }) = SPARE.lock().ok().and_then(|mut s| s.take()) else {
            return;
        };
        if let Ok(None) = up.try_wait() {
            // SAFETY: signals the child process by its id; it has not been reaped.
            unsafe { libc::kill(up.id() as libc::pid_t, libc::SIGTERM) };
        }
        let _ = up.wait();
        stop(state.path());
        drop(state);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            spare::stop(state.path());
        }
    }
}
