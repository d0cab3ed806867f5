//! `dowser convert` as a process, on Akri Configurations as Akri's Helm chart renders them
//! (`tests/fixtures/akri/`): what a user checks in the output, the notes on stderr, and that
//! every Configuration printed passes dowser's own validation.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use serde::Deserialize;
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "fixtures",
        "akri",
        name,
    ]
    .iter()
    .collect();
    path.to_string_lossy().into_owned()
}

/// `dowser convert ARGS...`, with `stdin` as its standard input.
fn dowser_convert(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dowser"))
        .arg("convert")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dowser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The documents printed, each checked with dowser's validation (schema, CEL rules and the
/// rules a schema cannot express), as `dowser discover` and the API server check them.
fn valid_documents(stdout: &[u8]) -> Vec<Value> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text(stdout)) {
        let doc: Value = Value::deserialize(doc).unwrap();
        if let Err(errors) = dowser::validate::configuration(&doc) {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("invalid Configuration {doc:#}: {errors:?}");
        }
        docs.push(doc);
    }
    docs
}

/// Converts one fixture, which must succeed: its one Configuration and the stderr lines.
fn convert(name: &str) -> (Value, Vec<String>) {
    let out = dowser_convert(&["-f", &fixture(name)], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut docs = valid_documents(&out.stdout);
    assert_eq!(docs.len(), 1, "{}", text(&out.stdout));
    let notes = text(&out.stderr).lines().map(String::from).collect();
    (docs.remove(0), notes)
}

/// The discoveryDetails text of an Akri fixture.
fn akri_details(name: &str) -> String {
    let source = std::fs::read_to_string(fixture(name)).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&source).unwrap();
    doc["spec"]["discoveryHandler"]["discoveryDetails"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A broker container as Akri's chart renders it, without the `{{PLACEHOLDER}}` requests:
/// dowser adds the device's resource itself.
fn container(name: &str, image: &str, requests: (&str, &str), limits: (&str, &str)) -> Value {
    json!({
        "name": name,
        "image": image,
        "resources": {
            "requests": {"memory": requests.0, "cpu": requests.1},
            "limits": {"memory": limits.0, "cpu": limits.1},
        },
    })
}

fn grpc_service() -> Value {
    json!({"type": "ClusterIP", "ports": [{"name": "grpc", "port": 80, "protocol": "TCP", "targetPort": 8083}]})
}

#[test]
fn onvif_filters_map_to_dowsers_and_mac_addresses_are_noted() {
    let (config, notes) = convert("onvif.yaml");
    assert_eq!(
        config["metadata"],
        json!({"name": "akri-onvif", "namespace": "default"})
    );
    let spec = &config["spec"];
    assert_eq!(
        spec["discovery"],
        json!({"onvif": {
            "scopes": {"include": [
                r"^onvif://www\.onvif\.org/name/GreatONVIFCamera$",
                r"^onvif://www\.onvif\.org/name/AwesomeONVIFCamera$",
            ]},
            "ipAddresses": {"include": [r"^10\.0\.0\.1$", r"^10\.0\.0\.2$"]},
            "probeWindowMs": 2000,
        }})
    );
    assert_eq!(
        spec["brokerSpec"]["brokerPodSpec"]["containers"],
        json!([container(
            "akri-onvif-broker",
            "ghcr.io/project-akri/akri/onvif-video-broker:latest",
            ("98Mi", "134m"),
            ("400Mi", "2800m"),
        )])
    );
    assert_eq!(spec["instanceServiceSpec"], grpc_service());
    assert_eq!(spec["configurationServiceSpec"], grpc_service());
    assert_eq!(spec["capacity"], 1);
    assert!(spec.get("brokerProperties").is_none());
    assert_eq!(
        notes,
        [
            "default/akri-onvif: spec.discoveryHandler.discoveryDetails.macAddresses: no dowser equivalent (dowser's ONVIF handler does not filter by MAC address): left out, so cameras are not filtered by MAC address; filter by ipAddresses, scopes, manufacturers or models instead"
        ]
    );
}

#[test]
fn opcua_urls_and_application_names_map_and_the_broker_is_carried() {
    let (config, notes) = convert("opcua.yaml");
    let spec = &config["spec"];
    assert_eq!(
        spec["discovery"],
        json!({"opcua": {
            "discoveryUrls": ["opc.tcp://192.168.1.10:4840/", "opc.tcp://192.168.1.11:4840/"],
            "applicationNames": {"include": ["^SomeServer0$", "^SomeServer1$"]},
        }})
    );
    assert_eq!(
        spec["brokerSpec"],
        json!({"brokerPodSpec": {"containers": [container(
            "akri-opcua-monitoring-broker",
            "ghcr.io/project-akri/akri/opcua-monitoring-broker:latest",
            ("76Mi", "9m"),
            ("200Mi", "30m"),
        )]}})
    );
    assert_eq!(spec["instanceServiceSpec"], grpc_service());
    assert_eq!(spec["configurationServiceSpec"], grpc_service());
    assert_eq!(
        spec["brokerProperties"],
        json!({"IDENTIFIER": "Thermometer_Temperature", "NAMESPACE_INDEX": "2"})
    );
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn udev_kernel_glob_becomes_device_nodes_of_video4linux() {
    let (config, notes) = convert("udev-video.yaml");
    let spec = &config["spec"];
    assert_eq!(
        spec["discovery"],
        json!({"udev": {
            "subsystems": ["video4linux"],
            "deviceNodes": {"include": ["^/dev/(?:.*/)?video[0-9].*$"]},
            "groupBy": "Device",
        }})
    );
    let broker = &spec["brokerSpec"]["brokerPodSpec"]["containers"][0];
    assert_eq!(broker["securityContext"], json!({"privileged": true}));
    assert_eq!(
        broker["resources"],
        json!({"requests": {"memory": "10Mi", "cpu": "10m"}, "limits": {"memory": "30Mi", "cpu": "29m"}})
    );
    assert_eq!(spec["instanceServiceSpec"], grpc_service());
    assert_eq!(
        notes,
        [
            "default/akri-udev-video: spec.discoveryHandler.discoveryDetails.udevRules[0]: KERNEL==\"video[0-9]*\" comes without SUBSYSTEM==, which dowser needs: subsystems set to [video4linux], the subsystem of devices named so; check it, or add SUBSYSTEM== to the rule"
        ]
    );
}

#[test]
fn udev_vendor_rules_merge_into_one_parent_attribute_filter() {
    let (config, notes) = convert("udev-vendor.yaml");
    let spec = &config["spec"];
    assert_eq!(
        spec["discovery"],
        json!({"udev": {
            "subsystems": ["video4linux"],
            "parentAttributes": [{"name": "idVendor", "include": ["^046d$", "^05a9$"]}],
            "groupBy": "Parent",
        }})
    );
    let job = &spec["brokerSpec"]["brokerJobSpec"];
    assert_eq!(job["template"]["spec"]["restartPolicy"], "OnFailure");
    assert_eq!(
        job["template"]["spec"]["containers"][0]["command"],
        json!(["sh", "-c", "echo \"camera at $UDEV_DEVNODE_0\""])
    );
    assert_eq!(
        job["template"]["spec"]["containers"][0]["resources"]["limits"],
        json!({"memory": "30Mi", "cpu": "29m"})
    );
    assert_eq!(job["backoffLimit"], 2);
    assert_eq!(
        notes,
        [
            "default/akri-udev-webcams: spec.discoveryHandler.discoveryDetails.groupRecursive: true became groupBy: Parent: the devices kept under one parent (a USB interface, a platform device) are one device, where Akri grouped a device with the devices found below it; check the Instances with dowser discover"
        ]
    );
}

#[test]
fn udev_rule_dowser_cannot_express_keeps_akris_handler() {
    let (config, notes) = convert("udev-inexpressible.yaml");
    assert_eq!(
        config["spec"]["discovery"],
        json!({"external": {"name": "udev", "details": akri_details("udev-inexpressible.yaml")}})
    );
    assert_eq!(
        config["spec"]["discovery"]["external"]["details"],
        "groupRecursive: false\nudevRules:\n- SUBSYSTEM==\"sound\", KERNEL==\"controlC[0-9]*\", TAG==\"uaccess\"\npermissions: rwm\n"
    );
    assert_eq!(
        notes,
        [
            "default/akri-udev-sound: spec.discoveryHandler.discoveryDetails.udevRules[0]: TAG==\"uaccess\" cannot be expressed: dowser's udev handler has no TAG key (it selects by SUBSYSTEM, KERNEL, DRIVERS, ATTR, ATTRS and ENV): the Configuration keeps the details for Akri's udev discovery handler (discovery.external, name udev): run that handler beside the dowser agent, or change the details and convert again"
        ]
    );
}

#[test]
fn debug_echo_becomes_an_external_handler_with_its_details() {
    let (config, notes) = convert("debug-echo.yaml");
    let spec = &config["spec"];
    assert_eq!(
        spec["discovery"],
        json!({"external": {"name": "debugEcho", "details": "descriptions:\n- foo0\n- foo1\n"}})
    );
    assert_eq!(spec["capacity"], 2);
    assert_eq!(
        spec["brokerSpec"],
        json!({"brokerPodSpec": {"containers": [container(
            "akri-debug-echo-foo-broker",
            "nginx:latest",
            ("10Mi", "10m"),
            ("30Mi", "29m"),
        )]}})
    );
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn secret_properties_are_carried_and_other_namespaces_noted() {
    let (config, notes) = convert("onvif-credentials.yaml");
    assert_eq!(
        config["metadata"],
        json!({
            "name": "akri-onvif-auth",
            "namespace": "cameras",
            "labels": {"site": "plant-a"},
            "annotations": {"owner": "line3-ot"},
        })
    );
    let spec = &config["spec"];
    // The chart's default filters (Exclude, no items) filter nothing.
    assert_eq!(spec["discovery"], json!({"onvif": {"probeWindowMs": 1000}}));
    assert_eq!(
        spec["properties"],
        json!([
            {"name": "USERNAME", "valueFrom": {"secretKeyRef": {"name": "onvif-auth-secret", "key": "username"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "onvif-auth-secret", "key": "password"}}},
        ])
    );
    let id = "cameras/akri-onvif-auth: spec.discoveryHandler.discoveryProperties";
    assert_eq!(
        notes,
        [
            format!(
                "{id}[0]: username_default became USERNAME, the name dowser's ONVIF handler reads it by (and brokers get it as)"
            ),
            format!(
                "{id}[0].valueFrom.secretKeyRef.namespace: dowser reads Secrets in the Configuration's namespace (cameras), not akri: copy Secret onvif-auth-secret to namespace cameras"
            ),
            format!(
                "{id}[1]: password_default became PASSWORD, the name dowser's ONVIF handler reads it by (and brokers get it as)"
            ),
            format!(
                "{id}[1].valueFrom.secretKeyRef.namespace: dowser reads Secrets in the Configuration's namespace (cameras), not akri: copy Secret onvif-auth-secret to namespace cameras"
            ),
            format!(
                "{id}[2]: device_credential_list: no dowser equivalent (dowser's ONVIF handler uses one USERNAME and PASSWORD for every camera): left out; set USERNAME and PASSWORD in the properties"
            ),
        ]
    );
}

const FIXTURES: &[&str] = &[
    "onvif.yaml",
    "opcua.yaml",
    "udev-video.yaml",
    "udev-vendor.yaml",
    "udev-inexpressible.yaml",
    "debug-echo.yaml",
    "onvif-credentials.yaml",
];

#[test]
fn standard_input_takes_many_documents_and_every_output_is_valid() {
    let all: String = FIXTURES
        .iter()
        .map(|f| std::fs::read_to_string(fixture(f)).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    for args in [&[][..], &["-f", "-"][..]] {
        let out = dowser_convert(args, &all);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let docs = valid_documents(&out.stdout);
        let names: Vec<&str> = docs
            .iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "akri-onvif",
                "akri-opcua-monitoring",
                "akri-udev-video",
                "akri-udev-webcams",
                "akri-udev-sound",
                "akri-debug-echo-foo",
                "akri-onvif-auth",
            ]
        );
        let handlers: Vec<&str> = docs
            .iter()
            .map(|d| {
                let discovery = d["spec"]["discovery"].as_object().unwrap();
                discovery.keys().next().unwrap().as_str()
            })
            .collect();
        assert_eq!(
            handlers,
            [
                "onvif", "opcua", "udev", "udev", "external", "external", "onvif"
            ]
        );
        assert!(
            docs.iter()
                .all(|d| d["apiVersion"] == "dowser.dev/v1alpha1")
        );
        // One note per field, the same as for the files one by one.
        assert_eq!(text(&out.stderr).lines().count(), 1 + 1 + 1 + 1 + 5);
    }
}

/// `dowser convert` on `input` must fail, print nothing on stdout and say `message`.
fn refused(input: &str, message: &str) {
    let out = dowser_convert(&[], input);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(message), "{stderr}");
}

#[test]
fn what_is_not_an_akri_configuration_is_refused_with_a_reason() {
    refused(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/opcua.yaml"),
        )
        .unwrap(),
        "error: standard input: document 1: not an Akri Configuration (apiVersion: dowser.dev/v1alpha1, kind: Configuration): expected apiVersion: akri.sh/v0, kind: Configuration",
    );
    refused(
        "apiVersion: akri.sh/v0\nkind: Instance\nmetadata: {name: cam}\n",
        "not an Akri Configuration (apiVersion: akri.sh/v0, kind: Instance)",
    );
    refused(
        "apiVersion: akri.sh/v0\nkind: Configuration\nmetadata: {name: [unclosed\n",
        "error: standard input is not valid YAML: ",
    );
    refused(
        "apiVersion: akri.sh/v0\nkind: Configuration\nmetadata: {name: cams, namespace: lab}\nspec:\n  discoveryHandler: {discoveryDetails: ''}\n",
        "error: standard input: document 1: lab/cams: spec.discoveryHandler.name is missing",
    );
    refused(
        "# nothing\n",
        "error: standard input has no Akri Configuration",
    );
    // One bad document among good ones: nothing is printed, so nothing half-applied.
    let good = std::fs::read_to_string(fixture("debug-echo.yaml")).unwrap();
    refused(
        &format!("{good}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n"),
        "error: standard input: document 2: not an Akri Configuration (apiVersion: v1, kind: ConfigMap)",
    );
    let missing = dowser_convert(&["-f", "/nonexistent/akri.yaml"], "");
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("cannot read /nonexistent/akri.yaml"));
}
