//! The controller's metrics, served on `/metrics`.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabels {
    namespace: String,
    configuration: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

/// Counters of one controller replica.
pub struct Metrics {
    registry: Registry,
    leader: Gauge,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    brokers_created: Counter,
    brokers_removed: Counter,
    brokers: Family<BrokerLabels, Gauge>,
    /// The Configurations that have broker series.
    with_brokers: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dowser_controller");
        let leader = Gauge::default();
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let brokers_created = Counter::default();
        let brokers_removed = Counter::default();
        let brokers = Family::<BrokerLabels, Gauge>::default();
        // Counters get `_total` appended: `dowser_controller_reconciles_total` and so on.
        registry.register("leader", "Whether this replica leads", leader.clone());
        registry.register(
            "reconciles",
            "Configurations reconciled",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by failed step",
            errors.clone(),
        );
        registry.register(
            "brokers_created",
            "Broker pods created",
            brokers_created.clone(),
        );
        registry.register(
            "brokers_removed",
            "Broker pods removed or replaced",
            brokers_removed.clone(),
        );
        registry.register(
            "brokers",
            "Broker pods of a Configuration, wanted and running (state), as its last reconcile of this leader saw them",
            brokers.clone(),
        );
        // Every error series from the start, at 0.
        for error in Error::LABELS {
            drop(errors.get_or_create(&ErrorLabels { error }));
        }
        Self {
            registry,
            leader,
            reconciles,
            errors,
            brokers_created,
            brokers_removed,
            brokers,
            with_brokers: Default::default(),
        }
    }
}

impl Metrics {
    /// The Prometheus text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Broker pods of a Configuration, wanted and running.
    pub fn brokers(&self, namespace: &str, configuration: &str, wanted: usize, running: usize) {
        for (state, n) in [("wanted", wanted), ("running", running)] {
            let labels = BrokerLabels {
                namespace: namespace.to_string(),
                configuration: configuration.to_string(),
                state,
            };
            self.brokers.get_or_create(&labels).set(n as i64);
        }
        self.with_brokers
            .lock()
            .expect("broker series lock")
            .insert((namespace.to_string(), configuration.to_string()));
    }

    /// Removes the broker series of every Configuration for which `exists` is false.
    pub fn forget_brokers_unless(&self, exists: impl Fn(&str, &str) -> bool) {
        let gone: Vec<(String, String)> = self
            .with_brokers
            .lock()
            .expect("broker series lock")
            .iter()
            .filter(|(ns, name)| !exists(ns, name))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.forget_brokers(&ns, &name);
        }
    }

    /// A Configuration gone: its broker series go too.
    pub fn forget_brokers(&self, namespace: &str, configuration: &str) {
        self.with_brokers
            .lock()
            .expect("broker series lock")
            .remove(&(namespace.to_string(), configuration.to_string()));
        for state in ["wanted", "running"] {
            self.brokers.remove(&BrokerLabels {
                namespace: namespace.to_string(),
                configuration: configuration.to_string(),
                state,
            });
        }
    }

    pub fn set_leader(&self, leads: bool) {
        self.leader.set(i64::from(leads));
    }

    pub fn reconciled(&self) {
        self.reconciles.inc();
    }

    pub fn failed(&self, error: &Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: error.metric_label(),
            })
            .inc();
    }

    pub fn broker_created(&self) {
        self.brokers_created.inc();
    }

    pub fn broker_removed(&self) {
        self.brokers_removed.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_those_that_dashboards_scrape() {
        let m = Metrics::default();
        m.set_leader(true);
        m.reconciled();
        m.broker_created();
        m.failed(&Error::Status(kube::Error::Api(
            kube::core::Status::failure("x", "y").boxed(),
        )));
        let text = m.render();
        for line in [
            "dowser_controller_leader 1\n",
            "dowser_controller_reconciles_total 1\n",
            "dowser_controller_brokers_created_total 1\n",
            "dowser_controller_brokers_removed_total 0\n",
            "dowser_controller_reconcile_errors_total{error=\"status\"} 1\n",
            "dowser_controller_reconcile_errors_total{error=\"read\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }
}
