//! What a resolved service becomes: the filters that keep it, and the Device with its
//! environment. Pure: no sockets here.

use std::{collections::BTreeMap, net::IpAddr};

use dowser_discovery_api::{
    CompiledFilter, Device, Progress, Snapshot, Verdict, details::MdnsDetails, env,
};

/// Most TXT records of one service handed to a broker; the rest are left out.
pub const MAX_TXT_VARIABLES: usize = 64;

/// A service instance as resolved from its SRV, TXT and address records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// The service type browsed for: `_opcua-tcp._tcp.local.`.
    pub service_type: String,
    /// The service instance full name: `Press 7._opcua-tcp._tcp.local.`.
    pub full_name: String,
    /// The SRV target host: `press-7.local.`.
    pub host: String,
    pub port: u16,
    /// Every address the host announced, in any order.
    pub addresses: Vec<IpAddr>,
    /// TXT records in the order the device sent them: key, and value when there is one
    /// (a key alone is a boolean attribute).
    pub txt: Vec<(String, Option<Vec<u8>>)>,
}

impl Service {
    /// The instance name: the full name without the service type (`Press 7`).
    pub fn instance_name(&self) -> &str {
        self.full_name
            .strip_suffix(self.service_type.as_str())
            .and_then(|s| s.strip_suffix('.'))
            .unwrap_or(&self.full_name)
    }

    /// TXT records as DNS-SD reads them: keys compare case-insensitively and only the first
    /// occurrence of a key counts (RFC 6763, section 6.4).
    fn txt_records(&self) -> Vec<(&str, Option<&[u8]>)> {
        let mut seen = std::collections::HashSet::new();
        self.txt
            .iter()
            .filter(|(k, _)| !k.is_empty() && seen.insert(k.to_ascii_lowercase()))
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect()
    }
}

/// The rules of one Configuration: which services to keep and how much of their TXT
/// records to pass on.
#[derive(Clone, Debug)]
pub struct Selection {
    instance_names: CompiledFilter,
    /// Lower-case key and the filter on its value.
    txt: Vec<(String, CompiledFilter)>,
    max_txt_bytes: usize,
}

impl Selection {
    /// Compiles the filters of valid details.
    pub fn new(details: &MdnsDetails) -> Result<Self, regex::Error> {
        Ok(Self {
            instance_names: details
                .instance_names
                .as_ref()
                .map(|f| f.compile())
                .transpose()?
                .unwrap_or_default(),
            txt: details
                .txt_records
                .iter()
                .map(|r| Ok((r.key.to_ascii_lowercase(), r.filter().compile()?)))
                .collect::<Result<_, regex::Error>>()?,
            max_txt_bytes: details.max_txt_value_bytes as usize,
        })
    }

    /// Whether the Configuration wants this service: its instance name passes, and it has
    /// every TXT key filtered on, with a value that passes.
    pub fn accepts(&self, service: &Service) -> bool {
        self.dropped_by(service).is_none()
    }

    /// The details' field of the first filter that leaves a service out; `None` when it
    /// passes.
    pub fn dropped_by(&self, service: &Service) -> Option<&'static str> {
        if !self.instance_names.accepts(Some(service.instance_name())) {
            return Some("instanceNames");
        }
        let records = service.txt_records();
        let txt_ok = self.txt.iter().all(|(key, filter)| {
            records
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .is_some_and(|(_, v)| filter.accepts(v.map(text).as_deref()))
        });
        (!txt_ok).then_some("txtRecords")
    }

    /// The device for a service the Configuration wants, `None` for one it does not.
    pub fn device(&self, service: &Service) -> Option<Device> {
        self.accepts(service).then(|| Device {
            id: service.full_name.clone(),
            properties: self.properties(service),
            ..Device::default()
        })
    }

    /// The broker's environment: only stable facts, so an unchanged service gives equal
    /// properties however its records arrived.
    fn properties(&self, service: &Service) -> BTreeMap<String, String> {
        let mut props = BTreeMap::new();
        props.insert(
            "MDNS_INSTANCE_NAME".to_string(),
            text(service.instance_name().as_bytes()),
        );
        props.insert("MDNS_SERVICE_TYPE".into(), service.service_type.clone());
        props.insert(
            "MDNS_HOST".into(),
            service.host.trim_end_matches('.').to_string(),
        );
        props.insert("MDNS_PORT".into(), service.port.to_string());
        let addresses = sorted_addresses(&service.addresses);
        if let Some(first) = addresses.first() {
            props.insert("MDNS_ADDRESS".into(), first.to_string());
            props.insert(
                "MDNS_ADDRESSES".into(),
                addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        let mut kept = 0;
        for (key, value) in service.txt_records() {
            if kept == MAX_TXT_VARIABLES {
                break;
            }
            let len = key.len() + value.map_or(0, |v| 1 + v.len());
            if len > self.max_txt_bytes {
                continue;
            }
            let name = env::prefixed("MDNS_TXT", key);
            // Two keys that sanitise alike ("fw-rev", "fw.rev"): the first one sent wins.
            if let std::collections::btree_map::Entry::Vacant(e) = props.entry(name) {
                e.insert(value.map(text).unwrap_or_default());
                kept += 1;
            }
        }
        props
    }
}

/// Most services one Configuration keeps track of; more are ignored until some leave, so
/// a flood of announcements cannot grow memory without bound.
pub const MAX_SERVICES: usize = 1024;

/// The services a Configuration wants, as the browse events left them. Pure: events go
/// in, snapshots come out.
#[derive(Clone, Debug)]
pub struct Services {
    selection: Selection,
    devices: BTreeMap<String, Device>,
    /// Services seen but left out, with the field of the filter that left each out (for
    /// the counts of [`Services::tally`]); as bounded as the devices.
    dropped: BTreeMap<String, &'static str>,
    limit: usize,
}

/// What an event did to the set of services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The set of devices (or one of them) changed.
    Changed,
    Unchanged,
    /// A new service was ignored: the set is full.
    Full,
}

impl Services {
    pub fn new(selection: Selection) -> Self {
        Self::with_limit(selection, MAX_SERVICES)
    }

    pub fn with_limit(selection: Selection, limit: usize) -> Self {
        Self {
            selection,
            devices: BTreeMap::new(),
            dropped: BTreeMap::new(),
            limit,
        }
    }

    /// A service was resolved, or resolved again with new records. One that no longer
    /// passes the filters (its TXT records changed) leaves. A service left out changes the
    /// counts only: the snapshot goes out again, with the same devices.
    pub fn resolved(&mut self, service: &Service) -> Change {
        match self.selection.device(service) {
            Some(device) => {
                self.dropped.remove(&device.id);
                let full = self.devices.len() >= self.limit;
                match self.devices.get_mut(&device.id) {
                    Some(known) if *known == device => Change::Unchanged,
                    Some(known) => {
                        *known = device;
                        Change::Changed
                    }
                    None if full => Change::Full,
                    None => {
                        self.devices.insert(device.id.clone(), device);
                        Change::Changed
                    }
                }
            }
            None => {
                let field = self
                    .selection
                    .dropped_by(service)
                    .unwrap_or("instanceNames");
                let left = self.devices.remove(&service.full_name).is_some();
                let known = self.dropped.get(&service.full_name) == Some(&field);
                if !known && self.dropped.len() < self.limit {
                    self.dropped.insert(service.full_name.clone(), field);
                    return Change::Changed;
                }
                if left {
                    Change::Changed
                } else {
                    Change::Unchanged
                }
            }
        }
    }

    /// A service said goodbye, or its records expired.
    pub fn removed(&mut self, full_name: &str) -> Change {
        let dropped = self.dropped.remove(full_name).is_some();
        match self.devices.remove(full_name) {
            Some(_) => Change::Changed,
            None if dropped => Change::Changed,
            None => Change::Unchanged,
        }
    }

    /// Reports the services known now as a round: each found or left out by a filter.
    pub fn tally(&self, progress: &Progress) {
        let round = progress.round(self.devices.len() + self.dropped.len());
        round.targets(self.devices.len(), Verdict::Found(1));
        for field in self.dropped.values() {
            round.target(Verdict::Dropped(field));
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(self.devices.values().cloned().collect())
    }
}

/// Addresses in the order a broker should try them: IPv4, then routable IPv6, then
/// link-local IPv6; each group in numeric order, duplicates dropped.
pub fn sorted_addresses(addresses: &[IpAddr]) -> Vec<IpAddr> {
    let rank = |a: &IpAddr| match a {
        IpAddr::V4(_) => 0,
        IpAddr::V6(v6) if v6.is_unicast_link_local() => 2,
        IpAddr::V6(_) => 1,
    };
    let mut sorted = addresses.to_vec();
    sorted.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    sorted.dedup();
    sorted
}

/// A TXT value or name as environment text: invalid UTF-8 replaced, control characters
/// dropped.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dowser_discovery_api::{Filter, details::mdns::TxtRecordFilter};

    fn details() -> MdnsDetails {
        serde_json::from_value(serde_json::json!({"serviceTypes": ["_http._tcp.local."]})).unwrap()
    }

    fn service(name: &str, txt: &[(&str, Option<&str>)]) -> Service {
        Service {
            service_type: "_http._tcp.local.".into(),
            full_name: format!("{name}._http._tcp.local."),
            host: "press-7.local.".into(),
            port: 8080,
            addresses: vec!["127.0.0.1".parse().unwrap()],
            txt: txt
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(|v| v.as_bytes().to_vec())))
                .collect(),
        }
    }

    fn txt_filter(key: &str, include: &[&str], exclude: &[&str]) -> TxtRecordFilter {
        TxtRecordFilter {
            key: key.into(),
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn device_id_and_environment() {
        let s = service(
            "Press 7",
            &[("vendor", Some("Acme")), ("fw-rev", Some("4.2"))],
        );
        let d = Selection::new(&details()).unwrap().device(&s).unwrap();
        assert_eq!(d.id, "Press 7._http._tcp.local.");
        let p = &d.properties;
        assert_eq!(p["MDNS_INSTANCE_NAME"], "Press 7");
        assert_eq!(p["MDNS_SERVICE_TYPE"], "_http._tcp.local.");
        assert_eq!(p["MDNS_HOST"], "press-7.local");
        assert_eq!(p["MDNS_PORT"], "8080");
        assert_eq!(p["MDNS_ADDRESS"], "127.0.0.1");
        assert_eq!(p["MDNS_ADDRESSES"], "127.0.0.1");
        assert_eq!(p["MDNS_TXT_VENDOR"], "Acme");
        assert_eq!(p["MDNS_TXT_FW_REV"], "4.2");
        assert!(p.keys().all(|k| env::is_valid(k)));
    }

    #[test]
    fn instance_name_with_dots_and_foreign_suffix() {
        let mut s = service("Line 3.Press 7", &[]);
        assert_eq!(s.instance_name(), "Line 3.Press 7");
        s.full_name = "odd-name".into();
        assert_eq!(s.instance_name(), "odd-name");
    }

    #[test]
    fn addresses_are_ordered_so_that_arrival_order_does_not_matter() {
        let a: Vec<IpAddr> = [
            "fe80::1",
            "2001:db8::2",
            "10.0.0.9",
            "10.0.0.10",
            "10.0.0.9",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut b = a.clone();
        b.reverse();
        let shown = |v: &[IpAddr]| {
            sorted_addresses(v)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            shown(&a),
            ["10.0.0.9", "10.0.0.10", "2001:db8::2", "fe80::1"]
        );
        assert_eq!(shown(&a), shown(&b));
        let sel = Selection::new(&details()).unwrap();
        let mut s1 = service("x", &[]);
        s1.addresses = a;
        let mut s2 = s1.clone();
        s2.addresses = b;
        assert_eq!(sel.device(&s1), sel.device(&s2));
        assert_eq!(
            sel.device(&s1).unwrap().properties["MDNS_ADDRESSES"],
            "10.0.0.9,10.0.0.10,2001:db8::2,fe80::1"
        );
    }

    #[test]
    fn no_addresses_no_address_variables() {
        let mut s = service("x", &[]);
        s.addresses.clear();
        let p = Selection::new(&details())
            .unwrap()
            .device(&s)
            .unwrap()
            .properties;
        assert!(!p.contains_key("MDNS_ADDRESS") && !p.contains_key("MDNS_ADDRESSES"));
    }

    #[test]
    fn instance_name_filter() {
        let mut d = details();
        d.instance_names = Some(Filter {
            include: vec!["Press .*".into()],
            exclude: vec![".*Test.*".into()],
        });
        let sel = Selection::new(&d).unwrap();
        assert!(sel.accepts(&service("Press 7", &[])));
        assert!(!sel.accepts(&service("Press Test 1", &[])));
        assert!(!sel.accepts(&service("Oven 2", &[])));
    }

    #[test]
    fn txt_filters_need_the_key_and_a_passing_value() {
        let mut d = details();
        d.txt_records = vec![
            txt_filter("Vendor", &["Acme.*"], &[]),
            txt_filter("secure", &[], &[]),
        ];
        let sel = Selection::new(&d).unwrap();
        // Keys are case-insensitive; `secure` as a boolean attribute is present.
        assert!(sel.accepts(&service(
            "a",
            &[("VENDOR", Some("Acme Corp")), ("secure", None)]
        )));
        assert!(!sel.accepts(&service("b", &[("vendor", Some("Acme Corp"))])));
        assert!(!sel.accepts(&service(
            "c",
            &[("vendor", Some("Other")), ("secure", None)]
        )));
        // A boolean attribute has no value: it fails an include.
        assert!(!sel.accepts(&service("d", &[("vendor", None), ("secure", None)])));
        // Only the first occurrence of a key counts.
        assert!(!sel.accepts(&service(
            "e",
            &[
                ("vendor", Some("Other")),
                ("vendor", Some("Acme")),
                ("secure", Some("1"))
            ]
        )));
    }

    #[test]
    fn txt_exclude_only() {
        let mut d = details();
        d.txt_records = vec![txt_filter("mode", &[], &["test"])];
        let sel = Selection::new(&d).unwrap();
        assert!(sel.accepts(&service("a", &[("mode", Some("prod"))])));
        assert!(!sel.accepts(&service("b", &[("mode", Some("test"))])));
        assert!(!sel.accepts(&service("c", &[])), "the key must be there");
    }

    #[test]
    fn txt_environment_is_bounded() {
        let mut d = details();
        d.max_txt_value_bytes = 16;
        let mut txt: Vec<(String, Option<String>)> = vec![
            ("long".into(), Some("x".repeat(200))),
            ("exact".into(), Some("y".repeat(10))), // 5 + 1 + 10 = 16 bytes
            ("flag".into(), None),
        ];
        for i in 0..200 {
            txt.push((format!("k{i:03}"), Some("v".into())));
        }
        let txt: Vec<(&str, Option<&str>)> = txt
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        let p = Selection::new(&d)
            .unwrap()
            .device(&service("big", &txt))
            .unwrap()
            .properties;
        assert!(!p.contains_key("MDNS_TXT_LONG"));
        assert_eq!(p["MDNS_TXT_EXACT"], "y".repeat(10));
        assert_eq!(p["MDNS_TXT_FLAG"], "");
        let txt_vars = p.keys().filter(|k| k.starts_with("MDNS_TXT_")).count();
        assert_eq!(txt_vars, MAX_TXT_VARIABLES);
        assert!(p.contains_key("MDNS_TXT_K000"));
        assert!(!p.contains_key("MDNS_TXT_K199"));
    }

    #[test]
    fn txt_keys_are_sanitised_and_collisions_keep_the_first() {
        let s = service(
            "a",
            &[
                ("fw-rev", Some("1")),
                ("fw.rev", Some("2")),
                ("9lives", Some("3")),
            ],
        );
        let p = Selection::new(&details())
            .unwrap()
            .device(&s)
            .unwrap()
            .properties;
        assert_eq!(p["MDNS_TXT_FW_REV"], "1");
        assert_eq!(p["MDNS_TXT_9LIVES"], "3");
    }

    #[test]
    fn values_are_made_printable() {
        let mut s = service("bad\u{7}name", &[]);
        s.txt = vec![("v".into(), Some(vec![b'o', b'k', 0, 0xff, b'\n']))];
        let p = Selection::new(&details())
            .unwrap()
            .device(&s)
            .unwrap()
            .properties;
        assert_eq!(p["MDNS_TXT_V"], "ok\u{fffd}");
        assert_eq!(p["MDNS_INSTANCE_NAME"], "badname");
    }

    #[test]
    fn services_follow_resolve_and_remove_events() {
        let mut d = details();
        d.txt_records = vec![txt_filter("vendor", &["Acme"], &[])];
        let mut services = Services::new(Selection::new(&d).unwrap());
        let acme = service("a", &[("vendor", Some("Acme"))]);
        assert_eq!(services.resolved(&acme), Change::Changed);
        assert_eq!(services.resolved(&acme), Change::Unchanged);
        // A service left out changes only the counts, once.
        assert_eq!(services.resolved(&service("b", &[])), Change::Changed);
        assert_eq!(services.resolved(&service("b", &[])), Change::Unchanged);
        assert_eq!(services.snapshot().len(), 1);
        let progress = Progress::enabled();
        services.tally(&progress);
        let counts = progress.state().unwrap();
        assert_eq!((counts.tried, counts.answered, counts.found), (2, 2, 1));
        assert_eq!(
            counts.dropped.into_iter().collect::<Vec<_>>(),
            [("txtRecords", 1)]
        );
        let mut named = d.clone();
        named.instance_names = Some(Filter {
            include: vec!["a".into()],
            exclude: vec![],
        });
        assert_eq!(
            Selection::new(&named)
                .unwrap()
                .dropped_by(&service("b", &[])),
            Some("instanceNames")
        );
        // Its TXT records change so that the filter drops it.
        let other = service("a", &[("vendor", Some("Other"))]);
        assert_eq!(services.resolved(&other), Change::Changed);
        assert!(services.snapshot().is_empty());
        assert_eq!(services.resolved(&acme), Change::Changed);
        let mut moved = acme.clone();
        moved.port = 8081;
        assert_eq!(services.resolved(&moved), Change::Changed);
        assert_eq!(
            services.snapshot().devices()[0].properties["MDNS_PORT"],
            "8081"
        );
        assert_eq!(services.removed(&acme.full_name), Change::Changed);
        assert_eq!(services.removed(&acme.full_name), Change::Unchanged);
        assert!(services.snapshot().is_empty());
        // A service left out that says goodbye leaves the counts.
        assert_eq!(
            services.removed(&service("b", &[]).full_name),
            Change::Changed
        );
        services.tally(&progress);
        assert_eq!(progress.state().unwrap().tried, 0);
    }

    #[test]
    fn the_set_of_services_is_bounded() {
        let mut services = Services::with_limit(Selection::new(&details()).unwrap(), 2);
        assert_eq!(services.resolved(&service("a", &[])), Change::Changed);
        assert_eq!(services.resolved(&service("b", &[])), Change::Changed);
        assert_eq!(services.resolved(&service("c", &[])), Change::Full);
        // Known services still update; a freed place is taken by the next newcomer.
        let mut a = service("a", &[]);
        a.port = 1;
        assert_eq!(services.resolved(&a), Change::Changed);
        services.removed(&service("b", &[]).full_name);
        assert_eq!(services.resolved(&service("c", &[])), Change::Changed);
        assert_eq!(services.snapshot().len(), 2);
    }
}
