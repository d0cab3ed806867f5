//! Event-driven discovery of what the kernel announces: a scan at once, then again whenever
//! a uevent says something was plugged or unplugged, and every [`RESCAN`] as well, since
//! uevents do not reach a process everywhere (a container outside the host's network
//! namespace) and the kernel drops them when the socket overflows. A snapshot is yielded
//! only when it differs from the last one: the agent takes an event-driven snapshot as the
//! state until the next, so an unchanged node costs one listing a second and no wake-up of
//! the agent.

use std::{sync::Arc, time::Duration};

use dowser_discovery_api::{DiscoveryError, Snapshot, SnapshotStream};
use futures::StreamExt;
use tracing::{debug, warn};

use crate::hotplug::Uevents;

/// The longest a plug or unplug goes unnoticed when no uevent arrives (the devices are
/// listed again; nothing is yielded unless they changed).
pub const RESCAN: Duration = Duration::from_secs(1);

/// A uevent can arrive before sysfs and /dev show its change (the kernel announces a
/// removal before it takes the device out of sysfs): devices are listed again this long
/// after the last uevent.
pub const SETTLE: Duration = Duration::from_millis(100);

/// A blocking scan of the node: the full snapshot, or why there is none.
pub type Scan = Arc<dyn Fn() -> Result<Snapshot, DiscoveryError> + Send + Sync>;

/// Runs `scan` at once, then on uevents and every [`RESCAN`]; yields what changed.
pub fn watch(scan: Scan) -> SnapshotStream {
    let state = Watch {
        scan,
        uevents: None,
        started: false,
        settling: false,
        last_error: None,
        last: None,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await;
        Some((item, state))
    })
    .boxed()
}

struct Watch {
    scan: Scan,
    uevents: Option<Uevents>,
    started: bool,
    /// A uevent came; one more look after [`SETTLE`].
    settling: bool,
    last_error: Option<String>,
    /// The last snapshot yielded.
    last: Option<Snapshot>,
}

impl Watch {
    async fn next(&mut self) -> Result<Snapshot, DiscoveryError> {
        loop {
            if !self.started {
                self.started = true;
                self.uevents = match Uevents::open() {
                    Ok(u) => Some(u),
                    Err(e) => {
                        debug!(error = %e, "no uevents; rescanning every {RESCAN:?}");
                        None
                    }
                };
            } else {
                self.wait().await;
            }
            let scan = self.scan.clone();
            match tokio::task::spawn_blocking(move || scan()).await {
                Ok(Ok(snapshot)) => {
                    self.last_error = None;
                    if self.last.as_ref() != Some(&snapshot) {
                        self.last = Some(snapshot.clone());
                        return Ok(snapshot);
                    }
                }
                Ok(Err(e)) => {
                    // An error is reported when it starts or changes, not every second.
                    let text = e.to_string();
                    if self.last_error.as_ref() != Some(&text) {
                        self.last_error = Some(text);
                        // After an error the devices are reported again, changed or not.
                        self.last = None;
                        return Err(e);
                    }
                }
                Err(e) => return Err(DiscoveryError::Failed(format!("device scan failed: {e}"))),
            }
        }
    }

    /// Until a uevent arrives, or [`SETTLE`] after the last one, or [`RESCAN`] has passed.
    async fn wait(&mut self) {
        let pause = if self.settling { SETTLE } else { RESCAN };
        let Some(uevents) = &self.uevents else {
            tokio::time::sleep(RESCAN).await;
            return;
        };
        self.settling = tokio::select! {
            r = uevents.changed() => match r {
                Ok(()) => true,
                Err(e) => {
                    warn!(error = %e, "uevent socket failed; rescanning every {RESCAN:?}");
                    self.uevents = None;
                    false
                }
            },
            _ = tokio::time::sleep(pause) => false,
        };
    }
}
