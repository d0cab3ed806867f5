//! The kubelet's PodResources API v1 (`pkg/kubelet/apis/podresources/server_v1.go`): which
//! active pod and container holds which devices, the node's allocatable devices, and one
//! pod's resources behind the `KubeletPodResourcesGet` feature gate.

use std::sync::Arc;

use dowser::deviceplugin::podresources::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources, pod_resources_lister_server::PodResourcesLister,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tonic::{Request, Response, Status};

use crate::{devices::DeviceManager, pods::ActivePods};

pub struct Lister {
    pub devices: Arc<DeviceManager>,
    pub pods: ActivePods,
    /// The `KubeletPodResourcesGet` feature gate (beta, on by default since 1.34).
    pub get_enabled: bool,
}

impl Lister {
    /// `getContainerResources` for each app container and each restartable init container.
    async fn pod_resources(&self, pod: &Pod) -> PodResources {
        let uid = pod.uid().unwrap_or_default();
        let held = self.devices.container_devices(&uid).await;
        let spec = pod.spec.clone().unwrap_or_default();
        let containers = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"))
            .chain(spec.containers.iter())
            .map(|c| ContainerResources {
                name: c.name.clone(),
                devices: held
                    .get(&c.name)
                    .into_iter()
                    .flatten()
                    .flat_map(|a| per_device(&a.resource, &a.device_ids))
                    .collect(),
                ..Default::default()
            })
            .collect();
        PodResources {
            name: pod.name_any(),
            namespace: pod.namespace().unwrap_or_default(),
            containers,
        }
    }
}

/// One entry per device, as the kubelet answers (`cm/container_manager.go`
/// `containerDevicesFromResourceDeviceInstances`; no topology here).
fn per_device(resource: &str, ids: &[String]) -> Vec<ContainerDevices> {
    ids.iter()
        .map(|id| ContainerDevices {
            resource_name: resource.to_string(),
            device_ids: vec![id.clone()],
            topology: None,
        })
        .collect()
}

#[tonic::async_trait]
impl PodResourcesLister for Lister {
    /// `List`: every active pod (`KubeletPodResourcesListUseActivePods`, on by default),
    /// pods in their termination grace period included.
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        let pods: Vec<Pod> = self.pods.lock().await.values().cloned().collect();
        let mut pod_resources = Vec::with_capacity(pods.len());
        for pod in &pods {
            pod_resources.push(self.pod_resources(pod).await);
        }
        Ok(Response::new(ListPodResourcesResponse { pod_resources }))
    }

    /// `GetAllocatableResources`: the healthy devices only (`GetAllocatableDevices`).
    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        let devices = self
            .devices
            .allocatable_devices()
            .await
            .iter()
            .flat_map(|(resource, ids)| per_device(resource, ids))
            .collect();
        Ok(Response::new(AllocatableResourcesResponse {
            devices,
            ..Default::default()
        }))
    }

    /// `Get`: refused while the feature gate is off; a pod the kubelet does not have is an
    /// error (gRPC code Unknown, as a Go error is).
    async fn get(
        &self,
        request: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        if !self.get_enabled {
            return Err(Status::unknown("PodResources API Get method disabled"));
        }
        let r = request.into_inner();
        let found = self
            .pods
            .lock()
            .await
            .values()
            .find(|p| {
                p.name_any() == r.pod_name && p.namespace().as_deref() == Some(&r.pod_namespace)
            })
            .cloned()
            .ok_or_else(|| {
                Status::unknown(format!(
                    "pod {} in namespace {} not found",
                    r.pod_name, r.pod_namespace
                ))
            })?;
        Ok(Response::new(GetPodResourcesResponse {
            pod_resources: Some(self.pod_resources(&found).await),
        }))
    }
}
