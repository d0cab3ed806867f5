//! `dowser discover` end to end, as a process, against dowser-sim devices.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Output},
};

use dowser_sim::modbus::{ListenerConfig, RunningListener, UnitConfig, serve};
use serde_json::Value;

fn dowser(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dowser"))
        .args(args)
        .env_remove("NODE_NAME")
        .output()
        .expect("run dowser")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn sim(units: Vec<UnitConfig>) -> RunningListener {
    serve(&ListenerConfig::device(
        "127.0.0.1:0".parse().unwrap(),
        units,
    ))
    .await
    .unwrap()
    .remove(0)
}

fn write_config(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.to_string_lossy().into_owned()
}

fn modbus_config(addr: SocketAddr) -> String {
    format!(
        r#"
apiVersion: dowser.dev/v1alpha1
kind: Configuration
metadata: {{name: plc-line3, namespace: plant}}
spec:
  discovery:
    modbus:
      targets: ["{addr}"]
      unitIds: ["1-3"]
      requestTimeoutMs: 300
  brokerProperties: {{POLL_MS: "250"}}
"#
    )
}

async fn run_discover(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dowser(&args)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn json_output_lists_instances_resources_and_env() {
    let device = sim(vec![
        UnitConfig::identified(1, "Acme", "PLC-100", "1.2"),
        UnitConfig::identified(3, "Acme", "IO-8", "2.0"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "c.yaml", &modbus_config(device.addr));
    let out = run_discover(vec![
        "discover".into(),
        "-f".into(),
        file,
        "-o".into(),
        "json".into(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let first = &list[0];
    let port = device.addr.port();
    assert_eq!(
        first["deviceId"],
        format!("modbus+tcp://127.0.0.1:{port}/1")
    );
    let name = first["name"].as_str().unwrap();
    assert!(
        name.starts_with("plc-line3-") && name.len() == "plc-line3-".len() + 12,
        "{name}"
    );
    assert_eq!(first["resources"][0], format!("dowser.dev/{name}"));
    assert_eq!(first["resources"][1], "dowser.dev/plc-line3");
    let hash = name.rsplit('-').next().unwrap().to_ascii_uppercase();
    assert_eq!(first["env"]["MODBUS_VENDOR_NAME"], "Acme");
    assert_eq!(first["env"][format!("MODBUS_HOST_{hash}")], "127.0.0.1");
    assert_eq!(first["env"]["POLL_MS"], "250");
    let instance = &first["instance"];
    assert_eq!(instance["kind"], "Instance");
    assert_eq!(instance["metadata"]["namespace"], "plant");
    assert_eq!(
        instance["metadata"]["labels"]["dowser.dev/configuration"],
        "plc-line3"
    );
    assert_eq!(instance["spec"]["shared"], true);
    assert_eq!(instance["spec"]["capacity"], 1);
    assert!(text(&out.stderr).contains("plc-line3 found 2 devices"));
}

#[tokio::test]
async fn table_output_is_readable() {
    let device = sim(vec![UnitConfig::identified(2, "Acme", "PLC-100", "1.2")]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "c.yaml", &modbus_config(device.addr));
    let out = run_discover(vec!["discover".into(), "-f".into(), file]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("INSTANCE") && header.contains("DEVICE") && header.contains("RESOURCE")
    );
    let row = lines.next().unwrap();
    assert!(
        row.contains(&format!("modbus+tcp://127.0.0.1:{}/2", device.addr.port())),
        "{row}"
    );
    assert!(row.contains("dowser.dev/plc-line3-"));
    let env = lines.next().unwrap();
    assert!(
        env.contains("MODBUS_UNIT_ID=2") && env.contains("MODBUS_VENDOR_NAME=Acme"),
        "{env}"
    );
}

#[tokio::test]
async fn nothing_found_is_not_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let file = write_config(dir.path(), "c.yaml", &modbus_config(addr));
    let out = run_discover(vec!["discover".into(), "-f".into(), file]).await;
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), "No devices found.");
}

#[test]
fn an_invalid_configuration_names_every_bad_field_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "bad.yaml",
        r#"
apiVersion: dowser.dev/v1alpha1
kind: Configuration
metadata: {name: plc}
spec:
  capacity: 0
  discovery:
    modbus: {targets: ["10.0.0.0/8"], taregts: []}
"#,
    );
    let out = dowser(&["discover", "-f", &file]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("The Configuration \"plc\" is invalid"),
        "{err}"
    );
    assert!(err.contains("spec.capacity: Invalid value: 0: spec.capacity in body should be greater than or equal to 1"), "{err}");
    assert!(
        err.contains(
            "spec.discovery.modbus.taregts: unknown field \"spec.discovery.modbus.taregts\""
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "spec.discovery.modbus.targets: Invalid value: \"object\": CIDR targets wider than /16"
        ),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn unreadable_and_unrelated_files_are_refused() {
    let out = dowser(&["discover", "-f", "/nonexistent/config.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/config.yaml"));

    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "x.yaml", "a: [unclosed");
    let out = dowser(&["discover", "-f", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not valid YAML"),
        "{}",
        text(&out.stderr)
    );

    let file = write_config(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    );
    let out = dowser(&["discover", "-f", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("has no Configuration"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn secrets_cannot_be_read_without_a_cluster_unless_given() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "c.yaml",
        r#"
apiVersion: dowser.dev/v1alpha1
kind: Configuration
metadata: {name: plc}
spec:
  discovery: {modbus: {targets: ["127.0.0.1:1"], connectTimeoutMs: 100}}
  properties:
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: plc-creds, key: password}}}
"#,
    );
    let out = dowser(&["discover", "-f", &file]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "spec.properties[0]: PASSWORD comes from key \"password\" of Secret \"plc-creds\""
        ) && err.contains("pass --property PASSWORD=VALUE"),
        "{err}"
    );
    let out = dowser(&["discover", "-f", &file, "--property", "PASSWORD=x"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_handler_missing_from_the_build_is_named() {
    if dowser::handlers::enabled().contains(&"opcua") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "c.yaml",
        "apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {name: o}\nspec:\n  discovery: {opcua: {discoveryUrls: [\"opc.tcp://127.0.0.1:4840/\"]}}\n",
    );
    let out = dowser(&["discover", "-f", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("spec.discovery.opcua: the opcua discovery handler is not available in this dowser binary"),
        "{}",
        text(&out.stderr)
    );
}
