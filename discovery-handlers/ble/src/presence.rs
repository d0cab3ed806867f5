//! Which devices are present: the pure rules, fed with what BlueZ reports.
//!
//! A device is present while a matching advertisement of it was heard within the presence
//! window. An advertisement counts when BlueZ has an RSSI for the device (it has none for
//! devices it only remembers) and, with `minRssi`, when it was heard at least that strong.
//! A device BlueZ forgets is gone at once. RSSI decides presence only; it is never part of
//! a device.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use dowser_discovery_api::{
    CompiledFilter, Device, Progress, Snapshot, Verdict, details::BleDetails, env,
};

/// What BlueZ currently knows of a device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advert {
    /// `AA:BB:CC:DD:EE:FF`, upper case.
    pub address: String,
    /// `public` or `random`.
    pub address_type: Option<String>,
    /// The advertised local name.
    pub name: Option<String>,
    /// Advertised service UUIDs, 128-bit form, lower case.
    pub services: BTreeSet<String>,
    /// Company identifiers of the manufacturer data.
    pub manufacturer_ids: BTreeSet<u16>,
    /// Signal strength of the last advertisement; `None` when BlueZ has not heard the device
    /// since discovery started.
    pub rssi: Option<i16>,
}

/// The filters of a Configuration, ready to apply (all but `minRssi`).
#[derive(Clone, Debug, Default)]
pub struct BleFilter {
    names: CompiledFilter,
    addresses: CompiledFilter,
    services: BTreeSet<String>,
    manufacturer_ids: BTreeSet<u16>,
}

impl BleFilter {
    /// Compiles the details' filters. The details must have been validated.
    pub fn new(details: &BleDetails) -> Result<Self, regex::Error> {
        let compile = |f: &Option<dowser_discovery_api::Filter>| {
            dowser_discovery_api::compile_optional(f.as_ref())
        };
        Ok(Self {
            names: compile(&details.names)?,
            addresses: compile(&details.addresses)?,
            services: details
                .service_uuids
                .iter()
                .map(|u| u.to_ascii_lowercase())
                .collect(),
            manufacturer_ids: details.manufacturer_ids.iter().copied().collect(),
        })
    }

    /// Whether a device is wanted: its name and address pass, and it advertises one of the
    /// listed services and one of the listed manufacturer ids (when listed).
    pub fn accepts(&self, advert: &Advert) -> bool {
        self.dropped_by(advert).is_none()
    }

    /// The details' field of the first filter that leaves a device out; `None` when it
    /// passes.
    pub fn dropped_by(&self, advert: &Advert) -> Option<&'static str> {
        if !self.names.accepts(advert.name.as_deref()) {
            Some("names")
        } else if !self.addresses.accepts(Some(&advert.address)) {
            Some("addresses")
        } else if !self.services.is_empty() && self.services.is_disjoint(&advert.services) {
            Some("serviceUuids")
        } else if !self.manufacturer_ids.is_empty()
            && self.manufacturer_ids.is_disjoint(&advert.manufacturer_ids)
        {
            Some("manufacturerIds")
        } else {
            None
        }
    }
}

/// The devices heard recently enough.
#[derive(Debug)]
pub struct Presence {
    window: Duration,
    min_rssi: Option<i32>,
    filter: BleFilter,
    heard: BTreeMap<String, (Device, Instant)>,
    /// Devices heard within the window but left out, with the field that left each out (for
    /// the counts of [`Presence::tally`]); at most [`MAX_DROPPED`].
    dropped: BTreeMap<String, (&'static str, Instant)>,
}

/// Most devices left out that are remembered for the counts.
pub const MAX_DROPPED: usize = 1024;

impl Presence {
    pub fn new(details: &BleDetails, filter: BleFilter) -> Self {
        Self {
            window: Duration::from_secs(details.presence_window_seconds.into()),
            min_rssi: details.min_rssi,
            filter,
            heard: BTreeMap::new(),
            dropped: BTreeMap::new(),
        }
    }

    /// Remembers, for the counts, that a device was left out by `field`.
    fn drop_by(&mut self, address: &str, field: &'static str, now: Instant) {
        if self.dropped.len() < MAX_DROPPED || self.dropped.contains_key(address) {
            self.dropped.insert(address.to_string(), (field, now));
        }
    }

    /// BlueZ reported something of a device. Returns whether the set of devices or what is
    /// known of one changed.
    pub fn heard(&mut self, advert: &Advert, now: Instant) -> bool {
        let Some(rssi) = advert.rssi else {
            // Remembered, not heard.
            return false;
        };
        if self.min_rssi.is_some_and(|min| i32::from(rssi) < min) {
            // Too weak to count; a device heard strongly before stays until the window ends.
            if !self.heard.contains_key(&advert.address) {
                self.drop_by(&advert.address, "minRssi", now);
            }
            return false;
        }
        if let Some(field) = self.filter.dropped_by(advert) {
            // What BlueZ knows of a device grows (a name from a scan response): a device may
            // stop matching.
            self.drop_by(&advert.address, field, now);
            return self.heard.remove(&advert.address).is_some();
        }
        self.dropped.remove(&advert.address);
        let device = device(advert);
        match self
            .heard
            .insert(advert.address.clone(), (device.clone(), now))
        {
            Some((before, _)) => before != device,
            None => true,
        }
    }

    /// BlueZ forgot a device. Returns whether it was present.
    pub fn forget(&mut self, address: &str) -> bool {
        self.dropped.remove(address);
        self.heard.remove(address).is_some()
    }

    /// Drops the devices not heard within the window. Returns whether any went.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.heard.len();
        let window = self.window;
        self.heard
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < window);
        self.dropped
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < window);
        self.heard.len() != before
    }

    /// Reports the devices heard within the window as a round: each found or left out.
    pub fn tally(&self, progress: &Progress, now: Instant) {
        let dropped: Vec<&'static str> = self
            .dropped
            .values()
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.window)
            .map(|(field, _)| *field)
            .collect();
        let round = progress.round(self.heard.len() + dropped.len());
        round.targets(self.heard.len(), Verdict::Found(1));
        for field in dropped {
            round.target(Verdict::Dropped(field));
        }
    }

    /// When the next device would leave if it is not heard again.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.heard.values().map(|(_, at)| *at + self.window).min()
    }

    pub fn is_empty(&self) -> bool {
        self.heard.is_empty()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.heard.values().map(|(d, _)| d.clone()).collect())
    }
}

/// The device of an advertisement: only the facts that do not change from one
/// advertisement to the next.
pub fn device(advert: &Advert) -> Device {
    let mut properties = BTreeMap::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            properties.insert(env::prefixed("BLE", key), v);
        }
    };
    put("ADDRESS", Some(advert.address.clone()));
    put("ADDRESS_TYPE", advert.address_type.clone());
    put("NAME", advert.name.clone());
    put("SERVICE_UUIDS", Some(join(&advert.services)));
    put("MANUFACTURER_ID", Some(join(&advert.manufacturer_ids)));
    Device {
        id: advert.address.clone(),
        properties,
        ..Device::default()
    }
}

fn join<T: ToString>(items: &BTreeSet<T>) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use dowser_discovery_api::Filter;

    use super::*;

    const ESS: &str = "0000181a-0000-1000-8000-00805f9b34fb";

    fn sensor() -> Advert {
        Advert {
            address: "C0:FF:EE:00:00:01".into(),
            address_type: Some("public".into()),
            name: Some("ENV-1".into()),
            services: [ESS.to_string()].into(),
            manufacturer_ids: [76, 89].into(),
            rssi: Some(-60),
        }
    }

    fn details(f: impl FnOnce(&mut BleDetails)) -> BleDetails {
        let mut d: BleDetails = serde_json::from_str("{}").unwrap();
        f(&mut d);
        d
    }

    fn presence(f: impl FnOnce(&mut BleDetails)) -> Presence {
        let d = details(f);
        let filter = BleFilter::new(&d).unwrap();
        Presence::new(&d, filter)
    }

    #[test]
    fn devices_left_out_are_counted_by_the_filter_that_left_them_out_within_the_window() {
        let mut p = presence(|d| {
            d.names = Some(Filter {
                include: vec!["ENV-.*".into()],
                exclude: vec![],
            });
            d.min_rssi = Some(-80);
            d.presence_window_seconds = 10;
        });
        let t0 = Instant::now();
        assert!(p.heard(&sensor(), t0));
        let printer = Advert {
            address: "C0:FF:EE:00:00:02".into(),
            name: Some("PRINTER".into()),
            ..sensor()
        };
        let far = Advert {
            address: "C0:FF:EE:00:00:03".into(),
            rssi: Some(-95),
            ..sensor()
        };
        // Left out: no new snapshot for that, only counts.
        assert!(!p.heard(&printer, t0));
        assert!(!p.heard(&far, t0));
        let progress = Progress::enabled();
        p.tally(&progress, t0);
        let counts = progress.state().unwrap();
        assert_eq!((counts.tried, counts.answered, counts.found), (3, 3, 1));
        assert_eq!(
            counts.dropped.into_iter().collect::<Vec<_>>(),
            [("minRssi", 1), ("names", 1)]
        );
        // Not heard again within the window: no longer counted.
        p.tally(&progress, t0 + Duration::from_secs(11));
        assert_eq!(progress.state().unwrap().tried, 1);
    }

    fn ids(p: &Presence) -> Vec<String> {
        p.snapshot()
            .devices()
            .iter()
            .map(|d| d.id.clone())
            .collect()
    }

    #[test]
    fn present_while_heard_within_the_window() {
        let mut p = presence(|d| d.presence_window_seconds = 10);
        let t0 = Instant::now();
        assert!(p.heard(&sensor(), t0));
        assert_eq!(p.next_expiry(), Some(t0 + Duration::from_secs(10)));
        assert!(!p.expire(t0 + Duration::from_secs(9)));
        // Heard again: the window starts over; nothing about the device changed.
        let mut again = sensor();
        again.rssi = Some(-71);
        assert!(!p.heard(&again, t0 + Duration::from_secs(9)));
        assert!(!p.expire(t0 + Duration::from_secs(18)));
        assert_eq!(ids(&p), ["C0:FF:EE:00:00:01"]);
        assert!(p.expire(t0 + Duration::from_secs(19)));
        assert!(p.is_empty());
    }

    #[test]
    fn remembered_devices_are_not_present() {
        let mut p = presence(|_| {});
        let mut cached = sensor();
        cached.rssi = None;
        assert!(!p.heard(&cached, Instant::now()));
        assert!(p.is_empty());
    }

    #[test]
    fn forgotten_devices_leave_at_once() {
        let mut p = presence(|_| {});
        p.heard(&sensor(), Instant::now());
        assert!(p.forget("C0:FF:EE:00:00:01"));
        assert!(!p.forget("C0:FF:EE:00:00:01"));
    }

    #[test]
    fn weak_advertisements_do_not_count() {
        let mut p = presence(|d| {
            d.min_rssi = Some(-70);
            d.presence_window_seconds = 10;
        });
        let t0 = Instant::now();
        let mut weak = sensor();
        weak.rssi = Some(-80);
        assert!(!p.heard(&weak, t0));
        assert!(p.is_empty());
        assert!(p.heard(&sensor(), t0));
        // A weak advertisement neither removes the device nor keeps it.
        assert!(!p.heard(&weak, t0 + Duration::from_secs(5)));
        assert!(p.expire(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn the_device_has_stable_facts_only() {
        let d = device(&sensor());
        assert_eq!(d.id, "C0:FF:EE:00:00:01");
        let env: Vec<_> = d
            .properties
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            env,
            [
                "BLE_ADDRESS=C0:FF:EE:00:00:01",
                "BLE_ADDRESS_TYPE=public",
                "BLE_MANUFACTURER_ID=76,89",
                "BLE_NAME=ENV-1",
                format!("BLE_SERVICE_UUIDS={ESS}").as_str(),
            ]
        );
        let mut quieter = sensor();
        quieter.rssi = Some(-90);
        assert_eq!(device(&quieter), d);
        let bare = device(&Advert {
            address: "C0:FF:EE:00:00:02".into(),
            rssi: Some(-50),
            ..Advert::default()
        });
        assert_eq!(bare.properties.len(), 1);
    }

    fn include(p: &str) -> Option<Filter> {
        Some(Filter {
            include: vec![p.into()],
            exclude: vec![],
        })
    }

    #[test]
    fn filters() {
        let accepts =
            |f: fn(&mut BleDetails)| BleFilter::new(&details(f)).unwrap().accepts(&sensor());
        assert!(accepts(|_| {}));
        assert!(accepts(|d| d.names = include("ENV-.*")));
        assert!(!accepts(|d| d.names = include("ENV")));
        assert!(accepts(|d| d.addresses = include("C0:FF:EE:.*")));
        assert!(!accepts(|d| d.addresses = include("C0:FF:EE:00:00:02")));
        assert!(accepts(
            |d| d.service_uuids = vec![ESS.into(), "0000180f-0000-1000-8000-00805f9b34fb".into()]
        ));
        assert!(!accepts(
            |d| d.service_uuids = vec!["0000180f-0000-1000-8000-00805f9b34fb".into()]
        ));
        assert!(accepts(|d| d.manufacturer_ids = vec![89]));
        assert!(!accepts(|d| d.manufacturer_ids = vec![117]));
        // A device without a name fails an include on the name.
        let nameless = Advert {
            name: None,
            ..sensor()
        };
        assert!(
            !BleFilter::new(&details(|d| d.names = include(".*")))
                .unwrap()
                .accepts(&nameless)
        );
    }

    #[test]
    fn a_device_that_stops_matching_leaves() {
        let mut p = presence(|d| d.names = include("ENV-.*"));
        let mut nameless = sensor();
        nameless.name = None;
        let now = Instant::now();
        assert!(p.heard(&sensor(), now));
        assert!(p.heard(&nameless, now));
        assert!(p.is_empty());
    }
}
