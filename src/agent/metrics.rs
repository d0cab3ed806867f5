//! Prometheus metrics of the agent (served by [`crate::telemetry`]).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

#[derive(Default)]
pub struct Metrics {
    devices: Mutex<BTreeMap<(String, String), usize>>,
    rounds: Mutex<BTreeMap<(String, String), f64>>,
    scans: AtomicU64,
    errors: AtomicU64,
    pub ready: Arc<AtomicBool>,
}

impl Metrics {
    pub fn scanned(
        &self,
        namespace: &str,
        name: &str,
        devices: usize,
        round: Option<std::time::Duration>,
    ) {
        self.scans.fetch_add(1, Ordering::Relaxed);
        let key = (namespace.to_string(), name.to_string());
        if let Some(took) = round {
            self.rounds
                .lock()
                .expect("metrics lock")
                .insert(key.clone(), took.as_secs_f64());
        }
        self.devices
            .lock()
            .expect("metrics lock")
            .insert(key, devices);
    }

    pub fn discovery_error(&self, _namespace: &str, _name: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        self.devices.lock().expect("metrics lock").remove(&key);
        self.rounds.lock().expect("metrics lock").remove(&key);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP dowser_agent_devices Devices this node sees, by Configuration."
        );
        let _ = writeln!(out, "# TYPE dowser_agent_devices gauge");
        for ((ns, name), n) in self.devices.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "dowser_agent_devices{{namespace=\"{ns}\",configuration=\"{name}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP dowser_agent_discovery_round_seconds Duration of the last discovery round, by Configuration."
        );
        let _ = writeln!(out, "# TYPE dowser_agent_discovery_round_seconds gauge");
        for ((ns, name), s) in self.rounds.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "dowser_agent_discovery_round_seconds{{namespace=\"{ns}\",configuration=\"{name}\"}} {s}"
            );
        }
        let counters = [
            (
                "dowser_agent_discovery_rounds_total",
                "Discovery rounds completed.",
                self.scans.load(Ordering::Relaxed),
            ),
            (
                "dowser_agent_discovery_errors_total",
                "Discovery rounds that failed.",
                self.errors.load(Ordering::Relaxed),
            ),
            (
                "dowser_agent_api_writes_total",
                "Writes to the Kubernetes API.",
                super::instances::WRITES.load(Ordering::Relaxed),
            ),
            (
                "dowser_agent_allocations_total",
                "Successful device-plugin allocations.",
                super::plugins::ALLOCATIONS.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out
    }
}
