//! The BLE handler against BlueZ mocked by python-dbusmock's `bluez5` template on a private
//! system bus: devices appear, advertise and go while `dowser discover --watch` runs.
#![cfg(feature = "ble")]

mod doubles;

use std::path::{Path, PathBuf};

use doubles::{bluez::Bluez, watch::Watch};
use serde_json::json;

const ESS: &str = "0000181a-0000-1000-8000-00805f9b34fb";
const BATTERY: &str = "0000180f-0000-1000-8000-00805f9b34fb";

fn config(dir: &Path, details: &str) -> PathBuf {
    let path = dir.join("ble.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {{name: ble-sensors, namespace: default}}\n\
             spec:\n  discovery:\n    ble: {details}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn watch_shows_devices_appear_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut bluez = Bluez::with_adapter();
    let watch = Watch::start(&config(dir.path(), "{}"), &bluez.env());
    watch.until_ids(20, &[]);

    bluez.appear(
        "C0:FF:EE:00:00:01",
        json!({"name": "ENV-1", "uuids": [ESS], "manufacturer": {"89": [1, 2, 3]}, "rssi": -60}),
    );
    let seen = watch.until_ids(20, &["C0:FF:EE:00:00:01"]);
    let instance = seen.instance("C0:FF:EE:00:00:01").unwrap();
    assert_eq!(instance["instance"]["spec"]["shared"], true);
    let env = &instance["instance"]["spec"]["properties"];
    assert_eq!(
        env,
        &json!({
            "BLE_ADDRESS": "C0:FF:EE:00:00:01",
            "BLE_ADDRESS_TYPE": "public",
            "BLE_MANUFACTURER_ID": "89",
            "BLE_NAME": "ENV-1",
            "BLE_SERVICE_UUIDS": ESS,
        })
    );

    bluez.appear("C0:FF:EE:00:00:02", json!({"rssi": -70}));
    watch.until_ids(20, &["C0:FF:EE:00:00:01", "C0:FF:EE:00:00:02"]);

    bluez.forget("C0:FF:EE:00:00:01");
    watch.until_ids(20, &["C0:FF:EE:00:00:02"]);
}

#[test]
fn filters_pick_devices() {
    let dir = tempfile::tempdir().unwrap();
    let mut bluez = Bluez::with_adapter();
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{names: {include: ["ENV-.*"]}}"#,
            &["C0:FF:EE:00:00:01", "C0:FF:EE:00:00:02"],
        ),
        (
            &format!(r#"{{serviceUuids: ["{ESS}"]}}"#),
            &["C0:FF:EE:00:00:01", "D4:00:00:00:00:03"],
        ),
        (
            r#"{manufacturerIds: [89]}"#,
            &["C0:FF:EE:00:00:01", "D4:00:00:00:00:04"],
        ),
        (
            r#"{addresses: {include: ["D4:.*"]}}"#,
            &["D4:00:00:00:00:03", "D4:00:00:00:00:04"],
        ),
        // ENV-2 is heard too weakly.
        (
            r#"{minRssi: -80}"#,
            &[
                "C0:FF:EE:00:00:01",
                "D4:00:00:00:00:03",
                "D4:00:00:00:00:04",
            ],
        ),
    ];
    let watches: Vec<Watch> = cases
        .iter()
        .enumerate()
        .map(|(i, (details, _))| {
            let dir = dir.path().join(i.to_string());
            std::fs::create_dir(&dir).unwrap();
            let w = Watch::start(&config(&dir, details), &bluez.env());
            w.until_ids(20, &[]);
            w
        })
        .collect();
    bluez.appear(
        "C0:FF:EE:00:00:01",
        json!({"name": "ENV-1", "uuids": [ESS], "manufacturer": {"89": [1]}, "rssi": -60}),
    );
    bluez.appear(
        "C0:FF:EE:00:00:02",
        json!({"name": "ENV-2", "uuids": [BATTERY], "manufacturer": {"76": [2]}, "rssi": -85}),
    );
    bluez.appear(
        "D4:00:00:00:00:03",
        json!({"name": "Thermo", "uuids": [ESS], "rssi": -50}),
    );
    bluez.appear(
        "D4:00:00:00:00:04",
        json!({"manufacturer": {"89": [4]}, "rssi": -40}),
    );
    for (w, (details, want)) in watches.iter().zip(cases) {
        let seen = w.until(20, details, |p| p.device_ids() == *want);
        assert_eq!(seen.device_ids(), *want, "ble: {details}");
    }
    // Once ENV-2 is heard strongly enough, it is there too.
    bluez.advertise("C0:FF:EE:00:00:02", -70);
    watches[4].until_ids(
        20,
        &[
            "C0:FF:EE:00:00:01",
            "C0:FF:EE:00:00:02",
            "D4:00:00:00:00:03",
            "D4:00:00:00:00:04",
        ],
    );
}

#[test]
fn a_device_is_present_while_it_advertises_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut bluez = Bluez::with_adapter();
    let watch = Watch::start(
        &config(dir.path(), "{presenceWindowSeconds: 2}"),
        &bluez.env(),
    );
    watch.until_ids(20, &[]);
    bluez.appear("C0:FF:EE:00:00:01", json!({"name": "ENV-1", "rssi": -60}));
    watch.until_ids(20, &["C0:FF:EE:00:00:01"]);
    // BlueZ still knows it, but it has not advertised for the window.
    watch.until_ids(20, &[]);
    bluez.advertise("C0:FF:EE:00:00:01", -62);
    watch.until_ids(20, &["C0:FF:EE:00:00:01"]);
}

#[test]
fn missing_bluez_or_adapter_is_reported_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut bluez = Bluez::start();
    let watch = Watch::start(&config(dir.path(), "{adapter: hci1}"), &bluez.env());
    watch.until_said(20, "is BlueZ, bluetoothd, running?");

    bluez.command(json!({"op": "start_bluez"}));
    watch.until_said(20, "no Bluetooth adapter hci1: BlueZ lists none");
    bluez.command(json!({"op": "adapter", "name": "hci0"}));
    watch.until_said(20, "no Bluetooth adapter hci1: BlueZ lists hci0");

    bluez.command(json!({"op": "adapter", "name": "hci1"}));
    bluez.command(
        json!({"op": "device", "adapter": "hci1", "address": "C0:FF:EE:00:00:01", "rssi": -50}),
    );
    watch.until_ids(20, &["C0:FF:EE:00:00:01"]);

    watch.drain();
    bluez.command(json!({"op": "stop_bluez"}));
    // BlueZ went away: said, and retried.
    watch.until_said(20, "is BlueZ, bluetoothd, running?");
}
