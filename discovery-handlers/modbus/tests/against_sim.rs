//! The Modbus handler against dowser-sim devices on loopback.

use std::{net::SocketAddr, time::Duration};

use dowser_discovery_api::{
    Device, Filter,
    details::{
        ModbusDetails,
        modbus::{RegisterProbe, RegisterTable},
    },
};
use dowser_modbus::scan;
use dowser_sim::modbus::{ListenerConfig, MissingUnits, Mode, RunningListener, UnitConfig, serve};

async fn device(listen: &str, units: Vec<UnitConfig>, mode: Mode) -> RunningListener {
    let mut l = serve(&ListenerConfig::device(listen.parse().unwrap(), units).with_mode(mode))
        .await
        .unwrap();
    l.remove(0)
}

fn details(targets: Vec<String>, unit_ids: &[&str]) -> ModbusDetails {
    ModbusDetails {
        targets,
        unit_ids: unit_ids.iter().map(|s| s.to_string()).collect(),
        connect_timeout_ms: 300,
        request_timeout_ms: 300,
        ..ModbusDetails::default()
    }
}

fn target(addr: SocketAddr) -> String {
    addr.to_string()
}

fn ids(devices: &[Device]) -> Vec<String> {
    devices.iter().map(|d| d.id.clone()).collect()
}

#[tokio::test]
async fn finds_every_unit_of_every_device_with_its_identification() {
    let a = device(
        "127.0.0.1:0",
        vec![
            UnitConfig::identified(1, "Acme", "PLC-100", "1.2"),
            UnitConfig::identified(2, "Acme", "IO-8", "0.9"),
        ],
        Mode::Normal,
    )
    .await;
    let b = device(
        "127.0.0.1:0",
        vec![UnitConfig::identified(3, "Other", "Meter", "2.0")],
        Mode::Normal,
    )
    .await;
    let snap = scan(&details(vec![target(a.addr), target(b.addr)], &["1-4"])).await;
    let mut want = vec![
        format!("modbus+tcp://127.0.0.1:{}/1", a.addr.port()),
        format!("modbus+tcp://127.0.0.1:{}/2", a.addr.port()),
        format!("modbus+tcp://127.0.0.1:{}/3", b.addr.port()),
    ];
    want.sort();
    assert_eq!(ids(snap.devices()), want);
    let plc = snap
        .devices()
        .iter()
        .find(|d| d.id.ends_with(&format!("{}/1", a.addr.port())))
        .unwrap();
    assert_eq!(plc.properties["MODBUS_HOST"], "127.0.0.1");
    assert_eq!(plc.properties["MODBUS_PORT"], a.addr.port().to_string());
    assert_eq!(plc.properties["MODBUS_UNIT_ID"], "1");
    assert_eq!(plc.properties["MODBUS_VENDOR_NAME"], "Acme");
    assert_eq!(plc.properties["MODBUS_PRODUCT_CODE"], "PLC-100");
    assert_eq!(plc.properties["MODBUS_REVISION"], "1.2");
    assert_eq!(plc.properties["MODBUS_TRANSPORT"], "tcp");
}

#[tokio::test]
async fn a_second_scan_of_unchanged_devices_is_identical() {
    let a = device(
        "127.0.0.1:0",
        vec![UnitConfig::identified(1, "Acme", "PLC-100", "1.2")],
        Mode::Normal,
    )
    .await;
    let d = details(vec![target(a.addr)], &["1"]);
    assert_eq!(scan(&d).await, scan(&d).await);
}

#[tokio::test]
async fn sweeps_addresses_and_finds_only_the_live_ones() {
    // 127.0.0.0/8 is loopback: a /28 of it with two live devices on the same port.
    let first = device(
        "127.31.7.3:0",
        vec![UnitConfig::identified(1, "Acme", "A", "1")],
        Mode::Normal,
    )
    .await;
    let port = first.addr.port();
    let _second = device(
        &format!("127.31.7.9:{port}"),
        vec![UnitConfig::identified(1, "Acme", "B", "1")],
        Mode::Normal,
    )
    .await;
    let mut d = details(vec!["127.31.7.0/28".into()], &["1"]);
    d.ports = vec![port];
    let snap = scan(&d).await;
    assert_eq!(
        ids(snap.devices()),
        [
            format!("modbus+tcp://127.31.7.3:{port}/1"),
            format!("modbus+tcp://127.31.7.9:{port}/1")
        ]
    );
}

#[tokio::test]
async fn hostile_devices_cost_a_timeout_and_good_ones_are_still_found() {
    let good = device(
        "127.0.0.1:0",
        vec![UnitConfig::identified(1, "Good", "G", "1")],
        Mode::Normal,
    )
    .await;
    let mut hostile = Vec::new();
    for mode in [Mode::Silent, Mode::Slow, Mode::Garbage, Mode::Reset] {
        hostile.push(
            device(
                "127.0.0.1:0",
                vec![UnitConfig::identified(1, "Bad", "B", "1")],
                mode,
            )
            .await,
        );
    }
    let mut targets = vec![target(good.addr)];
    targets.extend(hostile.iter().map(|h| target(h.addr)));
    // Nothing listens here.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    targets.push(target(closed.local_addr().unwrap()));
    drop(closed);
    // The scan must end (a hostile device costs timeouts, never a hang).
    let (snap, counts) = tokio::time::timeout(
        Duration::from_secs(60),
        counted_round(details(targets, &["1-3"])),
    )
    .await
    .expect("the scan ends");
    assert_eq!(
        ids(snap.devices()),
        [format!("modbus+tcp://127.0.0.1:{}/1", good.addr.port())]
    );
    // What `kubectl dowser why` shows: the closed port is one silent target; each unit id
    // at a port that took the connection is a target of its own. The good device's unit 1
    // is found, its units 2 and 3 say nothing (silent, as a device without them); garbage
    // and dropped connections fail; a silent or too slow device is silent.
    assert_eq!(counts.tried, 1 + 5 * 3, "{counts:?}");
    assert_eq!(counts.found, 1, "{counts:?}");
    assert!(counts.dropped.is_empty(), "{counts:?}");
    assert!(counts.failed >= 2, "garbage and resets fail: {counts:?}");
    assert_eq!(
        counts.silent() + counts.failed + 1,
        counts.tried,
        "every other target is silent or failed: {counts:?}"
    );
}

/// One round of the handler as the agent runs it, with the counts it reported.
async fn counted_round(
    details: ModbusDetails,
) -> (
    dowser_discovery_api::Snapshot,
    dowser_discovery_api::progress::State,
) {
    use dowser_discovery_api::{DiscoveryHandler, Progress, Properties};
    use futures::StreamExt;
    let progress = Progress::enabled();
    let mut stream = dowser_modbus::ModbusHandler
        .discover(details, Properties::new().with_progress(progress.clone()));
    let snapshot = stream.next().await.unwrap().unwrap();
    (snapshot, progress.state().unwrap())
}

#[tokio::test]
async fn a_late_reply_is_never_taken_for_the_next_units_answer() {
    // Unit 1 answers after the timeout; unit 2 answers at once. Without a fresh connection
    // the late identification of unit 1 would arrive as the answer for unit 2.
    let mut slow = UnitConfig::identified(1, "Slow", "S", "1");
    slow.mode = Some(Mode::Slow);
    let mut listener = ListenerConfig::device(
        "127.0.0.1:0".parse().unwrap(),
        vec![
            UnitConfig::identified(2, "Fast", "F", "1"),
            UnitConfig::identified(3, "Fast", "F3", "1"),
            slow,
        ],
    );
    listener.slow_ms = 600;
    let l = serve(&listener).await.unwrap().remove(0);
    let snap = scan(&details(vec![target(l.addr)], &["1-3"])).await;
    let devices = snap.devices();
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert_eq!(devices[0].properties["MODBUS_UNIT_ID"], "2");
    assert_eq!(devices[0].properties["MODBUS_PRODUCT_CODE"], "F");
    assert_eq!(devices[1].properties["MODBUS_UNIT_ID"], "3");
    assert_eq!(devices[1].properties["MODBUS_PRODUCT_CODE"], "F3");
}

#[tokio::test]
async fn units_without_identification_fall_back_to_the_register_probe() {
    let mut plain = UnitConfig::identified(1, "", "", "");
    plain.vendor_name = None;
    let d = device("127.0.0.1:0", vec![plain], Mode::Exception).await;
    // Without a probe, a unit that answers with an exception is there, unidentified.
    let snap = scan(&details(vec![target(d.addr)], &["1"])).await;
    assert_eq!(snap.len(), 1);
    assert!(
        !snap.devices()[0]
            .properties
            .contains_key("MODBUS_VENDOR_NAME")
    );
    // With a probe, the registers decide: address 0 exists, address 1000 does not.
    let mut with_probe = details(vec![target(d.addr)], &["1"]);
    with_probe.register_probe = Some(RegisterProbe {
        table: RegisterTable::HoldingRegisters,
        address: 0,
        count: 2,
    });
    assert_eq!(scan(&with_probe).await.len(), 1);
    with_probe.register_probe.as_mut().unwrap().address = 1000;
    assert_eq!(scan(&with_probe).await.len(), 0);
}

#[tokio::test]
async fn a_gateway_saying_no_device_behind_it_means_absent() {
    let mut l = ListenerConfig::device(
        "127.0.0.1:0".parse().unwrap(),
        vec![UnitConfig::identified(5, "Behind", "Gateway", "1")],
    );
    l.missing_units = MissingUnits::GatewayError;
    let l = serve(&l).await.unwrap().remove(0);
    let snap = scan(&details(vec![target(l.addr)], &["1-10"])).await;
    assert_eq!(
        ids(snap.devices()),
        [format!("modbus+tcp://127.0.0.1:{}/5", l.addr.port())]
    );
}

#[tokio::test]
async fn filters_on_identification() {
    let d = device(
        "127.0.0.1:0",
        vec![
            UnitConfig::identified(1, "Acme", "PLC-100", "1.0"),
            UnitConfig::identified(2, "Acme", "PLC-200", "2.0"),
            UnitConfig::identified(3, "Other", "PLC-100", "1.0"),
        ],
        Mode::Normal,
    )
    .await;
    let mut f = details(vec![target(d.addr)], &["1-3"]);
    f.vendor_names = Some(Filter {
        include: vec!["Acme".into()],
        exclude: vec![],
    });
    f.revisions = Some(Filter {
        include: vec![],
        exclude: vec!["2\\..*".into()],
    });
    let (snap, counts) = counted_round(f).await;
    assert_eq!(snap.len(), 1);
    assert_eq!(snap.devices()[0].properties["MODBUS_UNIT_ID"], "1");
    // Each unit left out is counted under the filter that left it out.
    assert_eq!((counts.tried, counts.answered, counts.found), (3, 3, 1));
    assert_eq!(
        counts.dropped.into_iter().collect::<Vec<_>>(),
        [("revisions", 1), ("vendorNames", 1)]
    );
}

#[tokio::test]
async fn identification_split_over_several_responses_is_read_whole() {
    let long = UnitConfig::identified(1, &"V".repeat(120), &"P".repeat(120), "7.1");
    let d = device("127.0.0.1:0", vec![long], Mode::Normal).await;
    let snap = scan(&details(vec![target(d.addr)], &["1"])).await;
    let props = &snap.devices()[0].properties;
    assert_eq!(props["MODBUS_VENDOR_NAME"].len(), 120);
    assert_eq!(props["MODBUS_REVISION"], "7.1");
}

#[tokio::test]
async fn host_names_are_resolved_and_kept_in_the_device_id() {
    let d = device(
        "127.0.0.1:0",
        vec![UnitConfig::identified(1, "Acme", "A", "1")],
        Mode::Normal,
    )
    .await;
    let snap = scan(&details(
        vec![format!("localhost:{}", d.addr.port())],
        &["1"],
    ))
    .await;
    assert_eq!(
        ids(snap.devices()),
        [format!("modbus+tcp://localhost:{}/1", d.addr.port())]
    );
    assert_eq!(snap.devices()[0].properties["MODBUS_HOST"], "localhost");
}
