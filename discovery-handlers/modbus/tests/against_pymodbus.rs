//! The Modbus handler against an independent server: pymodbus, with device identification.
//!
//! The Python interpreter comes from `DOWSER_PYTHON` (set by `tests/test.sh`, which installs
//! the peers), else `python3`. A missing pymodbus fails the test with instructions: this
//! tier is never skipped.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dowser_discovery_api::details::ModbusDetails;
use dowser_modbus::scan;

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> String {
    std::env::var("DOWSER_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_pymodbus(port: u16, units: &str) -> Peer {
    let python = python();
    let check = Command::new(&python)
        .args(["-c", "import pymodbus"])
        .status();
    assert!(
        check.is_ok_and(|s| s.success()),
        "pymodbus is not importable by {python:?}: run tests/test.sh (it installs the test peers) \
         or set DOWSER_PYTHON to a Python that has tests/peers/requirements.txt installed"
    );
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers/pymodbus_server.py");
    let child = Command::new(python)
        .arg(script)
        .args(["--port", &port.to_string(), "--units", units])
        .args([
            "--vendor",
            "Pymodbus Inc.",
            "--product",
            "PM-3",
            "--revision",
            "3.16",
        ])
        .args(["--product-name", "pymodbus server"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start pymodbus");
    let peer = Peer(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "pymodbus did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    peer
}

#[tokio::test]
async fn identifies_the_units_of_a_pymodbus_server() {
    let port = free_port();
    let _peer = start_pymodbus(port, "1,2");
    let details = ModbusDetails {
        targets: vec![format!("127.0.0.1:{port}")],
        // pymodbus answers identification for any unit id (its identity is per server, as
        // on many TCP devices), so only the units it serves are asked.
        unit_ids: vec!["1-2".into()],
        request_timeout_ms: 500,
        ..ModbusDetails::default()
    };
    let snapshot = scan(&details).await;
    let ids: Vec<&str> = snapshot.devices().iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("modbus+tcp://127.0.0.1:{port}/1"),
            format!("modbus+tcp://127.0.0.1:{port}/2")
        ]
    );
    let props = &snapshot.devices()[0].properties;
    assert_eq!(props["MODBUS_VENDOR_NAME"], "Pymodbus Inc.");
    assert_eq!(props["MODBUS_PRODUCT_CODE"], "PM-3");
    assert_eq!(props["MODBUS_REVISION"], "3.16");
    // Basic objects only: a regular object such as ProductName is not asked for.
    assert!(!props.contains_key("MODBUS_PRODUCT_NAME"));
}
