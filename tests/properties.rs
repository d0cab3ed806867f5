//! Property tests (fuzzing on the stable toolchain) for the Configuration pipeline that
//! `dowser discover`, the agent and the controller share: YAML documents, the schema and CEL
//! rules, dowser's own rules and the handlers' checks. Arbitrary text, arbitrary JSON, and
//! the shipped examples with one part replaced, removed or added give a Configuration or
//! field errors, never a panic; what is accepted is accepted again after a round trip.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 256; the benchmark
//! command runs far more).

use std::sync::LazyLock;

use dowser::{device_instance::broker_env, handlers, naming, validate};
use dowser_discovery_api::env;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Every Configuration of `deploy/examples/`.
static EXAMPLES: LazyLock<Vec<Value>> = LazyLock::new(|| {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| validate::yaml_documents(&std::fs::read_to_string(f).unwrap()).unwrap())
        .filter(|d| d["kind"] == "Configuration")
        .collect()
});

fn examples() -> Vec<Value> {
    EXAMPLES.clone()
}

/// Field names of the API, so that generated objects reach deep into the schema.
const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "spec",
    "discovery",
    "modbus",
    "opcua",
    "ble",
    "serial",
    "mdns",
    "targets",
    "ports",
    "unitIds",
    "rtu",
    "lines",
    "path",
    "baudRate",
    "parity",
    "registerProbe",
    "table",
    "address",
    "count",
    "vendorNames",
    "include",
    "exclude",
    "discoveryUrls",
    "securityPolicy",
    "securityMode",
    "serviceTypes",
    "txtRecords",
    "key",
    "maxTxtValueBytes",
    "interfaces",
    "properties",
    "value",
    "valueFrom",
    "secretKeyRef",
    "configMapKeyRef",
    "optional",
    "nodeSelector",
    "matchLabels",
    "matchExpressions",
    "operator",
    "values",
    "capacity",
    "offlineGracePeriodSeconds",
    "brokerSpec",
    "brokerPodSpec",
    "brokerJobSpec",
    "containers",
    "template",
    "image",
    "restartPolicy",
    "instanceServiceSpec",
    "configurationServiceSpec",
    "brokerProperties",
    "intervalSeconds",
    "maxAddresses",
    "concurrency",
];

/// Strings that mean something somewhere in a Configuration, and their near misses.
const WORDS: &[&str] = &[
    "dowser.dev/v1alpha1",
    "Configuration",
    "plc",
    "10.0.7.0/28",
    "10.0.0.0/8",
    "fd00::/64",
    "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "10.0.7.1-10.0.7.9",
    "10.0.7.9-1",
    "1-4",
    "4-1",
    "256",
    "0",
    "-1",
    "opc.tcp://x:4840/",
    "_http._tcp.local.",
    "(",
    "[a-",
    ".*",
    "/dev/ttyUSB0",
    "Even",
    "holdingRegisters",
    "coils",
    "In",
    "Exists",
    "Bogus",
    "Never",
    "Always",
    "Basic256Sha256",
    "SignAndEncrypt",
    "",
    " ",
    "\u{0}",
    "é",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => ".{0,12}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(65535),
            Just(65536),
            Just(u32::MAX as i64 + 1)
        ]
        .prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(WORDS).prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Every JSON pointer in `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Replace(Value),
    Remove,
    AddKey(String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => json().prop_map(Mutation::Replace),
        1 => Just(Mutation::Remove),
        1 => (key(), json()).prop_map(|(k, v)| Mutation::AddKey(k, v)),
    ]
}

fn mutate(doc: &mut Value, pointer: &str, m: Mutation) {
    if let Mutation::AddKey(k, v) = m {
        if let Some(Value::Object(o)) = doc.pointer_mut(pointer) {
            o.insert(k, v);
        }
        return;
    }
    let (parent, last) = pointer.rsplit_once('/').expect("pointers start with /");
    let Some(parent) = doc.pointer_mut(parent) else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match (parent, m) {
        (Value::Object(o), Mutation::Replace(v)) => {
            o.insert(last, v);
        }
        (Value::Object(o), Mutation::Remove) => {
            o.remove(&last);
        }
        (Value::Array(a), Mutation::Replace(v)) => {
            if let Ok(i) = last.parse::<usize>() {
                a[i] = v;
            }
        }
        (Value::Array(a), Mutation::Remove) => {
            if let Ok(i) = last.parse::<usize>() {
                a.remove(i);
            }
        }
        _ => {}
    }
}

/// The whole pipeline of `dowser discover`, the agent and the controller on one object:
/// errors are fine, panics are not; what is accepted survives a round trip.
fn check(doc: &Value) -> Result<(), TestCaseError> {
    let Ok(config) = validate::configuration(doc) else {
        return Ok(());
    };
    let selected = config
        .spec
        .discovery
        .selected()
        .map_err(|e| TestCaseError::fail(format!("accepted without one handler: {e}")))?;
    let _ = handlers::validate(selected, "spec.discovery");
    prop_assert!(validate::spec(&config.spec).is_empty());
    let again = serde_json::to_value(&config).unwrap();
    match validate::configuration(&again) {
        Ok(c) => prop_assert_eq!(c.spec, config.spec),
        Err(e) => prop_assert!(false, "accepted, then refused after a round trip: {e:?}"),
    }
    Ok(())
}

/// A registered handler gets its details as JSON: for every example they come back as they
/// were.
#[test]
fn handlers_get_the_details_of_the_examples_unchanged() {
    for doc in examples() {
        let config = validate::configuration(&doc).unwrap();
        let selected = config.spec.discovery.selected().unwrap();
        let again: dowser_discovery_api::details::Discovery =
            serde_json::from_value(serde_json::json!({ selected.name(): selected.details() }))
                .unwrap();
        assert_eq!(again, config.spec.discovery, "{doc}");
    }
}

#[test]
fn the_examples_are_accepted_as_they_are() {
    for doc in examples() {
        assert!(validate::configuration(&doc).is_ok(), "{doc}");
        check(&doc).unwrap();
    }
}

proptest! {
    // proptest's default: 256 cases, or PROPTEST_CASES; failures are reported, not stored.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_text_is_yaml_or_an_error(text in prop_oneof![
        "(?s).{0,200}",
        "([a-zA-Z]{1,8}: ?(\\[|\\{|-|\"|'|&a|\\*a|!!str|\n  |[0-9.]{1,5})?\n?){0,12}",
    ]) {
        if let Ok(docs) = validate::yaml_documents(&text) {
            for d in docs {
                check(&d)?;
            }
        }
    }

    #[test]
    fn arbitrary_objects_are_refused_or_accepted(doc in json()) {
        check(&doc)?;
    }

    #[test]
    fn arbitrary_specs_are_refused_or_accepted(spec in json(), discovery in json()) {
        let mut doc = examples()[0].clone();
        doc["spec"] = spec;
        check(&doc)?;
        doc["spec"] = serde_json::json!({"discovery": discovery});
        check(&doc)?;
    }

    #[test]
    fn examples_with_one_part_changed_are_refused_or_accepted(
        which in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        m in mutation(),
    ) {
        let all = examples();
        let mut doc = which.get(&all).clone();
        let mut ptrs = Vec::new();
        pointers(&doc, String::new(), &mut ptrs);
        let pointer = at.get(&ptrs).clone();
        mutate(&mut doc, &pointer, m);
        check(&doc)?;
    }
}

// What the agent names and hands to brokers, for any input.
proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn broker_environment_names_are_valid(
        device in prop::collection::btree_map(".{0,20}", ".{0,20}", 0..6),
        broker in prop::collection::btree_map(".{0,20}", ".{0,20}", 0..6),
        hash in "[0-9a-f]{12}",
    ) {
        let e = broker_env(&device, &broker, &hash);
        prop_assert!(e.keys().all(|k| env::is_valid(k)));
        prop_assert!(e.len() <= 2 * (device.len() + broker.len()));
    }

    #[test]
    fn instance_names_are_dns_labels(
        config in "[a-z0-9]([a-z0-9.-]{0,250}[a-z0-9])?",
        namespace in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
        device in "(?s).{0,200}",
        node in proptest::option::of("[a-z0-9.-]{1,63}"),
    ) {
        let name = naming::instance_name(&config, &device, node.as_deref());
        prop_assert!(naming::is_dns_label(&name), "{name:?}");
        prop_assert!(name.ends_with(&naming::instance_hash(&config, &device, node.as_deref())));
        prop_assert_eq!(name.clone(), naming::instance_name(&config, &device, node.as_deref()));
        for resource in [
            naming::configuration_resource(&namespace, &config),
            naming::instance_resource(&namespace, &name),
        ] {
            let part = resource.strip_prefix("dowser.dev/").unwrap();
            prop_assert!(naming::is_qualified_name(part), "{resource:?}");
        }
    }

    /// Two different (kind, namespace, name) never share an extended resource on a node.
    #[test]
    fn resources_of_different_objects_differ(
        a in ("[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", "[a-z0-9]([a-z0-9.-]{0,250}[a-z0-9])?"),
        b in ("[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", "[a-z0-9]([a-z0-9.-]{0,250}[a-z0-9])?"),
        cut in 0usize..250,
    ) {
        // Names that share a long start, as truncation would make them collide.
        let b = if cut % 2 == 0 { (a.0.clone(), format!("{}{}", &a.1[..cut.min(a.1.len())], b.1)) } else { b };
        let resources = |(ns, name): &(String, String)| {
            let instance = naming::instance_name(name, "dev", None);
            [
                naming::configuration_resource(ns, name),
                naming::instance_resource(ns, &instance),
            ]
        };
        let (ra, rb) = (resources(&a), resources(&b));
        prop_assert_ne!(&ra[0], &ra[1]);
        prop_assert_ne!(&ra[0], &rb[1]);
        prop_assert_ne!(&ra[1], &rb[0]);
        if a != b {
            prop_assert_ne!(&ra[0], &rb[0]);
            prop_assert_ne!(&ra[1], &rb[1]);
        }
    }

    /// Configurations whose names share a start, or differ only where a DNS label cannot
    /// follow them (a dot), never share an Instance, a Service or a Job.
    #[test]
    fn objects_of_different_configurations_differ(
        a in "[a-z0-9]([a-z0-9.-]{0,250}[a-z0-9])?",
        b in "[a-z0-9]([a-z0-9.-]{0,250}[a-z0-9])?",
        cut in 0usize..250,
        dotted in proptest::bool::ANY,
        device in "[a-z0-9:./-]{1,40}",
    ) {
        let b = if dotted {
            a.replacen('-', ".", 1)
        } else {
            format!("{}{}", &a[..cut.min(a.len())], b)
        };
        prop_assume!(a != b);
        let objects = |config: &str| {
            let instance = naming::instance_name(config, &device, None);
            [
                naming::service_name(&instance),
                naming::service_name(config),
                naming::job_name(&instance, "0123456789"),
                instance,
            ]
        };
        let (oa, ob) = (objects(&a), objects(&b));
        for (x, y) in oa.iter().zip(&ob) {
            prop_assert_ne!(x, y);
        }
        for name in oa.iter().chain(&ob) {
            prop_assert!(naming::is_dns_label(name), "{name:?}");
        }
        // Services' names are DNS-1035 labels: they start with a letter.
        for service in [&oa[0], &oa[1], &ob[0], &ob[1]] {
            prop_assert!(service.starts_with(|c: char| c.is_ascii_lowercase()), "{service:?}");
        }
    }

    /// The Instances of one Configuration never share a broker Job, however long its name.
    #[test]
    fn jobs_of_different_devices_differ(
        config in "[a-z0-9]([a-z0-9.-]{0,250}[a-z0-9])?",
        a in "[a-z0-9:./-]{1,40}",
        b in "[a-z0-9:./-]{1,40}",
    ) {
        prop_assume!(a != b);
        let job = |device: &str| naming::job_name(&naming::instance_name(&config, device, None), "0123456789");
        prop_assert_ne!(job(&a), job(&b));
    }
}
