//! The OPC UA handler against dowser-sim: real async-opcua servers, a local discovery server
//! that lists them, and servers that misbehave on purpose, all on loopback.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use dowser_discovery_api::{
    Filter, Properties, Snapshot,
    details::{
        OpcuaDetails,
        opcua::{EndpointPreference, SecurityMode, SecurityPolicy},
    },
};
use dowser_opcua::scan;
use dowser_sim::{
    Fleet, FleetConfig,
    opcua::{Kind, Mode, Nameplate, ServerConfig},
};

fn any_port() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn details(urls: Vec<String>) -> OpcuaDetails {
    serde_json::from_value(serde_json::json!({
        "discoveryUrls": urls,
        "timeoutMs": 1000,
    }))
    .unwrap()
}

fn by_id(s: &Snapshot) -> BTreeMap<String, BTreeMap<String, String>> {
    s.devices()
        .iter()
        .map(|d| (d.id.clone(), d.properties.clone()))
        .collect()
}

/// Three good servers (open only, open + secure, secure only), an LDS listing every server,
/// and a silent, a garbage and an absurd server, which the LDS lists too.
async fn plant() -> Fleet {
    let mut lds = ServerConfig::server(any_port(), "Plant LDS", "urn:plant:lds");
    lds.kind = Kind::Discovery;
    let config = FleetConfig {
        opcua: vec![
            lds,
            ServerConfig::server(any_port(), "Press 1", "urn:plant:press-1"),
            ServerConfig::server(any_port(), "Press 2", "urn:plant:press-2").with_endpoints(&[
                "None",
                "Basic256Sha256/Sign",
                "Basic256Sha256/SignAndEncrypt",
            ]),
            ServerConfig::server(any_port(), "Oven 1", "urn:plant:oven-1")
                .with_endpoints(&["Aes256_Sha256_RsaPss/SignAndEncrypt"]),
            ServerConfig::server(any_port(), "Dead", "urn:plant:dead").with_mode(Mode::Silent),
            ServerConfig::server(any_port(), "Noise", "urn:plant:noise").with_mode(Mode::Garbage),
            ServerConfig::server(any_port(), "Absurd", "urn:plant:absurd").with_mode(Mode::Absurd),
        ],
        ..FleetConfig::default()
    };
    Fleet::start(&config).await.unwrap()
}

fn url_of(fleet: &Fleet, uri: &str) -> String {
    fleet
        .opcua
        .iter()
        .find(|s| s.application_uri == uri)
        .unwrap()
        .url
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_server_leads_to_every_good_server_and_bad_ones_cost_only_a_timeout() {
    let fleet = plant().await;
    let urls = vec![
        url_of(&fleet, "urn:plant:lds"),
        url_of(&fleet, "urn:plant:dead"),
        url_of(&fleet, "urn:plant:noise"),
    ];
    let started = Instant::now();
    let snapshot = scan(&details(urls), &Default::default()).await.unwrap();
    let took = started.elapsed();
    let found = by_id(&snapshot);
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        ["urn:plant:oven-1", "urn:plant:press-1", "urn:plant:press-2"],
        "the LDS itself, the silent, garbage and absurd servers are not devices"
    );
    // Silent servers are asked in parallel: the round costs about one timeout, not one per
    // bad server (a hang would never end; 1 s timeout, generous bound for a loaded machine).
    assert!(took < Duration::from_secs(15), "round took {took:?}");

    let press2 = &found["urn:plant:press-2"];
    assert_eq!(press2["OPCUA_APPLICATION_NAME"], "Press 2");
    assert_eq!(press2["OPCUA_PRODUCT_URI"], "urn:dowser-sim:opcua");
    assert_eq!(press2["OPCUA_SECURITY_POLICY"], "Basic256Sha256");
    assert_eq!(press2["OPCUA_SECURITY_MODE"], "SignAndEncrypt");
    assert_eq!(press2["OPCUA_SECURITY_POLICIES"], "Basic256Sha256,None");
    assert_eq!(
        press2["OPCUA_DISCOVERY_URL"],
        url_of(&fleet, "urn:plant:press-2")
    );
    assert!(
        press2["OPCUA_ENDPOINT_URL"]
            .starts_with(url_of(&fleet, "urn:plant:press-2").trim_end_matches('/'))
    );
    assert_eq!(found["urn:plant:press-1"]["OPCUA_SECURITY_POLICY"], "None");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_plant_gives_equal_snapshots() {
    let fleet = plant().await;
    let d = details(vec![url_of(&fleet, "urn:plant:lds")]);
    let first = scan(&d, &Default::default()).await.unwrap();
    let second = scan(&d, &Default::default()).await.unwrap();
    assert_eq!(first.devices().len(), 3);
    assert_eq!(first, second, "nothing changed, so nothing may be written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_required_security_keep_only_matching_servers() {
    let fleet = plant().await;
    let lds = url_of(&fleet, "urn:plant:lds");

    let mut by_name = details(vec![lds.clone()]);
    by_name.application_names = Some(Filter {
        include: vec!["Press .*".into()],
        exclude: vec![],
    });
    by_name.application_uris = Some(Filter {
        include: vec![],
        exclude: vec![".*press-1".into()],
    });
    let found = by_id(&scan(&by_name, &Default::default()).await.unwrap());
    assert_eq!(found.keys().collect::<Vec<_>>(), ["urn:plant:press-2"]);

    let mut secure = details(vec![lds.clone()]);
    secure.security_policy = Some(SecurityPolicy::Basic256Sha256);
    secure.security_mode = Some(SecurityMode::SignAndEncrypt);
    let found = by_id(&scan(&secure, &Default::default()).await.unwrap());
    assert_eq!(found.keys().collect::<Vec<_>>(), ["urn:plant:press-2"]);

    let mut open = details(vec![lds.clone()]);
    open.endpoint_preference = EndpointPreference::LeastSecure;
    let found = by_id(&scan(&open, &Default::default()).await.unwrap());
    assert_eq!(found["urn:plant:press-2"]["OPCUA_SECURITY_MODE"], "None");
    assert_eq!(
        found["urn:plant:oven-1"]["OPCUA_SECURITY_POLICY"],
        "Aes256_Sha256_RsaPss"
    );

    let mut product = details(vec![lds]);
    product.product_uris = Some(Filter {
        include: vec!["urn:other:.*".into()],
        exclude: vec![],
    });
    assert!(
        scan(&product, &Default::default())
            .await
            .unwrap()
            .devices()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_the_node_cannot_resolve_is_replaced_by_the_address_that_answered() {
    let mut server = ServerConfig::server(any_port(), "Press 7", "urn:plant:press-7");
    server.advertised_host = Some("press-7.plant.invalid".into());
    let fleet = Fleet::start(&FleetConfig {
        opcua: vec![server],
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let addr = fleet.opcua[0].addr;
    let snapshot = scan(
        &details(vec![format!("opc.tcp://{addr}/")]),
        &Default::default(),
    )
    .await
    .unwrap();
    let found = by_id(&snapshot);
    let press = &found["urn:plant:press-7"];
    assert_eq!(press["OPCUA_DISCOVERY_URL"], format!("opc.tcp://{addr}/"));
    assert_eq!(press["OPCUA_ENDPOINT_URL"], format!("opc.tcp://{addr}/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_is_the_same_device_whichever_url_found_it() {
    let fleet = plant().await;
    let direct = url_of(&fleet, "urn:plant:press-1");
    let lds = url_of(&fleet, "urn:plant:lds");
    let snapshot = scan(&details(vec![direct, lds]), &Default::default())
        .await
        .unwrap();
    let ids: Vec<_> = snapshot.devices().iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        ["urn:plant:oven-1", "urn:plant:press-1", "urn:plant:press-2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_gives_an_empty_snapshot_not_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let snapshot = scan(
        &details(vec![format!("opc.tcp://{port}/")]),
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(snapshot.devices().is_empty());
}

/// A session against dowser-sim (async-opcua's server, the other implementation than
/// asyncua's): a server that takes one user and tells its nameplate, found through the LDS
/// beside the hostile servers, which cost a timeout and are no problem of the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_the_nameplate_of_a_sim_server_that_takes_one_user() {
    let mut lds = ServerConfig::server(any_port(), "Plant LDS", "urn:plant:lds");
    lds.kind = Kind::Discovery;
    let config = FleetConfig {
        opcua: vec![
            lds,
            ServerConfig::server(any_port(), "Filler 8", "urn:plant:filler-8")
                .with_users(&["operator:line8-pw"])
                .with_build_info(Nameplate {
                    manufacturer_name: "ACME Automation".into(),
                    product_name: "Filler PLC".into(),
                    software_version: "5.0.2".into(),
                    build_number: "2211".into(),
                }),
            ServerConfig::server(any_port(), "Dead", "urn:plant:dead").with_mode(Mode::Silent),
            ServerConfig::server(any_port(), "Noise", "urn:plant:noise").with_mode(Mode::Garbage),
        ],
        ..FleetConfig::default()
    };
    let fleet = Fleet::start(&config).await.unwrap();
    let mut d = details(vec![url_of(&fleet, "urn:plant:lds")]);
    d.session =
        Some(serde_json::from_value(serde_json::json!({"userIdentity": "UserName"})).unwrap());
    let login = |password: &str| -> Properties {
        [("USERNAME", "operator"), ("PASSWORD", password)]
            .into_iter()
            .collect()
    };
    let snapshot = scan(&d, &login("line8-pw")).await.unwrap();
    assert!(snapshot.problems().is_empty(), "{:?}", snapshot.problems());
    let found = by_id(&snapshot);
    assert_eq!(found.keys().collect::<Vec<_>>(), ["urn:plant:filler-8"]);
    let p = &found["urn:plant:filler-8"];
    assert_eq!(p["OPCUA_MANUFACTURER_NAME"], "ACME Automation");
    assert_eq!(p["OPCUA_PRODUCT_NAME"], "Filler PLC");
    assert_eq!(p["OPCUA_SOFTWARE_VERSION"], "5.0.2");
    assert_eq!(p["OPCUA_BUILD_NUMBER"], "2211");

    let refused = scan(&d, &login("old-pw")).await.unwrap();
    assert!(refused.devices().is_empty());
    assert_eq!(refused.problems().len(), 1, "{:?}", refused.problems());
    assert!(
        refused.problems()[0].contains("urn:plant:filler-8")
            && refused.problems()[0].contains("rejected the user identity"),
        "{:?}",
        refused.problems()
    );
}
