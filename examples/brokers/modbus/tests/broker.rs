//! The broker binary against simulated devices (dowser-sim, in a runtime of its own that can be
//! torn down like a device that goes away) and an independent server (pymodbus): what it logs,
//! what /metrics serves, that a lost device is waited for, and that SIGTERM stops it.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use dowser_sim::{
    modbus::{ListenerConfig, UnitConfig},
    peers::{self, Peer},
    rtu::LineConfig,
};

/// A simulated device with its own runtime: dropping it closes every connection at once.
struct SimDevice {
    runtime: Option<tokio::runtime::Runtime>,
    _listeners: Vec<dowser_sim::modbus::RunningListener>,
    addr: SocketAddr,
}

impl SimDevice {
    fn tcp(listen: SocketAddr, unit: u8, registers: Vec<u16>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let unit = UnitConfig {
            holding_registers: registers,
            ..UnitConfig::identified(unit, "Acme Automation", "PLC-3100", "4.2")
        };
        let listeners = runtime
            .block_on(dowser_sim::modbus::serve(&ListenerConfig::device(
                listen,
                vec![unit],
            )))
            .expect("dowser-sim listens");
        let addr = listeners[0].addr;
        Self {
            runtime: Some(runtime),
            _listeners: listeners,
            addr,
        }
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The broker process, its stdout as a channel of lines; killed when dropped.
struct Broker {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Broker {
    fn start(env: &[(&str, String)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_modbus-broker"))
            .env_clear()
            .env("METRICS_ADDR", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start modbus-broker");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line containing `needle`, within `limit`; the error lists what was logged.
    fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "the broker logged no line containing {needle:?} in {limit:?}; it logged:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn metrics_addr(&mut self) -> String {
        let line = self.wait_line("metrics on http://", Duration::from_secs(10));
        let url = line.split("http://").nth(1).unwrap();
        url.trim_end_matches("/metrics").to_string()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not exit within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn reads_a_tcp_device_serves_metrics_and_waits_for_it_to_come_back() {
    let values: Vec<u16> = (0..16).map(|i| 1000 + i * 7).collect();
    let device = SimDevice::tcp("127.0.0.1:0".parse().unwrap(), 3, values);
    let addr = device.addr;
    // The hash-suffixed names alone, as a pod holding one device through
    // `dowser.dev/<namespace>.<configuration>` may see them.
    let mut broker = Broker::start(&[
        ("MODBUS_HOST_77F91FAFB55B", addr.ip().to_string()),
        ("MODBUS_PORT_77F91FAFB55B", addr.port().to_string()),
        ("MODBUS_UNIT_ID_77F91FAFB55B", "3".into()),
    ]);
    let metrics = broker.metrics_addr();
    broker.wait_line(
        "holding[0..10]=[1000, 1007, 1014, 1021, 1028, 1035, 1042, 1049, 1056, 1063]",
        LIMIT,
    );
    let text = http_get(&metrics, "/metrics");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let device_label = format!("modbus+tcp://{addr}/3");
    assert!(
        text.contains(&format!(
            "modbus_holding_register{{device=\"{device_label}\",address=\"9\"}} 1063\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("modbus_device_up{{device=\"{device_label}\"}} 1")),
        "{text}"
    );

    // The device goes away: every connection closes, the port refuses.
    drop(device);
    broker.wait_line("reconnecting", LIMIT);
    broker.wait_line("cannot connect", LIMIT);
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "the broker exited when its device went away"
    );
    let text = http_get(&metrics, "/metrics");
    assert!(
        text.contains(&format!("modbus_device_up{{device=\"{device_label}\"}} 0")),
        "{text}"
    );

    // It comes back at the same address with other values: the broker reads them.
    let _device = SimDevice::tcp(addr, 3, vec![5; 10]);
    broker.wait_line("holding[0..10]=[5, 5, 5, 5, 5, 5, 5, 5, 5, 5]", LIMIT);

    let status = broker.terminate();
    assert!(status.success(), "SIGTERM ended the broker with {status}");
}

#[test]
fn reads_an_rtu_unit_on_a_serial_line() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let line = dowser_sim::rtu::serve(&LineConfig {
        mode: Default::default(),
        units: vec![UnitConfig {
            holding_registers: (40..50).collect(),
            ..UnitConfig::identified(7, "Acme Drives", "VFD-9", "1.0")
        }],
    })
    .expect("dowser-sim serves a pty");
    let mut broker = Broker::start(&[
        ("MODBUS_TRANSPORT", "rtu".into()),
        (
            "MODBUS_SERIAL_PORT",
            line.path.to_string_lossy().into_owned(),
        ),
        ("MODBUS_BAUD_RATE", "115200".into()),
        ("MODBUS_PARITY", "none".into()),
        ("MODBUS_DATA_BITS", "8".into()),
        ("MODBUS_STOP_BITS", "1".into()),
        ("MODBUS_UNIT_ID", "7".into()),
    ]);
    broker.wait_line(
        "holding[0..10]=[40, 41, 42, 43, 44, 45, 46, 47, 48, 49]",
        LIMIT,
    );
    assert!(broker.terminate().success());
}

#[test]
fn reads_an_independent_server() {
    let port = peers::free_port();
    let _server = Peer(
        peers::script("pymodbus_server.py", "pymodbus")
            .unwrap()
            .args(["--port", &port.to_string(), "--units", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pymodbus"),
    );
    peers::wait_for("pymodbus", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .unwrap();
    let mut broker = Broker::start(&[
        ("MODBUS_HOST", "127.0.0.1".into()),
        ("MODBUS_PORT", port.to_string()),
        ("MODBUS_UNIT_ID", "1".into()),
    ]);
    // tests/peers/pymodbus_server.py fills every holding register with 17.
    broker.wait_line(
        "holding[0..10]=[17, 17, 17, 17, 17, 17, 17, 17, 17, 17]",
        LIMIT,
    );
    assert!(broker.terminate().success());
}

#[test]
fn a_pod_without_a_device_is_told_why() {
    let out = Command::new(env!("CARGO_BIN_EXE_modbus-broker"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MODBUS_HOST"), "{err}");
}
