//! Devices BlueZ forgets (InterfacesRemoved), which btleplug does not report as events, and
//! the end of BlueZ itself (its bus name losing its owner) or of an adapter, so that the
//! handler need not ask BlueZ over and over whether the adapter is still there.

use std::sync::Arc;

use dbus::{
    Message,
    message::MatchRule,
    nonblock::{MsgMatch, SyncConnection},
    strings::Path,
};
use futures::{StreamExt, channel::mpsc::UnboundedReceiver};

const DEVICE_IFACE: &str = "org.bluez.Device1";
const ADAPTER_IFACE: &str = "org.bluez.Adapter1";
const BLUEZ: &str = "org.bluez";

/// What went away.
#[derive(Debug, PartialEq, Eq)]
pub enum Removed {
    /// A device object (its D-Bus path).
    Device(String),
    /// An adapter object (its D-Bus path).
    Adapter(String),
    /// bluetoothd left the bus.
    Bluez,
}

type InterfacesRemoved = (Message, (Path<'static>, Vec<String>));
type NameOwnerChanged = (Message, (String, String, String));

/// A subscription to BlueZ's InterfacesRemoved signals and to the bus's NameOwnerChanged.
pub struct Removals {
    _conn: Arc<SyncConnection>,
    _matches: [MsgMatch; 2],
    removed: UnboundedReceiver<InterfacesRemoved>,
    owners: UnboundedReceiver<NameOwnerChanged>,
    io: tokio::task::JoinHandle<()>,
}

impl Removals {
    pub async fn open() -> Result<Self, dbus::Error> {
        let (resource, conn) = dbus_tokio::connection::new_system_sync()?;
        let io = tokio::spawn(async move {
            let _ = resource.await;
        });
        let interfaces =
            MatchRule::new_signal("org.freedesktop.DBus.ObjectManager", "InterfacesRemoved")
                .with_sender(BLUEZ);
        let owner = MatchRule::new_signal("org.freedesktop.DBus", "NameOwnerChanged")
            .with_sender("org.freedesktop.DBus");
        let subscribed = async {
            let a = conn.add_match(interfaces).await?;
            let b = conn.add_match(owner).await?;
            Ok::<_, dbus::Error>((a.stream(), b.stream()))
        };
        let ((m1, removed), (m2, owners)) = match subscribed.await {
            Ok(s) => s,
            Err(e) => {
                io.abort();
                return Err(e);
            }
        };
        Ok(Self {
            _conn: conn,
            _matches: [m1, m2],
            removed,
            owners,
            io,
        })
    }

    /// The next device, adapter or BlueZ itself going away; `None` when the bus is gone.
    pub async fn next(&mut self) -> Option<Removed> {
        loop {
            tokio::select! {
                r = self.removed.next() => {
                    let (_, (path, interfaces)) = r?;
                    if let Some(removed) = classify(&path, &interfaces) {
                        return Some(removed);
                    }
                }
                o = self.owners.next() => {
                    let (_, (name, _old, new)) = o?;
                    if name == BLUEZ && new.is_empty() {
                        return Some(Removed::Bluez);
                    }
                }
            }
        }
    }
}

/// What an InterfacesRemoved signal of BlueZ means, if it matters.
fn classify(path: &str, interfaces: &[String]) -> Option<Removed> {
    if interfaces.iter().any(|i| i == ADAPTER_IFACE) {
        Some(Removed::Adapter(path.to_string()))
    } else if interfaces.iter().any(|i| i == DEVICE_IFACE) {
        Some(Removed::Device(path.to_string()))
    } else {
        None
    }
}

impl Drop for Removals {
    fn drop(&mut self) {
        self.io.abort();
    }
}

/// The address of a device object of `adapter`:
/// `/org/bluez/hci0/dev_C0_FF_EE_00_00_01` → `C0:FF:EE:00:00:01`.
pub fn address_of(path: &str, adapter: &str) -> Option<String> {
    let rest = path.strip_prefix("/org/bluez/")?.strip_prefix(adapter)?;
    let dev = rest.strip_prefix("/dev_")?;
    let ok = dev.len() == 17
        && dev
            .split('_')
            .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then(|| dev.replace('_', ":").to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_are_told_apart() {
        let ifaces = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            classify(
                "/org/bluez/hci0/dev_C0_FF_EE_00_00_01",
                &ifaces(&[DEVICE_IFACE])
            ),
            Some(Removed::Device(
                "/org/bluez/hci0/dev_C0_FF_EE_00_00_01".into()
            ))
        );
        assert_eq!(
            classify(
                "/org/bluez/hci0",
                &ifaces(&["org.bluez.GattManager1", ADAPTER_IFACE])
            ),
            Some(Removed::Adapter("/org/bluez/hci0".into()))
        );
        assert_eq!(
            classify(
                "/org/bluez/hci0/dev_C0_FF_EE_00_00_01/service0010",
                &ifaces(&["org.bluez.GattService1"])
            ),
            None
        );
    }

    #[test]
    fn device_paths_name_addresses() {
        assert_eq!(
            address_of("/org/bluez/hci0/dev_C0_FF_EE_00_00_01", "hci0").as_deref(),
            Some("C0:FF:EE:00:00:01")
        );
        assert_eq!(
            address_of("/org/bluez/hci1/dev_C0_FF_EE_00_00_01", "hci0"),
            None
        );
        assert_eq!(
            address_of("/org/bluez/hci10/dev_C0_FF_EE_00_00_01", "hci1"),
            None
        );
        assert_eq!(address_of("/org/bluez/hci0", "hci0"), None);
        assert_eq!(
            address_of("/org/bluez/hci0/dev_C0_FF_EE_00_00_01/service0010", "hci0"),
            None
        );
    }
}
