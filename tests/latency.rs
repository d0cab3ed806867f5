//! Part of `scripts/bench`, not of the test suite (`test = false` in Cargo.toml): how long
//! from a USB serial adapter being plugged or unplugged (umockdev) and a BLE device appearing
//! in or being forgotten by BlueZ (python-dbusmock on a private bus) to
//! `dowser discover --watch` printing the snapshot that shows it.
//! With `--cluster` (KUBECONFIG of a running control plane with the CRDs, DOWSER_BIN,
//! DOWSER_FAKE_KUBELET), also end to end: a BLE device appears in BlueZ → its Instance
//! exists in the API server, made by a `dowser agent` of a fake node.
//! Run: `cargo test --test latency -- [--cluster] [--rows FILE] [--samples FILE]`; prints
//! Markdown table rows. `--samples` also writes every measurement, one a line: the event, a
//! tab, milliseconds (scripts/plot-latency draws them).

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

/// The `dowser` to measure: DOWSER_BIN (the benchmark's release build) or this build's.
fn dowser() -> PathBuf {
    std::env::var_os("DOWSER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_dowser").into())
}

/// Every measurement of every event, in the order measured.
#[derive(Default)]
struct Samples(Vec<(&'static str, Duration)>);

impl Samples {
    fn add(&mut self, event: &'static str, measured: &[Duration]) {
        self.0.extend(measured.iter().map(|d| (event, *d)));
    }

    /// `event<TAB>ms` lines under a header.
    fn tsv(&self) -> String {
        let mut text = String::from("event\tms\n");
        for (event, d) in &self.0 {
            text.push_str(&format!("{event}\t{:.3}\n", d.as_secs_f64() * 1000.0));
        }
        text
    }
}

/// p50 / p95 in milliseconds.
fn p50_p95(v: &mut [Duration]) -> String {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
    format!("{:.0} / {:.0}", at(0.5), at(0.95))
}

fn serial(dir: &Path, samples: &mut Samples) -> Vec<String> {
    let mut bed = Bed::start();
    bed.add(&umockdev::onboard_uart());
    let watch = Watch::start_bin(
        &dowser(),
        &config(dir, "usb-serial", "{serial: {}}"),
        &bed.env(),
    );
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
    samples.add("USB serial plugged → snapshot", &plugged);
    samples.add("USB serial unplugged → snapshot", &unplugged);
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

fn ble(dir: &Path, samples: &mut Samples) -> Vec<String> {
    let mut bluez = Bluez::with_adapter();
    let watch = Watch::start_bin(
        &dowser(),
        &config(dir, "ble-sensors", "{ble: {}}"),
        &bluez.env(),
    );
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
    samples.add("BLE heard → snapshot", &heard);
    samples.add("BLE forgotten → snapshot", &forgotten);
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

struct Proc(std::process::Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (run scripts/bench)"))
}

/// BLE device appears in BlueZ → Instance exists; forgotten → Instance gone (grace 1 s).
fn ble_end_to_end(dir: &Path, samples: &mut Samples) -> Vec<String> {
    use dowser::crd::Instance;
    use kube::{Api, Client, api::ListParams};
    use std::process::Command;

    const CONFIG: &str = "ble-e2e";
    let node = dir.join("ble-node");
    std::fs::create_dir_all(&node).unwrap();
    let _kubelet = Proc(
        Command::new(env("DOWSER_FAKE_KUBELET"))
            .args(["--kubeconfig", &env("KUBECONFIG"), "--node-name", "ble-1"])
            .arg("--root-dir")
            .arg(&node)
            .stderr(std::fs::File::create(dir.join("ble-kubelet.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let path = config(dir, CONFIG, "{ble: {}}\n  offlineGracePeriodSeconds: 1");
    let applied = Command::new(format!("{}/kubectl", env("DOWSER_K8S_BIN")))
        .args(["apply", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(applied.status.success(), "{applied:?}");
    let mut bluez = Bluez::with_adapter();
    while !node.join("device-plugins/kubelet.sock").exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _agent = Proc(
        Command::new(env("DOWSER_BIN"))
            .args(["agent", "--device-plugin-dir"])
            .arg(node.join("device-plugins"))
            .arg("--pod-resources-socket")
            .arg(node.join("pod-resources/kubelet.sock"))
            .args(["--health-addr", "127.0.0.1:0"])
            .arg("--handlers-dir")
            .arg(node.join("handlers"))
            .envs(bluez.env())
            .env("NODE_NAME", "ble-1")
            .env("DOWSER_LOG", "warn")
            .stderr(std::fs::File::create(dir.join("ble-agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(Client::try_default()).unwrap();
    let instances: Api<Instance> = Api::namespaced(client, "default");
    let listed =
        |instances: &Api<Instance>| -> Vec<String> {
            runtime
                .block_on(instances.list(
                    &ListParams::default().labels(&format!("dowser.dev/configuration={CONFIG}")),
                ))
                .map(|l| l.items.into_iter().map(|i| i.spec.device_id).collect())
                .unwrap_or_default()
        };
    // The agent is up and watching when a first device's Instance appears.
    bluez.appear("C0:FF:EE:00:02:FF", json!({"name": "ENV", "rssi": -60}));
    let t = std::time::Instant::now();
    while listed(&instances).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the agent made no Instance"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    bluez.forget("C0:FF:EE:00:02:FF");
    let (mut appeared, mut gone) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let address = format!("C0:FF:EE:00:02:{i:02X}");
        while !listed(&instances).is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Devices appear at any moment, not in step with anything of the agent's.
        std::thread::sleep(Duration::from_millis((i as u64 * 379) % 1000));
        let t = std::time::Instant::now();
        bluez.appear(&address, json!({"name": "ENV", "rssi": -60}));
        while !listed(&instances).contains(&address) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "run {i}: no Instance"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        appeared.push(t.elapsed());
        let t = std::time::Instant::now();
        bluez.forget(&address);
        while listed(&instances).contains(&address) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "run {i}: Instance stayed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        gone.push(t.elapsed());
    }
    samples.add("BLE heard → Instance exists", &appeared);
    samples.add("BLE forgotten → Instance deleted (grace 1 s)", &gone);
    vec![
        format!(
            "| BLE device heard by BlueZ → Instance exists in the API server, p50 / p95 of {RUNS} (ms; event-driven, budget p50 500) | {} | - | - |",
            p50_p95(&mut appeared)
        ),
        format!(
            "| BLE device forgotten → Instance deleted, p50 / p95 of {RUNS} (ms; offlineGracePeriodSeconds 1) | {} | - | - |",
            p50_p95(&mut gone)
        ),
    ]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut rows_file, mut samples_file, mut cluster) = (None, None, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rows" => rows_file = args.next(),
            "--samples" => samples_file = args.next(),
            "--cluster" => cluster = true,
            other => panic!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut samples = Samples::default();
    let mut rows = serial(dir.path(), &mut samples);
    rows.extend(ble(dir.path(), &mut samples));
    if cluster {
        rows.extend(ble_end_to_end(dir.path(), &mut samples));
    }
    let text = rows.join("\n") + "\n";
    print!("{text}");
    if let Some(file) = rows_file {
        std::fs::write(file, text).unwrap();
    }
    if let Some(file) = samples_file {
        std::fs::write(file, samples.tsv()).unwrap();
    }
}
