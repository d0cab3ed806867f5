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
    Properties, Snapshot,
    details::{
        OpcuaDetails,
        opcua::{SecurityMode, SecurityPolicy},
    },
};
use dowser_opcua::scan;
use dowser_sim::peers::{self, Peer, free_port};

/// Starts an asyncua server and waits for its "ready".
fn asyncua(port: u16, name: &str, uri: &str, policies: &str, register_to: Option<&str>) -> Peer {
    let extra: Vec<String> = register_to
        .map(|lds| vec!["--register-to".to_string(), lds.to_string()])
        .unwrap_or_default();
    asyncua_with(port, name, uri, policies, &extra)
}

/// Starts an asyncua server with more arguments of `asyncua_server.py`.
fn asyncua_with(port: u16, name: &str, uri: &str, policies: &str, extra: &[String]) -> Peer {
    let mut command = peers::script("asyncua_server.py", "asyncua").unwrap();
    command
        .args(["--port", &port.to_string(), "--name", name, "--uri", uri])
        .args(["--product", "urn:asyncua:peer", "--policies", policies])
        .args(extra);
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
    let snapshot = scan(&details(&url(port)), &Default::default())
        .await
        .unwrap();
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
    let p = scan(&open, &Default::default()).await.unwrap();
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
    let snapshot = scan(&details(&url(port)), &Default::default())
        .await
        .unwrap();
    let p = only(&snapshot, "urn:plant:secure-press");
    assert_eq!(p["OPCUA_SECURITY_POLICIES"], "Basic256Sha256");
    assert_eq!(p["OPCUA_SECURITY_MODE"], "SignAndEncrypt");

    // A Configuration that needs an open endpoint does not get this server.
    let mut open = details(&url(port));
    open.security_mode = Some(SecurityMode::None);
    assert!(
        scan(&open, &Default::default())
            .await
            .unwrap()
            .devices()
            .is_empty()
    );
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
        let snapshot = scan(&details(&url(lds_port)), &Default::default())
            .await
            .unwrap();
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

/// A fresh directory for certificates, removed with the value.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dowser-opcua-test-{what}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate and key made by the `cryptography` package (through asyncua's generator),
/// as `<dir>/<name>/cert.pem` and `key.pem`.
fn certificate(scratch: &Scratch, name: &str, uri: &str) {
    let status = peers::script("make_certificate.py", "asyncua")
        .unwrap()
        .args(["--uri", uri, "--name", name, "--out", &scratch.path(name)])
        .status()
        .expect("run make_certificate.py");
    assert!(status.success(), "make_certificate.py failed");
}

fn with_session(url: &str, session: serde_json::Value) -> OpcuaDetails {
    serde_json::from_value(serde_json::json!({
        "discoveryUrls": [url],
        "timeoutMs": 5000,
        "session": session,
    }))
    .unwrap()
}

const NAMEPLATE: &str = "ACME Automation,Filler PLC,4.2.1,1187";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_a_user_name_reads_the_servers_nameplate() {
    let port = free_port();
    let _peer = asyncua_with(
        port,
        "Filler 5",
        "urn:plant:filler-5",
        "None",
        &[
            "--users".into(),
            "operator:s3cret-pw".into(),
            "--build-info".into(),
            NAMEPLATE.into(),
        ],
    );
    let login: Properties = [("USERNAME", "operator"), ("PASSWORD", "s3cret-pw")]
        .into_iter()
        .collect();
    let session = with_session(&url(port), serde_json::json!({"userIdentity": "UserName"}));
    let snapshot = scan(&session, &login).await.unwrap();
    assert!(snapshot.problems().is_empty(), "{:?}", snapshot.problems());
    let p = only(&snapshot, "urn:plant:filler-5");
    assert_eq!(p["OPCUA_MANUFACTURER_NAME"], "ACME Automation");
    assert_eq!(p["OPCUA_PRODUCT_NAME"], "Filler PLC");
    assert_eq!(p["OPCUA_SOFTWARE_VERSION"], "4.2.1");
    assert_eq!(p["OPCUA_BUILD_NUMBER"], "1187");
    assert!(
        !p.values().any(|v| v.contains("s3cret")),
        "the password reached the device: {p:?}"
    );

    // The nameplate filters keep and drop by what the session read.
    let mut filtered = session.clone();
    filtered.manufacturer_names =
        Some(serde_json::from_value(serde_json::json!({"include": ["ACME.*"]})).unwrap());
    filtered.product_names =
        Some(serde_json::from_value(serde_json::json!({"exclude": ["Filler PLC"]})).unwrap());
    let snapshot = scan(&filtered, &login).await.unwrap();
    assert!(snapshot.devices().is_empty() && snapshot.problems().is_empty());

    // Without a session the server is found as before, without its nameplate.
    let plain = scan(&details(&url(port)), &Default::default())
        .await
        .unwrap();
    assert!(!only(&plain, "urn:plant:filler-5").contains_key("OPCUA_MANUFACTURER_NAME"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_rejects_the_credentials_is_named_as_a_problem() {
    let port = free_port();
    let _peer = asyncua_with(
        port,
        "Filler 6",
        "urn:plant:filler-6",
        "None",
        &["--users".into(), "operator:right-pw".into()],
    );
    let wrong: Properties = [("USERNAME", "operator"), ("PASSWORD", "wrong-pw")]
        .into_iter()
        .collect();
    let details = with_session(&url(port), serde_json::json!({"userIdentity": "UserName"}));
    let snapshot = scan(&details, &wrong).await.unwrap();
    assert!(snapshot.devices().is_empty(), "{:?}", snapshot.devices());
    let problems = snapshot.problems().join("\n");
    assert!(
        problems.contains("urn:plant:filler-6") && problems.contains("rejected the user identity"),
        "{problems}"
    );
    assert!(!problems.contains("wrong-pw"), "{problems}");
    // The same words every round, so that the status is written once.
    assert_eq!(
        scan(&details, &wrong).await.unwrap().problems(),
        snapshot.problems()
    );

    // A server that takes no anonymous session says so when the Configuration asks for one.
    let anonymous = with_session(&url(port), serde_json::json!({}));
    let snapshot = scan(&anonymous, &Default::default()).await.unwrap();
    assert!(
        snapshot
            .problems()
            .join("\n")
            .contains("takes no Anonymous user token"),
        "{:?}",
        snapshot.problems()
    );

    // A user name without a password is refused before anything is sent.
    let half: Properties = [("USERNAME", "operator")].into_iter().collect();
    let e = scan(&details, &half).await.unwrap_err().to_string();
    assert!(e.contains("PASSWORD"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_certificate_on_an_encrypted_channel_reads_the_nameplate() {
    let scratch = Scratch::new("x509");
    certificate(&scratch, "client", "urn:dowser:discovery");
    certificate(&scratch, "user", "urn:plant:operator");
    certificate(&scratch, "stranger", "urn:plant:stranger");
    let port = free_port();
    let _peer = asyncua_with(
        port,
        "Secure Filler",
        "urn:plant:secure-filler",
        "Basic256Sha256_SignAndEncrypt",
        &[
            "--user-certificates".into(),
            scratch.path("user/cert.pem"),
            "--build-info".into(),
            NAMEPLATE.into(),
            "--certificate-out".into(),
            scratch.path("server.pem"),
        ],
    );
    let mut props: Properties = [
        ("OPCUA_CLIENT_CERTIFICATE", scratch.read("client/cert.pem")),
        ("OPCUA_CLIENT_PRIVATE_KEY", scratch.read("client/key.pem")),
        ("OPCUA_USER_CERTIFICATE", scratch.read("user/cert.pem")),
        ("OPCUA_USER_PRIVATE_KEY", scratch.read("user/key.pem")),
        (
            "OPCUA_TRUSTED_SERVER_CERTIFICATES",
            scratch.read("server.pem"),
        ),
    ]
    .into_iter()
    .collect();
    let details = with_session(
        &url(port),
        serde_json::json!({
            "securityPolicy": "Basic256Sha256",
            "securityMode": "SignAndEncrypt",
            "userIdentity": "Certificate",
        }),
    );
    let snapshot = scan(&details, &props).await.unwrap();
    assert!(snapshot.problems().is_empty(), "{:?}", snapshot.problems());
    let p = only(&snapshot, "urn:plant:secure-filler");
    assert_eq!(p["OPCUA_PRODUCT_NAME"], "Filler PLC");
    assert_eq!(p["OPCUA_SECURITY_MODE"], "SignAndEncrypt");

    // A user certificate the server does not know is refused, and said so.
    props.insert("OPCUA_USER_CERTIFICATE", scratch.read("stranger/cert.pem"));
    props.insert("OPCUA_USER_PRIVATE_KEY", scratch.read("stranger/key.pem"));
    let snapshot = scan(&details, &props).await.unwrap();
    assert!(snapshot.devices().is_empty());
    assert!(
        snapshot
            .problems()
            .join("\n")
            .contains("rejected the user identity"),
        "{:?}",
        snapshot.problems()
    );

    // A trust list without the server's certificate: the session is not opened.
    props.insert("OPCUA_USER_CERTIFICATE", scratch.read("user/cert.pem"));
    props.insert("OPCUA_USER_PRIVATE_KEY", scratch.read("user/key.pem"));
    props.insert(
        "OPCUA_TRUSTED_SERVER_CERTIFICATES",
        scratch.read("stranger/cert.pem"),
    );
    let snapshot = scan(&details, &props).await.unwrap();
    assert!(snapshot.devices().is_empty());
    assert!(
        snapshot
            .problems()
            .join("\n")
            .contains("urn:plant:secure-filler"),
        "{:?}",
        snapshot.problems()
    );

    // A secure policy without the client's own certificate is refused, naming the property.
    let mut no_client = props.clone();
    no_client = no_client
        .iter()
        .filter(|(k, _)| *k != "OPCUA_CLIENT_CERTIFICATE")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let e = scan(&details, &no_client).await.unwrap_err().to_string();
    assert!(e.contains("OPCUA_CLIENT_CERTIFICATE"), "{e}");
}
