//! External discovery handlers over the discovery protocol (wire-compatible with Akri's
//! `v0`), without Kubernetes: the agent's registration service and `external` handler in
//! this process, handlers as processes (`dowser handler`) or as servers here that misbehave
//! on purpose. The agent's side must stay up and say what is wrong whatever a handler does.

#[path = "external/python.rs"]
mod python;

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use dowser::external::REGISTRATIONS;
use dowser_discovery_api::{Properties, Snapshot, SnapshotStream, details::Discovery};
use dowser_handler_sdk::v0::{
    self, DiscoverRequest, DiscoverResponse,
    discovery_handler_server::{DiscoveryHandler, DiscoveryHandlerServer},
};
use dowser_sim::modbus::{ListenerConfig, UnitConfig, serve};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// The registration service of this process, in its own directory, on its own runtime (once
/// per test binary: the registrations are the process's, and each test has its runtime).
static AGENT: OnceLock<PathBuf> = OnceLock::new();

async fn agent_dir() -> &'static Path {
    AGENT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let (tx, rx) = std::sync::mpsc::channel();
        let at = dir.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let serving =
                    dowser::external::listen(&at, std::future::pending()).expect("registration");
                tx.send(()).unwrap();
                serving.await;
            });
        });
        rx.recv().unwrap();
        dir
    })
}

/// `spec.discovery.external` selecting `name` with `details`.
fn external(name: &str, details: &str) -> Discovery {
    serde_json::from_value(serde_json::json!({
        "external": {"name": name, "details": details}
    }))
    .unwrap()
}

fn discover(discovery: &Discovery, properties: Properties) -> SnapshotStream {
    dowser::handlers::discover(discovery.selected().unwrap(), properties).unwrap()
}

/// The next snapshot for which `want` holds, within `secs`.
async fn until(
    stream: &mut SnapshotStream,
    secs: u64,
    what: &str,
    want: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(secs), async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(s) if want(&s) => return s,
                Ok(s) => seen.push(format!("{:?} {:?}", ids(&s), s.problems())),
                Err(e) => seen.push(format!("error: {e}")),
            }
        }
        panic!("the stream ended");
    })
    .await;
    found.unwrap_or_else(|_| panic!("no snapshot with {what} within {secs} s; saw {seen:#?}"))
}

fn ids(s: &Snapshot) -> Vec<&str> {
    s.devices().iter().map(|d| d.id.as_str()).collect()
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dowser_handler(dir: &Path, args: &[&str]) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_dowser"))
        .arg("handler")
        .args(args)
        .arg("--registration-socket")
        .arg(dir.join("agent-registration.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run dowser handler");
    Process(child)
}

async fn registered(name: &str) {
    let mut rx = REGISTRATIONS.subscribe();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !rx.borrow_and_update().contains_key(name) {
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no handler registered as {name} within 20 s"));
}

#[tokio::test]
async fn a_built_in_handler_serves_out_of_process_and_its_death_is_noticed_at_once() {
    let dir = agent_dir().await;
    let plc = serve(&ListenerConfig::device(
        "127.0.0.1:0".parse().unwrap(),
        vec![UnitConfig::identified(1, "Acme", "PLC-100", "1.2")],
    ))
    .await
    .unwrap()
    .remove(0);
    let handler = dowser_handler(dir, &["modbus", "--register-as", "modbus-out", "--shared"]);
    registered("modbus-out").await;
    assert_eq!(REGISTRATIONS.shared("modbus-out"), Some(true));
    let discovery = external(
        "modbus-out",
        &format!(
            "targets: [\"{}\"]\nunitIds: [\"1\"]\nrequestTimeoutMs: 300\n",
            plc.addr
        ),
    );
    let mut stream = discover(&discovery, Properties::new());
    let found = until(&mut stream, 20, "the PLC", |s| s.len() == 1).await;
    let device = &found.devices()[0];
    assert_eq!(device.id, format!("modbus+tcp://{}/1", plc.addr));
    assert_eq!(device.properties["MODBUS_VENDOR_NAME"], "Acme");
    assert!(found.problems().is_empty(), "{:?}", found.problems());

    // The handler dies: its devices are out of the next snapshot (the agent's grace period
    // then applies) and the snapshot says why, well before any polling interval.
    let started = std::time::Instant::now();
    drop(handler);
    let lost = until(&mut stream, 5, "the handler lost", |s| s.is_empty()).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let socket = dir.join("modbus-out.sock");
    assert!(
        lost.problems()[0].starts_with(&format!("handler at {}: ", socket.display())),
        "{:?}",
        lost.problems()
    );

    // Back again: found again without anything registering anew (the same endpoint).
    let _again = dowser_handler(dir, &["modbus", "--register-as", "modbus-out", "--shared"]);
    until(&mut stream, 30, "the PLC again", |s| {
        s.len() == 1 && s.problems().is_empty()
    })
    .await;
}

/// The first error of the stream, within 20 s.
async fn error_of(stream: &mut SnapshotStream) -> String {
    let next = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.next().await {
                Some(Err(e)) => return e.to_string(),
                Some(Ok(s)) => assert!(s.is_empty(), "devices: {:?}", ids(&s)),
                None => panic!("the stream ended"),
            }
        }
    })
    .await;
    next.expect("an error within 20 s")
}

#[tokio::test]
async fn details_a_built_in_handler_refuses_are_an_error_in_the_handlers_words() {
    let dir = agent_dir().await;
    let _handler = dowser_handler(dir, &["modbus", "--register-as", "modbus-strict"]);
    registered("modbus-strict").await;
    let mut stream = discover(
        &external("modbus-strict", "targets: [\"not an address\"]\n"),
        Properties::new(),
    );
    let refused = error_of(&mut stream).await;
    assert!(
        refused.starts_with(
            "invalid discovery details: the handler refused the details: (InvalidArgument) \
             details.targets[0]: \"not an address\" is not a valid host name"
        ),
        "{refused}"
    );
    let mut stream = discover(
        &external("modbus-strict", "targetz: []\n"),
        Properties::new(),
    );
    let refused = error_of(&mut stream).await;
    assert!(refused.contains("targetz"), "{refused}");
}

#[tokio::test]
async fn a_handler_on_the_network_is_reached_at_the_url_it_registered() {
    let dir = agent_dir().await;
    let plc = serve(&ListenerConfig::device(
        "127.0.0.1:0".parse().unwrap(),
        vec![UnitConfig::identified(1, "Acme", "PLC-200", "2.0")],
    ))
    .await
    .unwrap()
    .remove(0);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://127.0.0.1:{port}");
    let _handler = dowser_handler(
        dir,
        &[
            "modbus",
            "--register-as",
            "modbus-net",
            "--listen",
            &listen,
            "--advertise",
            &url,
        ],
    );
    registered("modbus-net").await;
    let registration = REGISTRATIONS.subscribe().borrow()["modbus-net"][0].clone();
    assert!(registration.network);
    assert_eq!(registration.endpoint, url);
    let discovery = external(
        "modbus-net",
        &format!("targets: [\"{}\"]\nunitIds: [\"1\"]\n", plc.addr),
    );
    let mut stream = discover(&discovery, Properties::new());
    let found = until(&mut stream, 20, "the PLC", |s| s.len() == 1).await;
    assert_eq!(
        found.devices()[0].properties["MODBUS_PRODUCT_CODE"],
        "PLC-200"
    );
}

#[tokio::test]
async fn a_name_nobody_registered_is_said_and_found_once_it_registers() {
    let dir = agent_dir().await;
    let mut stream = discover(&external("late-echo", ""), Properties::new());
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an answer at once")
        .unwrap();
    let error = first.expect_err("an error, not a snapshot").to_string();
    assert_eq!(
        error,
        "no discovery handler named \"late-echo\" has registered with this node's agent"
    );
    let _server = Hostile::serve(dir, "late-echo", Behaviour::Devices(vec!["x".into()])).await;
    until(&mut stream, 10, "its device", |s| ids(s) == ["x"]).await;
}

// Handlers that misbehave, served from this process.

#[derive(Clone)]
enum Behaviour {
    /// Sends these device ids once, then keeps the stream open.
    Devices(Vec<String>),
    /// Never answers `Discover`.
    Silent,
    /// One response of this many devices.
    Many(usize),
    /// One response this many bytes long.
    Huge(usize),
    /// Responses as fast as they go: devices `n % 3` for n up to the count, then
    /// the last one stays.
    Flood(usize),
    /// Devices with an empty id, a relative path and fine ones.
    Bad,
}

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoverResponse, Status>> + Send>>;

struct Hostile {
    behaviour: Behaviour,
    asked: Arc<AtomicUsize>,
}

fn response(ids: impl IntoIterator<Item = String>) -> DiscoverResponse {
    DiscoverResponse {
        devices: ids
            .into_iter()
            .map(|id| v0::Device {
                id,
                ..Default::default()
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl DiscoveryHandler for Hostile {
    type DiscoverStream = Responses;

    async fn discover(&self, _: Request<DiscoverRequest>) -> Result<Response<Responses>, Status> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let pending = futures::stream::pending();
        let stream: Responses = match self.behaviour.clone() {
            Behaviour::Devices(ids) => futures::stream::iter([Ok(response(ids))])
                .chain(pending)
                .boxed(),
            Behaviour::Silent => {
                std::future::pending::<()>().await;
                unreachable!()
            }
            Behaviour::Many(n) => {
                futures::stream::iter([Ok(response((0..n).map(|i| format!("d{i}"))))])
                    .chain(pending)
                    .boxed()
            }
            Behaviour::Huge(bytes) => {
                let mut one = response(["big".to_string()]);
                one.devices[0]
                    .properties
                    .insert("BLOB".into(), "x".repeat(bytes));
                futures::stream::iter([Ok(one)]).chain(pending).boxed()
            }
            Behaviour::Flood(count) => futures::stream::iter(
                (0..=count).map(|n| Ok(response([format!("flood-{}", n % 3)]))),
            )
            .chain(pending)
            .boxed(),
            Behaviour::Bad => {
                let mut bad =
                    response(["".to_string(), "relative".to_string(), "good".to_string()]);
                bad.devices[1].device_specs.push(v0::DeviceSpec {
                    container_path: "/dev/x".into(),
                    host_path: "dev/x".into(),
                    permissions: "rw".into(),
                });
                futures::stream::iter([Ok(bad)]).chain(pending).boxed()
            }
        };
        Ok(Response::new(stream))
    }
}

impl Hostile {
    /// Serves a handler on `<dir>/<name>.sock` and registers it through the registration
    /// socket, as a handler would.
    async fn serve(
        dir: &Path,
        name: &str,
        behaviour: Behaviour,
    ) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let socket = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&socket);
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(
            tokio::net::UnixListener::bind(&socket).unwrap(),
        );
        let service = DiscoveryHandlerServer::new(Hostile {
            behaviour,
            asked: asked.clone(),
        })
        .max_encoding_message_size(64 * 1024 * 1024);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
        register(dir, name, &socket).await;
        (task, asked)
    }
}

async fn register(dir: &Path, name: &str, socket: &Path) {
    let channel = dowser_handler_sdk::connect_unix(&dir.join("agent-registration.sock"))
        .await
        .unwrap();
    v0::registration_client::RegistrationClient::new(channel)
        .register_discovery_handler(v0::RegisterDiscoveryHandlerRequest {
            name: name.into(),
            endpoint: socket.display().to_string(),
            endpoint_type: 0,
            shared: false,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_silent_handler_costs_a_timeout_and_others_of_its_name_still_count() {
    let dir = agent_dir().await;
    let (_silent, asked) = Hostile::serve(dir, "mixed", Behaviour::Silent).await;
    // A second endpoint of the same name, on its own socket.
    let good_socket = dir.join("mixed-2.sock");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(
        tokio::net::UnixListener::bind(&good_socket).unwrap(),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DiscoveryHandlerServer::new(Hostile {
                behaviour: Behaviour::Devices(vec!["good-1".into()]),
                asked: Arc::default(),
            }))
            .serve_with_incoming(incoming),
    );
    register(dir, "mixed", &good_socket).await;
    let mut stream = discover(&external("mixed", ""), Properties::new());
    let s = until(&mut stream, 30, "the silent one given up on", |s| {
        !s.is_empty()
    })
    .await;
    assert_eq!(ids(&s), ["good-1"]);
    assert_eq!(
        s.problems(),
        [format!(
            "handler at {}: did not answer Discover within 10s",
            dir.join("mixed.sock").display()
        )]
    );
    assert!(asked.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn too_many_devices_are_cut_and_too_large_a_message_is_refused() {
    let dir = agent_dir().await;
    let _many = Hostile::serve(dir, "many", Behaviour::Many(10_000)).await;
    let mut stream = discover(&external("many", ""), Properties::new());
    let s = until(&mut stream, 10, "the first devices", |s| !s.is_empty()).await;
    assert_eq!(s.len(), 4096);
    assert_eq!(
        s.problems(),
        [format!(
            "handler at {}: sent 10000 devices in one response; only the first 4096 are kept",
            dir.join("many.sock").display()
        )]
    );

    let _huge = Hostile::serve(dir, "huge", Behaviour::Huge(8 * 1024 * 1024)).await;
    let mut stream = discover(&external("huge", ""), Properties::new());
    let s = until(&mut stream, 10, "a refusal", |s| !s.problems().is_empty()).await;
    assert!(s.is_empty());
    assert!(
        s.problems()[0].contains("message length too large"),
        "{:?}",
        s.problems()
    );
}

#[tokio::test]
async fn a_flood_of_updates_is_taken_ten_a_second_and_the_last_one_wins() {
    let dir = agent_dir().await;
    let _flood = Hostile::serve(dir, "flood", Behaviour::Flood(20_000)).await;
    let mut stream = discover(&external("flood", ""), Properties::new());
    let started = tokio::time::Instant::now();
    let mut snapshots = 0u32;
    let mut last = None;
    let mut last_at = started;
    // Read until the stream has been quiet for a second (the flood is over).
    while let Ok(next) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
        last = Some(next.expect("the stream goes on").expect("a snapshot"));
        last_at = tokio::time::Instant::now();
        snapshots += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the flood never settles"
        );
    }
    let last = last.expect("snapshots");
    // 20,000 % 3 == 2: the last response names flood-2.
    assert_eq!(ids(&last), ["flood-2"]);
    let elapsed = (last_at - started).as_secs_f64();
    assert!(
        f64::from(snapshots) <= elapsed * 10.0 + 2.0,
        "{snapshots} snapshots in {elapsed:.1} s"
    );
}

#[tokio::test]
async fn devices_that_cannot_be_devices_are_refused_and_counted() {
    let dir = agent_dir().await;
    let _bad = Hostile::serve(dir, "bad", Behaviour::Bad).await;
    let mut stream = discover(&external("bad", ""), Properties::new());
    let s = until(&mut stream, 10, "the good device", |s| !s.is_empty()).await;
    assert_eq!(ids(&s), ["good"]);
    assert_eq!(
        s.problems(),
        [format!(
            "handler at {}: 2 device(s) refused, the first because its id is empty",
            dir.join("bad.sock").display()
        )]
    );
}

#[tokio::test]
async fn garbage_on_the_socket_costs_nothing_but_a_problem() {
    let dir = agent_dir().await;
    let socket = dir.join("garbage.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let _ = conn.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(4096)).await;
        }
    });
    register(dir, "garbage", &socket).await;
    let mut stream = discover(&external("garbage", ""), Properties::new());
    let s = until(&mut stream, 20, "a problem", |s| !s.problems().is_empty()).await;
    assert!(s.is_empty());
    assert!(
        s.problems()[0].starts_with(&format!("handler at {}: ", socket.display())),
        "{:?}",
        s.problems()
    );
}
