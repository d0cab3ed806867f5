//! Property tests (fuzzing on the stable toolchain) for what OPC UA servers report:
//! arbitrary application names, URIs and URLs, and endpoint lists. URLs split and mend
//! without panics and round-trip; the device's environment is valid, printable and
//! bounded; the endpoint handed to brokers is acceptable, the best by the server's own
//! ranking, and the same whatever order the endpoints arrived in.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 256; the benchmark
//! command runs far more).

use std::net::Ipv6Addr;

use dowser_discovery_api::{
    details::opcua::{EndpointPreference, SecurityMode, SecurityPolicy},
    env,
};
use dowser_opcua::select::{
    Application, ApplicationKind, Endpoint, Selection, device, split_url, with_host,
};
use proptest::prelude::*;

/// Longest value handed to a broker, in bytes.
const MAX_VALUE_BYTES: usize = 1024;

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,20}(\\.[a-z0-9-]{1,10}){0,3}",
        any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
        any::<u128>().prop_map(|n| format!("[{}]", Ipv6Addr::from(n))),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "/[ -~]{0,30}"]
}

fn url() -> impl Strategy<Value = String> {
    prop_oneof![
        (host(), any::<u16>(), path()).prop_map(|(h, p, path)| format!("opc.tcp://{h}:{p}{path}")),
        "opc\\.tcp://[ -~]{0,40}",
        "(?s).{0,60}",
        "(?s).{0,2000}",
    ]
}

fn mode() -> impl Strategy<Value = SecurityMode> {
    prop_oneof![
        Just(SecurityMode::None),
        Just(SecurityMode::Sign),
        Just(SecurityMode::SignAndEncrypt)
    ]
}

fn policy() -> impl Strategy<Value = SecurityPolicy> {
    prop_oneof![
        Just(SecurityPolicy::None),
        Just(SecurityPolicy::Basic128Rsa15),
        Just(SecurityPolicy::Basic256),
        Just(SecurityPolicy::Basic256Sha256),
        Just(SecurityPolicy::Aes128Sha256RsaOaep),
        Just(SecurityPolicy::Aes256Sha256RsaPss),
    ]
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (
        url(),
        prop_oneof![
            "(None|Basic256|Basic256Sha256|Aes128_Sha256_RsaOaep|Aes256_Sha256_RsaPss)"
                .prop_map(|p| format!("http://opcfoundation.org/UA/SecurityPolicy#{p}")),
            "(?s).{0,80}",
        ],
        mode(),
        any::<u8>(),
    )
        .prop_map(|(url, policy_uri, mode, level)| Endpoint {
            url,
            policy_uri,
            mode,
            level,
        })
}

fn application() -> impl Strategy<Value = Application> {
    (
        "(?s).{0,1500}",
        "(?s).{0,1500}",
        "(?s).{0,100}",
        prop::collection::vec(url(), 0..4),
    )
        .prop_map(|(uri, name, product_uri, discovery_urls)| Application {
            uri,
            name,
            product_uri,
            kind: ApplicationKind::Server,
            discovery_urls,
        })
}

fn selection() -> impl Strategy<Value = Selection> {
    (
        proptest::option::of(policy()),
        proptest::option::of(mode()),
        any::<bool>(),
    )
        .prop_map(|(policy, mode, least)| Selection {
            policy,
            mode,
            preference: if least {
                EndpointPreference::LeastSecure
            } else {
                EndpointPreference::MostSecure
            },
            ..Selection::default()
        })
}

proptest! {
    // proptest's default: 256 cases, or PROPTEST_CASES; failures are reported, not stored.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_url_splits_or_is_refused(u in url()) {
        if let Some((host, _port, path)) = split_url(&u) {
            prop_assert!(!host.is_empty());
            prop_assert!(path.is_empty() || path.starts_with('/'));
            prop_assert!(u.starts_with("opc.tcp://"));
        }
        // Mending never panics, and leaves what is not an opc.tcp URL alone.
        let mended = with_host(&u, "10.0.7.3");
        if split_url(&u).is_none() {
            prop_assert_eq!(mended, u);
        }
    }

    #[test]
    fn urls_round_trip_and_mend(h in host(), port in any::<u16>(), p in path(), other in host()) {
        let u = format!("opc.tcp://{h}:{port}{p}");
        prop_assert_eq!(split_url(&u), Some((h.as_str(), port, p.as_str())));
        let mended = with_host(&u, &other);
        prop_assert_eq!(split_url(&mended), Some((other.as_str(), port, p.as_str())));
    }

    #[test]
    fn the_device_environment_is_valid_printable_and_bounded(
        app in application(),
        discovery_url in url(),
        endpoints in prop::collection::vec(endpoint(), 1..20),
        pick in any::<prop::sample::Index>(),
    ) {
        let best = pick.get(&endpoints);
        let d = device(&app, &discovery_url, &endpoints, best);
        prop_assert_eq!(&d.id, &app.uri);
        for (k, v) in &d.properties {
            prop_assert!(env::is_valid(k), "{k:?}");
            prop_assert!(v.len() <= MAX_VALUE_BYTES, "{k}: {} bytes", v.len());
            prop_assert!(!v.chars().any(char::is_control), "{k}={v:?}");
        }
    }

    #[test]
    fn the_endpoint_chosen_is_acceptable_best_and_order_free(
        sel in selection(),
        mut endpoints in prop::collection::vec(endpoint(), 0..30),
    ) {
        let chosen = sel.best(&endpoints).cloned();
        match &chosen {
            None => prop_assert!(!endpoints.iter().any(|e| sel.accepts(e))),
            Some(best) => {
                prop_assert!(sel.accepts(best));
                prop_assert!(best.url.starts_with("opc.tcp://"));
                let levels = endpoints.iter().filter(|e| sel.accepts(e)).map(|e| e.level);
                let want = match sel.preference {
                    EndpointPreference::MostSecure => levels.max(),
                    EndpointPreference::LeastSecure => levels.min(),
                };
                prop_assert_eq!(Some(best.level), want);
            }
        }
        endpoints.reverse();
        prop_assert_eq!(sel.best(&endpoints).cloned(), chosen);
    }
}
