//! `dowser discover` end to end, as a process, against dowser-sim devices.

#[path = "cli/convert.rs"]
mod convert;
#[path = "cli/progress.rs"]
mod progress;

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

/// `dowser discover -f FILE -o json EXTRA...`, which must succeed: the devices it lists, and
/// what it said on stderr.
async fn discover_json(file: String, extra: &[&str]) -> (Vec<Value>, String) {
    let mut args = vec![
        "discover".into(),
        "-f".into(),
        file,
        "-o".into(),
        "json".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let out = run_discover(args).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(list) => (list, text(&out.stderr)),
        other => panic!("not a list: {other}"),
    }
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
    let (list, stderr) = discover_json(file, &[]).await;
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
    // Namespace `plant`: the resources carry it.
    assert_eq!(first["resources"][0], format!("dowser.dev/plant_{name}"));
    assert_eq!(first["resources"][1], "dowser.dev/plant.plc-line3");
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
    // In DRA mode: one device (capacity 1) with the attributes a claim selects on.
    let devices = first["resourceSliceDevices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["name"], format!("{name}-0"));
    let attributes = &devices[0]["attributes"];
    assert_eq!(attributes["vendorName"]["string"], "Acme");
    assert_eq!(attributes["productCode"]["string"], "PLC-100");
    assert_eq!(attributes["unitId"]["int"], 1);
    assert_eq!(attributes["port"]["int"], port);
    assert_eq!(attributes["namespace"]["string"], "plant");
    assert_eq!(attributes["instance"]["string"], name);
    assert!(stderr.contains("plc-line3 found 2 devices"));
    // Found, so nothing more to say of units 2 (silent) and 3.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn a_configuration_that_finds_nothing_says_why() {
    let device = sim(vec![
        UnitConfig::identified(1, "Acme", "PLC-100", "1.2"),
        UnitConfig::identified(3, "Acme", "IO-8", "2.0"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let picky = modbus_config(device.addr).replace(
        "      requestTimeoutMs: 300",
        "      requestTimeoutMs: 300\n      vendorNames: {include: [Other]}",
    );
    let file = write_config(dir.path(), "c.yaml", &picky);
    let (list, stderr) = discover_json(file, &[]).await;
    assert!(list.is_empty());
    assert!(
        stderr.contains("plc-line3 found 0 devices in")
            && stderr.contains("  2 of 3 targets answered, none kept: 2 left out by vendorNames"),
        "{stderr}"
    );
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
    assert!(row.contains("dowser.dev/plant_plc-line3-"), "{row}");
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

/// A binary built with only the Modbus handler (`tests/test.sh` builds it and sets
/// `DOWSER_SLIM_BIN`), to show what a slim agent says about the handlers it lacks.
fn slim_dowser() -> String {
    std::env::var("DOWSER_SLIM_BIN").unwrap_or_else(|_| {
        panic!(
            "DOWSER_SLIM_BIN is not set: run tests/test.sh, or build one with \
             `cargo build -p dowser --no-default-features --features modbus --target-dir DIR` \
             and set DOWSER_SLIM_BIN=DIR/debug/dowser"
        )
    })
}

#[test]
fn a_handler_missing_from_the_build_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "c.yaml",
        "apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {name: o}\nspec:\n  discovery: {opcua: {discoveryUrls: [\"opc.tcp://127.0.0.1:4840/\"]}}\n",
    );
    let out = Command::new(slim_dowser())
        .args(["discover", "-f", &file])
        .output()
        .expect("run the slim dowser");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            "spec.discovery.opcua: the opcua discovery handler is not available in this dowser binary (it has: modbus)"
        ),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_servers_are_shown_with_their_env() {
    use dowser_sim::opcua::{Kind, ServerConfig};
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut lds = ServerConfig::server(any, "LDS", "urn:t:lds");
    lds.kind = Kind::Discovery;
    let fleet = dowser_sim::Fleet::start(&dowser_sim::FleetConfig {
        opcua: vec![
            lds,
            ServerConfig::server(any, "Press 1", "urn:t:press-1")
                .with_endpoints(&["None", "Basic256Sha256/SignAndEncrypt"]),
            ServerConfig::server(any, "Oven 1", "urn:t:oven-1"),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let lds_url = fleet.opcua[0].url.clone();
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "c.yaml",
        &format!(
            r#"
apiVersion: dowser.dev/v1alpha1
kind: Configuration
metadata: {{name: ua}}
spec:
  discovery:
    opcua:
      discoveryUrls: ["{lds_url}"]
      securityPolicy: Basic256Sha256
"#
        ),
    );
    let (list, _) = discover_json(file, &[]).await;
    assert_eq!(list.len(), 1, "the oven offers no Basic256Sha256: {list:?}");
    let press = &list[0];
    assert_eq!(press["deviceId"], "urn:t:press-1");
    assert_eq!(press["env"]["OPCUA_APPLICATION_URI"], "urn:t:press-1");
    assert_eq!(press["env"]["OPCUA_ENDPOINT_URL"], fleet.opcua[1].url);
    assert_eq!(
        press["env"]["OPCUA_SECURITY_POLICIES"],
        "Basic256Sha256,None"
    );
    assert_eq!(press["instance"]["spec"]["shared"], true);
}

#[tokio::test]
async fn rtu_units_are_shown_as_local_devices_with_their_line() {
    use dowser_sim::{modbus::UnitConfig, rtu};
    let line = rtu::serve(&rtu::LineConfig {
        mode: dowser_sim::modbus::Mode::Normal,
        units: vec![UnitConfig::identified(7, "Acme", "Meter-3", "2.1")],
    })
    .unwrap();
    let path = line.path.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "c.yaml",
        &format!(
            r#"
apiVersion: dowser.dev/v1alpha1
kind: Configuration
metadata: {{name: meters}}
spec:
  discovery:
    modbus:
      rtu: {{lines: [{{path: "{path}", baudRate: 19200}}]}}
      unitIds: ["6-8"]
      requestTimeoutMs: 200
"#
        ),
    );
    let (list, _) = discover_json(file, &["--node", "edge-1"]).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let meter = &list[0];
    assert_eq!(meter["env"]["MODBUS_UNIT_ID"], "7");
    assert_eq!(meter["env"]["MODBUS_SERIAL_PORT"], path);
    assert_eq!(meter["env"]["MODBUS_VENDOR_NAME"], "Acme");
    let spec = &meter["instance"]["spec"];
    assert_eq!(spec["shared"], false);
    assert_eq!(spec["devices"][0]["hostPath"], path);
}

/// A device-plugin directory so long that no plugin socket fits in a unix socket's 107
/// bytes: the agent stops at once and says why, instead of failing to bind forever.
#[test]
fn agent_refuses_a_device_plugin_dir_with_no_room_for_sockets() {
    let dir = format!("/var/lib/{}/device-plugins", "k".repeat(70));
    let out = dowser(&[
        "agent",
        "--node-name",
        "node-a",
        "--device-plugin-dir",
        &dir,
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("the device-plugin directory {dir} is 94 bytes long, which leaves no room for plugin sockets"))
            && stderr.contains("--device-plugin-dir"),
        "{stderr}"
    );
}
