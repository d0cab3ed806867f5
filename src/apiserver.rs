//! The words both the agent and the controller use with the API server: which errors mean
//! what, and server-side apply bodies built from typed objects (the API version and kind
//! come from the Rust type, never from a string written by hand).

use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde::Serialize;
use serde_json::{Value, json};

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
