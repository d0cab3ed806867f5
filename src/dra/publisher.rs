//! Keeps the cluster's ResourceSlices of this node equal to what [`super::slices`] says: the
//! thin I/O edge of the DRA side. It writes only the pools this node publishes, with one
//! generation per change, and removes the slices it published that nothing wants any more
//! (after a restart, stale slices of devices that went while it was down).

use std::{collections::BTreeMap, sync::Arc};

use futures::StreamExt;

use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::reflector::{ObjectRef, Store},
};
use tracing::{debug, info};

use super::slices::{self, PUBLISHER_LABEL, Pool, Seen};
use crate::{
    crd::{Configuration, Instance},
    naming,
};

/// The field manager of the slices' server-side applies. One for every agent: a shared
/// device's pool moves from node to node, and the agent that publishes it now owns it.
const FIELD_MANAGER: &str = "dowser-agent-dra";

/// Pools written at once. Each network device is a pool of its own: a first scan of 1,000
/// wrote 1,000 slices, one round trip each, and one after the other held the agent's loop
/// for seconds.
const WRITES_IN_FLIGHT: usize = 8;

/// What the agent knows that the slices are made from.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    node: String,
    /// Every ResourceSlice of driver `dowser.dev` (this node's, others' shared pools).
    pub slices: Store<ResourceSlice>,
    instances: Store<Instance>,
    configs: Store<Configuration>,
}

impl Publisher {
    pub fn new(
        client: Client,
        node: &str,
        slices: Store<ResourceSlice>,
        instances: Store<Instance>,
        configs: Store<Configuration>,
    ) -> Self {
        Self {
            client,
            node: node.to_string(),
            slices,
            instances,
            configs,
        }
    }

    /// The handler of an Instance's Configuration, while the Configuration exists.
    fn handler(&self, instance: &Instance) -> Option<&'static str> {
        let namespace = instance.namespace()?;
        let config = self
            .configs
            .get(&ObjectRef::new(&instance.spec.configuration_name).within(&namespace))?;
        let name = config.spec.discovery.selected().ok()?.name();
        crate::handlers::BUILT_IN
            .iter()
            .copied()
            .find(|h| *h == name)
    }

    /// The pools this node publishes now.
    pub fn wanted(&self) -> BTreeMap<String, Pool> {
        let instances: Vec<(Arc<Instance>, &'static str)> = self
            .instances
            .state()
            .into_iter()
            .filter(|i| crate::approval::offered_here(&self.configs, i))
            .filter_map(|i| self.handler(&i).map(|h| (i, h)))
            .collect();
        let seen: Vec<Seen<'_>> = instances
            .iter()
            .map(|(i, h)| Seen {
                instance: i,
                handler: h,
            })
            .collect();
        slices::pools(&self.node, &seen)
    }

    /// Writes what changed, [`WRITES_IN_FLIGHT`] pools at a time. Returns how many slices
    /// it wrote or removed; an error leaves the rest for the next call.
    pub async fn sync(&self) -> Result<usize, kube::Error> {
        let wanted = self.wanted();
        let published = self.slices.state();
        let api: Api<ResourceSlice> = Api::all(self.client.clone());
        let mut by_pool: BTreeMap<&str, Vec<&ResourceSlice>> = BTreeMap::new();
        for slice in &published {
            by_pool
                .entry(slice.spec.pool.name.as_str())
                .or_default()
                .push(slice);
        }
        let changed = wanted.values().filter_map(|pool| {
            let current: Vec<&ResourceSlice> = by_pool
                .get(pool.name.as_str())
                .into_iter()
                .flatten()
                .copied()
                .filter(|s| s.spec.node_name == pool.node_name)
                .collect();
            (!slices::up_to_date(&self.node, pool, &current)).then_some((pool, current))
        });
        let results: Vec<Result<usize, kube::Error>> = futures::stream::iter(changed)
            .map(|(pool, current)| self.write(&api, pool, current))
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        let mut writes = 0;
        for result in results {
            writes += result?;
        }
        let mine = naming::configuration_label(&self.node);
        for slice in &published {
            let gone = slice.labels().get(PUBLISHER_LABEL) == Some(&mine)
                && !wanted.contains_key(&slice.spec.pool.name);
            if gone {
                writes += delete(&api, slice).await?;
                info!(pool = %slice.spec.pool.name, slice = %slice.name_any(), "unpublished");
            }
        }
        Ok(writes)
    }

    /// Publishes a pool's next generation over `current`, its slices as they are now.
    async fn write(
        &self,
        api: &Api<ResourceSlice>,
        pool: &Pool,
        current: Vec<&ResourceSlice>,
    ) -> Result<usize, kube::Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let generation =
            slices::next_generation(current.iter().map(|s| s.spec.pool.generation).max(), now);
        let new = slices::slices(&self.node, pool, generation);
        let mut writes = 0;
        for slice in &new {
            api.patch(
                &slice.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(slice),
            )
            .await?;
            writes += 1;
        }
        for old in current {
            if !new.iter().any(|n| n.metadata.name == old.metadata.name) {
                writes += delete(api, old).await?;
            }
        }
        info!(pool = %pool.name, devices = pool.devices.len(), generation, "published");
        Ok(writes)
    }
}

/// Deletes a slice as it was seen: one rewritten since (a shared pool taken over by another
/// node) is left alone.
async fn delete(api: &Api<ResourceSlice>, slice: &ResourceSlice) -> Result<usize, kube::Error> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: slice.uid(),
            resource_version: slice.resource_version(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&slice.name_any(), &params).await {
        Ok(_) => Ok(1),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
            debug!(slice = %slice.name_any(), reason = %e.message, "not deleted");
            Ok(0)
        }
        Err(e) => Err(e),
    }
}
