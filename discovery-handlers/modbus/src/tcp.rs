//! Modbus TCP: one sweep of targets × ports × unit ids → a snapshot.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use dowser_discovery_api::{
    Device, Progress, Snapshot, Verdict,
    details::{
        ModbusDetails,
        modbus::{Host, RegisterProbe},
    },
    progress::Round,
};
use futures::StreamExt;
use tokio::{net::TcpStream, sync::Mutex, time::Instant};
use tokio_modbus::client::{Client, Context, tcp};
use tracing::{debug, trace};

use crate::identify::{Identity, IdentityFilter, UnitOutcome, add_identity, probe_unit};

/// Spaces out new connections to at most `per_second`.
struct RateLimiter {
    gap: Duration,
    next: Mutex<Instant>,
}

impl RateLimiter {
    fn new(per_second: u32) -> Self {
        Self {
            gap: Duration::from_secs(1) / per_second.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.gap;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

pub(crate) struct Settings {
    units: Vec<u8>,
    probe: Option<RegisterProbe>,
    connect_timeout: Duration,
    request_timeout: Duration,
    rate: RateLimiter,
    filter: IdentityFilter,
}

/// One endpoint to probe: how it is named in device ids, and its port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    host: Host,
    port: u16,
}

/// Sweeps the TCP targets × ports × unit ids once, reporting each endpoint tried on
/// `progress`.
pub(crate) async fn scan(details: &ModbusDetails, progress: &Progress) -> Snapshot {
    let started = std::time::Instant::now();
    let settings = Arc::new(Settings {
        units: details.unit_id_list(),
        probe: details.register_probe.clone(),
        connect_timeout: Duration::from_millis(details.connect_timeout_ms.into()),
        request_timeout: Duration::from_millis(details.request_timeout_ms.into()),
        rate: RateLimiter::new(details.max_connections_per_second),
        filter: IdentityFilter::new(details),
    });
    let ports = details.effective_ports();
    let mut endpoints = BTreeSet::new();
    for target in details.parsed_targets() {
        for (host, port) in target.hosts() {
            match port {
                Some(p) => {
                    endpoints.insert(Endpoint { host, port: p });
                }
                None => endpoints.extend(ports.iter().map(|&port| Endpoint {
                    host: host.clone(),
                    port,
                })),
            }
        }
    }
    let total = endpoints.len();
    let round = progress.round(total);
    let devices: Vec<Device> = futures::stream::iter(endpoints)
        .map(|ep| {
            let settings = settings.clone();
            let round = &round;
            async move { probe_endpoint(ep, &settings, round).await }
        })
        .buffer_unordered(details.concurrency.max(1) as usize)
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    debug!(
        endpoints = total,
        devices = devices.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "modbus scan done"
    );
    Snapshot::new(devices)
}

async fn resolve(host: &Host, port: u16, within: Duration) -> Option<SocketAddr> {
    match host {
        Host::Ip(ip) => Some(SocketAddr::new(*ip, port)),
        Host::Name(name) => {
            let found =
                tokio::time::timeout(within, tokio::net::lookup_host((name.as_str(), port)))
                    .await
                    .ok()?
                    .ok()?;
            let all: Vec<SocketAddr> = found.collect();
            // Prefer IPv4, which is what plant networks mostly run.
            all.iter().find(|a| a.is_ipv4()).or(all.first()).copied()
        }
    }
}

async fn connect(addr: SocketAddr, settings: &Settings) -> Option<Context> {
    settings.rate.wait().await;
    let stream = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    Some(tcp::attach(stream))
}

/// Probes each unit id at an endpoint for its devices, judging on `round` (for `kubectl
/// dowser why`) the endpoint when it does not resolve or take a connection (silent), else
/// each unit id at it: a device, left out by a filter, "no such unit" from a gateway (found,
/// with no device), no reply in time (silent), or a broken answer (failed: not Modbus,
/// malformed, the connection dropped).
async fn probe_endpoint(ep: Endpoint, settings: &Settings, round: &Round) -> Vec<Device> {
    let Some(addr) = resolve(&ep.host, ep.port, settings.connect_timeout).await else {
        trace!(host = %ep.host, "does not resolve");
        round.target(Verdict::Silent);
        return vec![];
    };
    let Some(mut ctx) = connect(addr, settings).await else {
        trace!(%addr, "closed");
        round.target(Verdict::Silent);
        return vec![];
    };
    // The endpoint took a connection: its unit ids are the targets.
    round.add_targets(settings.units.len().saturating_sub(1));
    let mut devices = Vec::new();
    for (i, &unit) in settings.units.iter().enumerate() {
        let outcome = probe_unit(
            &mut ctx,
            unit,
            settings.probe.as_ref(),
            settings.request_timeout,
            async || connect(addr, settings).await,
        )
        .await;
        match outcome {
            UnitOutcome::Present(identity) => match device(&ep, unit, identity, settings) {
                Ok(d) => {
                    devices.push(d);
                    round.target(Verdict::Found(1));
                }
                Err(filter) => round.target(Verdict::Dropped(filter)),
            },
            UnitOutcome::Absent => round.target(Verdict::Found(0)),
            UnitOutcome::Broken { silent } => {
                round.target(if silent {
                    Verdict::Silent
                } else {
                    Verdict::Failed
                });
                // A unit that does not answer may sit beside units that do (a device that
                // ignores other unit ids, a gateway): go on with the next unit id, but on a
                // new connection. The old connection may still deliver a late reply: never reuse it.
                let _ = ctx.disconnect().await;
                match connect(addr, settings).await {
                    Some(fresh) => ctx = fresh,
                    None => {
                        // The endpoint went away: the unit ids left are not tried.
                        round.targets(settings.units.len() - i - 1, Verdict::Silent);
                        break;
                    }
                }
            }
        }
    }
    devices
}

/// The device of a unit; the filter that leaves it out when one does.
fn device(
    ep: &Endpoint,
    unit: u8,
    identity: Option<Identity>,
    settings: &Settings,
) -> Result<Device, &'static str> {
    let identity = identity.unwrap_or_default();
    if let Some(filter) = settings.filter.dropped_by(&identity) {
        return Err(filter);
    }
    let host = match &ep.host {
        Host::Ip(ip) => ip.to_string(),
        Host::Name(n) => n.to_ascii_lowercase(),
    };
    let host_in_url = match &ep.host {
        Host::Ip(IpAddr::V6(_)) => format!("[{host}]"),
        _ => host.clone(),
    };
    let mut properties = BTreeMap::from([
        ("MODBUS_TRANSPORT".to_string(), "tcp".to_string()),
        ("MODBUS_HOST".to_string(), host),
        ("MODBUS_PORT".to_string(), ep.port.to_string()),
        ("MODBUS_UNIT_ID".to_string(), unit.to_string()),
    ]);
    add_identity(&identity, &mut properties);
    Ok(Device {
        id: format!("modbus+tcp://{host_in_url}:{}/{unit}", ep.port),
        properties,
        ..Device::default()
    })
}
