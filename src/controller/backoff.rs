//! Failed broker pods are replaced after a wait that doubles with each failure of the same
//! pod: 5 s, 10 s, 20 s, 40 s, 80 s, then 160 s. Pure: the caller says what time it is.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// A broker pod: namespace and name.
pub type PodKey = (String, String);

/// Failures of broker pods: how many, and until when each may not be replaced.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: HashMap<PodKey, (u32, Instant)>,
}

/// The wait after the `n`th failure (`n` ≥ 1).
fn wait_after(n: u32) -> Duration {
    Duration::from_secs(5 * 2u64.saturating_pow(n.clamp(1, 6) - 1)).min(Duration::from_secs(300))
}

impl Backoff {
    /// How long the pod will wait if it fails now.
    pub fn next_wait(&self, key: &PodKey) -> Duration {
        wait_after(self.failures.get(key).map_or(0, |(n, _)| *n) + 1)
    }

    /// Records a failure at `now`; returns how long to wait before replacing the broker.
    pub fn failed(&mut self, key: PodKey, now: Instant) -> Duration {
        let entry = self.failures.entry(key).or_insert((0, now));
        entry.0 += 1;
        let wait = wait_after(entry.0);
        entry.1 = now + wait;
        wait
    }

    /// How long the pod must still wait at `now`, if at all.
    pub fn wait_left(&self, key: &PodKey, now: Instant) -> Option<Duration> {
        self.failures
            .get(key)
            .and_then(|(_, until)| until.checked_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_doubles_the_wait_up_to_160_seconds() {
        let key: PodKey = ("ns".into(), "plc-0".into());
        let mut b = Backoff::default();
        let t0 = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..8 {
            let planned = b.next_wait(&key);
            let recorded = b.failed(key.clone(), t0);
            assert_eq!(planned, recorded, "the planned wait is the one recorded");
            waits.push(recorded.as_secs());
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 160, 160]);
    }

    #[test]
    fn the_wait_runs_out() {
        let key: PodKey = ("ns".into(), "plc-0".into());
        let mut b = Backoff::default();
        let t0 = Instant::now();
        assert_eq!(b.wait_left(&key, t0), None, "never failed");
        b.failed(key.clone(), t0);
        assert_eq!(
            b.wait_left(&key, t0 + Duration::from_secs(2)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(b.wait_left(&key, t0 + Duration::from_secs(6)), None);
        let other: PodKey = ("ns".into(), "plc-1".into());
        assert_eq!(b.wait_left(&other, t0), None, "per pod");
    }
}
