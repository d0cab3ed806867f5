//! The ONVIF handler against dowser-sim's cameras (a good one, one that demands
//! credentials, one whose device service is silent, one that answers garbage) and against
//! python `wsdiscovery` announcing a camera, each test in a private network namespace so that
//! WS-Discovery multicast stays on this machine.

use std::{
    io::{BufRead, BufReader, Write},
    process::Stdio,
    time::Duration,
};

use dowser_discovery_api::{DiscoveryHandler, Properties, Snapshot, details::OnvifDetails};
use dowser_onvif::{OnvifHandler, scan};
use dowser_sim::{
    Fleet, FleetConfig, netns,
    onvif::{CameraConfig, Mode},
    peers::{self, Peer},
};
use futures::StreamExt;

fn details(json: serde_json::Value) -> OnvifDetails {
    let mut base = serde_json::json!({"probeWindowMs": 700, "timeoutMs": 1000});
    base.as_object_mut()
        .unwrap()
        .extend(json.as_object().unwrap().clone());
    serde_json::from_value(base).unwrap()
}

fn login(password: &str) -> Properties {
    [("USERNAME", "operator"), ("PASSWORD", password)]
        .into_iter()
        .collect()
}

fn ids(s: &Snapshot) -> Vec<String> {
    s.devices().iter().map(|d| d.id.clone()).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn cameras() -> Vec<CameraConfig> {
    let mut gate = CameraConfig::new("AXIS", "P1346", "00408C1836B2");
    gate.scopes = vec![
        "onvif://www.onvif.org/location/line3".into(),
        "onvif://www.onvif.org/name/Gate".into(),
    ];
    let mut locked = CameraConfig::new("Hikvision", "DS-2CD2143", "DS2143-0001");
    locked.users = vec!["operator:cam-pw".into()];
    locked.scopes = vec!["onvif://www.onvif.org/location/line4".into()];
    let mut silent = CameraConfig::new("Dead", "Silent", "0");
    silent.mode = Mode::Silent;
    let mut noise = CameraConfig::new("Noise", "Garbage", "1");
    noise.mode = Mode::Garbage;
    vec![gate, locked, silent, noise]
}

#[test]
fn cameras_are_found_described_and_the_locked_one_is_named() {
    netns::run(
        "cameras_are_found_described_and_the_locked_one_is_named",
        || {
            netns::multicast_on_loopback();
            runtime().block_on(async {
                let fleet = Fleet::start(&FleetConfig {
                    onvif: cameras(),
                    ..FleetConfig::default()
                })
                .await
                .unwrap();
                let gate = fleet.onvif[0].endpoint.clone();
                let locked = fleet.onvif[1].endpoint.clone();

                // No credentials: the good camera; the locked one is a problem; the silent and
                // the garbage ones cost a timeout.
                let s = scan(&details(serde_json::json!({})), &Properties::new())
                    .await
                    .unwrap();
                assert_eq!(ids(&s), std::slice::from_ref(&gate));
                let p = &s.devices()[0].properties;
                assert_eq!(p["ONVIF_MANUFACTURER"], "AXIS");
                assert_eq!(p["ONVIF_MODEL"], "P1346");
                assert_eq!(p["ONVIF_SERIAL_NUMBER"], "00408C1836B2");
                assert_eq!(p["ONVIF_DEVICE_SERVICE_URL"], fleet.onvif[0].url);
                assert_eq!(
                    p["ONVIF_MEDIA_SERVICE_URL"],
                    fleet.onvif[0]
                        .url
                        .replace("device_service", "media_service")
                );
                assert_eq!(p["ONVIF_IP_ADDRESS"], "127.0.0.1");
                assert_eq!(s.problems().len(), 1, "{:?}", s.problems());
                assert!(
                    s.problems()[0].contains(&locked)
                        && s.problems()[0].contains("demands credentials"),
                    "{:?}",
                    s.problems()
                );

                // The right credentials (digest, the camera's clock): both cameras.
                let s = scan(&details(serde_json::json!({})), &login("cam-pw"))
                    .await
                    .unwrap();
                let mut want = vec![gate.clone(), locked.clone()];
                want.sort();
                assert_eq!(ids(&s), want);
                assert!(s.problems().is_empty(), "{:?}", s.problems());
                assert!(!format!("{:?}", s.devices()).contains("cam-pw"));

                // Wrong ones: named as rejected.
                let s = scan(&details(serde_json::json!({})), &login("old-pw"))
                    .await
                    .unwrap();
                assert!(
                    s.problems()[0].contains("rejected the credentials"),
                    "{:?}",
                    s.problems()
                );

                // Filters.
                for (filter, want) in [
                    (
                        serde_json::json!({"scopes": {"include": [".*/location/line3"]}}),
                        vec![gate.clone()],
                    ),
                    (
                        serde_json::json!({"models": {"include": ["DS-.*"]}}),
                        vec![locked.clone()],
                    ),
                    (
                        serde_json::json!({"manufacturers": {"exclude": ["AXIS", "Hikvision"]}}),
                        vec![],
                    ),
                ] {
                    let s = scan(&details(filter.clone()), &login("cam-pw"))
                        .await
                        .unwrap();
                    assert_eq!(ids(&s), want, "{filter}");
                }

                // Unicast probes to a listed address, multicast off.
                let s = scan(
                    &details(serde_json::json!({"multicast": false, "addresses": ["127.0.0.1"]})),
                    &Properties::new(),
                )
                .await
                .unwrap();
                assert_eq!(ids(&s), std::slice::from_ref(&gate));
            });
        },
    );
}

#[test]
fn a_hello_is_found_at_once_and_a_bye_leaves_at_once() {
    netns::run("a_hello_is_found_at_once_and_a_bye_leaves_at_once", || {
        netns::multicast_on_loopback();
        runtime().block_on(async {
            // Rounds an hour apart: only Hello and Bye can explain what follows.
            let mut stream = OnvifHandler.discover(
                details(serde_json::json!({"intervalSeconds": 3600})),
                Properties::new(),
            );
            let first = stream.next().await.unwrap().unwrap();
            assert!(first.is_empty());
            let fleet = Fleet::start(&FleetConfig {
                onvif: vec![CameraConfig::new("AXIS", "M3045", "ACCC8E000001")],
                ..FleetConfig::default()
            })
            .await
            .unwrap();
            let endpoint = fleet.onvif[0].endpoint.clone();
            let hello = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("the Hello started a round")
                .unwrap()
                .unwrap();
            assert_eq!(ids(&hello), [endpoint]);
            drop(fleet);
            let bye = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("the Bye took the camera out")
                .unwrap()
                .unwrap();
            assert!(bye.is_empty());
        });
    });
}

#[test]
fn a_camera_announced_by_python_wsdiscovery_is_found_and_leaves_with_its_bye() {
    netns::run(
        "a_camera_announced_by_python_wsdiscovery_is_found_and_leaves_with_its_bye",
        || {
            netns::multicast_on_loopback();
            runtime().block_on(async {
                // The camera's device service from dowser-sim; its announcement from wsdiscovery.
                let mut camera = CameraConfig::new("Bosch", "FLEXIDOME 5100i", "044012345678");
                camera.announce = false;
                let fleet = Fleet::start(&FleetConfig {
                    onvif: vec![camera],
                    ..FleetConfig::default()
                })
                .await
                .unwrap();
                let mut child = peers::script("wsdiscovery_publisher.py", "wsdiscovery")
                    .unwrap()
                    .args(["--xaddr", &fleet.onvif[0].url])
                    .args(["--scope", "onvif://www.onvif.org/location/dock"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start wsdiscovery");
                let mut stdin = child.stdin.take().unwrap();
                let mut stdout = BufReader::new(child.stdout.take().unwrap());
                let _peer = Peer(child);
                let mut line = String::new();
                stdout.read_line(&mut line).unwrap();
                let endpoint = line
                    .strip_prefix("ready ")
                    .unwrap_or_else(|| panic!("wsdiscovery did not start: {line:?}"))
                    .trim()
                    .to_string();

                let mut stream = OnvifHandler.discover(
                    details(serde_json::json!({"intervalSeconds": 3600, "scopes": {"include": [".*/location/dock"]}})),
                    Properties::new(),
                );
                let found = stream.next().await.unwrap().unwrap();
                assert_eq!(ids(&found), std::slice::from_ref(&endpoint));
                let p = &found.devices()[0].properties;
                assert_eq!(p["ONVIF_MODEL"], "FLEXIDOME 5100i");
                assert_eq!(p["ONVIF_SCOPES"], "onvif://www.onvif.org/location/dock");

                writeln!(stdin, "bye").unwrap();
                let gone = tokio::time::timeout(Duration::from_secs(5), stream.next())
                    .await
                    .expect("wsdiscovery's Bye took the camera out")
                    .unwrap()
                    .unwrap();
                assert!(gone.is_empty());
            });
        },
    );
}
