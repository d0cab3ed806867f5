//! The kubelet's PodResources API (v1): which pod and container holds which devices.

use std::sync::Arc;

use dowser::deviceplugin::podresources::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources, pod_resources_lister_server::PodResourcesLister,
};
use tonic::{Request, Response, Status};

use crate::devices::{DeviceManager, PodAssignment};

pub struct Lister(pub Arc<DeviceManager>);

fn pod_resources(p: &PodAssignment) -> PodResources {
    PodResources {
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        containers: p
            .containers
            .iter()
            .map(|(name, assignments)| ContainerResources {
                name: name.clone(),
                devices: assignments
                    .iter()
                    .map(|a| ContainerDevices {
                        resource_name: a.resource.clone(),
                        device_ids: a.device_ids.clone(),
                        topology: None,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl PodResourcesLister for Lister {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        let pod_resources = self
            .0
            .assignments()
            .await
            .values()
            .map(pod_resources)
            .collect();
        Ok(Response::new(ListPodResourcesResponse { pod_resources }))
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        let devices = self
            .0
            .all_devices()
            .await
            .into_iter()
            .map(|(resource_name, device_ids)| ContainerDevices {
                resource_name,
                device_ids,
                topology: None,
            })
            .collect();
        Ok(Response::new(AllocatableResourcesResponse {
            devices,
            ..Default::default()
        }))
    }

    async fn get(
        &self,
        request: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        let r = request.into_inner();
        let found = self
            .0
            .assignments()
            .await
            .into_values()
            .find(|p| p.name == r.pod_name && p.namespace == r.pod_namespace)
            .ok_or_else(|| {
                Status::not_found(format!("pod {}/{} not found", r.pod_namespace, r.pod_name))
            })?;
        Ok(Response::new(GetPodResourcesResponse {
            pod_resources: Some(pod_resources(&found)),
        }))
    }
}
