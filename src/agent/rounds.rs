//! When the counts of a discovery round go into the Configuration's status.
//!
//! Each round the handler reports what became of its targets (see
//! [`dowser_discovery_api::progress`]); `kubectl dowser why` shows them per node. Writing
//! them every round would write the status every interval on every node even when nothing a
//! user looks at changed (a flapping device changes the counts every round), so the counts
//! go out:
//!
//! - with any other change of the node's entry (it is applied whole: counts left out of an
//!   apply would be removed);
//! - after the first round each time discovery starts (a new spec or a changed Secret: the
//!   user who just changed a filter asks `why` next);
//! - otherwise at most every [`REFRESH`] while only the counts change.
//!
//! [`Rounds`] holds that decision, free of I/O.

use std::time::{Duration, Instant};

use dowser_discovery_api::progress::State;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::DiscoveryRound;

/// Least time between two writes of changed counts alone.
pub const REFRESH: Duration = Duration::from_secs(300);

/// The latest counts and what was written of them.
#[derive(Debug)]
pub struct Rounds {
    latest: Option<DiscoveryRound>,
    written: Option<(DiscoveryRound, Instant)>,
    /// No round of this start of discovery has been written yet.
    started: bool,
    /// `latest` is from a round of this start.
    counted: bool,
}

impl Rounds {
    /// The counts this node's entry holds (written before the agent restarted): kept in
    /// writes until a round says otherwise, so that a restart does not wipe them.
    pub fn resume(previous: Option<DiscoveryRound>, now: Instant) -> Self {
        Self {
            written: previous.clone().map(|p| (p, now)),
            latest: previous,
            started: true,
            counted: false,
        }
    }

    /// Discovery (re)starts: the counts of its first round are written at once.
    pub fn restarted(&mut self) {
        self.started = true;
        self.counted = false;
    }

    /// A round ended with these counts (`took`: how long, for handlers that work in rounds).
    /// `at` stays the time these counts were first seen while rounds give the same.
    pub fn observed(&mut self, state: &State, took: Option<Duration>, at: Time) {
        let mut round = DiscoveryRound::of(state, took, Some(at));
        if let Some(latest) = &self.latest
            && same_counts(latest, &round)
        {
            round.at = latest.at.clone();
        }
        self.latest = Some(round);
        self.counted = true;
    }

    /// Whether the counts alone call for a write now.
    pub fn due(&self, now: Instant) -> bool {
        let Some(latest) = &self.latest else {
            return false;
        };
        match &self.written {
            Some((written, _)) if same_counts(written, latest) => false,
            _ if self.started && self.counted => true,
            None => true,
            Some((_, at)) => now.saturating_duration_since(*at) >= REFRESH,
        }
    }

    /// The counts to put in a write of the node's entry, recorded as written.
    pub fn to_write(&mut self, now: Instant) -> Option<DiscoveryRound> {
        let latest = self.latest.clone()?;
        self.written = Some((latest.clone(), now));
        if self.counted {
            self.started = false;
        }
        Some(latest)
    }
}

/// The same counts, whenever and however fast the rounds ran.
fn same_counts(a: &DiscoveryRound, b: &DiscoveryRound) -> bool {
    let counts = |r: &DiscoveryRound| (r.tried, r.answered, r.found, r.failed, r.dropped.clone());
    counts(a) == counts(b)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn state(tried: u64, answered: u64, found: u64, dropped: &[(&'static str, u64)]) -> State {
        State {
            round: 1,
            total: tried,
            tried,
            answered,
            failed: answered - found - dropped.iter().map(|(_, n)| n).sum::<u64>(),
            dropped: dropped.iter().copied().collect::<BTreeMap<_, _>>(),
            found,
            elapsed: Duration::from_millis(1500),
            finished: true,
        }
    }

    fn now() -> Time {
        Time(Timestamp::now())
    }

    impl Rounds {
        fn tap_observed(mut self, s: &State) -> Self {
            self.observed(s, None, now());
            self
        }
    }

    #[test]
    fn the_first_round_of_each_start_is_written() {
        let t0 = Instant::now();
        let mut rounds = Rounds::resume(None, t0);
        assert!(!rounds.due(t0), "nothing counted yet");
        assert_eq!(rounds.to_write(t0), None);
        rounds.observed(&state(254, 3, 1, &[("vendorNames", 2)]), None, now());
        assert!(rounds.due(t0));
        let written = rounds.to_write(t0).unwrap();
        assert_eq!(
            (written.tried, written.answered, written.found),
            (254, 3, 1)
        );
        assert_eq!(written.failed, 0);
        assert_eq!(written.dropped["vendorNames"], 2);
        // The user changes a filter: discovery starts again, its first round goes out even
        // seconds later.
        rounds.restarted();
        rounds.observed(&state(254, 3, 3, &[]), None, now());
        assert!(rounds.due(t0 + Duration::from_secs(5)));
        rounds.to_write(t0 + Duration::from_secs(5));
        // ... but only when its counts differ from those written.
        rounds.restarted();
        rounds.observed(&state(254, 3, 3, &[]), None, now());
        assert!(!rounds.due(t0 + Duration::from_secs(6)));
    }

    #[test]
    fn a_restarted_agent_keeps_the_counts_it_wrote_until_its_first_round() {
        let t0 = Instant::now();
        let before = Rounds::resume(None, t0)
            .tap_observed(&state(4, 2, 2, &[]))
            .to_write(t0)
            .unwrap();
        let mut rounds = Rounds::resume(Some(before.clone()), t0);
        assert!(!rounds.due(t0));
        // The node's health is written before any round (the properties resolved): the
        // counts go with it, and the first round still counts as unwritten.
        assert_eq!(rounds.to_write(t0), Some(before));
        rounds.observed(&state(4, 1, 1, &[]), None, now());
        assert!(rounds.due(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn counts_that_keep_changing_are_written_at_most_every_refresh() {
        let t0 = Instant::now();
        let mut rounds = Rounds::resume(None, t0);
        rounds.observed(&state(10, 2, 2, &[]), None, now());
        rounds.to_write(t0);
        // A flapping device: every round differs.
        for (i, answered) in [1, 2, 1, 2].into_iter().enumerate() {
            rounds.observed(&state(10, answered, answered, &[]), None, now());
            let at = t0 + Duration::from_secs(10 * (i as u64 + 1));
            assert!(!rounds.due(at), "round {i}");
        }
        rounds.observed(&state(10, 1, 1, &[]), None, now());
        assert!(!rounds.due(t0 + REFRESH - Duration::from_secs(1)));
        assert!(rounds.due(t0 + REFRESH));
    }

    #[test]
    fn the_same_counts_are_never_written_again_whatever_the_time_and_duration() {
        let t0 = Instant::now();
        let mut rounds = Rounds::resume(None, t0);
        rounds.observed(
            &state(5, 1, 1, &[]),
            Some(Duration::from_millis(800)),
            now(),
        );
        let first = rounds.to_write(t0).unwrap();
        assert_eq!(first.duration_ms, Some(800));
        let later = Time(Timestamp::now() + std::time::Duration::from_secs(60));
        rounds.observed(
            &state(5, 1, 1, &[]),
            Some(Duration::from_millis(950)),
            later,
        );
        assert!(!rounds.due(t0 + REFRESH * 3));
        // Any other write of the entry carries the latest counts, with the time they were
        // first seen.
        let again = rounds.to_write(t0).unwrap();
        assert_eq!(again.duration_ms, Some(950));
        assert_eq!(again.at, first.at);
    }
}
