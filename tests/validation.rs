//! Validation of Configurations: the catalogue of mistakes, each with the message a user
//! gets, and the examples that must be accepted.

use dowser::validate;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Case {
    case: String,
    #[allow(dead_code)]
    cluster: bool,
    path: String,
    message: String,
    spec: Value,
}

fn catalogue() -> Vec<Case> {
    let text = include_str!("catalogue/invalid-configurations.yaml");
    serde_yaml::from_str(text).expect("catalogue parses")
}

fn object(spec: Value) -> Value {
    json!({
        "apiVersion": "dowser.dev/v1alpha1",
        "kind": "Configuration",
        "metadata": {"name": "plc", "namespace": "default"},
        "spec": spec,
    })
}

#[test]
fn catalogue_has_enough_cases() {
    let cases = catalogue();
    assert!(cases.len() >= 25, "{} cases", cases.len());
    assert!(cases.iter().filter(|c| c.cluster).count() >= 25);
}

#[test]
fn every_mistake_is_rejected_with_its_message() {
    let mut failures = Vec::new();
    for case in catalogue() {
        match validate::configuration(&object(case.spec.clone())) {
            Ok(_) => failures.push(format!("{}: accepted", case.case)),
            Err(errors) => {
                let hit = errors
                    .iter()
                    .any(|e| e.path == case.path && e.message.contains(&case.message));
                if !hit {
                    let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    failures.push(format!(
                        "{}: wanted `{}: ...{}...`, got:\n    {}",
                        case.case,
                        case.path,
                        case.message,
                        got.join("\n    ")
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in validate::yaml_documents(&text).unwrap() {
            if doc["kind"] == "Configuration" {
                seen += 1;
                if let Err(errors) = validate::configuration(&doc) {
                    panic!("{}: {errors:?}", path.display());
                }
            }
        }
    }
    assert!(seen >= 5, "one example per handler, found {seen}");
}

#[test]
fn defaults_are_applied_as_the_api_server_does() {
    let c = validate::configuration(&object(
        json!({"discovery": {"modbus": {"targets": ["10.0.7.3"]}}}),
    ))
    .unwrap();
    assert_eq!(c.spec.capacity, 1);
    assert_eq!(c.spec.offline_grace_period_seconds, 30);
    let m = c.spec.discovery.modbus.unwrap();
    assert_eq!(m.unit_ids, ["1"]);
    assert_eq!(m.request_timeout_ms, 1000);
}

#[test]
fn wrong_kind_version_or_name_are_reported_first() {
    let mut o = object(json!({"discovery": {"modbus": {"targets": ["10.0.7.3"]}}}));
    o["apiVersion"] = json!("dowser.dev/v1");
    o["metadata"]["name"] = json!("Bad_Name");
    let errors = validate::configuration(&o).unwrap_err();
    assert_eq!(errors[0].path, "apiVersion");
    assert_eq!(errors[1].path, "metadata.name");
}
