//! `dowser discover --watch` with an mDNS Configuration, as a process, in a private network
//! namespace: services of dowser-sim and of an independent python-zeroconf responder
//! appear in its output and disappear from it.

use std::{
    io::BufReader,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use dowser_sim::{
    mdns::{RunningMdns, ServiceConfig},
    netns,
    zeroconf::{ZeroconfResponder, ZeroconfService},
};
use serde_json::Value;

const EVENTUALLY: Duration = Duration::from_secs(20);

const CONFIG: &str = r#"
apiVersion: dowser.dev/v1alpha1
kind: Configuration
metadata: {name: announced, namespace: plant}
spec:
  discovery:
    mdns:
      serviceTypes: ["_opcua-tcp._tcp.local."]
      txtRecords:
        - key: vendor
          include: ["Acme.*"]
"#;

struct Watch {
    child: Child,
    /// The device ids of each printed snapshot, in order.
    printed: mpsc::Receiver<Vec<String>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watch {
    fn start(file: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dowser"))
            .args(["discover", "--watch", "-o", "json", "-f", file])
            .env_remove("NODE_NAME")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run dowser discover --watch");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, printed) = mpsc::channel();
        std::thread::spawn(move || {
            // Each snapshot is printed as one JSON array of Instance previews.
            for value in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
                let Ok(Value::Array(previews)) = value else {
                    return;
                };
                let ids = previews
                    .iter()
                    .map(|p| p["deviceId"].as_str().unwrap_or_default().to_string())
                    .collect();
                if tx.send(ids).is_err() {
                    return;
                }
            }
        });
        Self { child, printed }
    }

    /// Waits until a printed snapshot lists exactly `ids`.
    fn until(&self, ids: &[&str]) {
        let mut last = None;
        loop {
            match self.printed.recv_timeout(EVENTUALLY) {
                Ok(printed) if printed == ids => return,
                Ok(printed) => last = Some(printed),
                Err(_) => panic!(
                    "dowser discover --watch did not print {ids:?} within {EVENTUALLY:?}; last printed: {last:?}"
                ),
            }
        }
    }
}

#[test]
fn discover_watch_shows_mdns_services_appear_and_disappear() {
    netns::run(
        "discover_watch_shows_mdns_services_appear_and_disappear",
        || {
            let sim = RunningMdns::start(&[
                ServiceConfig::new("Press 7", "_opcua-tcp._tcp.local.", 4840)
                    .with_txt("vendor", "Acme Automation"),
                ServiceConfig::new("Press 8", "_opcua-tcp._tcp.local.", 4841)
                    .with_txt("vendor", "Other"),
            ])
            .unwrap();
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("announced.yaml");
            std::fs::write(&file, CONFIG).unwrap();
            let watch = Watch::start(file.to_str().unwrap());
            let press7 = "Press 7._opcua-tcp._tcp.local.";
            let press9 = "Press 9._opcua-tcp._tcp.local.";
            watch.until(&[press7]);

            let mut peer = ZeroconfResponder::start().unwrap();
            let zeroconf = ZeroconfService::new("Press 9", "_opcua-tcp._tcp.local.", 4849)
                .with_txt("vendor", "Acme Presses");
            peer.register(&zeroconf).unwrap();
            watch.until(&[press7, press9]);

            sim.withdraw("Press 7").unwrap();
            watch.until(&[press9]);
            peer.unregister(&zeroconf).unwrap();
            watch.until(&[]);
        },
    );
}
