//! A discovery handler that is not dowser's: `tests/peers/echo_handler.py`, written in Python
//! with grpcio from the protocol file alone, as a user would write theirs (it behaves like
//! Akri's debugEcho). It registers with an agent's registration socket, played here by a bare
//! `Registration` server that records what it is told, and `dowser discover` finds it where
//! Akri's layout puts it, `$DISCOVERY_HANDLERS_DIRECTORY/<name>.sock`.
//!
//! The Python is `dowser_sim::peers::python()`: `DOWSER_PYTHON`, set by tests/test.sh to the
//! venv of tests/peers/requirements.txt.

#![cfg(feature = "external")]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use dowser_handler_sdk::v0::{
    Empty, RegisterDiscoveryHandlerRequest,
    register_discovery_handler_request::EndpointType,
    registration_server::{Registration, RegistrationServer},
};
use dowser_sim::peers::{self, Peer};
use serde_json::Value;
use tonic::{Request, Response, Status};

/// Longest wait for the handler's `ready`: a fresh machine compiles the stubs and imports
/// grpcio in well under this.
const READY: Duration = Duration::from_secs(60);
/// Longest wait for anything else to happen: a registration, a snapshot, a process to end.
const EVENT: Duration = Duration::from_secs(20);

const HANDLER: &str = "debugEcho";

// --- The agent's side of registration ---------------------------------------------------------

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<RegisterDiscoveryHandlerRequest>>>);

#[tonic::async_trait]
impl Registration for Recorder {
    async fn register_discovery_handler(
        &self,
        request: Request<RegisterDiscoveryHandlerRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(Response::new(Empty {}))
    }
}

/// `Registration` served on a unix socket, as a node's agent serves it. Dropping it stops
/// the server; the socket file stays, as an agent that was killed leaves it.
struct Agent {
    recorder: Recorder,
    _runtime: tokio::runtime::Runtime,
}

impl Agent {
    /// Serves at `socket`, replacing any file there (as a restarted agent does).
    fn start(socket: &Path) -> Self {
        let _ = std::fs::remove_file(socket);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the agent's registration server");
        let listener = {
            let _entered = runtime.enter();
            tokio::net::UnixListener::bind(socket)
                .unwrap_or_else(|e| panic!("cannot listen on {}: {e}", socket.display()))
        };
        let recorder = Recorder::default();
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(recorder.clone()))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        Self {
            recorder,
            _runtime: runtime,
        }
    }

    fn registrations(&self) -> Vec<RegisterDiscoveryHandlerRequest> {
        self.recorder.0.lock().unwrap().clone()
    }

    /// Waits for the first registration this agent receives.
    fn first_registration(&self, handler: &Handler) -> RegisterDiscoveryHandlerRequest {
        let deadline = Instant::now() + EVENT;
        loop {
            if let Some(r) = self.registrations().into_iter().next() {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "the handler did not register with the agent within {} s; its log:\n{}",
                EVENT.as_secs(),
                handler.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

// --- The Python handler --------------------------------------------------------------------

/// `echo_handler.py` running with `$DISCOVERY_HANDLERS_DIRECTORY` = `dir`, killed when
/// dropped. Its standard error goes to a file, shown when something fails.
struct Handler {
    peer: Peer,
    stdout: mpsc::Receiver<String>,
    log: PathBuf,
    socket: PathBuf,
}

impl Handler {
    fn start(dir: &Path, availability: &Path) -> Self {
        let log = dir.join("handler.log");
        let mut command = peers::script("echo_handler.py", "grpc, grpc_tools, yaml")
            .unwrap_or_else(|e| panic!("{e}"));
        command
            .env("DISCOVERY_HANDLERS_DIRECTORY", dir)
            .args(["--shared", "--availability-file"])
            .arg(availability)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("the handler's log file"));
        let mut child = command.spawn().expect("start echo_handler.py");
        let stdout = lines(child.stdout.take().expect("the handler's stdout"));
        Self {
            peer: Peer(child),
            stdout,
            log,
            socket: dir.join(format!("{HANDLER}.sock")),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the `ready` line (serving and registered), its first.
    fn wait_ready(&self) {
        match self.stdout.recv_timeout(READY) {
            Ok(line) if line == "ready" => {}
            Ok(line) => panic!(
                "the handler printed {line:?} before ready; its log:\n{}",
                self.log()
            ),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "the handler did not print ready within {} s; its log:\n{}",
                READY.as_secs(),
                self.log()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                "the handler exited before it was ready; its log:\n{}",
                self.log()
            ),
        }
    }

    /// Sends SIGTERM and waits for the handler to exit.
    fn terminate(mut self) -> ExitStatus {
        signal(&self.peer.0, libc::SIGTERM);
        let status = wait_until(&mut self.peer.0, EVENT);
        status.unwrap_or_else(|| {
            panic!(
                "the handler did not exit within {} s of SIGTERM; its log:\n{}",
                EVENT.as_secs(),
                self.log()
            )
        })
    }
}

/// The lines of `from`, as they come.
fn lines(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    // SAFETY: kill(2) on our own child, which has not been waited for yet.
    let r = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// The child's exit status, if it exits within `limit`.
fn wait_until(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- A handler registered with an agent, in a directory of its own ----------------------------

struct Setup {
    handler: Handler,
    _agent: Agent,
    availability: PathBuf,
    dir: tempfile::TempDir,
}

impl Setup {
    /// The agent, then the handler, ready.
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let agent = Agent::start(&dir.path().join("agent-registration.sock"));
        let availability = dir.path().join("availability");
        let handler = Handler::start(dir.path(), &availability);
        handler.wait_ready();
        Self {
            handler,
            _agent: agent,
            availability,
            dir,
        }
    }

    fn config(&self, details: &str) -> PathBuf {
        let path = self.dir.path().join("echo.yaml");
        std::fs::write(&path, configuration(details)).expect("write the Configuration");
        path
    }

    /// `dowser discover` with this directory as `$DISCOVERY_HANDLERS_DIRECTORY`.
    fn dowser(&self, config: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dowser"));
        command
            .env("DISCOVERY_HANDLERS_DIRECTORY", self.dir.path())
            .env_remove("NODE_NAME")
            .args(["discover", "-f"])
            .arg(config)
            .args(["--node", "test-node", "--timeout", "15"])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// `dowser discover` run to its end (killed after [`EVENT`]).
    fn discover(&self, config: &Path, args: &[&str]) -> Ran {
        let mut child = self
            .dowser(config, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run dowser discover");
        let stdout = read_all(child.stdout.take().expect("stdout"));
        let stderr = read_all(child.stderr.take().expect("stderr"));
        let status = wait_until(&mut child, EVENT);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let ran = Ran {
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        };
        assert!(
            ran.status.is_some(),
            "dowser discover did not finish within {} s\n{}\nhandler log:\n{}",
            EVENT.as_secs(),
            ran,
            self.handler.log()
        );
        ran
    }
}

fn configuration(details: &str) -> String {
    let details: String = details.lines().map(|l| format!("        {l}\n")).collect();
    format!(
        r#"apiVersion: dowser.dev/v1alpha1
kind: Configuration
metadata: {{name: echo}}
spec:
  properties:
  - name: GREETING
    value: hello
  - name: PASSWORD
    valueFrom:
      secretKeyRef: {{name: echo-credentials, key: password}}
  discovery:
    external:
      name: {HANDLER}
      details: |
{details}"#
    )
}

const DETAILS: &str = "descriptions: [foo0, foo1]";

struct Ran {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn read_all(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The device ids of one printed list of Instances.
fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a list of Instances")
        .iter()
        .map(|p| p["deviceId"].as_str().expect("deviceId"))
        .collect()
}

// --- Tests -----------------------------------------------------------------------------------

#[test]
fn registers_once_the_agent_answers_and_again_when_the_agent_is_replaced() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let registration_socket = dir.path().join("agent-registration.sock");
    let handler = Handler::start(dir.path(), &dir.path().join("availability"));
    // Serving with no agent yet: it keeps trying and is not ready.
    peers::wait_for("the handler's socket", || handler.socket.exists())
        .unwrap_or_else(|e| panic!("{e}; its log:\n{}", handler.log()));
    assert!(
        handler.stdout.try_recv().is_err(),
        "ready before any agent answered"
    );

    let agent = Agent::start(&registration_socket);
    handler.wait_ready();
    let r = agent.first_registration(&handler);
    assert_eq!(r.name, HANDLER);
    assert_eq!(Path::new(&r.endpoint), handler.socket);
    assert_eq!(r.endpoint_type, EndpointType::Uds as i32);
    assert!(r.shared, "registered with --shared");

    // The agent restarts: its socket file is replaced, and the new one knows no handler.
    drop(agent);
    let restarted = Agent::start(&registration_socket);
    let again = restarted.first_registration(&handler);
    assert_eq!(again, r, "registers again the same way");

    let status = handler.terminate();
    assert!(status.success(), "exits cleanly on SIGTERM: {status}");
    assert!(
        !dir.path().join(format!("{HANDLER}.sock")).exists(),
        "removes its socket when it stops"
    );
}

#[test]
fn discover_prints_the_handlers_devices_and_passes_it_the_properties() {
    let setup = Setup::start();
    let config = setup.config(DETAILS);
    let ran = setup.discover(&config, &["-o", "json", "--property", "PASSWORD=s3cret"]);
    assert!(ran.status.is_some_and(|s| s.success()), "{ran}");
    assert!(ran.stderr.contains("echo found 2 devices"), "{ran}");
    assert!(!ran.stderr.contains("problem"), "{ran}");

    let printed: Value = serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {ran}"));
    assert_eq!(ids(&printed), ["foo0", "foo1"], "{ran}");
    let mut names = Vec::new();
    for p in printed.as_array().unwrap() {
        let id = p["deviceId"].as_str().unwrap();
        let name = p["name"].as_str().unwrap();
        let hash = p["hash"].as_str().unwrap();
        assert_eq!(name, format!("echo-{hash}"), "{p:#}");
        assert_eq!(p["instance"]["kind"], "Instance", "{p:#}");
        assert_eq!(p["instance"]["metadata"]["name"], name, "{p:#}");
        assert_eq!(p["instance"]["spec"]["configurationName"], "echo", "{p:#}");
        assert_eq!(p["instance"]["spec"]["deviceId"], id, "{p:#}");
        // The device's own property, and each of the Configuration's as the handler got it:
        // the literal one and the one standing in for a Secret (`--property`).
        let properties: BTreeMap<String, String> =
            serde_json::from_value(p["instance"]["spec"]["properties"].clone()).unwrap();
        let expected: BTreeMap<String, String> = [
            ("DEBUG_ECHO_DESCRIPTION", id),
            ("ECHO_GREETING", "hello"),
            ("ECHO_PASSWORD", "s3cret"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(properties, expected, "{p:#}");
        // A broker gets them, plain and suffixed with the Instance hash.
        let suffixed = format!("DEBUG_ECHO_DESCRIPTION_{}", hash.to_uppercase());
        assert_eq!(p["env"][suffixed.as_str()], id, "{p:#}");
        assert_eq!(p["env"]["ECHO_PASSWORD"], "s3cret", "{p:#}");
        names.push(name.to_string());
    }
    assert_ne!(names[0], names[1], "one Instance per device");

    // The same devices are the same Instances the next time.
    let again = setup.discover(&config, &["-o", "json", "--property", "PASSWORD=s3cret"]);
    let printed_again: Value =
        serde_json::from_str(&again.stdout).unwrap_or_else(|e| panic!("{e}: {again}"));
    let names_again: Vec<&str> = printed_again
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names_again, names, "{again}");
}

#[test]
fn invalid_details_show_the_handlers_reason() {
    let setup = Setup::start();
    for (details, reason) in [
        (
            "descriptions: foo0",
            "descriptions must be a list of strings, got str",
        ),
        ("descriptions: [foo0", "not YAML: expected ',' or ']'"),
        ("description: [foo0]", "missing field descriptions"),
    ] {
        let config = setup.config(details);
        let ran = setup.discover(&config, &["-o", "json", "--property", "PASSWORD=x"]);
        // A refusal is the Configuration's fault: an error, not an empty list.
        let expected = format!(
            "error: invalid discovery details: the handler refused the details: \
             (InvalidArgument) invalid discovery details for the {HANDLER} handler: {reason}"
        );
        assert!(
            ran.stderr.contains(&expected),
            "details {details:?}: expected {expected:?} in\n{ran}"
        );
        assert!(
            ran.status.is_some_and(|s| s.code() == Some(1)),
            "exits 1: {ran}"
        );
        assert!(ran.stdout.trim().is_empty(), "no devices printed: {ran}");
    }
    assert!(
        setup.handler.log().contains("invalid discovery details"),
        "the handler says so too:\n{}",
        setup.handler.log()
    );
}

/// `dowser discover --watch`, killed when dropped.
struct Watch {
    child: Child,
    stderr: mpsc::Receiver<String>,
    stdout: Option<JoinHandle<String>>,
    seen: Vec<String>,
}

impl Watch {
    /// Waits for the line on standard error that announces a snapshot of `n` devices.
    fn wait_for_devices(&mut self, n: usize, handler: &Handler) {
        let want = format!("] {n} device(s)");
        let deadline = Instant::now() + EVENT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let done = line.ends_with(&want);
                    self.seen.push(line);
                    if done {
                        return;
                    }
                }
                Err(e) => panic!(
                    "dowser discover --watch showed no {n}-device snapshot within {} s ({e:?}); its standard error:\n{}\nhandler log:\n{}",
                    EVENT.as_secs(),
                    self.seen.join("\n"),
                    handler.log()
                ),
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_follows_the_handlers_availability() {
    let setup = Setup::start();
    let config = setup.config(DETAILS);
    let mut child = setup
        .dowser(
            &config,
            &["-o", "json", "--watch", "--property", "PASSWORD=x"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dowser discover --watch");
    let stdout = read_all(child.stdout.take().expect("stdout"));
    let stderr = lines(child.stderr.take().expect("stderr"));
    let mut watch = Watch {
        child,
        stderr,
        stdout: Some(stdout),
        seen: Vec::new(),
    };

    watch.wait_for_devices(2, &setup.handler);
    std::fs::write(&setup.availability, "OFFLINE\n").expect("write the availability file");
    watch.wait_for_devices(0, &setup.handler);
    std::fs::remove_file(&setup.availability).expect("remove the availability file");
    watch.wait_for_devices(2, &setup.handler);

    // Interrupted, it stops cleanly; every snapshot is on standard output.
    signal(&watch.child, libc::SIGINT);
    let status = wait_until(&mut watch.child, EVENT)
        .unwrap_or_else(|| panic!("dowser discover --watch did not stop on SIGINT"));
    assert!(status.success(), "{status}");
    let stdout = watch.stdout.take().unwrap().join().expect("stdout reader");
    let snapshots: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let shown: Vec<Vec<&str>> = snapshots.iter().map(ids).collect();
    assert_eq!(
        shown,
        [vec!["foo0", "foo1"], vec![], vec!["foo0", "foo1"]],
        "standard error:\n{}",
        watch.seen.join("\n")
    );
}
