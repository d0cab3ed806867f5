//! The OpenAPI part of a CRD's validation, as the API server applies it: types, required
//! fields, unknown fields (kubectl's strict field validation), ranges, lengths, patterns,
//! enums, and list uniqueness for `x-kubernetes-list-type`. Messages follow the API
//! server's wording so that `dowser discover` and `kubectl apply` say the same thing.

use std::collections::HashSet;

use dowser_discovery_api::FieldError;
use serde_json::Value;

/// Checks `value` (already defaulted) against `schema`; `path` is the value's field path.
pub fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(s) = schema.as_object() else { return };
    if value.is_null() {
        if s.get("nullable") == Some(&Value::Bool(true)) {
            return;
        }
        // A null in YAML (`field:` with nothing after it) is dropped by the API server for
        // non-nullable fields, like an absent field.
        return;
    }
    let preserve = s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(type_error(path, value, "integer or string"));
        }
        return;
    }
    let ty = s.get("type").and_then(Value::as_str);
    match ty {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                errors.push(type_error(path, value, "object"));
                return;
            };
            if let Some(required) = s.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    if obj.get(r).is_none_or(Value::is_null) {
                        errors.push(FieldError::new(join(path, r), "Required value"));
                    }
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties");
            for (k, v) in obj {
                let child = join(path, k);
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(sub), _) => check(sub, v, &child, errors),
                    (None, Some(sub)) if sub.is_object() => check(sub, v, &child, errors),
                    (None, Some(Value::Bool(true))) => {}
                    _ if preserve => {}
                    _ if path.is_empty()
                        && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") => {}
                    _ => {
                        let message = format!("unknown field \"{child}\"");
                        errors.push(FieldError::new(child, message));
                    }
                }
            }
            count_limits(s, obj.len(), path, value, errors);
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                errors.push(type_error(path, value, "array"));
                return;
            };
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                errors.push(FieldError::new(
                    path,
                    format!("Too many: {}: must have at most {max} items", items.len()),
                ));
            }
            if let Some(min) = s.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                errors.push(FieldError::new(
                    path,
                    format!(
                        "Invalid value: {}: {path} in body should have at least {min} items",
                        items.len()
                    ),
                ));
            }
            if let Some(item_schema) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
            uniqueness(s, items, path, errors);
        }
        Some("string") => {
            let Some(text) = value.as_str() else {
                errors.push(type_error(path, value, "string"));
                return;
            };
            let chars = text.chars().count() as u64;
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
                && chars > max
            {
                errors.push(FieldError::new(
                    path,
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
            if let Some(min) = s.get("minLength").and_then(Value::as_u64)
                && chars < min
            {
                errors.push(FieldError::new(
                    path,
                    format!(
                        "Invalid value: {value}: {path} in body should be at least {min} chars long"
                    ),
                ));
            }
            if let Some(pattern) = s.get("pattern").and_then(Value::as_str)
                && regex::Regex::new(pattern).is_ok_and(|re| !re.is_match(text))
            {
                errors.push(FieldError::new(
                    path,
                    format!("Invalid value: {value}: {path} in body should match '{pattern}'"),
                ));
            }
            enumeration(s, value, path, errors);
        }
        Some("integer") => {
            if !(value.is_i64() || value.is_u64()) {
                errors.push(type_error(path, value, "integer"));
                return;
            }
            bounds(s, value, path, errors);
            enumeration(s, value, path, errors);
        }
        Some("number") => {
            if !value.is_number() {
                errors.push(type_error(path, value, "number"));
                return;
            }
            bounds(s, value, path, errors);
        }
        Some("boolean") if !value.is_boolean() => {
            errors.push(type_error(path, value, "boolean"));
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_error(path: &str, value: &Value, want: &str) -> FieldError {
    FieldError::new(
        path,
        format!(
            "Invalid value: \"{}\": {path} in body must be of type {want}: \"{}\"",
            type_name(value),
            type_name(value)
        ),
    )
}

fn bounds(
    s: &serde_json::Map<String, Value>,
    value: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let v = value.as_f64().unwrap_or_default();
    if let Some(min) = s.get("minimum").and_then(Value::as_f64)
        && v < min
    {
        errors.push(FieldError::new(
            path,
            format!(
                "Invalid value: {value}: {path} in body should be greater than or equal to {}",
                number(min)
            ),
        ));
    }
    if let Some(max) = s.get("maximum").and_then(Value::as_f64)
        && v > max
    {
        errors.push(FieldError::new(
            path,
            format!(
                "Invalid value: {value}: {path} in body should be less than or equal to {}",
                number(max)
            ),
        ));
    }
}

/// Schema bounds are floats in the generated YAML (`1.0`); the API server prints `1`.
fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

fn enumeration(
    s: &serde_json::Map<String, Value>,
    value: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    if let Some(options) = s.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let supported: Vec<String> = options.iter().map(Value::to_string).collect();
        errors.push(FieldError::new(
            path,
            format!(
                "Unsupported value: {value}: supported values: {}",
                supported.join(", ")
            ),
        ));
    }
}

fn count_limits(
    s: &serde_json::Map<String, Value>,
    n: usize,
    path: &str,
    _value: &Value,
    errors: &mut Vec<FieldError>,
) {
    if let Some(max) = s.get("maxProperties").and_then(Value::as_u64)
        && n as u64 > max
    {
        errors.push(FieldError::new(
            path,
            format!("Too many: {n}: must have at most {max} items"),
        ));
    }
}

fn uniqueness(
    s: &serde_json::Map<String, Value>,
    items: &[Value],
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                if !seen.insert(item.to_string()) {
                    errors.push(FieldError::new(
                        format!("{path}[{i}]"),
                        format!("Duplicate value: {item}"),
                    ));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = s
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let key: Vec<String> = keys
                    .iter()
                    .map(|k| item.get(*k).map(Value::to_string).unwrap_or_default())
                    .collect();
                if !seen.insert(key.clone()) {
                    let shown: Vec<String> = keys
                        .iter()
                        .zip(&key)
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    errors.push(FieldError::new(
                        format!("{path}[{i}]"),
                        format!(
                            "Duplicate value: map[string]interface {{}}{{{}}}",
                            shown.join(", ")
                        ),
                    ));
                }
            }
        }
        _ => {}
    }
}
