//! `dowser-sim`: serves a fleet of simulated devices until interrupted.

use std::{io::Write, net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use dowser_sim::{
    Fleet, FleetConfig,
    modbus::{ListenerConfig, Mode, Spread, UnitConfig},
};

/// Simulated Modbus TCP devices on loopback, Modbus RTU units on pseudo-terminals and
/// services announced over mDNS, for dowser's tests, demos and benchmarks.
///
/// Either describe a fleet in YAML (`-f fleet.yaml`) or serve a row of identical devices
/// with flags. Prints one line per unit or service, then `ready`, and serves until
/// interrupted (mDNS services then say goodbye). Lines on standard input control the mDNS
/// services: `withdraw INSTANCE` sends goodbyes, `announce INSTANCE` announces it again.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Fleet file (YAML): `modbus: [{listen: 127.0.0.1:5020, units: [{id: 1, vendorName: Acme}]}]`,
    /// `rtu: [{units: [{id: 1, vendorName: Acme}]}]` (each line gets a pseudo-terminal, printed),
    /// `mdns: [{instance: Press 7, serviceType: _http._tcp.local., port: 8080, txt: {vendor: Acme}}]`.
    #[arg(short = 'f', long, conflicts_with = "modbus")]
    file: Option<PathBuf>,
    /// Serve Modbus TCP devices starting at this address:port.
    #[arg(long)]
    modbus: Option<SocketAddr>,
    /// How many devices, on consecutive addresses (or ports with --spread ports).
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Lay out devices on consecutive addresses or ports.
    #[arg(long, value_enum, default_value = "addresses")]
    spread: Spread,
    /// Unit ids served by each device: "1" or "1-4".
    #[arg(long, default_value = "1")]
    units: String,
    /// VendorName of every unit.
    #[arg(long, default_value = "dowser-sim")]
    vendor: String,
    /// ProductCode of every unit.
    #[arg(long, default_value = "SIM-PLC")]
    product: String,
    /// MajorMinorRevision of every unit.
    #[arg(long, default_value = "1.0")]
    revision: String,
    /// Behaviour: normal, silent, slow, exception, garbage, reset.
    #[arg(long, value_enum, default_value = "normal")]
    mode: Mode,
}

fn fleet_from_args(args: &Args) -> anyhow::Result<FleetConfig> {
    if let Some(path) = &args.file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return FleetConfig::from_yaml(&text).with_context(|| format!("in {}", path.display()));
    }
    let Some(listen) = args.modbus else {
        anyhow::bail!("nothing to simulate: give -f FLEET.yaml or --modbus ADDRESS:PORT");
    };
    let range = dowser_sim_units(&args.units)?;
    let units = range
        .map(|id| UnitConfig::identified(id, &args.vendor, &args.product, &args.revision))
        .collect();
    let mut listener = ListenerConfig::device(listen, units).with_mode(args.mode);
    listener.count = args.count;
    listener.spread = args.spread;
    Ok(FleetConfig {
        modbus: vec![listener],
        ..FleetConfig::default()
    })
}

fn dowser_sim_units(s: &str) -> anyhow::Result<std::ops::RangeInclusive<u8>> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u8, u8) = (a.trim().parse()?, b.trim().parse()?);
    anyhow::ensure!(a <= b, "unit range {s:?} starts after it ends");
    Ok(a..=b)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = fleet_from_args(&args)?;
    let fleet = Fleet::start(&config).await?;
    let mut out = std::io::stdout().lock();
    for line in fleet.describe() {
        writeln!(out, "{line}")?;
    }
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let fleet = std::sync::Arc::new(fleet);
    // Reads commands until standard input ends; the process exits on a signal either way.
    std::thread::spawn({
        let fleet = fleet.clone();
        move || control(&fleet)
    });
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    if let Some(mdns) = &fleet.mdns {
        mdns.shutdown();
    }
    Ok(())
}

/// Applies `withdraw INSTANCE` and `announce INSTANCE` lines from standard input to the
/// mDNS services, answering each with one line.
fn control(fleet: &Fleet) {
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { return };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (command, instance) = line.split_once(' ').unwrap_or((line, ""));
        let instance = instance.trim();
        let result = match (&fleet.mdns, command) {
            (None, _) => Err(anyhow::anyhow!("this fleet has no mDNS services")),
            (Some(m), "withdraw") => m.withdraw(instance).map(|()| "withdrawn"),
            (Some(m), "announce") => m.announce(instance).map(|()| "announcing"),
            _ => Err(anyhow::anyhow!(
                "unknown command {command:?}: use withdraw INSTANCE or announce INSTANCE"
            )),
        };
        let mut out = std::io::stdout().lock();
        let _ = match result {
            Ok(done) => writeln!(out, "{done} {instance}"),
            Err(e) => writeln!(out, "error: {e:#}"),
        };
        let _ = out.flush();
    }
}
