//! The serial handler in a umockdev testbed: a fake sysfs and udev database holding
//! FTDI, CH340 and CP210x adapters shaped as the kernel and udev describe them, plugged in
//! and pulled out while the handler runs. Each test re-runs itself inside a fresh testbed.

use std::time::{Duration, Instant};

use dowser_discovery_api::{DiscoveryHandler, Snapshot, SnapshotStream, details::SerialDetails};
use dowser_serial::SerialHandler;
use dowser_sim::umockdev::{self, Testbed, UsbSerialAdapter};
use futures::StreamExt;

const EVENTUALLY: Duration = Duration::from_secs(20);

fn block_on(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn discover(json: serde_json::Value) -> SnapshotStream {
    let details: SerialDetails = serde_json::from_value(json).expect("valid serial details");
    SerialHandler.discover(details, Default::default())
}

fn ids(s: &Snapshot) -> Vec<&str> {
    s.devices().iter().map(|d| d.id.as_str()).collect()
}

/// Reads snapshots until one lists exactly `want`; fails with the last one seen.
async fn until(stream: &mut SnapshotStream, want: &[&str]) -> Snapshot {
    let deadline = Instant::now() + EVENTUALLY;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(s))) if ids(&s) == want => return s,
            Ok(Some(Ok(s))) => last = Some(s),
            Ok(Some(Err(e))) => panic!("discovery failed while waiting for {want:?}: {e}"),
            Ok(None) => panic!("the snapshot stream ended while waiting for {want:?}"),
            Err(_) => panic!("no snapshot with {want:?} within {EVENTUALLY:?}; last: {last:#?}"),
        }
    }
}

const FTDI: &str = "usb:0403:6001:A10K5ZQ1";
const CH340: &str = "usb:1a86:7523@1-1.3";
const CP210X: &str = "usb:10c4:ea60:0001";

fn fleet() -> Vec<UsbSerialAdapter> {
    vec![
        UsbSerialAdapter::ftdi("A10K5ZQ1", &[2], "ttyUSB0"),
        UsbSerialAdapter::ch340(&[1, 3], "ttyUSB1"),
        UsbSerialAdapter::cp210x("0001", &[4], "ttyUSB2"),
    ]
}

#[test]
fn adapters_are_found_with_their_details_and_filtered() {
    umockdev::run("adapters_are_found_with_their_details_and_filtered", || {
        block_on(async {
            let mut bed = Testbed::connect().unwrap();
            for a in fleet() {
                bed.add(&a).unwrap();
            }
            let mut all = discover(serde_json::json!({}));
            let s = until(&mut all, &[FTDI, CP210X, CH340]).await;
            let ftdi = &s.devices()[0];
            assert_eq!(ftdi.properties["SERIAL_PORT"], "/dev/ttyUSB0");
            assert_eq!(ftdi.properties["SERIAL_VID"], "0403");
            assert_eq!(ftdi.properties["SERIAL_PID"], "6001");
            assert_eq!(ftdi.properties["SERIAL_SERIAL_NUMBER"], "A10K5ZQ1");
            assert_eq!(ftdi.properties["SERIAL_MANUFACTURER"], "FTDI");
            assert_eq!(ftdi.properties["SERIAL_PRODUCT"], "FT232R USB UART");
            assert_eq!(ftdi.properties["SERIAL_USB_PORT"], "1-2");
            assert_eq!(ftdi.device_specs[0].host_path, "/dev/ttyUSB0");
            assert_eq!(ftdi.device_specs[0].container_path, "/dev/ttyUSB0");
            let ch340 = &s.devices()[2];
            assert_eq!(ch340.properties["SERIAL_PORT"], "/dev/ttyUSB1");
            assert_eq!(ch340.properties["SERIAL_USB_PORT"], "1-1.3");
            assert!(!ch340.properties.contains_key("SERIAL_SERIAL_NUMBER"));
            assert_eq!(
                s.devices()[1].properties["SERIAL_PRODUCT"],
                "CP2102 USB to UART Bridge Controller"
            );

            for (filter, want) in [
                (
                    serde_json::json!({"vendorIds": ["0403", "10c4"]}),
                    vec![FTDI, CP210X],
                ),
                (serde_json::json!({"productIds": ["7523"]}), vec![CH340]),
                (
                    serde_json::json!({"serialNumbers": {"include": ["A10.*"]}}),
                    vec![FTDI],
                ),
                (
                    serde_json::json!({"manufacturers": {"include": ["Silicon Labs"]}}),
                    vec![CP210X],
                ),
                (
                    serde_json::json!({"products": {"exclude": [".*UART.*"]}}),
                    vec![CH340],
                ),
                (
                    serde_json::json!({"portNames": {"include": ["/dev/ttyUSB[01]"]}}),
                    vec![FTDI, CH340],
                ),
            ] {
                let mut stream = discover(filter);
                until(&mut stream, &want).await;
            }
        })
    });
}

#[test]
fn plugging_in_pulling_out_and_re_enumeration_are_noticed() {
    umockdev::run(
        "plugging_in_pulling_out_and_re_enumeration_are_noticed",
        || {
            block_on(async {
                let mut bed = Testbed::connect().unwrap();
                let mut stream = discover(serde_json::json!({}));
                until(&mut stream, &[]).await;

                // Appearing: measured from the fake uevent's return to the snapshot.
                let ftdi = UsbSerialAdapter::ftdi("A10K5ZQ1", &[2], "ttyUSB0");
                bed.add(&ftdi).unwrap();
                let plugged = Instant::now();
                until(&mut stream, &[FTDI]).await;
                eprintln!("adapter plugged in -> snapshot: {:?}", plugged.elapsed());

                let ch340 = UsbSerialAdapter::ch340(&[1, 3], "ttyUSB1");
                bed.add(&ch340).unwrap();
                let s = until(&mut stream, &[FTDI, CH340]).await;
                assert_eq!(s.devices()[1].properties["SERIAL_PORT"], "/dev/ttyUSB1");

                // The CH340 has no serial number: plugged into the same USB port again and
                // given another device node, it is still the same device.
                bed.remove(&ch340).unwrap();
                until(&mut stream, &[FTDI]).await;
                let again = UsbSerialAdapter::ch340(&[1, 3], "ttyUSB4");
                bed.add(&again).unwrap();
                let s = until(&mut stream, &[FTDI, CH340]).await;
                assert_eq!(s.devices()[1].properties["SERIAL_PORT"], "/dev/ttyUSB4");
                assert_eq!(s.devices()[1].device_specs[0].host_path, "/dev/ttyUSB4");

                // The FTDI has a serial number: in another USB port and under another
                // device node, it is still the same device. (umockdev never gives a tty
                // name to a second device, so the names here are all new.)
                bed.remove(&ftdi).unwrap();
                until(&mut stream, &[CH340]).await;
                let moved = UsbSerialAdapter::ftdi("A10K5ZQ1", &[5], "ttyUSB5");
                bed.add(&moved).unwrap();
                let s = until(&mut stream, &[FTDI, CH340]).await;
                assert_eq!(s.devices()[0].properties["SERIAL_PORT"], "/dev/ttyUSB5");
                assert_eq!(s.devices()[0].properties["SERIAL_USB_PORT"], "1-5");

                bed.remove(&moved).unwrap();
                bed.remove(&again).unwrap();
                until(&mut stream, &[]).await;
            })
        },
    );
}
