//! Prometheus metrics of the agent (served by [`crate::telemetry`]).

use std::sync::{Arc, atomic::AtomicBool};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// The Configuration a sample is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfigurationLabels {
    namespace: String,
    configuration: String,
}

impl ConfigurationLabels {
    fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            configuration: name.to_string(),
        }
    }
}

/// Every metric of the agent, and whether it is ready.
pub struct Metrics {
    registry: Registry,
    devices: Family<ConfigurationLabels, Gauge>,
    rounds: Family<ConfigurationLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    scans: Counter,
    errors: Counter,
    writes: Counter,
    allocations: Counter,
    cached_instances: Gauge,
    pub ready: Arc<AtomicBool>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let devices = Family::<ConfigurationLabels, Gauge>::default();
        let rounds =
            Family::<ConfigurationLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let scans = Counter::default();
        let errors = Counter::default();
        let writes = Counter::default();
        let allocations = Counter::default();
        let cached_instances = Gauge::default();
        registry.register(
            "dowser_agent_devices",
            "Devices this node sees, by Configuration",
            devices.clone(),
        );
        registry.register(
            "dowser_agent_discovery_round_seconds",
            "Duration of the last discovery round, by Configuration",
            rounds.clone(),
        );
        // Counters are named without `_total`: the encoder adds it to the sample.
        registry.register(
            "dowser_agent_discovery_rounds",
            "Discovery rounds completed",
            scans.clone(),
        );
        registry.register(
            "dowser_agent_discovery_errors",
            "Discovery rounds that failed",
            errors.clone(),
        );
        registry.register(
            "dowser_agent_api_writes",
            "Writes to the Kubernetes API",
            writes.clone(),
        );
        registry.register(
            "dowser_agent_allocations",
            "Successful device-plugin allocations",
            allocations.clone(),
        );
        registry.register(
            "dowser_agent_cached_instances",
            "Instances in the agent's cache: those this node takes part in",
            cached_instances.clone(),
        );
        Self {
            registry,
            devices,
            rounds,
            scans,
            errors,
            writes,
            allocations,
            cached_instances,
            ready: Arc::default(),
        }
    }
}

impl Metrics {
    /// A discovery round of a Configuration ended with `devices` devices (`round`: how long
    /// a polled handler's round took).
    pub fn scanned(
        &self,
        namespace: &str,
        name: &str,
        devices: usize,
        round: Option<std::time::Duration>,
    ) {
        self.scans.inc();
        let labels = ConfigurationLabels::new(namespace, name);
        if let Some(took) = round {
            self.rounds.get_or_create(&labels).set(took.as_secs_f64());
        }
        self.devices
            .get_or_create(&labels)
            .set(i64::try_from(devices).unwrap_or(i64::MAX));
    }

    /// A discovery round failed.
    pub fn discovery_error(&self) {
        self.errors.inc();
    }

    /// A write to the Kubernetes API went through.
    pub fn wrote(&self) {
        self.writes.inc();
    }

    /// The kubelet was given a device.
    pub fn allocated(&self) {
        self.allocations.inc();
    }

    /// The agent's cache holds `n` Instances.
    pub fn cached_instances(&self, n: usize) {
        self.cached_instances
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Drops the samples of a Configuration this node no longer discovers with.
    pub fn forget(&self, namespace: &str, name: &str) {
        let labels = ConfigurationLabels::new(namespace, name);
        self.devices.remove(&labels);
        self.rounds.remove(&labels);
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("metrics encode into a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_keep_their_names_and_labels() {
        let m = Metrics::default();
        m.scanned(
            "default",
            "line3",
            2,
            Some(std::time::Duration::from_millis(250)),
        );
        m.wrote();
        m.wrote();
        m.allocated();
        m.cached_instances(3);
        let text = m.render();
        for line in [
            "dowser_agent_devices{namespace=\"default\",configuration=\"line3\"} 2",
            "dowser_agent_discovery_round_seconds{namespace=\"default\",configuration=\"line3\"} 0.25",
            "dowser_agent_discovery_rounds_total 1",
            "dowser_agent_discovery_errors_total 0",
            "dowser_agent_api_writes_total 2",
            "dowser_agent_allocations_total 1",
            "dowser_agent_cached_instances 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        m.forget("default", "line3");
        assert!(!m.render().contains("line3"));
    }
}
