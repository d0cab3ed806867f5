//! Schema helpers for the CRDs: list types for server-side apply, opaque embedded specs, and
//! the structural-schema rules the API server enforces.

use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

pub use dowser_discovery_api::validation::list_set;

/// An embedded Kubernetes spec (PodSpec, JobSpec, ServiceSpec) kept as-is by the API server
/// and checked when dowser builds the object from it.
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Marks a list of objects as a map keyed by `keys` (`x-kubernetes-list-type: map`).
pub fn list_map(schema: &mut Schema, keys: &[&str]) {
    schema.insert("x-kubernetes-list-type".into(), json!("map"));
    schema.insert("x-kubernetes-list-map-keys".into(), json!(keys));
}

/// Joins the lines of every `description` into paragraphs: doc comments are wrapped for the
/// source, while `kubectl explain` wraps text itself.
pub fn unwrap_descriptions(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                match child {
                    Value::String(text) if k == "description" => *text = unwrap(text),
                    _ => unwrap_descriptions(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

fn unwrap(text: &str) -> String {
    text.split("\n\n")
        .map(|para| para.lines().map(str::trim).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Problems that make a schema non-structural or unusable by the API server, as paths with a
/// reason. Empty for a good schema.
pub fn structural_problems(schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    walk(schema, "", &mut problems);
    problems
}

fn walk(s: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = s.as_object() else {
        out.push(format!("{path}: schema is not an object"));
        return;
    };
    for banned in [
        "$ref",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
        "definitions",
        "$defs",
    ] {
        if obj.contains_key(banned) {
            out.push(format!("{path}: uses {banned}"));
        }
    }
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    match obj.get("type").and_then(Value::as_str) {
        Some(_) => {}
        None if int_or_string || preserve => {}
        None => out.push(format!("{path}: no type")),
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!("{path}: both properties and additionalProperties"));
    }
    if obj.get("type") == Some(&json!("array")) && !obj.contains_key("items") {
        out.push(format!("{path}: array without items"));
    }
    if let Some(required) = obj.get("required").and_then(Value::as_array) {
        let props = obj.get("properties").and_then(Value::as_object);
        for r in required {
            let r = r.as_str().unwrap_or_default();
            if !props.is_some_and(|p| p.contains_key(r)) {
                out.push(format!("{path}: required {r:?} is not a property"));
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk(v, &format!("{path}.{k}"), out);
        }
    }
    if let Some(items) = obj.get("items") {
        walk(items, &format!("{path}[]"), out);
    }
    if let Some(ap) = obj.get("additionalProperties")
        && ap.is_object()
    {
        walk(ap, &format!("{path}{{}}"), out);
    }
    if let Some(Value::Array(rules)) = obj.get("x-kubernetes-validations") {
        for r in rules {
            if r.get("rule")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                out.push(format!("{path}: validation without a rule"));
            }
            if r.get("message")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                out.push(format!("{path}: validation rule without a message"));
            }
        }
    }
    if obj.get("type") == Some(&json!("object"))
        && !preserve
        && !obj.contains_key("properties")
        && !obj.contains_key("additionalProperties")
    {
        out.push(format!(
            "{path}: object without properties or additionalProperties"
        ));
    }
    if !obj.contains_key("description")
        && !path.is_empty()
        && !path.ends_with("[]")
        && !path.ends_with("{}")
    {
        out.push(format!("{path}: no description"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_the_api_server_would_refuse() {
        let bad = json!({
            "type": "object",
            "properties": {
                "a": {"description": "no type"},
                "b": {"type": "array", "description": "no items"},
                "c": {"type": "object", "description": "x", "properties": {"d": {"type": "string"}}, "additionalProperties": {"type": "string"}},
                "e": {"type": "string"},
                "f": {"anyOf": [{"type": "string"}], "type": "string", "description": "x"},
                "g": {"type": "string", "description": "x", "x-kubernetes-validations": [{"rule": "true"}]}
            },
            "required": ["missing"]
        });
        let problems = structural_problems(&bad);
        for needle in [
            ".a: no type",
            ".b: array without items",
            ".c: both properties and additionalProperties",
            ".e: no description",
            ".f: uses anyOf",
            ".g: validation rule without a message",
            ": required \"missing\" is not a property",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{needle} not in {problems:?}"
            );
        }
    }

    #[test]
    fn descriptions_become_paragraphs() {
        let mut v = json!({"description": "one\n two\n\nthree", "x": [{"description": "a\nb"}]});
        unwrap_descriptions(&mut v);
        assert_eq!(v["description"], "one two\n\nthree");
        assert_eq!(v["x"][0]["description"], "a b");
    }
}
