//! The USB serial handler against umockdev: adapters of the common shapes in a fake sysfs,
//! udev database and /dev, plugged and unplugged (with their uevents) while
//! `dowser discover --watch` runs.
#![cfg(feature = "serial")]

mod doubles;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use doubles::{
    umockdev::{
        self, ARDUINO_UNO, Bed, CH340, CP2102, FTDI_FT232R, device_ids as ids, instance as find,
    },
    watch::Watch,
};
use serde_json::Value;

const FTDI_ID: &str = "0403:6001:A10K3XYZ";
const CP2102_ID: &str = "10c4:ea60:0001";
const ARDUINO_ID: &str = "2341:0043:75833353035351F0F1C1";

fn config(dir: &Path, details: &str) -> PathBuf {
    let path = dir.join("serial.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {{name: usb-serial, namespace: default}}\n\
             spec:\n  discovery:\n    serial: {details}\n"
        ),
    )
    .unwrap();
    path
}

/// A node with an on-board UART and four adapters: FTDI, CH340 (no serial number), CP2102
/// and an Arduino (CDC-ACM).
fn plant() -> String {
    [
        umockdev::onboard_uart(),
        umockdev::usb_serial(&FTDI_FT232R, "1-2", "ttyUSB0"),
        umockdev::usb_serial(&CH340, "1-3", "ttyUSB1"),
        umockdev::usb_serial(&CP2102, "1-4.2", "ttyUSB2"),
        umockdev::usb_serial(&ARDUINO_UNO, "2-1", "ttyACM0"),
    ]
    .concat()
}

/// `dowser discover -o json` once, in a testbed made of `devices`.
fn discover_once(dir: &Path, devices: &str, details: &str) -> Vec<Value> {
    umockdev::discover_json(dir, devices, &config(dir, details))
}

#[test]
fn every_adapter_shape_becomes_a_device_of_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let found = discover_once(dir.path(), &plant(), "{}");
    // The on-board UART is not a USB adapter; the CH340 has no serial number and is known
    // by the USB port it is plugged into.
    assert_eq!(
        ids(&found),
        [FTDI_ID, CP2102_ID, "1a86:7523@1-3", ARDUINO_ID]
    );

    let ftdi = find(&found, FTDI_ID);
    let spec = &ftdi["instance"]["spec"];
    assert_eq!(spec["shared"], false);
    assert_eq!(
        spec["devices"],
        serde_json::json!([{"containerPath": "/dev/ttyUSB0", "hostPath": "/dev/ttyUSB0", "permissions": "rw"}])
    );
    let env = &spec["properties"];
    assert_eq!(env["SERIAL_PORT"], "/dev/ttyUSB0");
    assert_eq!(env["SERIAL_VID"], "0403");
    assert_eq!(env["SERIAL_PID"], "6001");
    assert_eq!(env["SERIAL_SERIAL_NUMBER"], "A10K3XYZ");
    assert_eq!(env["SERIAL_MANUFACTURER"], "FTDI");
    assert_eq!(env["SERIAL_PRODUCT"], "FT232R USB UART");
    assert_eq!(env["SERIAL_USB_PATH"], "1-2");

    let ch340 = &find(&found, "1a86:7523@1-3")["instance"]["spec"]["properties"];
    assert_eq!(ch340["SERIAL_PORT"], "/dev/ttyUSB1");
    assert_eq!(ch340["SERIAL_PRODUCT"], "USB Serial");
    assert!(ch340.get("SERIAL_SERIAL_NUMBER").is_none());
    assert!(ch340.get("SERIAL_MANUFACTURER").is_none());

    let cp2102 = &find(&found, CP2102_ID)["instance"]["spec"]["properties"];
    assert_eq!(cp2102["SERIAL_USB_PATH"], "1-4.2");
    assert_eq!(
        find(&found, ARDUINO_ID)["instance"]["spec"]["properties"]["SERIAL_PORT"],
        "/dev/ttyACM0"
    );
    // The Instance of a local device is named for its node too.
    let other_node = {
        let out = Command::new("umockdev-run")
            .arg("-d")
            .arg(dir.path().join("plant.umockdev"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_dowser"))
            .args(["discover", "-o", "json", "--node", "node-b", "-f"])
            .arg(dir.path().join("serial.yaml"))
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
    };
    assert_ne!(find(&other_node, FTDI_ID)["name"], ftdi["name"]);
}

#[test]
fn filters_pick_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let plant = plant();
    let cases: &[(&str, &[&str])] = &[
        (r#"{vendorIds: ["0403", "10c4"]}"#, &[FTDI_ID, CP2102_ID]),
        (r#"{vendorIds: ["10c4"], productIds: ["ea61"]}"#, &[]),
        (r#"{serialNumbers: {include: ["A1.*"]}}"#, &[FTDI_ID]),
        (
            r#"{manufacturers: {exclude: ["FTDI", "Arduino.*"]}}"#,
            &[CP2102_ID, "1a86:7523@1-3"],
        ),
        (r#"{products: {include: ["CP210[0-9].*"]}}"#, &[CP2102_ID]),
        (
            r#"{portNames: {include: ["/dev/ttyACM[0-9]+"]}}"#,
            &[ARDUINO_ID],
        ),
    ];
    for (details, want) in cases {
        let found = discover_once(dir.path(), &plant, details);
        assert_eq!(ids(&found), *want, "serial: {details}");
    }
}

#[test]
fn watch_shows_adapters_plugged_and_unplugged() {
    let dir = tempfile::tempdir().unwrap();
    let mut bed = Bed::start();
    bed.add(&umockdev::onboard_uart());
    bed.plug(&FTDI_FT232R, "1-2", "ttyUSB0");
    let watch = Watch::start(&config(dir.path(), "{}"), &bed.env());
    watch.until_ids(20, &[FTDI_ID]);

    bed.plug(&CH340, "1-3", "ttyUSB1");
    watch.until_ids(20, &[FTDI_ID, "1a86:7523@1-3"]);

    bed.unplug("1-2");
    watch.until_ids(20, &["1a86:7523@1-3"]);

    bed.unplug("1-3");
    watch.until_ids(20, &[]);
}

#[test]
fn a_re_enumerated_adapter_is_the_same_device_on_a_new_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut bed = Bed::start();
    bed.plug(&FTDI_FT232R, "1-2", "ttyUSB0");
    bed.plug(&CH340, "1-3", "ttyUSB1");
    let watch = Watch::start(&config(dir.path(), "{}"), &bed.env());
    let before = watch.until_ids(20, &[FTDI_ID, "1a86:7523@1-3"]);

    // Both adapters are unplugged and plugged back in while a program still holds their
    // old device nodes open, so the kernel gives them new names.
    bed.unplug("1-2");
    bed.unplug("1-3");
    watch.until_ids(20, &[]);
    bed.plug(&FTDI_FT232R, "1-2", "ttyUSB2");
    bed.plug(&CH340, "1-3", "ttyUSB3");
    let after = watch.until(20, "the adapters on their new device nodes", |p| {
        p.device_ids().len() == 2
            && p.instance(FTDI_ID).is_some_and(|i| {
                i["instance"]["spec"]["properties"]["SERIAL_PORT"] == "/dev/ttyUSB2"
            })
    });
    for id in [FTDI_ID, "1a86:7523@1-3"] {
        let (b, a) = (before.instance(id).unwrap(), after.instance(id).unwrap());
        assert_eq!(a["name"], b["name"], "{id} keeps its Instance");
        assert_ne!(
            a["instance"]["spec"]["devices"], b["instance"]["spec"]["devices"],
            "{id} has a new device node"
        );
    }
    assert_eq!(
        after.instance(FTDI_ID).unwrap()["instance"]["spec"]["devices"][0]["hostPath"],
        "/dev/ttyUSB2"
    );
    assert_eq!(
        after.instance("1a86:7523@1-3").unwrap()["instance"]["spec"]["properties"]["SERIAL_PORT"],
        "/dev/ttyUSB3"
    );
}
