//! The BACnet handler against dowser-sim's devices (good ones, a silent one, one that answers
//! garbage, one that answers Who-Is but not ReadProperty) and against bacpypes3 devices
//! found by broadcast, each test in a private network namespace (the handler listens on the
//! BACnet port, and broadcasts stay on this machine).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use dowser_bacnet::scan;
use dowser_discovery_api::{Snapshot, details::BacnetDetails};
use dowser_sim::{
    Fleet, FleetConfig,
    bacnet::{DeviceConfig, Mode},
    netns,
    peers::{self, Peer},
};

fn details(json: serde_json::Value) -> BacnetDetails {
    let mut base = serde_json::json!({"windowMs": 700, "timeoutMs": 500, "broadcastAddresses": []});
    base.as_object_mut()
        .unwrap()
        .extend(json.as_object().unwrap().clone());
    serde_json::from_value(base).unwrap()
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

#[test]
fn devices_are_found_read_and_the_bad_ones_cost_nothing() {
    netns::run(
        "devices_are_found_read_and_the_bad_ones_cost_nothing",
        || {
            runtime().block_on(async {
                let mut ahu = DeviceConfig::new(1001, "AHU-3", "ACME Controls", "AC-200");
                ahu.location = Some("Plant 1 / roof".into());
                let vav = DeviceConfig::new(1002, "VAV-12", "ACME Controls", "VC-10");
                let mut silent = DeviceConfig::new(1003, "Dead", "x", "x");
                silent.mode = Mode::Silent;
                let mut noise = DeviceConfig::new(1004, "Noise", "x", "x");
                noise.mode = Mode::Garbage;
                let mut mute = DeviceConfig::new(1005, "Mute", "x", "x");
                mute.mode = Mode::WhoIsOnly;
                let fleet = Fleet::start(&FleetConfig {
                    bacnet: vec![ahu, vav, silent, noise, mute],
                    ..FleetConfig::default()
                })
                .await
                .unwrap();
                let addresses: Vec<String> =
                    fleet.bacnet.iter().map(|d| d.addr.to_string()).collect();
                let with = |extra: serde_json::Value| {
                    let mut j = serde_json::json!({"addresses": addresses});
                    j.as_object_mut()
                        .unwrap()
                        .extend(extra.as_object().unwrap().clone());
                    details(j)
                };

                let s = scan(&with(serde_json::json!({}))).await.unwrap();
                assert_eq!(ids(&s), ["bacnet://1001", "bacnet://1002"]);
                let p = &s.devices()[0].properties;
                assert_eq!(p["BACNET_DEVICE_INSTANCE"], "1001");
                assert_eq!(p["BACNET_OBJECT_NAME"], "AHU-3");
                assert_eq!(p["BACNET_VENDOR_NAME"], "ACME Controls");
                assert_eq!(p["BACNET_MODEL_NAME"], "AC-200");
                assert_eq!(p["BACNET_LOCATION"], "Plant 1 / roof");
                assert_eq!(p["BACNET_VENDOR_ID"], "5");
                assert_eq!(p["BACNET_ADDRESS"], fleet.bacnet[0].addr.to_string());
                assert!(!s.devices()[1].properties.contains_key("BACNET_LOCATION"));
                assert_eq!(s.problems().len(), 1, "{:?}", s.problems());
                assert!(
                    s.problems()[0].contains("1005")
                        && s.problems()[0].contains("not ReadProperty"),
                    "{:?}",
                    s.problems()
                );

                for (filter, want) in [
                    (
                        serde_json::json!({"modelNames": {"include": ["VC-.*"]}}),
                        vec!["bacnet://1002"],
                    ),
                    (
                        serde_json::json!({"locations": {"include": ["Plant 1.*"]}}),
                        vec!["bacnet://1001"],
                    ),
                    (serde_json::json!({"vendorIds": [7]}), vec![]),
                    (
                        serde_json::json!({"instanceRange": {"low": 1002, "high": 1002}}),
                        vec!["bacnet://1002"],
                    ),
                    (
                        serde_json::json!({"objectNames": {"exclude": ["AHU-.*"]}}),
                        vec!["bacnet://1002"],
                    ),
                ] {
                    let s = scan(&with(filter.clone())).await.unwrap();
                    assert_eq!(ids(&s), want, "{filter}");
                }
            });
        },
    );
}

/// Discovery rounds until one finds `want`, at most five; the last round. Who-Is and I-Am are
/// unconfirmed broadcasts: a Python device busy when a Who-Is comes (its interpreter starved
/// by a loaded machine) answers after the round's window, and the agent's next round finds
/// it. A device that never answers still fails the test.
async fn rounds_until(details: &BacnetDetails, want: &[&str]) -> Snapshot {
    let mut last = scan(details).await.unwrap();
    for _ in 1..5 {
        if ids(&last) == want {
            break;
        }
        last = scan(details).await.unwrap();
    }
    last
}

/// Runs `ip` with these arguments in the test's namespace.
fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

fn bacpypes3(name: &str, instance: u32, address: &str, model: &str) -> Peer {
    let mut child = peers::script("bacpypes3_device.py", "bacpypes3")
        .unwrap()
        .args([
            "--name",
            name,
            "--instance",
            &instance.to_string(),
            "--address",
            address,
        ])
        .args(["--model", model, "--location", "Building B"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bacpypes3");
    let stdout = child.stdout.take().unwrap();
    let peer = Peer(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "bacpypes3 device {name} did not start"
    );
    peer
}

#[test]
fn bacpypes3_devices_answer_a_broadcast_who_is() {
    netns::run("bacpypes3_devices_answer_a_broadcast_who_is", || {
        // The node's address first (the source of what dowser sends), then the devices'.
        for a in ["10.77.1.1/24", "10.77.1.2/24", "10.77.1.3/24"] {
            ip(&["addr", "add", a, "brd", "10.77.1.255", "dev", "lo"]);
        }
        let _a = bacpypes3("Boiler-1", 2001, "10.77.1.2/24", "BP-Boiler");
        let _b = bacpypes3("Chiller-1", 2002, "10.77.1.3/24", "BP-Chiller");
        runtime().block_on(async {
            let broadcast = details(serde_json::json!({"broadcastAddresses": ["10.77.1.255"], "windowMs": 1500, "timeoutMs": 1500}));
            let s = rounds_until(&broadcast, &["bacnet://2001", "bacnet://2002"]).await;
            assert_eq!(ids(&s), ["bacnet://2001", "bacnet://2002"], "{:?}", s.problems());
            let p = &s.devices()[0].properties;
            assert_eq!(p["BACNET_OBJECT_NAME"], "Boiler-1");
            assert_eq!(p["BACNET_MODEL_NAME"], "BP-Boiler");
            assert_eq!(p["BACNET_LOCATION"], "Building B");
            assert_eq!(p["BACNET_ADDRESS"], "10.77.1.2:47808");
            assert!(!p["BACNET_VENDOR_NAME"].is_empty());

            // A ranged Who-Is: only the device in range answers.
            let mut ranged = broadcast.clone();
            ranged.instance_range = Some(serde_json::from_value(serde_json::json!({"low": 2002, "high": 2002})).unwrap());
            let s = rounds_until(&ranged, &["bacnet://2002"]).await;
            assert_eq!(ids(&s), ["bacnet://2002"]);
        });
    });
}
