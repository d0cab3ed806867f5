//! The controller's part of a Configuration's status: the `Accepted` and `Ready` conditions
//! and the counts. Written by server-side apply, and only when it changed.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::Api;

use super::MANAGER;
use crate::{
    apiserver,
    crd::{Configuration, ConfigurationStatus},
};

/// A condition that keeps its `lastTransitionTime` while its status stays the same.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    old: &[Condition],
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// Whether writing `new` would change nothing the controller owns.
pub fn unchanged(old: &ConfigurationStatus, new: &ConfigurationStatus) -> bool {
    old.observed_generation == new.observed_generation
        && old.instances == new.instances
        && old.brokers == new.brokers
        && old.pending_approvals == new.pending_approvals
        && old.resource == new.resource
        && new.conditions.iter().all(|c| {
            old.conditions.iter().any(|o| {
                o.type_ == c.type_
                    && o.status == c.status
                    && o.reason == c.reason
                    && o.message == c.message
                    && o.observed_generation == c.observed_generation
            })
        })
}

/// Writes the controller's part of the status (conditions and counts) when it changed.
/// `new.nodes` stays empty: each agent owns its own entry there.
pub async fn write(
    api: &Api<Configuration>,
    config: &Configuration,
    new: &ConfigurationStatus,
) -> Result<(), kube::Error> {
    let old = config.status.clone().unwrap_or_default();
    if unchanged(&old, new) {
        return Ok(());
    }
    debug_assert!(new.nodes.is_empty(), "the agents own status.nodes");
    let name = kube::ResourceExt::name_any(config);
    apiserver::apply_status(api, &name, MANAGER, true, new).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let first = condition("Ready", false, "NoDevices", "none", Some(1), &[], at(10));
        assert_eq!(first.last_transition_time, Time(at(10)));
        let same = condition(
            "Ready",
            false,
            "BrokersStarting",
            "0 of 1",
            Some(1),
            std::slice::from_ref(&first),
            at(20),
        );
        assert_eq!(same.last_transition_time, Time(at(10)), "still False");
        let flipped = condition(
            "Ready",
            true,
            "BrokersRunning",
            "1 of 1",
            Some(1),
            &[same],
            at(30),
        );
        assert_eq!(flipped.last_transition_time, Time(at(30)));
    }

    #[test]
    fn a_status_that_says_the_same_is_not_written_again() {
        let c = |reason: &str| condition("Ready", true, reason, "m", Some(2), &[], at(1));
        let status = |reason: &str, brokers| ConfigurationStatus {
            observed_generation: Some(2),
            conditions: vec![c(reason)],
            instances: Some(1),
            pending_approvals: None,
            brokers: Some(brokers),
            resource: Some("dowser.dev/default.plc".into()),
            nodes: vec![],
        };
        let old = status("BrokersRunning", 1);
        assert!(unchanged(&old, &status("BrokersRunning", 1)));
        assert!(!unchanged(&old, &status("JobsCreated", 1)), "a new reason");
        assert!(
            !unchanged(&old, &status("BrokersRunning", 2)),
            "a new count"
        );
        // Only the time of a condition differs: nothing to write.
        let mut later = status("BrokersRunning", 1);
        later.conditions[0].last_transition_time = Time(at(99));
        assert!(unchanged(&old, &later));
    }
}
