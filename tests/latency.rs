//! Part of `tests/bench.sh`, not of the test suite (`test = false` in Cargo.toml): how long
//! from a USB serial adapter being plugged or unplugged (umockdev) and a BLE device appearing
//! in or being forgotten by BlueZ (python-dbusmock on a private bus) to
//! `dowser discover --watch` printing the snapshot that shows it.
//! Run: `cargo test --test latency -- [--rows FILE]`; prints Markdown table rows.

mod doubles;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use doubles::{
    bluez::Bluez,
    umockdev::{self, Bed, FTDI_FT232R},
    watch::Watch,
};
use serde_json::json;

const RUNS: usize = 20;
const FTDI_ID: &str = "0403:6001:A10K3XYZ";

fn config(dir: &Path, name: &str, discovery: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: dowser.dev/v1alpha1\nkind: Configuration\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  discovery: {discovery}\n"
        ),
    )
    .unwrap();
    path
}

/// p50 / p95 in milliseconds.
fn p50_p95(v: &mut [Duration]) -> String {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
    format!("{:.0} / {:.0}", at(0.5), at(0.95))
}

fn serial(dir: &Path) -> Vec<String> {
    let mut bed = Bed::start();
    bed.add(&umockdev::onboard_uart());
    let watch = Watch::start(&config(dir, "usb-serial", "{serial: {}}"), &bed.env());
    watch.until_ids(20, &[]);
    let (mut plugged, mut unplugged) = (Vec::new(), Vec::new());
    // umockdev cannot reuse a device node name, so each plug gets a new one.
    for i in 0..RUNS {
        let t = std::time::Instant::now();
        bed.plug(&FTDI_FT232R, "1-2", &format!("ttyUSB{i}"));
        plugged.push(watch.until_ids(20, &[FTDI_ID]).at - t);
        let t = std::time::Instant::now();
        bed.unplug("1-2");
        unplugged.push(watch.until_ids(20, &[]).at - t);
    }
    vec![
        format!(
            "| USB serial adapter plugged → in the snapshot, p50 / p95 of {RUNS} (ms; umockdev uevents) | {} | - | - |",
            p50_p95(&mut plugged)
        ),
        format!(
            "| USB serial adapter unplugged → gone from the snapshot, p50 / p95 of {RUNS} (ms) | {} | - | - |",
            p50_p95(&mut unplugged)
        ),
    ]
}

fn ble(dir: &Path) -> Vec<String> {
    let mut bluez = Bluez::with_adapter();
    let watch = Watch::start(&config(dir, "ble-sensors", "{ble: {}}"), &bluez.env());
    watch.until_ids(20, &[]);
    let (mut heard, mut forgotten) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let address = format!("C0:FF:EE:00:01:{i:02X}");
        let t = std::time::Instant::now();
        bluez.appear(&address, json!({"name": "ENV", "rssi": -60}));
        heard.push(watch.until_ids(20, &[&address]).at - t);
        let t = std::time::Instant::now();
        bluez.forget(&address);
        forgotten.push(watch.until_ids(20, &[]).at - t);
    }
    vec![
        format!(
            "| BLE device heard by BlueZ → in the snapshot, p50 / p95 of {RUNS} (ms; python-dbusmock bluez5) | {} | - | - |",
            p50_p95(&mut heard)
        ),
        format!(
            "| BLE device forgotten by BlueZ → gone from the snapshot, p50 / p95 of {RUNS} (ms) | {} | - | - |",
            p50_p95(&mut forgotten)
        ),
    ]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut rows_file = None;
    while let Some(a) = args.next() {
        if a == "--rows" {
            rows_file = args.next();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rows = serial(dir.path());
    rows.extend(ble(dir.path()));
    let text = rows.join("\n") + "\n";
    print!("{text}");
    if let Some(file) = rows_file {
        std::fs::write(file, text).unwrap();
    }
}
