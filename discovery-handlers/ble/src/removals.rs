//! Devices BlueZ forgets (InterfacesRemoved), which btleplug does not report as events.

use std::sync::Arc;

use dbus::{
    Message,
    message::MatchRule,
    nonblock::{MsgMatch, SyncConnection},
    strings::Path,
};
use futures::{StreamExt, channel::mpsc::UnboundedReceiver};

const DEVICE_IFACE: &str = "org.bluez.Device1";

type Removed = (Message, (Path<'static>, Vec<String>));

/// A subscription to BlueZ's InterfacesRemoved signals.
pub struct Removals {
    _conn: Arc<SyncConnection>,
    _match: MsgMatch,
    removed: UnboundedReceiver<Removed>,
    io: tokio::task::JoinHandle<()>,
}

impl Removals {
    pub async fn open() -> Result<Self, dbus::Error> {
        let (resource, conn) = dbus_tokio::connection::new_system_sync()?;
        let io = tokio::spawn(async move {
            let _ = resource.await;
        });
        let rule = MatchRule::new_signal("org.freedesktop.DBus.ObjectManager", "InterfacesRemoved")
            .with_sender("org.bluez");
        let (matched, removed) = match conn.add_match(rule).await {
            Ok(m) => m.stream(),
            Err(e) => {
                io.abort();
                return Err(e);
            }
        };
        Ok(Self {
            _conn: conn,
            _match: matched,
            removed,
            io,
        })
    }

    /// The object path of the next device BlueZ forgets; `None` when the bus is gone.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            let (_, (path, interfaces)) = self.removed.next().await?;
            if interfaces.iter().any(|i| i == DEVICE_IFACE) {
                return Some(path.to_string());
            }
        }
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
