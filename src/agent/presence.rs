//! What one node reports for one Configuration: devices it sees, and when each was last
//! seen. Pure: snapshots and the clock go in, Instance changes come out.
//!
//! A device in the latest snapshot is present, however long until the next one (a polled
//! handler's interval may be longer than the grace period): only a snapshot without it can
//! start its departure. A polled handler's snapshot (one with a round) shows what one scan
//! saw, so a device's grace period counts from the last scan that saw it. An event-driven
//! handler's snapshot (no round) is the state until the next one, so the grace period counts
//! from the snapshot that lacks the device.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use dowser_discovery_api::{Device, Snapshot};

#[derive(Clone, Debug)]
struct Entry {
    device: Device,
    last_seen: Instant,
    /// In the latest snapshot: present until a snapshot lacks it.
    in_latest: bool,
}

/// The devices a node reports for a Configuration.
#[derive(Clone, Debug, Default)]
pub struct Presence {
    entries: BTreeMap<String, Entry>,
}

impl Presence {
    /// Takes over devices this node reported before a restart, as if just seen: they get a
    /// full grace period to show up in a snapshot again, and cause no write if unchanged.
    pub fn adopt(&mut self, devices: impl IntoIterator<Item = Device>, now: Instant) {
        for device in devices {
            self.entries.insert(
                device.id.clone(),
                Entry {
                    device,
                    last_seen: now,
                    in_latest: false,
                },
            );
        }
    }

    /// Records a full snapshot. Returns the devices that are new or changed (to write);
    /// devices missing from the snapshot are kept with their last-seen time.
    pub fn observe(&mut self, snapshot: &Snapshot, now: Instant) -> Vec<Device> {
        let event_driven = snapshot.round().is_none();
        for entry in self.entries.values_mut().filter(|e| e.in_latest) {
            // Until this snapshot says otherwise below.
            entry.in_latest = false;
            if event_driven {
                // It was there until now.
                entry.last_seen = now;
            }
        }
        let mut changed = Vec::new();
        for device in snapshot.devices() {
            match self.entries.get_mut(&device.id) {
                Some(entry) => {
                    entry.last_seen = now;
                    entry.in_latest = true;
                    if entry.device != *device {
                        entry.device = device.clone();
                        changed.push(device.clone());
                    }
                }
                None => {
                    self.entries.insert(
                        device.id.clone(),
                        Entry {
                            device: device.clone(),
                            last_seen: now,
                            in_latest: true,
                        },
                    );
                    changed.push(device.clone());
                }
            }
        }
        changed
    }

    /// Removes and returns the ids of devices missing from the latest snapshot and unseen for
    /// at least `grace`.
    pub fn expire(&mut self, now: Instant, grace: Duration) -> Vec<String> {
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.in_latest && now.saturating_duration_since(e.last_seen) >= grace)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.entries.remove(id);
        }
        gone
    }

    /// When the next device would expire, if any.
    pub fn next_expiry(&self, grace: Duration) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| !e.in_latest)
            .map(|e| e.last_seen + grace)
            .min()
    }

    /// Every device currently reported.
    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.entries.values().map(|e| &e.device)
    }

    /// Whether the node reports this device (seen, or within its grace period).
    pub fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, v: &str) -> Device {
        Device {
            id: id.into(),
            properties: [("X".to_string(), v.to_string())].into(),
            ..Device::default()
        }
    }

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn new_devices_are_written_once_and_unchanged_ones_never() {
        let t0 = Instant::now();
        let mut p = Presence::default();
        let snap = Snapshot::new(vec![dev("a", "1"), dev("b", "1")]);
        assert_eq!(p.observe(&snap, t0).len(), 2);
        assert!(p.observe(&snap, t0 + Duration::from_secs(10)).is_empty());
        let changed = p.observe(
            &Snapshot::new(vec![dev("a", "2"), dev("b", "1")]),
            t0 + Duration::from_secs(20),
        );
        assert_eq!(changed, [dev("a", "2")]);
    }

    #[test]
    fn a_missed_scan_is_not_a_departure() {
        let t0 = Instant::now();
        let mut p = Presence::default();
        p.observe(&scan(vec![dev("a", "1")]), t0);
        p.observe(&scan(vec![]), t0 + Duration::from_secs(5));
        assert!(p.expire(t0 + Duration::from_secs(29), GRACE).is_empty());
        assert_eq!(p.next_expiry(GRACE), Some(t0 + GRACE));
        assert_eq!(p.expire(t0 + GRACE, GRACE), ["a"]);
        assert!(p.is_empty());
    }

    #[test]
    fn seeing_a_device_again_restarts_its_grace_period() {
        let t0 = Instant::now();
        let mut p = Presence::default();
        p.observe(&scan(vec![dev("a", "1")]), t0);
        p.observe(&scan(vec![]), t0 + Duration::from_secs(20));
        assert!(
            p.observe(&scan(vec![dev("a", "1")]), t0 + Duration::from_secs(25))
                .is_empty()
        );
        p.observe(&scan(vec![]), t0 + Duration::from_secs(40));
        assert!(p.expire(t0 + Duration::from_secs(50), GRACE).is_empty());
        assert_eq!(p.expire(t0 + Duration::from_secs(55), GRACE), ["a"]);
    }

    #[test]
    fn adopted_devices_cause_no_write_when_unchanged() {
        let t0 = Instant::now();
        let mut p = Presence::default();
        p.adopt([dev("a", "1"), dev("b", "1")], t0);
        assert!(
            p.observe(
                &Snapshot::new(vec![dev("a", "1")]),
                t0 + Duration::from_secs(1)
            )
            .is_empty()
        );
        // b was not seen again: it leaves after the grace period, counted from adoption.
        assert_eq!(p.expire(t0 + GRACE, GRACE), ["b"]);
    }

    #[test]
    fn a_device_not_scanned_again_yet_is_not_gone_whatever_the_interval() {
        // intervalSeconds 60 with offlineGracePeriodSeconds 30: the next scan comes after
        // the grace period, and the device must still be there.
        let t0 = Instant::now();
        let mut p = Presence::default();
        p.observe(&scan(vec![dev("a", "1")]), t0);
        assert!(p.expire(t0 + Duration::from_secs(61), GRACE).is_empty());
        assert_eq!(p.next_expiry(GRACE), None);
        // The next scan misses it: its grace period counts from the scan that saw it.
        p.observe(&scan(vec![]), t0 + Duration::from_secs(61));
        assert_eq!(p.expire(t0 + Duration::from_secs(61), GRACE), ["a"]);
    }

    fn scan(devices: Vec<Device>) -> Snapshot {
        Snapshot::new(devices).with_round(Duration::from_millis(10))
    }

    #[test]
    fn an_event_driven_device_is_seen_until_a_snapshot_lacks_it() {
        let t0 = Instant::now();
        let mut p = Presence::default();
        // No round: an event-driven handler, which yields only when something changes.
        p.observe(&Snapshot::new(vec![dev("a", "1")]), t0);
        assert_eq!(p.next_expiry(GRACE), None);
        assert!(p.expire(t0 + Duration::from_secs(3600), GRACE).is_empty());
        // It leaves; its grace period starts with the snapshot that lacks it.
        let left = t0 + Duration::from_secs(3600);
        p.observe(&Snapshot::default(), left);
        assert_eq!(p.next_expiry(GRACE), Some(left + GRACE));
        assert!(p.expire(left + Duration::from_secs(29), GRACE).is_empty());
        assert_eq!(p.expire(left + GRACE, GRACE), ["a"]);
    }

    #[test]
    fn a_polled_device_is_seen_at_its_scan_only() {
        let t0 = Instant::now();
        let mut p = Presence::default();
        p.observe(&scan(vec![dev("a", "1")]), t0);
        assert_eq!(p.next_expiry(GRACE), None, "in the latest scan: present");
        p.observe(&scan(vec![]), t0 + Duration::from_secs(20));
        assert_eq!(
            p.next_expiry(GRACE),
            Some(t0 + GRACE),
            "counted from the scan that saw it"
        );
        assert_eq!(p.expire(t0 + GRACE, GRACE), ["a"]);
    }
}
