//! Property tests (fuzzing on the stable toolchain) for what the API crate parses from
//! users: Modbus target expressions and unit-id ranges, filters, environment names and
//! values. Arbitrary input gives a value or an error, never a panic, and
//! what is accepted keeps its promises (bounded address counts, valid names).
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 256; the benchmark
//! command runs far more).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use dowser_discovery_api::{
    Filter,
    details::modbus::{MAX_TARGET_ADDRESSES, ModbusDetails, Target, parse_unit_range},
    env,
};
use proptest::prelude::*;

/// Strings that look like targets: addresses, CIDRs, ranges, host:port, and their near
/// misses, mixed with arbitrary text.
fn target_text() -> impl Strategy<Value = String> {
    let v4 = any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string());
    let v6 = any::<u128>().prop_map(|n| Ipv6Addr::from(n).to_string());
    let ip = prop_oneof![v4.clone(), v6.clone()];
    prop_oneof![
        ".{0,40}",
        "[0-9a-f:.\\[\\]/ -]{0,40}",
        ip.clone(),
        (ip.clone(), 0u8..=140).prop_map(|(ip, p)| format!("{ip}/{p}")),
        (v4.clone(), any::<u8>()).prop_map(|(a, b)| format!("{a}-{b}")),
        (ip.clone(), ip.clone()).prop_map(|(a, b)| format!("{a}-{b}")),
        (v4.clone(), any::<u32>()).prop_map(|(a, p)| format!("{a}:{p}")),
        (v6.clone(), any::<u32>()).prop_map(|(a, p)| format!("[{a}]:{p}")),
        (
            "[a-z][a-z0-9-]{0,20}(\\.[a-z0-9-]{1,10}){0,3}",
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(h, p)| match p {
                Some(p) => format!("{h}:{p}"),
                None => h,
            }),
    ]
}

fn unit_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,12}",
        "[0-9 -]{0,9}",
        any::<u16>().prop_map(|n| n.to_string()),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| format!("{a}-{b}")),
    ]
}

proptest! {
    // proptest's default: 256 cases, or PROPTEST_CASES; failures are reported, not stored.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_target_text_parses_or_is_refused(s in target_text()) {
        let Ok(t) = Target::from_str(&s) else { return Ok(()) };
        let n = t.address_count();
        prop_assert!(n >= 1, "{s:?} names no address");
        if let Target::Network(_) = t {
            prop_assert!(n <= MAX_TARGET_ADDRESSES, "{s:?}: a CIDR wider than allowed");
        }
        // What a scan would walk matches the count (walked only when small).
        if n <= 4096 {
            prop_assert_eq!(t.hosts().count() as u128, n, "{:?}", s);
        }
    }

    #[test]
    fn addresses_round_trip(ip in prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
    ]) {
        prop_assert_eq!(
            Target::from_str(&ip.to_string()),
            Ok(Target::Address { ip, port: None })
        );
    }

    #[test]
    fn short_ranges_parse_to_what_they_say(a in any::<[u8; 4]>(), last in any::<u8>()) {
        let start = Ipv4Addr::from(a);
        let s = format!("{start}-{last}");
        let end = Ipv4Addr::new(a[0], a[1], a[2], last);
        match Target::from_str(&s) {
            Ok(Target::Range { start: s0, end: e0 }) => {
                prop_assert!(a[3] <= last);
                prop_assert_eq!((s0, e0), (IpAddr::V4(start), IpAddr::V4(end)));
            }
            Ok(other) => prop_assert!(false, "{s:?} parsed as {other:?}"),
            Err(_) => prop_assert!(a[3] > last, "{s:?} refused"),
        }
    }

    #[test]
    fn validated_targets_stay_within_max_addresses(
        targets in prop::collection::vec(target_text(), 0..6),
        max in 1u32..=65536,
    ) {
        let mut d = ModbusDetails { targets, max_addresses: max, ..ModbusDetails::default() };
        d.unit_ids = vec!["1".into()];
        if d.validate("spec.discovery.modbus").is_empty() {
            let total: u128 = d.parsed_targets().iter().map(Target::address_count).sum();
            prop_assert!(total <= u128::from(max));
            prop_assert_eq!(d.parsed_targets().len(), d.targets.len());
        }
    }

    #[test]
    fn unit_id_ranges(s in unit_text()) {
        match parse_unit_range(&s) {
            Ok(r) => {
                prop_assert!(r.start() <= r.end());
                // What the text says, read by hand.
                let parts: Vec<u16> = s.split('-').map(|p| p.trim().parse().unwrap()).collect();
                prop_assert_eq!(u16::from(*r.start()), parts[0]);
                prop_assert_eq!(u16::from(*r.end()), *parts.last().unwrap());
            }
            Err(e) => {
                let quoted = format!("{s:?}");
                prop_assert!(e.contains(&quoted));
            }
        }
    }

    #[test]
    fn unit_id_lists_are_sorted_unique_and_inside_their_ranges(
        ids in prop::collection::vec(unit_text(), 1..8),
        rtu_line in any::<bool>(),
    ) {
        let mut d = ModbusDetails { unit_ids: ids, ..ModbusDetails::default() };
        if rtu_line {
            d.targets.clear();
            d.rtu = serde_json::from_value(serde_json::json!({"lines": [{"path": "/dev/ttyS0"}]})).ok();
        } else {
            d.targets = vec!["127.0.0.1".into()];
        }
        let valid = d.validate("m").is_empty();
        let list = d.unit_id_list();
        prop_assert!(list.windows(2).all(|w| w[0] < w[1]));
        for id in &list {
            prop_assert!(d.unit_ids.iter().filter_map(|s| parse_unit_range(s).ok()).any(|r| r.contains(id)));
        }
        if valid && rtu_line {
            prop_assert!(list.iter().all(|id| (1..=247).contains(id)));
        }
    }

    #[test]
    fn filters_validate_exactly_when_they_compile(
        include in prop::collection::vec("[a-z.*+?()\\[\\]{}|\\\\^$0-9,-]{1,20}", 0..4),
        exclude in prop::collection::vec(".{1,20}", 0..3),
        value in ".{0,30}",
    ) {
        let f = Filter { include, exclude };
        let errors = f.validate("f");
        match f.compile() {
            Ok(c) => {
                prop_assert!(errors.is_empty());
                let _ = c.accepts(Some(&value));
                prop_assert_eq!(c.accepts(None), f.include.is_empty());
            }
            Err(_) => prop_assert!(!errors.is_empty()),
        }
    }

    #[test]
    fn environment_names_are_always_valid(key in ".{0,64}", prefix in "[A-Z_]{1,10}", hash in "[0-9a-f]{12}") {
        prop_assert!(env::is_valid(&env::sanitize(&key)));
        let name = env::prefixed(&prefix, &key);
        prop_assert!(env::is_valid(&name));
        prop_assert!(env::is_valid(&env::with_hash(&name, &hash)));
        // Sanitising is idempotent: a valid name is left alone.
        prop_assert_eq!(env::sanitize(&name), name.clone());
    }

    #[test]
    fn environment_values_are_printable_and_bounded(value in "(?s).{0,300}", max in 0usize..300) {
        let v = env::printable_value(&value, max);
        prop_assert!(v.len() <= max);
        prop_assert!(!v.chars().any(char::is_control));
        prop_assert_eq!(v.trim(), v.as_str());
    }
}
