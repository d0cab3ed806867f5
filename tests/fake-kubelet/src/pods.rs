//! Pods bound to this node, as the kubelet's pod workers see them: admitted (device manager
//! Allocate, then the general predicates) or failed, their containers run, restarted and
//! completed, and stopped when the pod is deleted. Containers are imaginary: what each one
//! does is read from its command (see [`Program`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{Container, Node, Pod},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use serde_json::json;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::devices::{DeviceManager, is_extended_resource_name};

/// Annotation where the fake kubelet records what each container got from device plugins,
/// for tests to assert (a real kubelet puts it into the container instead).
pub const ALLOCATIONS_ANNOTATION: &str = "fake-kubelet.dowser.dev/allocations";

/// The kubelet's crash-loop back-off (`pkg/kubelet/kubelet.go` `backOffPeriod`,
/// `MaxContainerBackOff`).
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// The active pods of this node (`kubelet_pods.go` `GetActivePods`): admitted, not in a
/// terminal phase, not yet fully stopped — pods in their termination grace period included.
/// Shared with the PodResources server.
pub type ActivePods = Arc<Mutex<BTreeMap<String, Pod>>>;

/// The container runtime's state: which pods have running containers, one file per pod in
/// `<root>/run`. It survives a kubelet restart; a node reboot loses it (a real runtime
/// keeps it on a tmpfs), which a test emulates by removing the directory.
pub struct Runtime(PathBuf);

impl Runtime {
    pub fn new(dir: PathBuf) -> anyhow::Result<Runtime> {
        std::fs::create_dir_all(&dir)?;
        Ok(Runtime(dir))
    }

    fn running(&self, uid: &str) -> bool {
        self.0.join(uid).exists()
    }

    fn started(&self, uid: &str) {
        if let Err(e) = std::fs::write(self.0.join(uid), b"") {
            warn!(error = %e, "cannot record running containers");
        }
    }

    fn stopped(&self, uid: &str) {
        let _ = std::fs::remove_file(self.0.join(uid));
    }
}

/// What an imaginary container does, read from its command and args: `sleep N` exits 0
/// after N seconds, `true` exits 0 and `false` exits 1 at once (also as `sh -c '...'`);
/// anything else runs until it is stopped. Every container exits on SIGTERM.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Program {
    Forever,
    Exits { after: Duration, code: i32 },
}

impl Program {
    fn of(c: &Container) -> Program {
        let mut words: Vec<String> = c
            .command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .cloned()
            .collect();
        if words.len() == 3
            && words[0]
                .rsplit('/')
                .next()
                .is_some_and(|s| s == "sh" || s == "bash")
            && words[1] == "-c"
        {
            words = words[2].split_whitespace().map(str::to_string).collect();
        }
        let name = words.first().map(|w| w.rsplit('/').next().unwrap_or(w));
        match (name, words.get(1)) {
            (Some("sleep"), Some(n)) => match n.parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => Program::Exits {
                    after: Duration::from_secs_f64(s),
                    code: 0,
                },
                _ => Program::Forever,
            },
            (Some("true"), None) => Program::Exits {
                after: Duration::ZERO,
                code: 0,
            },
            (Some("false"), None) => Program::Exits {
                after: Duration::ZERO,
                code: 1,
            },
            _ => Program::Forever,
        }
    }
}

/// How long a container's preStop hook keeps it running once its pod is deleted: a `sleep`
/// action, or an exec hook running `sleep N`.
fn pre_stop(c: &Container) -> Duration {
    let Some(handler) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else {
        return Duration::ZERO;
    };
    if let Some(sleep) = &handler.sleep {
        return Duration::from_secs(sleep.seconds.max(0) as u64);
    }
    let probe = Container {
        command: handler.exec.as_ref().and_then(|e| e.command.clone()),
        ..Container::default()
    };
    match Program::of(&probe) {
        Program::Exits { after, .. } => after,
        Program::Forever => Duration::ZERO,
    }
}

#[derive(Debug)]
enum State {
    Running {
        since: Instant,
        started_at: String,
    },
    /// Exited; restarted at `restart_at` if the restart policy says so.
    Exited {
        code: i32,
        finished_at: String,
        restart_at: Option<Instant>,
    },
}

#[derive(Debug)]
struct ContainerRun {
    name: String,
    image: String,
    program: Program,
    restarts: u32,
    state: State,
}

struct Tracked {
    pod: Pod,
    containers: Vec<ContainerRun>,
    /// When the containers of a deleted pod have stopped (preStop, then SIGTERM).
    stops_at: Option<Instant>,
}

fn now() -> String {
    Timestamp::now().to_string()
}

fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into())
}

/// Whole units of a quantity (milli-units for cpu), as the scheduler's `Resource` counts.
fn quantity(resource: &str, q: &str) -> i64 {
    let q = q.trim();
    let (number, scale): (&str, f64) = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ]
    .iter()
    .find_map(|(suffix, scale)| q.strip_suffix(suffix).map(|n| (n, *scale)))
    .unwrap_or((q, 1.0));
    let value = number.parse::<f64>().unwrap_or(0.0) * scale;
    if resource == "cpu" {
        (value * 1000.0).ceil() as i64
    } else {
        value.ceil() as i64
    }
}

fn container_limits(c: &Container) -> Vec<(String, usize)> {
    c.resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .map(|l| {
            l.iter()
                .filter(|(name, _)| is_extended_resource_name(name))
                .map(|(name, q)| (name.clone(), quantity(name, &q.0).max(0) as usize))
                .collect()
        })
        .unwrap_or_default()
}

fn container_requests(c: &Container) -> BTreeMap<String, i64> {
    c.resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .map(|r| {
            r.iter()
                .map(|(name, q)| (name.clone(), quantity(name, &q.0)))
                .collect()
        })
        .unwrap_or_default()
}

fn is_restartable(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// A pod's resource requests as the scheduler computes them (`resourcehelper.PodRequests`):
/// the larger of the app containers' (with sidecars) sum and each init container's own.
fn pod_requests(pod: &Pod) -> BTreeMap<String, i64> {
    let Some(spec) = &pod.spec else {
        return BTreeMap::new();
    };
    let mut sum: BTreeMap<String, i64> = BTreeMap::new();
    for c in spec.containers.iter().chain(
        spec.init_containers
            .iter()
            .flatten()
            .filter(|c| is_restartable(c)),
    ) {
        for (r, v) in container_requests(c) {
            *sum.entry(r).or_default() += v;
        }
    }
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| !is_restartable(c))
    {
        for (r, v) in container_requests(c) {
            let e = sum.entry(r).or_default();
            *e = (*e).max(v);
        }
    }
    sum
}

pub struct Kubelet {
    pub client: Client,
    pub node: String,
    pub devices: Arc<DeviceManager>,
    pub runtime: Runtime,
    pub active: ActivePods,
    /// Whether the first list of the node's pods is complete (`sourcesReady`).
    pub sources_ready: std::sync::atomic::AtomicBool,
}

pub async fn run(kubelet: Kubelet) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::all(kubelet.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", kubelet.node));
    let mut events = watcher::watcher(pods, config).default_backoff().boxed();
    let mut tracked: BTreeMap<String, Tracked> = BTreeMap::new();
    // Pods this kubelet has finished with (failed admission, completed, stopped).
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    // The pods of a (re)list, to forget the ones deleted while the watch was down.
    let mut listed: Option<BTreeSet<String>> = None;
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { return Ok(()) };
                match event {
                    Ok(Event::Init) => listed = Some(BTreeSet::new()),
                    Ok(Event::InitApply(p)) => {
                        if let (Some(l), Some(uid)) = (listed.as_mut(), p.uid()) {
                            l.insert(uid);
                        }
                        kubelet.sync(p, &mut tracked, &mut finished).await;
                    }
                    Ok(Event::InitDone) => {
                        if let Some(l) = listed.take() {
                            let gone: Vec<String> =
                                tracked.keys().filter(|u| !l.contains(*u)).cloned().collect();
                            for uid in gone {
                                tracked.remove(&uid);
                                kubelet.runtime.stopped(&uid);
                            }
                        }
                        // `sourcesReady`: from now on devices of pods that are not active
                        // are freed (`UpdateAllocatedDevices` does nothing before).
                        kubelet.sources_ready.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(Event::Apply(p)) => {
                        kubelet.sync(p, &mut tracked, &mut finished).await;
                    }
                    Ok(Event::Delete(p)) => {
                        // Gone from the API server (a force deletion): the pod manager
                        // forgets it, its containers are killed.
                        if let Some(uid) = p.uid() {
                            tracked.remove(&uid);
                            kubelet.runtime.stopped(&uid);
                            finished.remove(&uid);
                        }
                    }
                    Err(e) => warn!(error = %e, "pod watch error"),
                }
            }
            _ = tick.tick() => kubelet.work(&mut tracked, &mut finished).await,
        }
        kubelet.publish_active(&tracked).await;
    }
}

impl Kubelet {
    async fn publish_active(&self, tracked: &BTreeMap<String, Tracked>) {
        let active: BTreeMap<String, Pod> = tracked
            .iter()
            .map(|(uid, t)| (uid.clone(), t.pod.clone()))
            .collect();
        let uids: BTreeSet<String> = active.keys().cloned().collect();
        *self.active.lock().await = active;
        if self
            .sources_ready
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.devices.update_allocated(&uids).await;
        }
    }

    fn api(&self, pod: &Pod) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default())
    }

    /// A pod added or updated in the API server.
    async fn sync(
        &self,
        pod: Pod,
        tracked: &mut BTreeMap<String, Tracked>,
        finished: &mut BTreeSet<String>,
    ) {
        let Some(uid) = pod.uid() else { return };
        if finished.contains(&uid) {
            if pod.metadata.deletion_timestamp.is_some() {
                self.confirm_deletion(&pod, &uid).await;
            }
            return;
        }
        if let Some(t) = tracked.get_mut(&uid) {
            t.pod = pod.clone();
            if pod.metadata.deletion_timestamp.is_some() && t.stops_at.is_none() {
                // The kubelet runs each container's preStop hook, then sends SIGTERM;
                // the grace period bounds both.
                let grace = Duration::from_secs(
                    pod.metadata
                        .deletion_grace_period_seconds
                        .unwrap_or(30)
                        .max(0) as u64,
                );
                let hooks = pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .map(pre_stop)
                    .max()
                    .unwrap_or_default();
                t.stops_at = Some(Instant::now() + hooks.min(grace));
            }
            return;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            finished.insert(uid);
            return;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            // Deleted before it ran: nothing to stop.
            self.runtime.stopped(&uid);
            finished.insert(uid.clone());
            self.confirm_deletion(&pod, &uid).await;
            return;
        }
        if self.runtime.running(&uid) {
            // A kubelet restart: the containers still run, with their devices.
            tracked.insert(uid.clone(), self.adopt(pod));
            return;
        }
        // The pod being admitted is active (in the pod manager) already: devices held
        // by pods no longer active are freed before the device manager allocates.
        let mut active: BTreeSet<String> = tracked.keys().cloned().collect();
        active.insert(uid.clone());
        if self
            .sources_ready
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.devices.update_allocated(&active).await;
        }
        match self.admit(&pod, &uid, tracked).await {
            Err((reason, message)) => {
                info!(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), %reason, %message, "admission failed");
                self.runtime.stopped(&uid);
                finished.insert(uid);
                let status = json!({"status": {
                    "phase": "Failed",
                    "reason": reason,
                    "message": message,
                    "startTime": now(),
                }});
                if let Err(e) = self
                    .api(&pod)
                    .patch_status(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(status),
                    )
                    .await
                {
                    warn!(error = %e, "cannot fail pod");
                }
            }
            Ok(()) => {
                self.runtime.started(&uid);
                let t = self.start(pod);
                // The pod is in the pod manager (and so in PodResources' List) before its
                // status reaches the API server: whoever sees it Running finds its devices.
                tracked.insert(uid.clone(), t);
                self.publish_active(tracked).await;
                let t = &tracked[&uid];
                self.annotate(&t.pod, &uid).await;
                self.post_status(t).await;
            }
        }
    }

    fn adopt(&self, pod: Pod) -> Tracked {
        let mut t = self.start(pod);
        // What the runtime reports: the containers' restart counts and start times.
        if let Some(statuses) = t
            .pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
        {
            for c in &mut t.containers {
                if let Some(s) = statuses.iter().find(|s| s.name == c.name) {
                    c.restarts = s.restart_count.max(0) as u32;
                }
            }
        }
        t
    }

    fn start(&self, pod: Pod) -> Tracked {
        let containers = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| ContainerRun {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                program: Program::of(c),
                restarts: 0,
                state: State::Running {
                    since: Instant::now(),
                    started_at: now(),
                },
            })
            .collect();
        Tracked {
            pod,
            containers,
            stops_at: None,
        }
    }

    /// The kubelet's admission of a new pod (`kubelet.go` `HandlePodAdditions` →
    /// `canAdmitPod`): the device manager allocates each container's devices, init containers
    /// first (`devicemanager/manager.go` `Allocate`); then the general predicates check the pod
    /// fits the node's allocatable (`lifecycle/predicate.go` `Admit`).
    /// The error is the pod's (reason, message).
    async fn admit(
        &self,
        pod: &Pod,
        uid: &str,
        tracked: &BTreeMap<String, Tracked>,
    ) -> Result<(), (String, String)> {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut reusable = BTreeMap::new();
        let unexpected = |e: String| {
            (
                "UnexpectedAdmissionError".to_string(),
                format!("Allocate failed due to {e}, which is unexpected"),
            )
        };
        for c in spec.init_containers.iter().flatten() {
            self.devices
                .allocate_container(
                    uid,
                    &ns,
                    &name,
                    &c.name,
                    &container_limits(c),
                    &mut reusable,
                )
                .await
                .map_err(unexpected)?;
            self.devices
                .reuse(uid, &c.name, &mut reusable, is_restartable(c))
                .await;
        }
        for c in &spec.containers {
            self.devices
                .allocate_container(
                    uid,
                    &ns,
                    &name,
                    &c.name,
                    &container_limits(c),
                    &mut reusable,
                )
                .await
                .map_err(unexpected)?;
            self.devices.reuse(uid, &c.name, &mut reusable, true).await;
        }
        self.fits(pod, tracked).await
    }

    /// `lifecycle/predicate.go` `Admit`: the node's allocatable (raised to what the device
    /// manager has handed out, `sanitizeNodeAllocatable`), extended resources the node does
    /// not list dropped from the pod's requests (`removeMissingExtendedResources`), then the
    /// resource fit against the other active pods.
    async fn fits(
        &self,
        pod: &Pod,
        tracked: &BTreeMap<String, Tracked>,
    ) -> Result<(), (String, String)> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes.get(&self.node).await.map_err(|_| {
            (
                "InvalidNodeInfo".to_string(),
                "Kubelet cannot get node info.".to_string(),
            )
        })?;
        let mut allocatable: BTreeMap<String, i64> = node
            .status
            .and_then(|s| s.allocatable)
            .unwrap_or_default()
            .iter()
            .map(|(r, q)| (r.clone(), quantity(r, &q.0)))
            .collect();
        for (resource, ids) in self.devices.allocated().await {
            let have = allocatable.entry(resource).or_default();
            *have = (*have).max(ids.len() as i64);
        }
        let mut requests = pod_requests(pod);
        requests.retain(|r, _| !is_extended_resource_name(r) || allocatable.contains_key(r));
        let mut used: BTreeMap<String, i64> = BTreeMap::new();
        for t in tracked.values() {
            for (r, v) in pod_requests(&t.pod) {
                *used.entry(r).or_default() += v;
            }
        }
        let insufficient = |resource: &str, requested: i64| {
            let used = used.get(resource).copied().unwrap_or(0);
            let capacity = allocatable.get(resource).copied().unwrap_or(0);
            (used + requested > capacity).then(|| {
                let reason = match resource {
                    "cpu" => "OutOfcpu".to_string(),
                    "memory" => "OutOfmemory".to_string(),
                    "ephemeral-storage" => "OutOfephemeral-storage".to_string(),
                    "pods" => "OutOfpods".to_string(),
                    other => format!("OutOf{other}"),
                };
                (
                    reason,
                    format!(
                        "Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
                    ),
                )
            })
        };
        let pods_used = tracked.len() as i64;
        let pods_capacity = allocatable.get("pods").copied().unwrap_or(0);
        if pods_used + 1 > pods_capacity {
            return Err((
                "OutOfpods".into(),
                format!(
                    "Node didn't have enough resource: pods, requested: 1, used: {pods_used}, capacity: {pods_capacity}"
                ),
            ));
        }
        for resource in ["cpu", "memory", "ephemeral-storage"] {
            if let Some(v) = requests.get(resource).filter(|v| **v > 0)
                && let Some(e) = insufficient(resource, *v)
            {
                return Err(e);
            }
        }
        for (resource, v) in &requests {
            if is_extended_resource_name(resource)
                && *v > 0
                && let Some(e) = insufficient(resource, *v)
            {
                return Err(e);
            }
        }
        Ok(())
    }

    async fn annotate(&self, pod: &Pod, uid: &str) {
        let containers = self.devices.container_devices(uid).await;
        let annotation = serde_json::to_string(&containers).unwrap_or_default();
        let meta = json!({"metadata": {"annotations": {ALLOCATIONS_ANNOTATION: annotation}}});
        if let Err(e) = self
            .api(pod)
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(meta),
            )
            .await
        {
            warn!(error = %e, "cannot annotate pod");
        }
    }

    /// The pod workers' periodic work: containers that exit, restart or complete, and
    /// deleted pods whose containers have stopped.
    async fn work(&self, tracked: &mut BTreeMap<String, Tracked>, finished: &mut BTreeSet<String>) {
        let policy_now = Instant::now();
        let mut done = Vec::new();
        for (uid, t) in tracked.iter_mut() {
            if let Some(at) = t.stops_at {
                if policy_now >= at {
                    done.push(uid.clone());
                }
                continue;
            }
            let policy = restart_policy(&t.pod);
            let mut changed = false;
            for c in &mut t.containers {
                match &c.state {
                    State::Running { since, .. } => {
                        if let Program::Exits { after, code } = c.program
                            && since.elapsed() >= after
                        {
                            let restart =
                                policy == "Always" || (policy == "OnFailure" && code != 0);
                            // The first restart is immediate, then the back-off doubles.
                            let delay = if c.restarts == 0 {
                                Duration::ZERO
                            } else {
                                (BACKOFF_START * 2u32.saturating_pow(c.restarts - 1))
                                    .min(BACKOFF_MAX)
                            };
                            c.state = State::Exited {
                                code,
                                finished_at: now(),
                                restart_at: restart.then(|| Instant::now() + delay),
                            };
                            changed = true;
                        }
                    }
                    State::Exited {
                        restart_at: Some(at),
                        ..
                    } if Instant::now() >= *at => {
                        // A restarted container gets the devices it had: the kubelet
                        // reuses the cached Allocate answer and calls no plugin.
                        c.restarts += 1;
                        c.state = State::Running {
                            since: Instant::now(),
                            started_at: now(),
                        };
                        changed = true;
                    }
                    State::Exited { .. } => {}
                }
            }
            let all_done = t.containers.iter().all(|c| {
                matches!(
                    c.state,
                    State::Exited {
                        restart_at: None,
                        ..
                    }
                )
            });
            if all_done {
                // A terminal phase: the pod is no longer active and its devices are free —
                // before the API server hears of it, as the kubelet's status manager records
                // a status locally (what GetActivePods and PodResources go by) before it
                // syncs it (pkg/kubelet/status/status_manager.go, SetPodStatus). PodResources
                // lists the active pods, so it drops the pod here too, not only after this
                // round's statuses are posted.
                self.runtime.stopped(uid);
                self.active.lock().await.remove(uid);
            }
            if changed {
                self.post_status(t).await;
            }
            if all_done {
                finished.insert(uid.clone());
                done.push(uid.clone());
            }
        }
        for uid in done {
            let Some(t) = tracked.remove(&uid) else {
                continue;
            };
            if t.stops_at.is_some() {
                self.runtime.stopped(&uid);
                finished.insert(uid.clone());
                self.confirm_deletion(&t.pod, &uid).await;
            }
        }
    }

    /// The kubelet's pod status: phase from the containers, their states and restart counts.
    async fn post_status(&self, t: &Tracked) {
        let all_exited = t.containers.iter().all(|c| {
            matches!(
                c.state,
                State::Exited {
                    restart_at: None,
                    ..
                }
            )
        });
        let phase = if !all_exited {
            "Running"
        } else if t
            .containers
            .iter()
            .all(|c| matches!(c.state, State::Exited { code: 0, .. }))
        {
            "Succeeded"
        } else {
            "Failed"
        };
        let uid = t.pod.uid().unwrap_or_default();
        let statuses: Vec<_> = t
            .containers
            .iter()
            .map(|c| {
                let (state, ready) = match &c.state {
                    State::Running { started_at, .. } => {
                        (json!({"running": {"startedAt": started_at}}), true)
                    }
                    State::Exited {
                        code,
                        finished_at,
                        restart_at: Some(_),
                    } if c.restarts > 0 => (
                        json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off restarting failed container {} (exit code {code}, finished {finished_at})", c.name)}}),
                        false,
                    ),
                    State::Exited {
                        code, finished_at, ..
                    } => (
                        json!({"terminated": {"exitCode": code, "reason": if *code == 0 { "Completed" } else { "Error" }, "finishedAt": finished_at}}),
                        false,
                    ),
                };
                json!({
                    "name": c.name,
                    "image": c.image,
                    "imageID": "",
                    "containerID": format!("fake://{uid}/{}/{}", c.name, c.restarts),
                    "ready": ready,
                    "started": ready,
                    "restartCount": c.restarts,
                    "state": state,
                })
            })
            .collect();
        let ready = t
            .containers
            .iter()
            .all(|c| matches!(c.state, State::Running { .. }));
        let at = now();
        let condition = |kind: &str, ok: bool| json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastTransitionTime": at});
        let status = json!({"status": {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": t.pod.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|s| s.0.to_string()).unwrap_or_else(now),
            "conditions": [condition("PodScheduled", true), condition("Initialized", true), condition("ContainersReady", ready), condition("Ready", ready)],
            "containerStatuses": statuses,
        }});
        let name = t.pod.name_any();
        match self
            .api(&t.pod)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
        {
            Err(e) => warn!(error = %e, "cannot post pod status"),
            Ok(_) => {
                info!(pod = %format!("{}/{name}", t.pod.namespace().unwrap_or_default()), %phase, "pod status")
            }
        }
    }

    /// Once a deleted pod's containers have stopped, the kubelet deletes it for good.
    async fn confirm_deletion(&self, pod: &Pod, uid: &str) {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let _ = self.api(pod).delete(&pod.name_any(), &dp).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(command: &[&str]) -> Container {
        Container {
            name: "c".into(),
            command: Some(command.iter().map(|s| s.to_string()).collect()),
            ..Container::default()
        }
    }

    #[test]
    fn programs_read_from_commands() {
        assert_eq!(
            Program::of(&container(&["sleep", "2"])),
            Program::Exits {
                after: Duration::from_secs(2),
                code: 0
            }
        );
        assert_eq!(
            Program::of(&container(&["/bin/sh", "-c", "false"])),
            Program::Exits {
                after: Duration::ZERO,
                code: 1
            }
        );
        assert_eq!(
            Program::of(&container(&["sleep", "infinity"])),
            Program::Forever
        );
        assert_eq!(Program::of(&container(&["broker"])), Program::Forever);
        assert_eq!(Program::of(&Container::default()), Program::Forever);
    }

    #[test]
    fn quantities_in_scheduler_units() {
        assert_eq!(quantity("cpu", "100m"), 100);
        assert_eq!(quantity("cpu", "2"), 2000);
        assert_eq!(quantity("memory", "1Ki"), 1024);
        assert_eq!(quantity("dowser.dev/x", "1"), 1);
    }
}
