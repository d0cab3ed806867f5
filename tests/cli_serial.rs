//! `dowser discover --watch` with a serial Configuration, as a process inside a umockdev
//! testbed (fake sysfs/udev): a USB-serial adapter plugged in appears in its output and
//! disappears when pulled out.

use std::{io::BufReader, sync::mpsc, time::Duration};

use dowser_sim::umockdev::{self, UsbSerialAdapter};
use serde_json::Value;

const EVENTUALLY: Duration = Duration::from_secs(20);

const CONFIG: &str = r#"
apiVersion: dowser.dev/v1alpha1
kind: Configuration
metadata: {name: usb-serial, namespace: plant}
spec:
  discovery:
    serial:
      vendorIds: ["0403", "1a86"]
"#;

#[test]
fn discover_watch_shows_usb_serial_adapters_appear_and_disappear() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("usb-serial.yaml");
    std::fs::write(&file, CONFIG).unwrap();
    let mut watch = umockdev::spawn(
        env!("CARGO_BIN_EXE_dowser"),
        &[
            "discover",
            "--watch",
            "-o",
            "json",
            "-f",
            file.to_str().unwrap(),
        ],
    )
    .expect("dowser discover --watch in a umockdev testbed");
    let stdout = BufReader::new(watch.child.stdout.take().unwrap());
    let (tx, printed) = mpsc::channel::<Vec<Value>>();
    std::thread::spawn(move || {
        for value in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
            let Ok(Value::Array(previews)) = value else {
                return;
            };
            if tx.send(previews).is_err() {
                return;
            }
        }
    });
    let until = |ids: &[&str]| -> Vec<Value> {
        let mut last = None;
        loop {
            match printed.recv_timeout(EVENTUALLY) {
                Ok(p)
                    if p.iter()
                        .map(|p| p["deviceId"].as_str().unwrap_or(""))
                        .eq(ids.iter().copied()) =>
                {
                    return p;
                }
                Ok(p) => last = Some(p),
                Err(_) => panic!(
                    "dowser discover --watch did not print {ids:?} within {EVENTUALLY:?}; last printed: {last:?}"
                ),
            }
        }
    };
    until(&[]);

    let ftdi = UsbSerialAdapter::ftdi("A10K5ZQ1", &[2], "ttyUSB0");
    let cp210x = UsbSerialAdapter::cp210x("0001", &[3], "ttyUSB1");
    let ch340 = UsbSerialAdapter::ch340(&[1, 4], "ttyUSB2");
    watch.testbed.add(&ftdi).unwrap();
    watch.testbed.add(&cp210x).unwrap();
    let p = until(&["usb:0403:6001:A10K5ZQ1"]);
    let shown = p[0].to_string();
    assert!(shown.contains("/dev/ttyUSB0"), "{shown}");
    watch.testbed.add(&ch340).unwrap();
    until(&["usb:0403:6001:A10K5ZQ1", "usb:1a86:7523@1-1.4"]);
    watch.testbed.remove(&ftdi).unwrap();
    until(&["usb:1a86:7523@1-1.4"]);
    watch.testbed.remove(&ch340).unwrap();
    until(&[]);
}
