//! How far a discovery round has got, for whoever started the handler to show.
//!
//! A polled handler that sweeps many targets (a Modbus TCP /16 at the default connection rate
//! takes minutes) reports each round through the [`Progress`] of its [`Properties`]
//! ([`Properties::progress`]): [`Progress::round`] with the number of targets it is about to
//! try, then [`Round::target`] with the [`Verdict`] on each target as it is done: nothing
//! answered, it answered but could not be used, a filter of the details left it out, or it is
//! a device. Whoever starts discovery and wants to show it (`dowser discover` on a terminal)
//! gives the handler an enabled handle ([`Properties::with_progress`]) and reads
//! [`Progress::state`] whenever it draws; the agent reads the state of each finished round to
//! say in the Configuration's status why devices are or are not found on its node
//! (`kubectl dowser why`). Without an enabled handle reporting costs a branch. A handler that
//! reports nothing works as before: its rounds simply have no state.
//!
//! An event-driven handler has no rounds of its own: it reports each time it makes a
//! snapshot, judging every target it knows of at that moment (the services, advertisements
//! or ports it sees).
//!
//! The accounting is here and nowhere else; how it is drawn is the caller's business.
//!
//! [`Properties`]: crate::Properties
//! [`Properties::progress`]: crate::Properties::progress
//! [`Properties::with_progress`]: crate::Properties::with_progress

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// Where a handler reports the progress of its rounds: disabled (the default: reports are
/// dropped) or enabled ([`Progress::enabled`]: reports are counted and [`Progress::state`]
/// reads them). Clones share the counts.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<Mutex<Counts>>>);

/// The counts of the latest round.
#[derive(Debug)]
struct Counts {
    /// 1 for the first round, 0 before it.
    round: u64,
    total: u64,
    tried: u64,
    answered: u64,
    failed: u64,
    dropped: BTreeMap<&'static str, u64>,
    found: u64,
    started: Instant,
    finished: Option<Instant>,
}

impl Counts {
    fn new(round: u64, total: u64) -> Self {
        Self {
            round,
            total,
            tried: 0,
            answered: 0,
            failed: 0,
            dropped: BTreeMap::new(),
            found: 0,
            started: Instant::now(),
            finished: None,
        }
    }
}

/// What became of one target a round tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing answered: no listener, a timeout, no such unit, a line that cannot be opened.
    Silent,
    /// It answered but could not be used: not the protocol, an exception, a malformed or
    /// truncated answer, credentials refused.
    Failed,
    /// It answered, and the filter of the details named here (its field name, such as
    /// `vendor` or `instanceNames`) left it out.
    Dropped(&'static str),
    /// It answered and gave this many devices (0: it answered with nothing to add, such as a
    /// discovery server whose servers are tried as targets of their own).
    Found(usize),
}
impl Progress {
    /// A handle that counts what the handler reports, for the caller to read.
    pub fn enabled() -> Self {
        Self(Some(Arc::new(Mutex::new(Counts::new(0, 0)))))
    }

    /// A handle that drops every report (what a handler gets when nobody shows progress).
    pub fn disabled() -> Self {
        Self(None)
    }

    /// Whether reports are counted.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// A handler starts a round that will try `targets` targets (more may be added as the
    /// round learns of them: [`Round::add_targets`]). The counts start again from zero; a
    /// report for an earlier round that comes late is ignored.
    pub fn round(&self, targets: usize) -> Round {
        let Some(shared) = &self.0 else {
            return Round {
                shared: None,
                number: 0,
            };
        };
        let mut c = lock(shared);
        *c = Counts::new(c.round + 1, count(targets));
        Round {
            shared: Some(shared.clone()),
            number: c.round,
        }
    }

    /// The latest round as counted so far: `None` when the handle is disabled or no round
    /// has started.
    pub fn state(&self) -> Option<State> {
        let c = lock(self.0.as_ref()?);
        if c.round == 0 {
            return None;
        }
        let until = c.finished.unwrap_or_else(Instant::now);
        Some(State {
            round: c.round,
            total: c.total,
            tried: c.tried,
            answered: c.answered,
            failed: c.failed,
            dropped: c.dropped.clone(),
            found: c.found,
            elapsed: until.saturating_duration_since(c.started),
            finished: c.finished.is_some(),
        })
    }
}

/// Enabled or not, never the counts.
impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_tuple("Progress").field(&self.is_enabled()).finish()
    }
}

/// One round as a handler reports it (from any number of tasks: it is `Send + Sync`, share it
/// by reference). It is finished when dropped, or with [`Round::finish`].
pub struct Round {
    shared: Option<Arc<Mutex<Counts>>>,
    number: u64,
}

impl Round {
    /// A target was tried (or given up on: a line that cannot be opened, a host that does
    /// not resolve), with what became of it. More tried than announced raises the total: the
    /// total is never below what was tried.
    pub fn target(&self, verdict: Verdict) {
        self.targets(1, verdict);
    }

    /// `targets` targets were tried, each with the same verdict ([`Round::target`]);
    /// `Found(n)` counts `n` devices in all.
    pub fn targets(&self, targets: usize, verdict: Verdict) {
        let n = count(targets);
        if n == 0 {
            return;
        }
        self.update(|c| {
            c.tried = c.tried.saturating_add(n);
            c.total = c.total.max(c.tried);
            match verdict {
                Verdict::Silent => {}
                Verdict::Failed => {
                    c.answered = c.answered.saturating_add(n);
                    c.failed = c.failed.saturating_add(n);
                }
                Verdict::Dropped(filter) => {
                    c.answered = c.answered.saturating_add(n);
                    let d = c.dropped.entry(filter).or_default();
                    *d = d.saturating_add(n);
                }
                Verdict::Found(devices) => {
                    c.answered = c.answered.saturating_add(n);
                    c.found = c.found.saturating_add(count(devices));
                }
            }
        });
    }

    /// The round learnt of `targets` more targets to try (the servers a discovery server
    /// lists, the cameras that answered a probe).
    pub fn add_targets(&self, targets: usize) {
        self.update(|c| c.total = c.total.saturating_add(count(targets)));
    }

    /// Ends the round (as dropping it does).
    pub fn finish(self) {}

    fn update(&self, f: impl FnOnce(&mut Counts)) {
        if let Some(shared) = &self.shared {
            let mut c = lock(shared);
            if c.round == self.number && c.finished.is_none() {
                f(&mut c);
            }
        }
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        self.update(|c| c.finished = Some(Instant::now()));
    }
}

/// A round as counted at one moment ([`Progress::state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// 1 for the first round of the handle, 2 for the next, ...
    pub round: u64,
    /// Targets the round is to try: at least [`State::tried`].
    pub total: u64,
    /// Targets tried (or given up on) so far.
    pub tried: u64,
    /// Targets that answered: those that failed, were dropped or were found.
    pub answered: u64,
    /// Targets that answered but could not be used ([`Verdict::Failed`]).
    pub failed: u64,
    /// Targets left out by each filter of the details, by the filter's field name.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Devices found so far, before the round's last word (the snapshot) on them.
    pub found: u64,
    /// Time since the round started; when it finished, the time it took.
    pub elapsed: Duration,
    /// Whether the round is over.
    pub finished: bool,
}

impl State {
    /// Targets that did not answer.
    pub fn silent(&self) -> u64 {
        self.tried.saturating_sub(self.answered)
    }

    /// Targets still to try.
    pub fn remaining(&self) -> u64 {
        self.total.saturating_sub(self.tried)
    }

    /// How long the rest of the round should take at the rate so far: `None` until a target
    /// has been tried (there is no rate yet), zero when none remain.
    pub fn eta(&self) -> Option<Duration> {
        if self.remaining() == 0 || self.finished {
            return Some(Duration::ZERO);
        }
        if self.tried == 0 {
            return None;
        }
        let nanos = self.elapsed.as_nanos() * u128::from(self.remaining()) / u128::from(self.tried);
        Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Counts stay consistent under a panic (every update is a few additions), so a poisoned
/// lock is taken as it is.
fn lock(shared: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_handle_counts_nothing() {
        let progress = Progress::default();
        assert!(!progress.is_enabled());
        let round = progress.round(10);
        round.target(Verdict::Found(1));
        round.add_targets(5);
        assert_eq!(progress.state(), None);
        assert_eq!(format!("{progress:?}"), "Progress(false)");
    }

    #[test]
    fn nothing_is_shown_before_the_first_round() {
        assert_eq!(Progress::enabled().state(), None);
    }

    #[test]
    fn targets_tried_of_total_and_devices_found() {
        let progress = Progress::enabled();
        let round = progress.round(300);
        round.target(Verdict::Silent);
        round.target(Verdict::Found(2));
        round.targets(10, Verdict::Silent);
        let s = progress.state().unwrap();
        assert_eq!(
            (s.round, s.total, s.tried, s.found, s.finished),
            (1, 300, 12, 2, false)
        );
        assert_eq!((s.answered, s.silent()), (1, 11));
        assert_eq!(s.remaining(), 288);
        round.finish();
        let s = progress.state().unwrap();
        assert!(s.finished);
        // The time a finished round took does not grow.
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(progress.state().unwrap().elapsed, s.elapsed);
    }

    #[test]
    fn clones_and_tasks_share_one_count() {
        let progress = Progress::enabled();
        let round = progress.round(8 * 1000);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for i in 0..1000 {
                        round.target(if i % 100 == 0 {
                            Verdict::Found(1)
                        } else {
                            Verdict::Silent
                        });
                    }
                });
            }
        });
        let seen_by_a_clone = progress.clone().state().unwrap();
        assert_eq!((seen_by_a_clone.tried, seen_by_a_clone.found), (8000, 80));
        assert_eq!(seen_by_a_clone.remaining(), 0);
    }

    #[test]
    fn a_new_round_starts_from_zero_and_ignores_the_last_one() {
        let progress = Progress::enabled();
        let first = progress.round(10);
        first.targets(3, Verdict::Found(1));
        let second = progress.round(4);
        // A task of the first round that reports late, or finishes it, changes nothing.
        first.targets(5, Verdict::Found(1));
        drop(first);
        let s = progress.state().unwrap();
        assert_eq!(
            (s.round, s.total, s.tried, s.found, s.finished),
            (2, 4, 0, 0, false)
        );
        assert_eq!((s.answered, s.failed, s.dropped.len()), (0, 0, 0));
        second.target(Verdict::Found(1));
        drop(second);
        let s = progress.state().unwrap();
        assert_eq!((s.tried, s.found, s.finished), (1, 1, true));
    }

    #[test]
    fn each_verdict_is_counted_where_a_user_looks_for_it() {
        let progress = Progress::enabled();
        let round = progress.round(10);
        round.targets(4, Verdict::Silent);
        round.target(Verdict::Failed);
        round.target(Verdict::Dropped("vendor"));
        round.targets(2, Verdict::Dropped("product"));
        round.target(Verdict::Dropped("vendor"));
        round.target(Verdict::Found(0));
        round.target(Verdict::Found(3));
        round.targets(0, Verdict::Failed);
        let s = progress.state().unwrap();
        assert_eq!((s.tried, s.answered, s.silent()), (11, 7, 4));
        assert_eq!((s.failed, s.found), (1, 3));
        assert_eq!(
            s.dropped.into_iter().collect::<Vec<_>>(),
            [("product", 2), ("vendor", 2)]
        );
        assert_eq!(s.total, 11, "more tried than announced");
    }

    #[test]
    fn targets_learnt_during_the_round_raise_the_total() {
        let progress = Progress::enabled();
        let round = progress.round(2);
        round.targets(2, Verdict::Silent);
        round.add_targets(3);
        let s = progress.state().unwrap();
        assert_eq!((s.total, s.tried, s.remaining()), (5, 2, 3));
        // More tried than announced: the total follows, progress never passes 100 %.
        round.targets(7, Verdict::Silent);
        let s = progress.state().unwrap();
        assert_eq!((s.total, s.tried, s.remaining()), (9, 9, 0));
    }

    #[test]
    fn the_eta_is_the_rest_at_the_rate_so_far() {
        let state = |tried, elapsed_ms, finished| State {
            round: 1,
            total: 400,
            tried,
            answered: 0,
            failed: 0,
            dropped: BTreeMap::new(),
            found: 0,
            elapsed: Duration::from_millis(elapsed_ms),
            finished,
        };
        assert_eq!(state(0, 2000, false).eta(), None);
        assert_eq!(state(100, 2000, false).eta(), Some(Duration::from_secs(6)));
        assert_eq!(
            state(399, 3990, false).eta(),
            Some(Duration::from_millis(10))
        );
        assert_eq!(state(400, 8000, false).eta(), Some(Duration::ZERO));
        // A round that ended early (cancelled, a line gone) has nothing left to wait for.
        assert_eq!(state(10, 100, true).eta(), Some(Duration::ZERO));
        // A /16 at 500 connections per second: 65534 targets in about 131 s.
        let sweep = State {
            total: 65534,
            ..state(5000, 10_000, false)
        };
        assert_eq!(sweep.eta().unwrap().as_secs(), 121);
    }
}
