//! Why a reconcile failed. Each variant names the step that failed and has a label for
//! `dowser_controller_reconcile_errors_total{error=...}`; every one is retried.

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Listing what the plan is made from (Instances, broker Pods and Jobs, Services,
    /// Nodes).
    #[error("cannot list {what}: {source}")]
    Read {
        what: &'static str,
        source: kube::Error,
    },
    /// Removing nodes that are gone from an Instance, or the Instance itself.
    #[error("cannot forget the gone nodes of Instance {instance}: {source}")]
    Instance {
        instance: String,
        source: kube::Error,
    },
    /// Creating or removing a broker Pod or Job.
    #[error("cannot create or remove broker {broker}: {source}")]
    Broker { broker: String, source: kube::Error },
    /// Applying a Service.
    #[error("cannot apply Service {service}: {source}")]
    Service {
        service: String,
        source: kube::Error,
    },
    /// Writing the Configuration's status.
    #[error("cannot write the status: {0}")]
    Status(#[source] kube::Error),
}

impl Error {
    /// Every variant's metric label, so that each series exists from the start.
    pub const LABELS: [&'static str; 5] = ["read", "instance", "broker", "service", "status"];

    /// The value of the `error` label of the error counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Read { .. } => Self::LABELS[0],
            Error::Instance { .. } => Self::LABELS[1],
            Error::Broker { .. } => Self::LABELS[2],
            Error::Service { .. } => Self::LABELS[3],
            Error::Status(_) => Self::LABELS[4],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_has_its_own_label() {
        let api = || kube::Error::Api(kube::core::Status::failure("x", "y").boxed());
        let errors = [
            Error::Read {
                what: "Pods",
                source: api(),
            },
            Error::Instance {
                instance: "i".into(),
                source: api(),
            },
            Error::Broker {
                broker: "b".into(),
                source: api(),
            },
            Error::Service {
                service: "s".into(),
                source: api(),
            },
            Error::Status(api()),
        ];
        let labels: Vec<&str> = errors.iter().map(Error::metric_label).collect();
        assert_eq!(labels, Error::LABELS);
    }
}
