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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Instance;

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
}
