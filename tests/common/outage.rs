#![allow(dead_code)]
//! Faults made to a running test cluster: its kube-apiserver stopped and started again as
//! the same process, a TCP proxy that cuts one client off the apiserver, and agents that
//! reach the apiserver through such a proxy.

use std::{
    ffi::OsString,
    net::SocketAddr,
    os::unix::{ffi::OsStringExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dowser::deviceplugin::{
    connect_unix,
    podresources::{
        AllocatableResourcesRequest, ListPodResourcesRequest,
        pod_resources_lister_client::PodResourcesListerClient,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

use crate::common::cluster::{Cluster, FakeKubelet};

/// Field 22 of /proc/<pid>/stat: the start time that tells a pid's process from a later one.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    rest.split_whitespace().nth(19).map(String::from)
}

/// Running, not a zombie.
fn alive(pid: u32, start: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let rest = stat.rsplit_once(") ").map(|r| r.1).unwrap_or_default();
    let state = rest.split_whitespace().next().unwrap_or("X");
    start_time(pid).as_deref() == Some(start) && state != "Z" && state != "X"
}

fn split_nul(bytes: Vec<u8>) -> Vec<OsString> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect()
}

/// The kube-apiserver of a cluster booted by tests/cluster/up.sh, stopped: what it takes to
/// start the same process again.
pub struct StoppedApiServer {
    state: PathBuf,
    command: Vec<OsString>,
    environment: Vec<(OsString, OsString)>,
    directory: PathBuf,
}

/// The state directory up.sh wrote (it holds the admin kubeconfig).
fn state_dir(cluster: &Cluster) -> PathBuf {
    cluster.kubeconfig.parent().unwrap().to_path_buf()
}

/// (pid, start time) of a component in `<state>/pids`.
fn component(state: &Path, name: &str) -> (u32, String) {
    let pids = std::fs::read_to_string(state.join("pids")).expect("the cluster's pids file");
    pids.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?.parse().ok()?, f.next()?.to_string()))
        })
        .rfind(|(n, _, _)| *n == name)
        .map(|(_, pid, start)| (pid, start))
        .unwrap_or_else(|| panic!("no {name} in {}/pids", state.display()))
}

impl StoppedApiServer {
    /// Stops the cluster's kube-apiserver (TERM, as an upgrade does; KILL after 15 s) and
    /// returns once it has exited.
    pub fn stop(cluster: &Cluster) -> StoppedApiServer {
        let state = state_dir(cluster);
        let (pid, start) = component(&state, "kube-apiserver");
        assert!(
            alive(pid, &start),
            "kube-apiserver (pid {pid}) is not running"
        );
        let command = split_nul(std::fs::read(format!("/proc/{pid}/cmdline")).unwrap());
        let environment = split_nul(std::fs::read(format!("/proc/{pid}/environ")).unwrap())
            .into_iter()
            .filter_map(|kv| {
                let kv = kv.into_vec();
                let eq = kv.iter().position(|b| *b == b'=')?;
                Some((
                    OsString::from_vec(kv[..eq].to_vec()),
                    OsString::from_vec(kv[eq + 1..].to_vec()),
                ))
            })
            .collect();
        let directory = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        let signal = |sig: &str| {
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(pid, &start) {
            if Instant::now() > deadline {
                signal("-KILL");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        StoppedApiServer {
            state,
            command,
            environment,
            directory,
        }
    }

    /// Starts the same command with the same environment, records it in `<state>/pids`
    /// (so that down.sh stops it) and waits until it is ready.
    pub fn start(self, cluster: &Cluster) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.join("logs/kube-apiserver.log"))
            .unwrap();
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .env_clear()
            .envs(self.environment.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.directory)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, like a daemon: no signal meant for the tests reaches it.
            .process_group(0)
            .spawn()
            .expect("start kube-apiserver again");
        let pid = child.id();
        let start = start_time(pid).expect("kube-apiserver exited at once");
        // down.sh stops it; this reaps it then.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        let pids = self.state.join("pids");
        let kept: String = std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("kube-apiserver "))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&pids, format!("{kept}kube-apiserver {pid} {start}\n")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = cluster.kubectl(&["get", "--raw=/readyz", "--request-timeout=2s"], "");
            if out.status.success() {
                break;
            }
            assert!(alive(pid, &start), "kube-apiserver exited after restart");
            assert!(Instant::now() < deadline, "kube-apiserver not ready again");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// What a [`Proxy`] does with the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Bytes flow both ways.
    Open,
    /// Connections are closed, new ones closed as soon as they arrive.
    Refused,
    /// Nothing flows and nothing is closed: connections, old and new, hang (a partition).
    Blackholed,
}

/// A TCP proxy on loopback in front of one address. TLS passes through untouched.
pub struct Proxy {
    pub addr: SocketAddr,
    link: watch::Sender<Link>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (link, rx) = watch::channel(Link::Open);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, rx.clone()));
            }
        });
        Proxy { addr, link, task }
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.set(Link::Refused);
        self.task.abort();
    }
}

/// Waits while the link is blackholed; false if it is (or becomes) refused.
async fn usable(link: &mut watch::Receiver<Link>) -> bool {
    loop {
        match *link.borrow_and_update() {
            Link::Open => return true,
            Link::Refused => return false,
            Link::Blackholed => {}
        }
        if link.changed().await.is_err() {
            return false;
        }
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, mut link: watch::Receiver<Link>) {
    if !usable(&mut link).await {
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        // While blackholed nothing is read, so nothing is answered or closed.
        if !usable(&mut link).await {
            return;
        }
        tokio::select! {
            r = client_read.read(&mut up) => match r {
                Ok(n) if n > 0 => if server_write.write_all(&up[..n]).await.is_err() { return },
                _ => return,
            },
            r = server_read.read(&mut down) => match r {
                Ok(n) if n > 0 => if client_write.write_all(&down[..n]).await.is_err() { return },
                _ => return,
            },
            _ = link.changed() => {}
        }
    }
}

/// A kubeconfig like `kubeconfig` whose server is `addr` (a proxy), same TLS identity.
pub fn kubeconfig_via(kubeconfig: &Path, addr: SocketAddr, out: &Path) -> PathBuf {
    let mut kc: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    kc["clusters"][0]["cluster"]["server"] = serde_json::json!(format!("https://{addr}"));
    std::fs::write(out, serde_json::to_string_pretty(&kc).unwrap()).unwrap();
    out.to_path_buf()
}

/// The apiserver's address in a kubeconfig.
pub fn server_addr(kubeconfig: &Path) -> SocketAddr {
    let kc: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let server = kc["clusters"][0]["cluster"]["server"].as_str().unwrap();
    server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// A `dowser agent` for a fake kubelet's node with the agent ServiceAccount's token, talking
/// to the apiserver at the server of `kubeconfig` (the same token and CA).
pub struct ProxiedAgent {
    pub health: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl ProxiedAgent {
    pub fn start(kubelet: &FakeKubelet, kubeconfig: &Path) -> ProxiedAgent {
        let log = kubelet.root.join("agent.log");
        let file = std::fs::File::create(&log).unwrap();
        let health = crate::common::free_addr();
        let child = Command::new(env!("CARGO_BIN_EXE_dowser"))
            .arg("agent")
            .arg("--device-plugin-dir")
            .arg(kubelet.plugin_dir())
            .arg("--pod-resources-socket")
            .arg(kubelet.pod_resources_socket())
            .args(["--health-addr", &health.to_string()])
            .args(["--slot-release-grace-seconds", "2"])
            .args(["--pod-resources-interval-seconds", "1"])
            .arg("--handlers-dir")
            .arg(kubelet.root.join("handlers"))
            .env("NODE_NAME", &kubelet.node)
            .env("KUBECONFIG", kubeconfig)
            .env("DOWSER_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start dowser agent");
        ProxiedAgent { health, child, log }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ProxiedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The device-plugin resources a (fake) kubelet can allocate, with their healthy device
/// ids, read from its PodResources API (GetAllocatableResources) — which works without the
/// apiserver. A device reported Unhealthy (a slot another node holds) is not listed.
pub async fn kubelet_devices(kubelet: &FakeKubelet) -> Vec<(String, Vec<String>)> {
    let channel = connect_unix(&kubelet.pod_resources_socket())
        .await
        .expect("the kubelet's PodResources socket");
    let resp = PodResourcesListerClient::new(channel)
        .get_allocatable_resources(AllocatableResourcesRequest {})
        .await
        .expect("GetAllocatableResources")
        .into_inner();
    resp.devices
        .into_iter()
        .map(|d| (d.resource_name, d.device_ids))
        .collect()
}

/// The devices pods hold on a (fake) kubelet, as (pod, resource, device ids), read from its
/// PodResources API (List) — which works without the apiserver.
pub async fn kubelet_holders(kubelet: &FakeKubelet) -> Vec<(String, String, Vec<String>)> {
    let channel = connect_unix(&kubelet.pod_resources_socket())
        .await
        .expect("the kubelet's PodResources socket");
    let resp = PodResourcesListerClient::new(channel)
        .list(ListPodResourcesRequest {})
        .await
        .expect("List")
        .into_inner();
    resp.pod_resources
        .into_iter()
        .flat_map(|p| {
            p.containers.into_iter().flat_map(move |c| {
                let pod = p.name.clone();
                c.devices
                    .into_iter()
                    .map(move |d| (pod.clone(), d.resource_name, d.device_ids))
            })
        })
        .collect()
}
