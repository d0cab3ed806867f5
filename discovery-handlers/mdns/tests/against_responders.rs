//! The mDNS handler against real responders on loopback, each test in a private network
//! namespace (`unshare --net`) so that no multicast leaves the machine: services of
//! dowser-sim (an mdns-sd responder) and of an independent python-zeroconf responder,
//! appearing, filtered, saying goodbye, and expiring when killed without a goodbye.

use std::time::{Duration, Instant};

use dowser_discovery_api::{DiscoveryHandler, Snapshot, SnapshotStream, details::MdnsDetails};
use dowser_mdns::{MdnsHandler, service::MAX_TXT_VARIABLES};
use dowser_sim::{
    mdns::{MdnsMode, RunningMdns, ServiceConfig},
    netns,
    zeroconf::{ZeroconfResponder, ZeroconfService},
};
use futures::StreamExt;

const EVENTUALLY: Duration = Duration::from_secs(20);

fn block_on(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn details(json: serde_json::Value) -> MdnsDetails {
    serde_json::from_value(json).expect("valid mdns details")
}

fn discover(details: MdnsDetails) -> SnapshotStream {
    MdnsHandler.discover(details, Default::default())
}

fn ids(s: &Snapshot) -> Vec<&str> {
    s.devices().iter().map(|d| d.id.as_str()).collect()
}

/// Reads snapshots until one satisfies `want`; fails with the last one seen.
async fn until(
    stream: &mut SnapshotStream,
    what: &str,
    want: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = Instant::now() + EVENTUALLY;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(s))) if want(&s) => return s,
            Ok(Some(Ok(s))) => last = Some(s),
            Ok(Some(Err(e))) => panic!("discovery failed while waiting for {what}: {e}"),
            Ok(None) => panic!("the snapshot stream ended while waiting for {what}"),
            Err(_) => panic!("no snapshot with {what} within {EVENTUALLY:?}; last: {last:#?}"),
        }
    }
}

fn sim_fleet() -> Vec<ServiceConfig> {
    vec![
        ServiceConfig::new("Press 7", "_opcua-tcp._tcp.local.", 4840)
            .with_txt("vendor", "Acme Automation")
            .with_txt("fw-rev", "4.2"),
        ServiceConfig::new("Press 8", "_opcua-tcp._tcp.local.", 4841).with_txt("vendor", "Other"),
        ServiceConfig::new("Test Rig", "_opcua-tcp._tcp.local.", 4842)
            .with_txt("vendor", "Acme Automation"),
        ServiceConfig::new("Oven 2", "_http._tcp.local.", 8080).with_txt("vendor", "Acme Ovens"),
        ServiceConfig::new("Meter 1", "_modbus._tcp.local.", 502).with_txt("vendor", "Acme"),
    ]
}

#[test]
fn sim_services_are_found_filtered_and_leave_with_goodbyes() {
    netns::run(
        "sim_services_are_found_filtered_and_leave_with_goodbyes",
        || {
            block_on(async {
                let sim = RunningMdns::start(&sim_fleet()).unwrap();
                let mut stream = discover(details(serde_json::json!({
                    "serviceTypes": ["_opcua-tcp._tcp.local.", "_http._tcp.local."],
                    "instanceNames": {"exclude": ["Test.*"]},
                    "txtRecords": [{"key": "Vendor", "include": ["Acme.*"]}],
                })));
                let expected = ["Oven 2._http._tcp.local.", "Press 7._opcua-tcp._tcp.local."];
                let s = until(&mut stream, "Oven 2 and Press 7", |s| ids(s) == expected).await;
                let p = &s.devices()[1].properties;
                assert_eq!(p["MDNS_INSTANCE_NAME"], "Press 7");
                assert_eq!(p["MDNS_SERVICE_TYPE"], "_opcua-tcp._tcp.local.");
                assert_eq!(p["MDNS_HOST"], "dowser-sim.local");
                assert_eq!(p["MDNS_PORT"], "4840");
                assert_eq!(p["MDNS_ADDRESS"], "127.0.0.1");
                assert_eq!(p["MDNS_ADDRESSES"], "127.0.0.1");
                assert_eq!(p["MDNS_TXT_VENDOR"], "Acme Automation");
                assert_eq!(p["MDNS_TXT_FW_REV"], "4.2");

                // Goodbye packets remove it; announcing it again brings it back.
                sim.withdraw("Press 7").unwrap();
                until(&mut stream, "Press 7 gone", |s| {
                    ids(s) == ["Oven 2._http._tcp.local."]
                })
                .await;
                sim.announce("Press 7").unwrap();
                until(&mut stream, "Press 7 back", |s| ids(s) == expected).await;

                // The whole responder going away says goodbye for everything.
                drop(sim);
                until(&mut stream, "no services", Snapshot::is_empty).await;
            })
        },
    );
}

#[test]
fn a_giant_txt_record_is_bounded() {
    netns::run("a_giant_txt_record_is_bounded", || {
        block_on(async {
            let _sim = RunningMdns::start(&[ServiceConfig::new("Chatty", "_http._tcp.local.", 80)
                .with_txt("vendor", "Acme")
                .with_mode(MdnsMode::GiantTxt)])
            .unwrap();
            let mut stream = discover(details(serde_json::json!({
                "serviceTypes": ["_http._tcp.local."],
                "maxTxtValueBytes": 128,
            })));
            let s = until(&mut stream, "the chatty service", |s| s.len() == 1).await;
            let p = &s.devices()[0].properties;
            assert_eq!(p["MDNS_TXT_VENDOR"], "Acme");
            assert!(
                !p.contains_key("MDNS_TXT_GIANT"),
                "a record over maxTxtValueBytes is left out"
            );
            let txt = p.keys().filter(|k| k.starts_with("MDNS_TXT_")).count();
            assert_eq!(txt, MAX_TXT_VARIABLES, "TXT variables are bounded");
            let bytes: usize = p.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert!(bytes < 64 * 128 + 1024, "environment of {bytes} bytes");
        })
    });
}

#[test]
fn browses_only_the_configured_interfaces() {
    netns::run("browses_only_the_configured_interfaces", || {
        block_on(async {
            let _sim =
                RunningMdns::start(&[ServiceConfig::new("Oven 2", "_http._tcp.local.", 8080)])
                    .unwrap();
            let mut on_lo = discover(details(serde_json::json!({
                "serviceTypes": ["_http._tcp.local."],
                "interfaces": {"include": ["lo"]},
            })));
            let mut elsewhere = discover(details(serde_json::json!({
                "serviceTypes": ["_http._tcp.local."],
                "interfaces": {"include": ["eth.*", "en.*"]},
            })));
            let (found, first_elsewhere) = tokio::join!(
                until(&mut on_lo, "the service on lo", |s| s.len() == 1),
                elsewhere.next()
            );
            assert_eq!(ids(&found), ["Oven 2._http._tcp.local."]);
            // Both browsed for the same first second: only loopback has the service.
            assert!(first_elsewhere.unwrap().unwrap().is_empty());
        })
    });
}

#[test]
fn zeroconf_services_appear_and_leave_with_goodbyes() {
    netns::run("zeroconf_services_appear_and_leave_with_goodbyes", || {
        block_on(async {
            let mut peer = ZeroconfResponder::start().unwrap();
            let mut stream = discover(details(serde_json::json!({
                "serviceTypes": ["_opcua-tcp._tcp.local."],
                "txtRecords": [{"key": "vendor", "include": ["Acme.*"]}],
            })));
            // Browsing starts before anything is there.
            let first = stream.next().await.unwrap().unwrap();
            assert!(first.is_empty(), "{first:?}");

            let wanted = ZeroconfService::new("Press 9", "_opcua-tcp._tcp.local.", 4840)
                .with_txt("vendor", "Acme Automation")
                .with_txt("path", "/UA/Press9");
            let other = ZeroconfService::new("Press 10", "_opcua-tcp._tcp.local.", 4841)
                .with_txt("vendor", "Somebody Else");
            peer.register(&other).unwrap();
            peer.register(&wanted).unwrap();
            let s = until(&mut stream, "Press 9", |s| {
                ids(s) == ["Press 9._opcua-tcp._tcp.local."]
            })
            .await;
            let p = &s.devices()[0].properties;
            assert_eq!(p["MDNS_HOST"], "zeroconf-peer.local");
            assert_eq!(p["MDNS_PORT"], "4840");
            assert_eq!(p["MDNS_ADDRESSES"], "127.0.0.1");
            assert_eq!(p["MDNS_TXT_VENDOR"], "Acme Automation");
            assert_eq!(p["MDNS_TXT_PATH"], "/UA/Press9");

            peer.unregister(&wanted).unwrap();
            until(&mut stream, "Press 9 gone", Snapshot::is_empty).await;
        })
    });
}

#[test]
fn a_zeroconf_responder_killed_without_goodbye_expires() {
    netns::run(
        "a_zeroconf_responder_killed_without_goodbye_expires",
        || {
            block_on(async {
                let mut peer = ZeroconfResponder::start().unwrap();
                let mut stream = discover(details(serde_json::json!({
                    "serviceTypes": ["_http._tcp.local."],
                })));
                let service =
                    ZeroconfService::new("Short Lived", "_http._tcp.local.", 8080).with_ttl(3);
                peer.register(&service).unwrap();
                until(&mut stream, "the service", |s| s.len() == 1).await;
                // SIGKILL: no goodbye. The records expire after their TTL, unrefreshed.
                peer.kill();
                until(&mut stream, "the service expired", Snapshot::is_empty).await;
            })
        },
    );
}
