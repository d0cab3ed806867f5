//! The udev handler against umockdev: a node with a UVC camera, a GPIO chip, a USB keyboard
//! and a USB flash drive in a fake sysfs and /dev (in the shapes the Linux drivers give
//! them), selected by `dowser discover`; and cameras plugged, unplugged and re-enumerated
//! while `dowser discover --watch` runs.
#![cfg(feature = "udev")]

mod doubles;

use std::path::{Path, PathBuf};

use doubles::{
    umockdev::{self, Bed, device_ids as ids, instance as find},
    watch::Watch,
};
use serde_json::{Value, json};

const CAMERA: &str = "udev://usb/046d:0825:A1B2C3D4/if00/video4linux";
const GPIO: &str = "udev://platform/gpio-mockup.0/gpio";
const KEYBOARD: &str = "udev://usb/046d:c31c@1-5/if00/input";
const DRIVE: &str = "udev://usb/0781:5567:4C530001230101115243/if00/block";

fn config(dir: &Path, details: &str) -> PathBuf {
    let path = dir.join("udev.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {{name: node-devices, namespace: default}}\n\
             spec:\n  discovery:\n    udev: {details}\n"
        ),
    )
    .unwrap();
    path
}

fn plant() -> String {
    [
        umockdev::uvc_camera("1-3", "A1B2C3D4", 0),
        umockdev::gpio_chip(),
        umockdev::usb_keyboard("1-5", 5),
        umockdev::usb_storage("1-6", "sdb"),
    ]
    .concat()
}

/// `dowser discover -o json` once, in a testbed made of `devices`.
fn discover_once(dir: &Path, devices: &str, details: &str) -> Vec<Value> {
    umockdev::discover_json(dir, devices, &config(dir, details))
}

#[test]
fn a_camera_is_one_device_with_both_video_nodes_for_its_broker() {
    let dir = tempfile::tempdir().unwrap();
    let found = discover_once(
        dir.path(),
        &plant(),
        r#"{subsystems: [video4linux], parentAttributes: [{name: idVendor, include: ["046d"]}]}"#,
    );
    assert_eq!(ids(&found), [CAMERA]);
    let spec = &find(&found, CAMERA)["instance"]["spec"];
    assert_eq!(spec["shared"], false);
    assert_eq!(
        spec["devices"],
        json!([
            {"containerPath": "/dev/video0", "hostPath": "/dev/video0", "permissions": "rw"},
            {"containerPath": "/dev/video1", "hostPath": "/dev/video1", "permissions": "rw"},
        ])
    );
    let env = &spec["properties"];
    assert_eq!(env["UDEV_DEVNODE"], "/dev/video0");
    assert_eq!(env["UDEV_DEVNODES"], "/dev/video0,/dev/video1");
    assert_eq!(env["UDEV_SUBSYSTEM"], "video4linux");
    assert_eq!(env["UDEV_DRIVER"], "uvcvideo");
    assert_eq!(env["UDEV_USB_VENDOR_ID"], "046d");
    assert_eq!(env["UDEV_USB_PRODUCT_ID"], "0825");
    assert_eq!(env["UDEV_USB_SERIAL"], "A1B2C3D4");
    assert_eq!(env["UDEV_USB_PRODUCT"], "C270 HD WEBCAM");
    assert_eq!(env["UDEV_USB_PORT"], "1-3");
    assert_eq!(env["UDEV_MODEL"], "C270_HD_WEBCAM");

    // Each node on its own, and only the capture node by its udev property.
    let found = discover_once(
        dir.path(),
        &plant(),
        r#"{subsystems: [video4linux], groupBy: Device, properties: [{name: ID_V4L_CAPABILITIES, include: [".*:capture:.*"]}]}"#,
    );
    assert_eq!(ids(&found), [format!("{CAMERA}#0").as_str()]);
}

#[test]
fn filters_pick_devices_of_every_kind_and_leave_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let plant = plant();
    let cases: &[(&str, &[&str])] = &[
        // The flash drive is left out by its node, as a rule for removable storage would.
        (
            r#"{subsystems: [video4linux, gpio, input, block], deviceNodes: {exclude: ["/dev/sd[a-z]+"]}}"#,
            &[GPIO, CAMERA, KEYBOARD],
        ),
        (r#"{subsystems: [block]}"#, &[DRIVE]),
        (
            r#"{subsystems: [input], properties: [{name: ID_INPUT_KEYBOARD, include: ["1"]}]}"#,
            &[KEYBOARD],
        ),
        (
            r#"{subsystems: [gpio], attributes: [{name: label, include: ["gpio-mockup-.*"]}]}"#,
            &[GPIO],
        ),
        (
            r#"{subsystems: [gpio], attributes: [{name: label, include: ["pinctrl-.*"]}]}"#,
            &[],
        ),
        (
            r#"{subsystems: [video4linux, input, block], drivers: {include: ["usbhid", "uvcvideo"]}}"#,
            &[CAMERA, KEYBOARD],
        ),
        (
            r#"{subsystems: [video4linux, input, block], parentAttributes: [{name: serial, include: [".+"]}]}"#,
            &[CAMERA, DRIVE],
        ),
        (r#"{subsystems: [sound]}"#, &[]),
    ];
    for (details, want) in cases {
        let found = discover_once(dir.path(), &plant, details);
        assert_eq!(ids(&found), *want, "udev: {details}");
    }
    let gpio = discover_once(dir.path(), &plant, "{subsystems: [gpio]}");
    let env = &find(&gpio, GPIO)["instance"]["spec"]["properties"];
    assert_eq!(env["UDEV_DEVNODE"], "/dev/gpiochip0");
    assert_eq!(env["UDEV_DRIVER"], "gpio-mockup");
    assert!(env.get("UDEV_USB_VENDOR_ID").is_none());
}

#[test]
fn a_replugged_camera_is_the_same_device_on_new_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let mut bed = Bed::start();
    bed.add(&umockdev::gpio_chip());
    let watch = Watch::start(
        &config(dir.path(), "{subsystems: [video4linux]}"),
        &bed.env(),
    );
    watch.until_ids(20, &[]);

    bed.add(&umockdev::uvc_camera("1-3", "A1B2C3D4", 0));
    let before = watch.until_ids(20, &[CAMERA]);

    bed.unplug("1-3");
    watch.until_ids(20, &[]);
    // Back in another port while a program holds the old nodes: video2 and video3.
    bed.add(&umockdev::uvc_camera("1-4", "A1B2C3D4", 2));
    let after = watch.until(20, "the camera on its new nodes", |p| {
        p.instance(CAMERA).is_some_and(|i| {
            i["instance"]["spec"]["properties"]["UDEV_DEVNODES"] == "/dev/video2,/dev/video3"
        })
    });
    let (b, a) = (
        before.instance(CAMERA).unwrap(),
        after.instance(CAMERA).unwrap(),
    );
    assert_eq!(a["name"], b["name"], "the camera keeps its Instance");
    assert_eq!(a["instance"]["spec"]["properties"]["UDEV_USB_PORT"], "1-4");
}
