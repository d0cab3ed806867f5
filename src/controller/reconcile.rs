//! One pass over a Configuration: read what exists, plan, apply the plan, write the status.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{Node, Pod, Service},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, ObjectList, PartialObjectMeta},
    runtime::{controller, events::Recorder, reflector::ObjectRef, reflector::Store},
};
use tracing::warn;

use super::{
    Error,
    apply::Executor,
    backoff::Backoff,
    brokers::BrokerDevices,
    metrics::Metrics,
    plan::{self, Inputs, Requeue},
    status,
};
use crate::{
    crd::{CONFIGURATION_LABEL, Configuration, DeviceApproval, Instance},
    validate,
};

/// What every reconcile shares.
pub struct Ctx {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Failures of broker pods, across reconciles.
    pub backoff: Mutex<Backoff>,
    /// The Nodes, from a watch.
    pub nodes: Store<PartialObjectMeta<Node>>,
    /// The Configurations, from the controller's watch.
    pub configurations: Store<Configuration>,
    /// How brokers ask for their device.
    pub broker_devices: BrokerDevices,
}

/// Reconciles one Configuration.
pub async fn reconcile(
    config: Arc<Configuration>,
    ctx: Arc<Ctx>,
) -> Result<controller::Action, Error> {
    ctx.metrics.reconciled();
    let namespace = config.namespace().unwrap_or_default();
    if config.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget_brokers(&namespace, &config.name_any());
        return Ok(controller::Action::await_change());
    }
    let seen = observe(&ctx, &config).await?;
    let plan = {
        let backoff = ctx.backoff.lock().expect("backoff");
        plan::plan(&seen.inputs(&config, &backoff, ctx.broker_devices))
    };
    ctx.metrics.brokers(
        &namespace,
        &config.name_any(),
        plan.brokers.wanted,
        plan.brokers.running,
    );
    // The series of Configurations deleted since go (they are not reconciled again).
    ctx.metrics.forget_brokers_unless(|namespace, name| {
        let key = ObjectRef::<Configuration>::new(name).within(namespace);
        ctx.configurations.get(&key).is_some()
    });
    Executor::new(&ctx, &config).run(plan.actions).await?;
    let configs = Api::namespaced(ctx.client.clone(), &config.namespace().unwrap_or_default());
    status::write(&configs, &config, &plan.status)
        .await
        .map_err(Error::Status)?;
    Ok(match plan.requeue {
        Requeue::AwaitChange => controller::Action::await_change(),
        Requeue::After(wait) => controller::Action::requeue(wait),
    })
}

/// Counts the failure and retries in 5 s.
pub fn error_policy(_: Arc<Configuration>, error: &Error, ctx: Arc<Ctx>) -> controller::Action {
    ctx.metrics.failed(error);
    warn!(%error, "will retry");
    controller::Action::requeue(Duration::from_secs(5))
}

/// What exists for one Configuration.
#[derive(Default)]
struct Seen {
    instances: Vec<Instance>,
    approvals: Vec<DeviceApproval>,
    nodes: BTreeSet<String>,
    pods: Vec<Pod>,
    jobs: Vec<Job>,
    services: Vec<Service>,
}

impl Seen {
    fn inputs<'a>(
        &'a self,
        config: &'a Configuration,
        backoff: &'a Backoff,
        devices: BrokerDevices,
    ) -> Inputs<'a> {
        Inputs {
            config,
            instances: &self.instances,
            nodes: &self.nodes,
            pods: &self.pods,
            jobs: &self.jobs,
            services: &self.services,
            approvals: &self.approvals,
            backoff,
            now: Instant::now(),
            now_utc: Timestamp::now(),
            devices,
        }
    }
}

/// Reads what the plan is made from. An invalid Configuration only needs its Instances
/// (their number goes into its status).
async fn observe(ctx: &Ctx, config: &Configuration) -> Result<Seen, Error> {
    let ns = config.namespace().unwrap_or_default();
    let by_label = ListParams::default().labels(&format!(
        "{CONFIGURATION_LABEL}={}",
        crate::naming::configuration_label(&config.name_any())
    ));
    // Read fresh, not from a cache: a reconcile triggered by an Instance change must see
    // that change (a cache may not have it yet, and nothing would trigger again).
    let instances = list::<Instance>(ctx, &ns, &by_label, "Instances").await?;
    if !validate::spec(&config.spec).is_empty() {
        return Ok(Seen {
            instances,
            ..Seen::default()
        });
    }
    let pods = list::<Pod>(ctx, &ns, &by_label, "Pods").await?;
    let jobs = list::<Job>(ctx, &ns, &by_label, "Jobs").await?;
    let services = list::<Service>(ctx, &ns, &by_label, "Services").await?;
    let approvals = if config.spec.approval == crate::crd::Approval::Manual {
        let mine = config.name_any();
        list::<DeviceApproval>(ctx, &ns, &ListParams::default(), "DeviceApprovals")
            .await?
            .into_iter()
            .filter(|a| a.spec.configuration_name == mine)
            .collect()
    } else {
        Vec::new()
    };
    let nodes = existing_nodes(ctx, plan::nodes_named(&instances, &pods)).await?;
    Ok(Seen {
        instances,
        approvals,
        nodes,
        pods,
        jobs,
        services,
    })
}

/// Lists what carries `params`' label, [`PAGE`] at a time, each object kept without its
/// managed fields (no rule reads them): a reconcile of a Configuration with thousands of
/// Instances holds one page of response at a time.
async fn list<K>(
    ctx: &Ctx,
    ns: &str,
    params: &ListParams,
    what: &'static str,
) -> Result<Vec<K>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let mut items = Vec::new();
    let mut params = params.clone().limit(PAGE);
    loop {
        let page: ObjectList<K> = api
            .list(&params)
            .await
            .map_err(|source| Error::Read { what, source })?;
        items.extend(page.items.into_iter().map(|mut item| {
            item.meta_mut().managed_fields = None;
            item
        }));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(items),
        }
    }
}

/// Objects per page of a list.
const PAGE: u32 = 250;

/// Which of the `named` Nodes exist. From the watched store when it has them all; else
/// listed fresh, so that a Node the watch has not delivered yet (or a store not yet filled)
/// is never taken for gone: that would free the slots of a node that is there.
async fn existing_nodes(ctx: &Ctx, named: BTreeSet<String>) -> Result<BTreeSet<String>, Error> {
    let in_store = |name: &String| ctx.nodes.get(&ObjectRef::new(name)).is_some();
    if named.iter().all(in_store) {
        return Ok(named);
    }
    let listed = Api::<Node>::all(ctx.client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map_err(|source| Error::Read {
            what: "Nodes",
            source,
        })?;
    Ok(listed.items.iter().map(ResourceExt::name_any).collect())
}
