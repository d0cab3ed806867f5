//! The OPC UA handler against independent servers: asyncua (Python), including one that
//! offers only secure endpoints and one used as a discovery server that others register with.
//!
//! The Python interpreter comes from `DOWSER_PYTHON` (set by `tests/test.sh`, which installs
//! the peers), else `python3`. A missing asyncua fails the test with instructions: this tier
//! is never skipped.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use dowser_discovery_api::{
    Snapshot,
    details::{
        OpcuaDetails,
        opcua::{SecurityMode, SecurityPolicy},
    },
};
use dowser_opcua::scan;
use dowser_sim::peers::{self, Peer, free_port};

/// Starts an asyncua server and waits for its "ready".
fn asyncua(port: u16, name: &str, uri: &str, policies: &str, register_to: Option<&str>) -> Peer {
    let mut command = peers::script("asyncua_server.py", "asyncua").unwrap();
    command
        .args(["--port", &port.to_string(), "--name", name, "--uri", uri])
        .args(["--product", "urn:asyncua:peer", "--policies", policies]);
    if let Some(lds) = register_to {
        command.args(["--register-to", lds]);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start asyncua");
    let stdout = child.stdout.take().unwrap();
    let peer = Peer(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "asyncua server {name} did not start");
    peer
}

fn details(url: &str) -> OpcuaDetails {
    serde_json::from_value(serde_json::json!({
        "discoveryUrls": [url],
        "timeoutMs": 3000,
    }))
    .unwrap()
}

fn url(port: u16) -> String {
    format!("opc.tcp://127.0.0.1:{port}/peer/")
}

fn only<'a>(s: &'a Snapshot, id: &str) -> &'a std::collections::BTreeMap<String, String> {
    &s.devices()
        .iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("{id} not found in {:?}", s.devices()))
        .properties
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asyncua_server_is_found_with_what_a_broker_needs() {
    let port = free_port();
    let _peer = asyncua(
        port,
        "Filler 3",
        "urn:plant:filler-3",
        "None,Basic256Sha256_SignAndEncrypt",
        None,
    );
    let snapshot = scan(&details(&url(port))).await.unwrap();
    assert_eq!(snapshot.devices().len(), 1);
    let p = only(&snapshot, "urn:plant:filler-3");
    assert_eq!(p["OPCUA_APPLICATION_NAME"], "Filler 3");
    assert_eq!(p["OPCUA_PRODUCT_URI"], "urn:asyncua:peer");
    assert_eq!(p["OPCUA_DISCOVERY_URL"], url(port));
    assert_eq!(p["OPCUA_ENDPOINT_URL"], url(port));
    assert_eq!(p["OPCUA_SECURITY_POLICIES"], "Basic256Sha256,None");
    assert_eq!(p["OPCUA_SECURITY_POLICY"], "Basic256Sha256");
    assert_eq!(p["OPCUA_SECURITY_MODE"], "SignAndEncrypt");

    let mut open = details(&url(port));
    open.security_policy = Some(SecurityPolicy::None);
    let p = scan(&open).await.unwrap();
    assert_eq!(
        only(&p, "urn:plant:filler-3")["OPCUA_SECURITY_MODE"],
        "None"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_only_secure_endpoints_is_still_found_without_a_certificate() {
    let port = free_port();
    let _peer = asyncua(
        port,
        "Secure Press",
        "urn:plant:secure-press",
        "Basic256Sha256_SignAndEncrypt",
        None,
    );
    let snapshot = scan(&details(&url(port))).await.unwrap();
    let p = only(&snapshot, "urn:plant:secure-press");
    assert_eq!(p["OPCUA_SECURITY_POLICIES"], "Basic256Sha256");
    assert_eq!(p["OPCUA_SECURITY_MODE"], "SignAndEncrypt");

    // A Configuration that needs an open endpoint does not get this server.
    let mut open = details(&url(port));
    open.security_mode = Some(SecurityMode::None);
    assert!(scan(&open).await.unwrap().devices().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_registered_with_an_asyncua_discovery_server_are_found_through_it() {
    let lds_port = free_port();
    let _lds = asyncua(lds_port, "Line LDS", "urn:plant:line-lds", "None", None);
    let port = free_port();
    let _member = asyncua(
        port,
        "Mixer 9",
        "urn:plant:mixer-9",
        "None",
        Some(&url(lds_port)),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snapshot = scan(&details(&url(lds_port))).await.unwrap();
        if snapshot
            .devices()
            .iter()
            .any(|d| d.id == "urn:plant:mixer-9")
        {
            let p = only(&snapshot, "urn:plant:mixer-9");
            assert_eq!(p["OPCUA_APPLICATION_NAME"], "Mixer 9");
            assert_eq!(p["OPCUA_ENDPOINT_URL"], url(port));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the registered server never appeared: {:?}",
            snapshot.devices()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
