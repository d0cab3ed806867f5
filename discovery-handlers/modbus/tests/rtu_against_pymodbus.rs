//! Modbus RTU discovery against an independent server: pymodbus serving RTU on one end of a
//! pseudo-terminal pair made by socat, the handler scanning the other end, as a USB-RS485
//! adapter and a field device would be wired. (Linux ptys refuse parity settings from pyserial,
//! so the line runs 8N1.)
//!
//! The Python interpreter comes from `DOWSER_PYTHON` (set by `tests/test.sh`, which installs
//! the peers and socat), else `python3`. A missing peer fails the test: never skipped.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dowser_discovery_api::details::{
    ModbusDetails,
    modbus::{Parity, RtuDetails, SerialLine},
};
use dowser_modbus::scan;
use dowser_sim::peers::{self, Peer};

/// A pty pair: (the device's end, the node's end).
fn wire(dir: &Path) -> (Peer, PathBuf, PathBuf) {
    let (device, node) = (dir.join("plc"), dir.join("node"));
    let child = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", device.display()))
        .arg(format!("pty,raw,echo=0,link={}", node.display()))
        .stderr(Stdio::null())
        .spawn()
        .expect("socat is missing: run tests/test.sh (it installs socat) or apt-get install socat");
    let peer = Peer(child);
    peers::wait_for("socat", || device.exists() && node.exists()).unwrap();
    (peer, device, node)
}

fn pymodbus_rtu(port: &Path, units: &str) -> Peer {
    let child = peers::script("pymodbus_server.py", "pymodbus, serial")
        .unwrap()
        .args([
            "--serial",
            &port.to_string_lossy(),
            "--baud",
            "115200",
            "--parity",
            "N",
        ])
        .args([
            "--units",
            units,
            "--vendor",
            "Pymodbus RTU",
            "--product",
            "PR-1",
        ])
        .args(["--revision", "3.16"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pymodbus");
    Peer(child)
}

fn details(path: &Path, units: &[&str]) -> ModbusDetails {
    ModbusDetails {
        rtu: Some(RtuDetails {
            lines: vec![SerialLine {
                path: path.to_string_lossy().into_owned(),
                baud_rate: 115200,
                parity: Parity::None,
                data_bits: 8,
                stop_bits: 1,
            }],
            inter_frame_delay_ms: None,
        }),
        unit_ids: units.iter().map(|u| u.to_string()).collect(),
        request_timeout_ms: 300,
        ..ModbusDetails::default()
    }
}

#[tokio::test]
async fn identifies_the_units_of_a_pymodbus_rtu_server_on_a_pty_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (_wire, device_end, node_end) = wire(dir.path());
    let _server = pymodbus_rtu(&device_end, "2,5");
    // pymodbus answers identification for any unit id (its identity is per server, not per
    // unit), so only the units it serves are asked for.
    let d = details(&node_end, &["2", "5"]);
    let port_id = node_end.to_string_lossy().into_owned();
    // pymodbus opens its end a moment after it starts: scan until the units answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let snapshot = loop {
        let snapshot = scan(&d).await;
        if snapshot.devices().len() == 2 || Instant::now() > deadline {
            break snapshot;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids: Vec<&str> = snapshot.devices().iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("modbus+rtu://{port_id}/2"),
            format!("modbus+rtu://{port_id}/5")
        ]
    );
    let unit = &snapshot.devices()[0];
    assert_eq!(unit.properties["MODBUS_VENDOR_NAME"], "Pymodbus RTU");
    assert_eq!(unit.properties["MODBUS_PRODUCT_CODE"], "PR-1");
    assert_eq!(unit.properties["MODBUS_REVISION"], "3.16");
    assert_eq!(unit.properties["MODBUS_UNIT_ID"], "2");
    assert_eq!(unit.properties["MODBUS_BAUD_RATE"], "115200");
    assert_eq!(unit.device_specs[0].host_path, port_id);
}
