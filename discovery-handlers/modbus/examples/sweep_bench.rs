//! Modbus scan speed: over TCP on loopback, a /24 with nothing listening and the
//! identification of 100 simulated units; over RTU, a sweep of all 247 unit ids at 115200
//! baud on a pseudo-terminal with 10 units present. Prints a Markdown table.
//!
//! `cargo run --release -p dowser-modbus --example sweep_bench`

use std::time::{Duration, Instant};

use dowser_discovery_api::details::{
    ModbusDetails,
    modbus::{Parity, RtuDetails, SerialLine},
};
use dowser_modbus::scan;
use dowser_sim::{
    modbus::{ListenerConfig, Mode, UnitConfig, serve},
    rtu,
};

const ROUNDS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn time(details: &ModbusDetails, expect: usize) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let found = scan(details).await.len();
        samples.push(t.elapsed());
        assert_eq!(found, expect, "devices found");
    }
    median(samples)
}

#[tokio::main]
async fn main() {
    // 254 closed addresses: loopback answers a SYN to a closed port with a reset.
    let closed = ModbusDetails {
        targets: vec!["127.88.1.0/24".into()],
        ports: vec![5020],
        ..ModbusDetails::default()
    };
    let sweep = time(&closed, 0).await;
    let unthrottled = ModbusDetails {
        max_connections_per_second: 100_000,
        ..closed.clone()
    };
    let sweep_fast = time(&unthrottled, 0).await;

    // 50 devices × 2 units = 100 units, identified with Read Device Identification.
    let mut listener = ListenerConfig::device(
        "127.88.2.1:5020".parse().unwrap(),
        vec![
            UnitConfig::identified(1, "Acme", "PLC", "1.0"),
            UnitConfig::identified(2, "Acme", "IO", "1.0"),
        ],
    );
    listener.count = 50;
    let _fleet = serve(&listener).await.expect("serve 50 devices");
    let live = ModbusDetails {
        targets: vec!["127.88.2.1-127.88.2.50".into()],
        ports: vec![5020],
        unit_ids: vec!["1-2".into()],
        ..ModbusDetails::default()
    };
    let ident = time(&live, 100).await;

    // RTU: 247 unit ids on one line, 10 of them present; an absent unit costs the request
    // timeout (100 ms, a common setting at 115200 baud), a present one a few frames. A pty
    // does not pace bytes at the baud rate, so the wire time of the frames (about 1 ms per
    // request/response pair at 115200 baud) is not in this figure.
    let line = rtu::serve(&rtu::LineConfig {
        mode: Mode::Normal,
        units: (1..=10u8)
            .map(|i| UnitConfig::identified(i * 24, "Acme", "Meter", "1.0"))
            .collect(),
    })
    .expect("serve an RTU line");
    let sweep_rtu = ModbusDetails {
        rtu: Some(RtuDetails {
            lines: vec![SerialLine {
                path: line.path.to_string_lossy().into_owned(),
                baud_rate: 115200,
                parity: Parity::Even,
                data_bits: 8,
                stop_bits: 1,
            }],
            inter_frame_delay_ms: None,
        }),
        unit_ids: vec!["1-247".into()],
        request_timeout_ms: 100,
        ..ModbusDetails::default()
    };
    let t = Instant::now();
    let found = scan(&sweep_rtu).await.len();
    let rtu_sweep = t.elapsed();
    assert_eq!(found, 10, "RTU units found");

    println!("| scan (median of {ROUNDS}, defaults: concurrency 64, 500 connections/s) | time |");
    println!("|---|---|");
    println!(
        "| sweep of 254 closed addresses × 1 port | {:.3} s |",
        sweep.as_secs_f64()
    );
    println!(
        "| same, maxConnectionsPerSecond 100000 | {:.3} s |",
        sweep_fast.as_secs_f64()
    );
    println!(
        "| identify 100 units (50 devices × 2 unit ids) | {:.3} s |",
        ident.as_secs_f64()
    );
    println!(
        "| RTU sweep of unit ids 1-247 at 115200 baud, 10 present, 100 ms timeout (1 round) | {:.3} s |",
        rtu_sweep.as_secs_f64()
    );
}
