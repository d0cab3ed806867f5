//! The handlers registered with this node's agent, remembered on disk so that a restarted
//! agent dials them again without waiting for them to notice.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use dowser_handler_sdk::v0::register_discovery_handler_request::EndpointType;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

/// One registered endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub name: String,
    /// A unix socket path or a URL.
    pub endpoint: String,
    pub network: bool,
    pub shared: bool,
}

impl Registration {
    pub fn kind(&self) -> EndpointType {
        if self.network {
            EndpointType::Network
        } else {
            EndpointType::Uds
        }
    }
}

/// Endpoints by handler name.
pub type ByName = BTreeMap<String, Vec<Registration>>;

/// The registered handlers of this process; changes are published to subscribers.
pub struct Registrations {
    current: watch::Sender<ByName>,
    /// Counts registrations, changed or not: a handler that registers again is back, and
    /// whoever waits to ask it again asks at once.
    registered: watch::Sender<u64>,
    /// Where they are remembered (none: in memory only, as in `dowser discover`).
    file: Mutex<Option<PathBuf>>,
}

/// What the file holds.
#[derive(Serialize, Deserialize)]
struct Remembered {
    registrations: Vec<Registration>,
}

impl Default for Registrations {
    fn default() -> Self {
        Self {
            current: watch::Sender::new(ByName::new()),
            registered: watch::Sender::new(0),
            file: Mutex::new(None),
        }
    }
}

impl Registrations {
    /// Remembers registrations in `file` from now on, after taking those it holds.
    pub fn remember_in(&self, file: &Path) {
        match std::fs::read(file) {
            Ok(bytes) => match serde_json::from_slice::<Remembered>(&bytes) {
                Ok(remembered) => {
                    info!(
                        handlers = remembered.registrations.len(),
                        file = %file.display(),
                        "dialing the discovery handlers registered before this start"
                    );
                    self.current.send_modify(|by_name| {
                        for r in remembered.registrations {
                            insert(by_name, r);
                        }
                    });
                }
                Err(e) => {
                    warn!(file = %file.display(), error = %e, "ignoring unreadable registrations")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(file = %file.display(), error = %e, "cannot read registrations"),
        }
        *self.file.lock().expect("registrations file lock") = Some(file.to_path_buf());
        self.save();
    }

    /// Adds an endpoint, or updates the one registered at the same endpoint.
    pub fn add(&self, registration: Registration) {
        let changed = self
            .current
            .send_if_modified(|by_name| insert(by_name, registration));
        if changed {
            self.save();
        }
        self.registered.send_modify(|n| *n += 1);
    }

    /// Changes whenever a handler registers, whether or not anything changed.
    pub fn registered(&self) -> watch::Receiver<u64> {
        self.registered.subscribe()
    }

    /// Forgets an endpoint (it has been unreachable for long).
    pub fn forget(&self, name: &str, endpoint: &str) {
        let changed = self.current.send_if_modified(|by_name| {
            let Some(list) = by_name.get_mut(name) else {
                return false;
            };
            let before = list.len();
            list.retain(|r| r.endpoint != endpoint);
            let changed = list.len() != before;
            if list.is_empty() {
                by_name.remove(name);
            }
            changed
        });
        if changed {
            self.save();
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<ByName> {
        self.current.subscribe()
    }

    /// Whether the handler of that name said its devices are shared (the first endpoint's
    /// word), once one has registered.
    pub fn shared(&self, name: &str) -> Option<bool> {
        self.current
            .borrow()
            .get(name)
            .and_then(|list| list.first())
            .map(|r| r.shared)
    }

    fn save(&self) {
        let file = self.file.lock().expect("registrations file lock");
        let Some(path) = file.as_ref() else {
            return;
        };
        let registrations: Vec<Registration> =
            self.current.borrow().values().flatten().cloned().collect();
        let bytes = serde_json::to_vec_pretty(&Remembered { registrations })
            .expect("registrations serialize");
        // Written aside and renamed: a crash leaves the old file or the new one.
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path)) {
            warn!(file = %path.display(), error = %e, "cannot remember registrations");
        }
    }
}

/// Adds or replaces by endpoint; whether anything changed.
fn insert(by_name: &mut ByName, registration: Registration) -> bool {
    let list = by_name.entry(registration.name.clone()).or_default();
    match list
        .iter_mut()
        .find(|r| r.endpoint == registration.endpoint)
    {
        Some(r) if *r == registration => false,
        Some(r) => {
            *r = registration;
            true
        }
        None => {
            list.push(registration);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str, endpoint: &str, shared: bool) -> Registration {
        Registration {
            name: name.into(),
            endpoint: endpoint.into(),
            network: false,
            shared,
        }
    }

    #[test]
    fn registrations_survive_a_restart_in_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("registrations.json");
        let first = Registrations::default();
        first.remember_in(&file);
        first.add(reg("echo", "/run/a.sock", true));
        first.add(reg("echo", "/run/b.sock", true));
        first.add(reg("cam", "/run/c.sock", false));
        first.forget("echo", "/run/a.sock");

        let restarted = Registrations::default();
        restarted.remember_in(&file);
        let by_name = restarted.subscribe().borrow().clone();
        assert_eq!(by_name["echo"], [reg("echo", "/run/b.sock", true)]);
        assert_eq!(restarted.shared("cam"), Some(false));
        assert_eq!(restarted.shared("other"), None);
    }

    #[test]
    fn registering_again_at_the_same_endpoint_replaces() {
        let registrations = Registrations::default();
        let mut rx = registrations.subscribe();
        registrations.add(reg("echo", "/run/a.sock", false));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        registrations.add(reg("echo", "/run/a.sock", false));
        assert!(
            !rx.has_changed().unwrap(),
            "the same registration is no change"
        );
        registrations.add(reg("echo", "/run/a.sock", true));
        assert_eq!(
            rx.borrow_and_update()["echo"],
            [reg("echo", "/run/a.sock", true)]
        );
    }
}
