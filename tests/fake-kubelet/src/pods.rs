//! Pods bound to this node: admitted through the device manager (or failed with
//! UnexpectedAdmissionError), marked Running, and removed when deleted.

use std::{collections::HashSet, path::PathBuf, sync::Arc};

use futures::StreamExt;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::{
        WatchStreamExt,
        watcher::{self, Event},
    },
};
use serde_json::json;
use tracing::{info, warn};

use crate::devices::DeviceManager;

/// Annotation where the fake kubelet records what each container got from device plugins,
/// for tests to assert (a real kubelet puts it into the container instead).
pub const ALLOCATIONS_ANNOTATION: &str = "fake-kubelet.dowser.dev/allocations";

/// Resources the kubelet itself accounts for; every other one with a domain is a
/// device-plugin resource.
fn is_device_resource(name: &str) -> bool {
    name.contains('/') && !name.starts_with("kubernetes.io/") && !name.starts_with("hugepages-")
}

/// Device-plugin resources each container asks for (extended resources are set in limits;
/// requests equal them).
fn device_requests(pod: &Pod) -> Vec<(String, Vec<(String, usize)>)> {
    let Some(spec) = &pod.spec else { return vec![] };
    spec.containers
        .iter()
        .map(|c| {
            let mut wanted = Vec::new();
            let resources = c.resources.as_ref();
            let limits = resources.and_then(|r| r.limits.clone()).unwrap_or_default();
            let requests = resources
                .and_then(|r| r.requests.clone())
                .unwrap_or_default();
            for (name, q) in limits.iter().chain(requests.iter()) {
                if is_device_resource(name)
                    && !wanted.iter().any(|(n, _): &(String, usize)| n == name)
                {
                    wanted.push((name.clone(), q.0.parse().unwrap_or(0)));
                }
            }
            (c.name.clone(), wanted)
        })
        .collect()
}

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

pub async fn run(
    client: Client,
    node: String,
    devices: Arc<DeviceManager>,
    runtime: Runtime,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher::watcher(pods.clone(), config)
        .default_backoff()
        .boxed();
    let mut done: HashSet<String> = HashSet::new();
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(Event::Apply(p) | Event::InitApply(p)) => p,
            Ok(Event::Delete(p)) => {
                if let Some(uid) = p.uid() {
                    devices.release(&uid).await;
                    runtime.stopped(&uid);
                    done.remove(&uid);
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                warn!(error = %e, "pod watch error");
                continue;
            }
        };
        let Some(uid) = pod.uid() else { continue };
        if pod.metadata.deletion_timestamp.is_some() {
            // The containers are "stopped" at once; the kubelet then confirms the deletion.
            devices.release(&uid).await;
            runtime.stopped(&uid);
            let ns = pod.namespace().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let _ = api.delete(&pod.name_any(), &dp).await;
            continue;
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if done.contains(&uid) || phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        done.insert(uid.clone());
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if devices.assignment(&uid).await.is_some() {
            if runtime.running(&uid) {
                // A kubelet restart: the containers still run with their devices.
                continue;
            }
            // A node reboot: the containers are gone, the pod is admitted again with the
            // devices of the checkpoint, if their plugins are back.
            if let Err(message) = devices.readmit(&uid).await {
                runtime.stopped(&uid);
                fail(&api, &pod, &message, &Timestamp::now().to_string()).await;
                continue;
            }
        }
        if admit(&api, &pod, &uid, &devices).await {
            runtime.started(&uid);
        }
    }
    Ok(())
}

/// Fails a pod's admission as the kubelet does.
async fn fail(api: &Api<Pod>, pod: &Pod, message: &str, now: &str) {
    let name = pod.name_any();
    let ns = pod.namespace().unwrap_or_default();
    info!(pod = %format!("{ns}/{name}"), %message, "admission failed");
    let status = json!({"status": {
        "phase": "Failed",
        "reason": "UnexpectedAdmissionError",
        "message": message,
        "startTime": now,
    }});
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
        .await
    {
        warn!(error = %e, "cannot fail pod");
    }
}

/// Admits a pod and marks it Running; false if admission failed.
async fn admit(api: &Api<Pod>, pod: &Pod, uid: &str, devices: &DeviceManager) -> bool {
    let name = pod.name_any();
    let ns = pod.namespace().unwrap_or_default();
    let requests = device_requests(pod);
    let now = Timestamp::now().to_string();
    match devices.admit(uid, &ns, &name, &requests).await {
        Err(message) => {
            fail(api, pod, &message, &now).await;
            false
        }
        Ok(assignment) => {
            let annotation = serde_json::to_string(&assignment.containers).unwrap_or_default();
            let meta = json!({"metadata": {"annotations": {ALLOCATIONS_ANNOTATION: annotation}}});
            if let Err(e) = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(meta))
                .await
            {
                warn!(error = %e, "cannot annotate pod");
            }
            let containers = pod
                .spec
                .as_ref()
                .map(|s| s.containers.clone())
                .unwrap_or_default();
            let statuses: Vec<_> = containers
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "image": c.image.clone().unwrap_or_default(),
                        "imageID": "",
                        "containerID": format!("fake://{uid}/{}", c.name),
                        "ready": true,
                        "started": true,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    })
                })
                .collect();
            let condition =
                |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
            let status = json!({"status": {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": now,
                "conditions": [condition("PodScheduled"), condition("Initialized"), condition("ContainersReady"), condition("Ready")],
                "containerStatuses": statuses,
            }});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                .await
            {
                warn!(error = %e, "cannot mark pod running");
            } else {
                info!(pod = %format!("{ns}/{name}"), "running");
            }
            true
        }
    }
}
