//! The Modbus handler against an independent server: pymodbus, with device identification.
//!
//! The Python interpreter comes from `DOWSER_PYTHON` (set by `tests/test.sh`, which installs
//! the peers), else `python3`. A missing pymodbus fails the test with instructions: this
//! tier is never skipped.

use std::process::Stdio;

use dowser_discovery_api::details::ModbusDetails;
use dowser_modbus::scan;
use dowser_sim::peers::{self, Peer, free_port};

fn start_pymodbus(port: u16, units: &str) -> Peer {
    let child = peers::script("pymodbus_server.py", "pymodbus")
        .unwrap()
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
    peers::wait_for("pymodbus", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .unwrap();
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
