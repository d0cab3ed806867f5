//! Property tests (fuzzing on the stable toolchain) for what an mDNS responder announces:
//! arbitrary instance names, hosts, addresses and TXT records (any bytes, duplicate and
//! empty keys, hundreds of records) become a device whose environment names are valid,
//! whose TXT variables are bounded in number and size, and which does not depend on the
//! order the addresses arrived in; a stream of resolve and goodbye events never grows the
//! set of services past its limit.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 256; the benchmark
//! command runs far more).

use std::net::{IpAddr, Ipv6Addr};

use dowser_discovery_api::{details::MdnsDetails, env};
use dowser_mdns::service::{Change, MAX_TXT_VARIABLES, Selection, Service, Services};
use proptest::prelude::*;

const SERVICE_TYPE: &str = "_opcua-tcp._tcp.local.";

fn details(max_txt_value_bytes: u32) -> MdnsDetails {
    let mut d: MdnsDetails =
        serde_json::from_value(serde_json::json!({"serviceTypes": [SERVICE_TYPE]})).unwrap();
    d.max_txt_value_bytes = max_txt_value_bytes;
    d
}

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        any::<u64>().prop_map(|n| IpAddr::V6(Ipv6Addr::from((0xfe80u128 << 112) | u128::from(n)))),
    ]
}

fn txt_record() -> impl Strategy<Value = (String, Option<Vec<u8>>)> {
    (
        prop_oneof![".{0,12}", "[a-zA-Z-]{1,6}", "(?s).{0,255}"],
        proptest::option::of(prop_oneof![
            prop::collection::vec(any::<u8>(), 0..=255),
            "[ -~]{0,20}".prop_map(String::into_bytes),
        ]),
    )
}

fn service() -> impl Strategy<Value = Service> {
    (
        prop_oneof![
            "(?s).{0,80}".prop_map(|n| format!("{n}.{SERVICE_TYPE}")),
            "(?s).{0,80}",
        ],
        "(?s).{0,80}",
        any::<u16>(),
        prop::collection::vec(address(), 0..6),
        prop::collection::vec(txt_record(), 0..100),
    )
        .prop_map(|(full_name, host, port, addresses, txt)| Service {
            service_type: SERVICE_TYPE.into(),
            full_name,
            host,
            port,
            addresses,
            txt,
        })
}

proptest! {
    // proptest's default: 256 cases, or PROPTEST_CASES; failures are reported, not stored.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_announcement_gives_a_bounded_valid_environment(
        s in service(),
        max in prop_oneof![Just(255u32), 1u32..=4096],
    ) {
        let device = Selection::new(&details(max)).unwrap().device(&s).expect("no filters: kept");
        prop_assert_eq!(&device.id, &s.full_name);
        let p = &device.properties;
        prop_assert!(p.keys().all(|k| env::is_valid(k)), "{:?}", p.keys().collect::<Vec<_>>());
        let txt: Vec<(&String, &String)> =
            p.iter().filter(|(k, _)| k.starts_with("MDNS_TXT_")).collect();
        prop_assert!(txt.len() <= MAX_TXT_VARIABLES);
        for (k, v) in &txt {
            prop_assert!(!v.chars().any(char::is_control), "{k}={v:?}");
            // A record of at most `max` bytes; an invalid byte becomes U+FFFD (3 bytes).
            prop_assert!(v.len() <= 3 * max as usize, "{k}: {} bytes", v.len());
        }
        prop_assert!(!p["MDNS_INSTANCE_NAME"].chars().any(char::is_control));
        prop_assert_eq!(&p["MDNS_PORT"], &s.port.to_string());
        prop_assert_eq!(p.contains_key("MDNS_ADDRESS"), !s.addresses.is_empty());
    }

    #[test]
    fn the_order_addresses_arrive_in_changes_nothing(
        s in service(),
        rotate in 0usize..6,
    ) {
        let sel = Selection::new(&details(255)).unwrap();
        let mut shuffled = s.clone();
        shuffled.addresses.reverse();
        if !shuffled.addresses.is_empty() {
            let n = rotate % shuffled.addresses.len();
            shuffled.addresses.rotate_left(n);
        }
        prop_assert_eq!(sel.device(&s), sel.device(&shuffled));
    }

    #[test]
    fn the_set_of_services_stays_within_its_limit(
        events in prop::collection::vec((any::<bool>(), 0usize..12, 0u16..3), 0..80),
        limit in 1usize..6,
    ) {
        let mut services = Services::with_limit(Selection::new(&details(255)).unwrap(), limit);
        let mut model = std::collections::BTreeMap::new();
        for (resolve, who, port) in events {
            let s = Service {
                service_type: SERVICE_TYPE.into(),
                full_name: format!("s{who}.{SERVICE_TYPE}"),
                host: "h.local.".into(),
                port,
                ..Service::default()
            };
            let change = if resolve { services.resolved(&s) } else { services.removed(&s.full_name) };
            // A simple model of the rule: known names update, newcomers wait for a place.
            let want = if resolve {
                match model.get(&s.full_name) {
                    Some(p) if *p == port => Change::Unchanged,
                    Some(_) => Change::Changed,
                    None if model.len() >= limit => Change::Full,
                    None => Change::Changed,
                }
            } else if model.contains_key(&s.full_name) {
                Change::Changed
            } else {
                Change::Unchanged
            };
            if resolve && want != Change::Full {
                model.insert(s.full_name.clone(), port);
            } else if !resolve {
                model.remove(&s.full_name);
            }
            prop_assert_eq!(change, want);
            prop_assert!(services.snapshot().len() <= limit);
            prop_assert_eq!(services.snapshot().len(), model.len());
        }
    }
}
