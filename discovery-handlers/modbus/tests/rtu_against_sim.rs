//! Modbus RTU discovery against dowser-sim units on a pseudo-terminal.

use dowser_discovery_api::details::{
    ModbusDetails,
    modbus::{Parity, RtuDetails, SerialLine},
};
use dowser_modbus::scan;
use dowser_sim::{
    modbus::{Mode, UnitConfig},
    rtu::{LineConfig, serve},
};

fn details(path: &str, units: &str) -> ModbusDetails {
    ModbusDetails {
        rtu: Some(RtuDetails {
            lines: vec![SerialLine {
                path: path.to_string(),
                baud_rate: 19200,
                parity: Parity::Even,
                data_bits: 8,
                stop_bits: 1,
            }],
            inter_frame_delay_ms: None,
        }),
        unit_ids: vec![units.to_string()],
        request_timeout_ms: 200,
        ..ModbusDetails::default()
    }
}

#[tokio::test]
async fn finds_and_identifies_units_on_a_serial_line() {
    let mut garbage = UnitConfig::identified(4, "Noise", "N", "1");
    garbage.mode = Some(Mode::Garbage);
    let line = serve(&LineConfig {
        mode: Mode::Normal,
        units: vec![
            UnitConfig::identified(1, "Acme", "Meter-3", "2.1"),
            UnitConfig::identified(3, "Acme", "Valve", "1.0"),
            garbage,
        ],
    })
    .unwrap();
    let path = line.path.to_string_lossy().into_owned();
    let snapshot = scan(&details(&path, "1-5")).await;
    let port = path.strip_prefix("/dev/").unwrap();
    let ids: Vec<&str> = snapshot.devices().iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            format!("modbus+rtu://{port}/1"),
            format!("modbus+rtu://{port}/3")
        ]
    );
    let meter = &snapshot.devices()[0];
    assert_eq!(meter.properties["MODBUS_TRANSPORT"], "rtu");
    assert_eq!(meter.properties["MODBUS_SERIAL_PORT"], path);
    assert_eq!(meter.properties["MODBUS_PARITY"], "even");
    assert_eq!(meter.properties["MODBUS_VENDOR_NAME"], "Acme");
    assert_eq!(meter.properties["MODBUS_PRODUCT_CODE"], "Meter-3");
    assert_eq!(meter.device_specs.len(), 1);
    assert_eq!(meter.device_specs[0].host_path, path);
    assert_eq!(meter.device_specs[0].permissions, "rw");
}

#[tokio::test]
async fn a_missing_serial_line_finds_nothing_and_does_not_fail() {
    let snapshot = scan(&details("/dev/ttyDOES-NOT-EXIST", "1")).await;
    assert!(snapshot.is_empty());
}

#[tokio::test]
async fn a_line_held_by_a_broker_keeps_the_units_last_seen_on_it() {
    let line = serve(&LineConfig {
        mode: Mode::Normal,
        units: vec![UnitConfig::identified(2, "Acme", "Meter-3", "2.1")],
    })
    .unwrap();
    let path = line.path.to_string_lossy().into_owned();
    let d = details(&path, "1-3");
    let mut memory = dowser_modbus::rtu::LineMemory::default();
    let first = dowser_modbus::scan_remembering(&d, &mut memory).await;
    assert_eq!(first.devices().len(), 1);

    // A broker opens the line exclusively, as serial libraries do by default.
    let held = {
        use tokio_serial::SerialPortBuilderExt;
        tokio_serial::new(&path, 19200).open_native_async().unwrap()
    };
    let while_held = dowser_modbus::scan_remembering(&d, &mut memory).await;
    assert_eq!(
        while_held, first,
        "the unit is not reported gone while its broker holds the line"
    );
    // Without a memory (a scan that never saw the line free) nothing is invented.
    assert!(scan(&d).await.is_empty());
    drop(held);
    let after = dowser_modbus::scan_remembering(&d, &mut memory).await;
    assert_eq!(after, first);
}
