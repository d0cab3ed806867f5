//! Validation of Configurations: the schema and CEL rules the API server applies, then the
//! rules a schema cannot express. `dowser discover`, the agent and the controller all call
//! [`configuration`] or [`spec`], so a Configuration means the same thing everywhere.

mod openapi;

use std::sync::LazyLock;

use dowser_discovery_api::FieldError;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResourceExt, Resource};
use serde_json::Value;

use crate::crd::{Configuration, ConfigurationSpec};

/// The Configuration CRD's `openAPIV3Schema`, generated once.
static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    let crd = Configuration::crd();
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the Configuration CRD has a schema");
    serde_json::to_value(schema).expect("a schema serialises")
});

static CEL: LazyLock<kube_cel::CompiledSchema> =
    LazyLock::new(|| kube_cel::compile_schema(&SCHEMA));

/// Validates one object given as JSON (from YAML or the API), exactly as `kubectl apply`
/// would be answered, then with dowser's own rules. Returns the typed Configuration.
pub fn configuration(value: &Value) -> Result<Configuration, Vec<FieldError>> {
    let mut errors = Vec::new();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let want = format!(
        "{}/{}",
        Configuration::group(&()),
        Configuration::version(&())
    );
    if api_version != want {
        errors.push(FieldError::new(
            "apiVersion",
            format!("Unsupported value: {api_version:?}: supported values: {want:?}"),
        ));
    }
    if value.get("kind").and_then(Value::as_str) != Some("Configuration") {
        errors.push(FieldError::new(
            "kind",
            "Unsupported value: supported values: \"Configuration\"",
        ));
    }
    match value.pointer("/metadata/name").and_then(Value::as_str) {
        None | Some("") => errors.push(FieldError::new("metadata.name", "Required value: name is required")),
        Some(name) if !is_dns_subdomain(name) => errors.push(FieldError::new(
            "metadata.name",
            format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        )),
        Some(_) => {}
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let defaulted = kube_cel::apply_defaults(&SCHEMA, value);
    openapi::check(&SCHEMA, &defaulted, "", &mut errors);
    if value.get("spec").is_none() {
        errors.push(FieldError::new("spec", "Required value"));
    }
    let schema_ok = errors.is_empty();
    // The API server's CEL sees a field set to null as absent (`has()` is false).
    let for_cel = without_nulls(&defaulted);
    if let Err(failures) = kube_cel::Validator::new().validate_compiled(&CEL, &for_cel, None) {
        for f in failures.iter() {
            // Rules that could not be evaluated because a field has the wrong type are
            // already reported by the schema check.
            if !schema_ok && f.kind != kube_cel::ErrorKind::ValidationFailure {
                continue;
            }
            let path = if f.field_path.is_empty() {
                "spec".to_string()
            } else {
                f.field_path.clone()
            };
            errors.push(FieldError::new(
                path,
                format!("Invalid value: \"object\": {}", f.message),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let config: Configuration = serde_json::from_value(defaulted)
        .map_err(|e| vec![FieldError::new("spec", format!("cannot be read: {e}"))])?;
    let more = spec(&config.spec);
    if more.is_empty() {
        Ok(config)
    } else {
        Err(more)
    }
}

/// The rules that a schema cannot express, on an already typed spec (from the API server,
/// which has applied the schema and CEL rules).
pub fn spec(spec: &ConfigurationSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match spec.discovery.selected() {
        Ok(selected) => errors.extend(selected.validate("spec.discovery")),
        Err(e) => errors.push(e),
    }
    if let Some(selector) = &spec.node_selector {
        errors.extend(label_selector(selector, "spec.nodeSelector"));
    }
    if let Some(broker) = &spec.broker_spec {
        if let Some(pod) = &broker.broker_pod_spec
            && pod.containers.is_empty()
        {
            errors.push(FieldError::new(
                "spec.brokerSpec.brokerPodSpec.containers",
                "Required value: a broker pod needs at least one container",
            ));
        }
        if let Some(job) = &broker.broker_job_spec {
            let pod = job.template.spec.as_ref();
            if pod.is_none_or(|p| p.containers.is_empty()) {
                errors.push(FieldError::new(
                    "spec.brokerSpec.brokerJobSpec.template.spec.containers",
                    "Required value: a broker Job needs at least one container",
                ));
            }
            if let Some(policy) = pod.and_then(|p| p.restart_policy.as_deref())
                && policy != "Never"
                && policy != "OnFailure"
            {
                errors.push(FieldError::new(
                    "spec.brokerSpec.brokerJobSpec.template.spec.restartPolicy",
                    format!(
                        "Unsupported value: {policy:?}: supported values: \"OnFailure\", \"Never\""
                    ),
                ));
            }
        }
    }
    errors
}

fn label_selector(selector: &LabelSelector, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errors.push(FieldError::new(
                format!("{p}.values"),
                "Required value: must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errors.push(FieldError::new(
                format!("{p}.values"),
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.push(FieldError::new(
                format!("{p}.operator"),
                format!("Unsupported value: {other:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""),
            )),
        }
    }
    errors
}

/// `value` with every object member that is null left out, as CEL rules see an object.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Reads every YAML document of `text` (empty documents skipped).
pub fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| e.to_string())?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}
