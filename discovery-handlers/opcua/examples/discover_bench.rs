//! OPC UA discovery speed on loopback: 20 simulated servers (real async-opcua servers, each
//! with an open and a Basic256Sha256 endpoint) found through a local discovery server, i.e.
//! one FindServers and 20 GetEndpoints, each on its own connection. Prints a Markdown table.
//!
//! `cargo run --release -p dowser-opcua --example discover_bench`

use std::time::{Duration, Instant};

use dowser_discovery_api::details::OpcuaDetails;
use dowser_opcua::scan;
use dowser_sim::{
    Fleet, FleetConfig,
    opcua::{Kind, ServerConfig},
};

const ROUNDS: usize = 5;
const SERVERS: u32 = 20;

#[tokio::main]
async fn main() {
    let mut lds = ServerConfig::server("127.0.0.1:0".parse().unwrap(), "LDS", "urn:bench:lds");
    lds.kind = Kind::Discovery;
    let mut servers =
        ServerConfig::server("127.0.0.1:0".parse().unwrap(), "Bench {n}", "urn:bench:{n}")
            .with_endpoints(&["None", "Basic256Sha256/SignAndEncrypt"]);
    servers.count = SERVERS;
    let fleet = Fleet::start(&FleetConfig {
        opcua: vec![lds, servers],
        ..FleetConfig::default()
    })
    .await
    .expect("start the simulated servers");
    let details: OpcuaDetails = serde_json::from_value(serde_json::json!({
        "discoveryUrls": [fleet.opcua[0].url],
    }))
    .unwrap();
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let found = scan(&details, &Default::default())
            .await
            .expect("round")
            .devices()
            .len();
        samples.push(t.elapsed());
        assert_eq!(found, SERVERS as usize, "servers found");
    }
    samples.sort();
    let median: Duration = samples[ROUNDS / 2];
    println!("| OPC UA discovery (median of {ROUNDS}, concurrency 8) | time |");
    println!("|---|---|");
    println!(
        "| {SERVERS} servers through an LDS (FindServers + {SERVERS} × GetEndpoints) | {:.3} s |",
        median.as_secs_f64()
    );
}
