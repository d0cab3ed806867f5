//! How fast the mDNS handler notices a service, in a private network namespace (loopback
//! only): from the first announcement of a new service (dowser-sim's responder, and the
//! independent python-zeroconf responder) to the handler's next snapshot containing it,
//! and from its goodbye to the first snapshot without it. Prints a Markdown table.
//!
//! `cargo run --release -p dowser-mdns --example appear_latency [ROUNDS] [--zeroconf-only]`
//! (`--zeroconf-only`: only the python-zeroconf responder's rounds, as scripts/bench needs)
//! (needs root for `unshare --net`, and python-zeroconf: `DOWSER_PYTHON`, see tests/test.sh)

use std::time::{Duration, SystemTime};

use dowser_discovery_api::{DiscoveryHandler, SnapshotStream};
use dowser_mdns::MdnsHandler;
use dowser_sim::{
    mdns::{RunningMdns, ServiceConfig},
    netns,
    zeroconf::{ZeroconfResponder, ZeroconfService},
};
use futures::StreamExt;

const SERVICE_TYPE: &str = "_bench._tcp.local.";
const SETTLE: Duration = Duration::from_millis(1500);

/// Waits for the next snapshot in which `full_name` is present (or absent), and returns
/// when it arrived.
async fn next_with(stream: &mut SnapshotStream, full_name: &str, present: bool) -> SystemTime {
    loop {
        let snapshot = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("a snapshot within 30 s")
            .expect("the stream goes on")
            .expect("discovery works");
        if snapshot.devices().iter().any(|d| d.id == full_name) == present {
            return SystemTime::now();
        }
    }
}

fn ms(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:.1} ms | {:.1} ms | {:.1} ms",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    )
}

#[tokio::main]
async fn main() {
    netns::reexec();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let zeroconf_only = args.iter().any(|a| a == "--zeroconf-only");
    let rounds: usize = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|s| s.parse().expect("ROUNDS is a number"))
        .unwrap_or(20);
    let details = serde_json::from_value(serde_json::json!({"serviceTypes": [SERVICE_TYPE]}))
        .expect("details");
    let mut stream = MdnsHandler.discover(details, Default::default());
    // The first snapshot comes after the first browse; nothing is there yet.
    assert!(stream.next().await.unwrap().unwrap().is_empty());

    // Each round: a new service appears, then says goodbye. The snapshot stream is polled
    // while the responder works, so a snapshot is timed when it is yielded.
    let (mut sim_appear, mut sim_leave) = (Vec::new(), Vec::new());
    let sim_rounds = if zeroconf_only { 0 } else { rounds };
    for i in 0..sim_rounds {
        let name = format!("sim {i}");
        let config = ServiceConfig::new(&name, SERVICE_TYPE, 8000);
        let full_name = config.full_name();
        // The responder probes for the name first (about 750 ms), then announces.
        let start = tokio::task::spawn_blocking(move || {
            let sim = RunningMdns::start(&[config]).expect("start the sim responder");
            let at = sim
                .wait_announced(&name, Duration::from_secs(10))
                .expect("announced");
            (sim, name, at)
        });
        let seen = next_with(&mut stream, &full_name, true).await;
        let (sim, name, announced) = start.await.unwrap();
        sim_appear.push(ms(announced, seen));
        // Responders send a record at most once a second (RFC 6762, section 6.2): let the
        // announcements settle before the goodbye.
        tokio::time::sleep(SETTLE).await;

        let withdraw = tokio::task::spawn_blocking(move || {
            let at = SystemTime::now();
            sim.withdraw(&name).expect("withdraw");
            (sim, at)
        });
        let left = next_with(&mut stream, &full_name, false).await;
        let (_sim, said_goodbye) = withdraw.await.unwrap();
        sim_leave.push(ms(said_goodbye, left));
    }

    let (mut py_appear, mut py_leave) = (Vec::new(), Vec::new());
    let mut peer = ZeroconfResponder::start().expect("python-zeroconf responder");
    for i in 0..rounds {
        let service = ZeroconfService::new(&format!("zeroconf {i}"), SERVICE_TYPE, 8000);
        let full_name = service.full_name();
        let register = tokio::task::spawn_blocking(move || {
            let at = peer.register(&service).expect("register");
            (peer, service, at)
        });
        let seen = next_with(&mut stream, &full_name, true).await;
        let (p, service, announced) = register.await.unwrap();
        py_appear.push(ms(announced, seen));
        tokio::time::sleep(SETTLE).await;

        let unregister = tokio::task::spawn_blocking(move || {
            let mut p = p;
            let at = SystemTime::now();
            p.unregister(&service).expect("unregister");
            (p, at)
        });
        let left = next_with(&mut stream, &full_name, false).await;
        let (p, said_goodbye) = unregister.await.unwrap();
        peer = p;
        py_leave.push(ms(said_goodbye, left));
    }

    println!(
        "| mDNS, loopback in a private network namespace ({rounds} rounds) | p50 | min | max |"
    );
    println!("|---|---|---|---|");
    if !zeroconf_only {
        println!(
            "| dowser-sim announces → snapshot with the service | {} |",
            summary(sim_appear)
        );
    }
    println!(
        "| python-zeroconf announces → snapshot with the service | {} |",
        summary(py_appear)
    );
    if !zeroconf_only {
        println!(
            "| dowser-sim goodbye → snapshot without it | {} |",
            summary(sim_leave)
        );
    }
    println!(
        "| python-zeroconf goodbye → snapshot without it | {} |",
        summary(py_leave)
    );
}
