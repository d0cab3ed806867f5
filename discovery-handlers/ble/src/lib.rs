//! Bluetooth Low Energy discovery for dowser.
//!
//! Scans continuously through BlueZ (btleplug over the D-Bus system bus) on one adapter and
//! keeps the devices heard within the presence window that pass the filters (name, address,
//! service UUIDs, manufacturer ids, minimum RSSI). A device's id is its address; RSSI only
//! decides presence and is never part of a device. When BlueZ or the adapter is missing,
//! the stream says so and tries again.

pub mod presence;
mod removals;

use std::time::Duration;

use btleplug::{
    api::{Central, CentralEvent, CentralState, Manager as _, Peripheral as _, ScanFilter},
    platform::{Adapter, Manager, PeripheralId},
};
use dowser_discovery_api::{
    DiscoveryError, DiscoveryHandler, Progress, Properties, Snapshot, SnapshotStream,
    details::BleDetails,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::debug;

pub use presence::{Advert, BleFilter, Presence};

/// How often the adapter is asked whether it is still there. BlueZ leaving the bus and the
/// adapter going away are signals that end the scan at once; this is the fallback for
/// anything those miss (a bus that stops answering). Between events nothing else wakes the
/// handler but the end of the next device's presence window.
pub const HEALTH_CHECK: Duration = Duration::from_secs(30);
/// The wait before trying again when BlueZ or the adapter is missing.
pub const RETRY: Duration = Duration::from_secs(3);

/// The BLE discovery handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct BleHandler;

impl DiscoveryHandler for BleHandler {
    type Details = BleDetails;

    /// Yields a snapshot when scanning starts and whenever a device comes or goes or
    /// changes (the agent takes it as the state until the next one); an error when BlueZ or the adapter cannot be used (retried every
    /// [`RETRY`]).
    fn discover(&self, details: BleDetails, properties: Properties) -> SnapshotStream {
        let filter = match BleFilter::new(&details) {
            Ok(f) => f,
            Err(e) => {
                let e = DiscoveryError::Invalid(e.to_string());
                return futures::stream::once(async move { Err(e) }).boxed();
            }
        };
        let (tx, rx) = mpsc::channel(8);
        let progress = properties.progress().clone();
        tokio::spawn(async move {
            loop {
                let e = scan(&details, &filter, &progress, &tx).await;
                if tx.is_closed() {
                    return;
                }
                debug!(error = %e, "BLE discovery stopped; trying again in {RETRY:?}");
                if tx.send(Err(e)).await.is_err() {
                    return;
                }
                tokio::time::sleep(RETRY).await;
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
            .boxed()
    }
}

type Sender = mpsc::Sender<Result<Snapshot, DiscoveryError>>;

/// One scanning session, until it fails (or nobody listens any more).
async fn scan(
    details: &BleDetails,
    filter: &BleFilter,
    progress: &Progress,
    tx: &Sender,
) -> DiscoveryError {
    let (name, adapter) = match adapter(details.adapter.as_deref()).await {
        Ok(a) => a,
        Err(e) => return e,
    };
    let mut removals = match removals::Removals::open().await {
        Ok(r) => r,
        Err(e) => {
            return DiscoveryError::Unavailable(format!("cannot follow BlueZ's devices: {e}"));
        }
    };
    let mut events = match adapter.events().await {
        Ok(e) => e,
        Err(e) => return unavailable("cannot follow BlueZ's events", e),
    };
    if let Err(e) = adapter.start_scan(ScanFilter::default()).await {
        return unavailable("cannot start scanning", e);
    }
    let mut presence = Presence::new(details, filter.clone());
    presence.tally(progress, std::time::Instant::now());
    if tx.send(Ok(presence.snapshot())).await.is_err() {
        return DiscoveryError::Failed("nobody listens".into());
    }
    let mut health =
        tokio::time::interval_at(tokio::time::Instant::now() + HEALTH_CHECK, HEALTH_CHECK);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let expiry = presence.next_expiry();
        let changed = tokio::select! {
            event = events.next() => match event {
                None => return DiscoveryError::Unavailable("lost the connection to BlueZ".into()),
                Some(CentralEvent::StateUpdate(CentralState::PoweredOff)) => {
                    return DiscoveryError::Unavailable("the Bluetooth adapter was powered off".into());
                }
                Some(event) => match heard_from(&event) {
                    Some(id) => match advert(&adapter, id).await {
                        Some(a) => presence.heard(&a, std::time::Instant::now()),
                        None => false,
                    },
                    None => false,
                },
            },
            removed = removals.next() => match removed {
                None => return DiscoveryError::Unavailable("lost the connection to the D-Bus system bus".into()),
                Some(removals::Removed::Bluez) => {
                    return DiscoveryError::Unavailable("BlueZ left the system bus".into());
                }
                Some(removals::Removed::Adapter(path)) if path == format!("/org/bluez/{name}") => {
                    return DiscoveryError::Unavailable(format!("the Bluetooth adapter {name} went away"));
                }
                Some(removals::Removed::Adapter(_)) => false,
                Some(removals::Removed::Device(path)) => {
                    removals::address_of(&path, &name).is_some_and(|a| presence.forget(&a))
                }
            },
            // A device whose window ends leaves without any event.
            _ = until(expiry) => presence.expire(std::time::Instant::now()),
            _ = health.tick() => {
                if let Err(e) = adapter.adapter_info().await {
                    return unavailable("lost the Bluetooth adapter", e);
                }
                false
            },
        };
        if !changed {
            continue;
        }
        presence.tally(progress, std::time::Instant::now());
        if tx.send(Ok(presence.snapshot())).await.is_err() {
            return DiscoveryError::Failed("nobody listens".into());
        }
    }
}

/// Sleeps until `at`; forever when there is nothing to wait for.
async fn until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn unavailable(what: &str, e: btleplug::Error) -> DiscoveryError {
    DiscoveryError::Unavailable(format!("{what}: {e}"))
}

/// The adapter to scan with, and its name: the one named, else the first.
async fn adapter(name: Option<&str>) -> Result<(String, Adapter), DiscoveryError> {
    let manager = Manager::new().await.map_err(|e| {
        DiscoveryError::Unavailable(format!("cannot reach the D-Bus system bus: {e}"))
    })?;
    let adapters = manager.adapters().await.map_err(|e| {
        DiscoveryError::Unavailable(format!(
            "cannot list Bluetooth adapters (is BlueZ, bluetoothd, running?): {e}"
        ))
    })?;
    let mut named = Vec::new();
    for a in adapters {
        let info = a.adapter_info().await.map_err(|e| {
            DiscoveryError::Unavailable(format!("cannot read a Bluetooth adapter: {e}"))
        })?;
        let id = info
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        named.push((id, a));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let found = match name {
        Some(want) => named.into_iter().find(|(n, _)| n == want),
        None => named.into_iter().next(),
    };
    match found {
        Some((n, a)) => {
            debug!(adapter = %n, "scanning");
            Ok((n, a))
        }
        None => Err(DiscoveryError::Unavailable(format!(
            "no Bluetooth adapter{}: BlueZ lists {}",
            name.map(|n| format!(" {n}")).unwrap_or_default(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))),
    }
}

/// The device an event says was heard, if it says so.
fn heard_from(event: &CentralEvent) -> Option<&PeripheralId> {
    match event {
        CentralEvent::DeviceDiscovered(id)
        | CentralEvent::DeviceUpdated(id)
        | CentralEvent::RssiUpdate { id, .. }
        | CentralEvent::ManufacturerDataAdvertisement { id, .. }
        | CentralEvent::ServiceDataAdvertisement { id, .. }
        | CentralEvent::ServicesAdvertisement { id, .. } => Some(id),
        _ => None,
    }
}

/// What BlueZ knows of a device now; `None` when it is gone already.
async fn advert(adapter: &Adapter, id: &PeripheralId) -> Option<Advert> {
    let peripheral = adapter.peripheral(id).await.ok()?;
    let p = peripheral.properties().await.ok()??;
    Some(Advert {
        address: p.address.to_string(),
        address_type: p.address_type.map(|t| {
            match t {
                btleplug::api::AddressType::Public => "public",
                btleplug::api::AddressType::Random => "random",
            }
            .to_string()
        }),
        name: p.advertisement_name,
        services: p.services.iter().map(|u| u.to_string()).collect(),
        manufacturer_ids: p.manufacturer_data.keys().copied().collect(),
        rssi: p.rssi,
    })
}
