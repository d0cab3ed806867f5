//! The words both the agent and the controller use with the API server: which errors mean
//! what, and server-side apply bodies built from typed objects (the API version and kind
//! come from the Rust type, never from a string written by hand).

use std::time::Duration;

use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
    runtime::watcher,
};
use serde::Serialize;
use serde_json::{Value, json};

/// Backoff of every watch of the agent and the controller after an error: 0.5 s doubling
/// up to 5 s, each wait stretched by up to as much again at random (a fleet of agents
/// cut off together does not come back in step), back to 0.5 s as soon as an event flows.
/// The watcher's default (up to 30 s, reset only after 2 min without an error) let a few
/// errors in a row at start-up — a CRD not served yet, a watch cache still initialising —
/// or an API server outage leave an agent blind for up to half a minute after the API
/// server was back.
pub fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// The object does not exist (HTTP 404).
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Another writer got there first: a precondition, a resource version or a server-side
/// apply field owned by another manager (HTTP 409).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// A server-side apply body for `K` named `name`: `apiVersion` and `kind` from the type,
/// `metadata` as given (at least the name) and the rest of `fields` merged in.
pub fn apply_body<K>(metadata: Value, fields: impl Serialize) -> Value
where
    K: Resource<DynamicType = ()>,
{
    let mut body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
    });
    if let (Value::Object(body), Ok(Value::Object(fields))) =
        (&mut body, serde_json::to_value(fields))
    {
        body.extend(fields);
    }
    body
}

/// Applies `status` to the status subresource of `name` under `manager`. `force` takes
/// fields over from other managers; without it a field another manager owns is a conflict.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    name: &str,
    manager: &str,
    force: bool,
    status: S,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let body = apply_body::<K>(json!({ "name": name }), json!({ "status": status }));
    let mut params = PatchParams::apply(manager);
    if force {
        params = params.force();
    }
    api.patch_status(name, &params, &Patch::Apply(body)).await
}

/// Whether the API server serves `K` (its group/version lists the resource): `Ok(None)` if
/// it does, `Ok(Some(message))` saying what is missing if not — a cluster older than the
/// version that brought the API, or one that turned it off with `--runtime-config` — and
/// `Err` if the API server could not be asked.
pub async fn not_served<K>(client: &kube::Client) -> Result<Option<String>, kube::Error>
where
    K: Resource<DynamicType = ()>,
{
    let group_version = K::api_version(&());
    let listed = match client.list_api_group_resources(&group_version).await {
        Ok(list) => Some(list),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(e),
    };
    Ok(missing::<K>(listed.as_ref()))
}

/// Waits until the API server answers whether it serves `K` (a server not up yet is asked
/// again, with the watches' backoff), and fails with what is missing and what to do
/// instead (`instead`) if it does not: a start-up check, so that a process configured for
/// an API the cluster lacks says so at once instead of waiting for a watch that never syncs.
pub async fn require<K>(client: &kube::Client, instead: &str) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()>,
{
    let mut backoff = watch_backoff();
    loop {
        match not_served::<K>(client).await {
            Ok(None) => return Ok(()),
            Ok(Some(missing)) => anyhow::bail!("{missing}: {instead}"),
            Err(e) => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, api = %K::api_version(&()), "cannot ask the API server which APIs it serves; asking again");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// What [`not_served`] decides from the group/version's resource list (`None`: not served).
fn missing<K>(
    listed: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList>,
) -> Option<String>
where
    K: Resource<DynamicType = ()>,
{
    let plural = K::plural(&());
    let group_version = K::api_version(&());
    match listed {
        Some(list) if list.resources.iter().any(|r| r.name == plural) => None,
        Some(_) => Some(format!(
            "the API server serves {group_version} but not its {plural}"
        )),
        None => Some(format!("the API server does not serve {group_version}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Instance;
    use k8s_openapi::{
        api::resource::v1::ResourceSlice,
        apimachinery::pkg::apis::meta::v1::{APIResource, APIResourceList},
    };

    #[test]
    fn apply_bodies_take_version_and_kind_from_the_type() {
        let body = apply_body::<Instance>(json!({"name": "c-1"}), json!({"status": {"a": 1}}));
        assert_eq!(
            body,
            json!({
                "apiVersion": "dowser.dev/v1alpha1",
                "kind": "Instance",
                "metadata": {"name": "c-1"},
                "status": {"a": 1},
            })
        );
    }

    #[test]
    fn watches_back_off_to_five_seconds_and_start_over_once_events_flow() {
        use kube::runtime::utils::Backoff;
        let mut b = watch_backoff();
        let bases = [500, 1000, 2000, 4000, 5000, 5000, 5000];
        let waits: Vec<u128> = b
            .by_ref()
            .take(bases.len())
            .map(|d| d.as_millis())
            .collect();
        for (wait, base) in waits.iter().zip(bases) {
            assert!((base..2 * base).contains(wait), "{waits:?}");
        }
        b.reset();
        assert!((500..1000).contains(&b.next().unwrap().as_millis()));
        // Agents cut off together wait different times.
        let firsts: std::collections::BTreeSet<u128> = (0..8)
            .map(|_| watch_backoff().next().unwrap().as_millis())
            .collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }

    #[test]
    fn errors_are_told_apart_by_their_code() {
        let api = |code| {
            kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(is_not_found(&api(404)) && !is_conflict(&api(404)));
        assert!(is_conflict(&api(409)) && !is_not_found(&api(409)));
    }

    #[test]
    fn an_api_is_served_when_its_group_version_lists_the_resource() {
        let list = |names: &[&str]| APIResourceList {
            group_version: "resource.k8s.io/v1".into(),
            resources: names
                .iter()
                .map(|n| APIResource {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
        };
        assert_eq!(
            missing::<ResourceSlice>(Some(&list(&["deviceclasses", "resourceslices"]))),
            None
        );
        assert_eq!(
            missing::<ResourceSlice>(Some(&list(&["deviceclasses"]))).as_deref(),
            Some("the API server serves resource.k8s.io/v1 but not its resourceslices")
        );
        assert_eq!(
            missing::<ResourceSlice>(None).as_deref(),
            Some("the API server does not serve resource.k8s.io/v1")
        );
    }
}
