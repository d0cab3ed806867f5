//! Field errors and the CEL rules that the generated schema carries.

use std::fmt;

use schemars::Schema;
use serde::Serialize;
use serde_json::{Value, json};

/// One problem with one field, reported the way the Kubernetes API server does:
/// `spec.discovery.modbus.targets[2]: <message>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the field, in the API server's notation.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A CEL validation rule (`x-kubernetes-validations`) evaluated by the API server and, with
/// the same expression and message, by `dowser discover`.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// The CEL expression; `self` is the value the rule is attached to.
    pub rule: &'static str,
    /// The message shown when the rule fails.
    pub message: &'static str,
    /// Optional relative field path the error is reported on (`.targets`).
    pub field_path: Option<&'static str>,
}

impl Rule {
    pub const fn new(rule: &'static str, message: &'static str) -> Self {
        Self {
            rule,
            message,
            field_path: None,
        }
    }

    pub const fn at(self, field_path: &'static str) -> Self {
        Self {
            field_path: Some(field_path),
            ..self
        }
    }

    fn to_json(self) -> Value {
        let mut v = json!({ "rule": self.rule, "message": self.message });
        if let Some(p) = self.field_path {
            v["fieldPath"] = json!(p);
        }
        v
    }
}

/// Appends CEL rules to a schema (used from `#[schemars(transform = ...)]`).
pub fn add_rules(schema: &mut Schema, rules: &[Rule]) {
    let obj = schema.ensure_object();
    let list = obj
        .entry("x-kubernetes-validations")
        .or_insert_with(|| Value::Array(vec![]));
    if let Value::Array(items) = list {
        items.extend(rules.iter().map(|r| r.to_json()));
    }
}

/// Marks a list as a set (`x-kubernetes-list-type: set`) for server-side apply.
pub fn list_set(schema: &mut Schema) {
    schema.insert("x-kubernetes-list-type".into(), json!("set"));
}
