//! One discovery round on the wire: the Who-Is (broadcast, through BBMDs, to addresses), the
//! I-Am answers collected for the window, then each device's identity read with ReadProperty.
//! Decisions are in [`crate::select`].

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use dowser_discovery_api::{
    DiscoveryError, Outcome, Progress, Snapshot, Verdict,
    details::{BacnetDetails, bacnet::parse_address},
};
use futures::StreamExt;
use tokio::net::UdpSocket;

use crate::{
    codec::{self, Bvlc, IDENTITY, Message, Property},
    select::{self, Found, Selection},
};

/// Most devices one round takes (a site with more splits them by instance range).
const MAX_DEVICES: usize = 10_000;

/// Runs discovery rounds for one Configuration.
pub struct Scanner {
    selection: Selection,
    broadcasts: Vec<SocketAddrV4>,
    bbmds: Vec<SocketAddrV4>,
    addresses: Vec<SocketAddrV4>,
    port: u16,
    range: Option<(u32, u32)>,
    window: Duration,
    timeout: Duration,
    concurrency: usize,
    /// Where rounds report the devices read.
    progress: Progress,
}

impl Scanner {
    pub fn new(details: &BacnetDetails) -> Result<Self, DiscoveryError> {
        let port = u16::try_from(details.port).unwrap_or(codec::PORT);
        let parse = |list: &[String]| -> Vec<SocketAddrV4> {
            list.iter().filter_map(|a| parse_address(a, port)).collect()
        };
        Ok(Self {
            selection: Selection::new(details).map_err(DiscoveryError::Invalid)?,
            broadcasts: details
                .broadcast_addresses
                .iter()
                .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                .map(|ip| SocketAddrV4::new(ip, port))
                .collect(),
            bbmds: parse(&details.bbmds),
            addresses: parse(&details.addresses),
            port,
            range: details.instance_range.map(|r| (r.low, r.high)),
            window: Duration::from_millis(details.window_ms.into()),
            timeout: Duration::from_millis(details.timeout_ms.into()),
            concurrency: details.concurrency.max(1) as usize,
            progress: Progress::disabled(),
        })
    }

    /// The same scanner, reporting the progress of its rounds on `progress`.
    pub fn reporting(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// One round. Its targets, for progress, are the devices that answered Who-Is.
    pub async fn round(self: &Arc<Self>) -> Result<Snapshot, DiscoveryError> {
        let started = Instant::now();
        let progress = self.progress.round(0);
        let (found, dropped) = self.who_is().await?;
        progress.add_targets(found.len() + dropped.len());
        for filter in dropped.into_values() {
            progress.target(Verdict::Dropped(filter));
        }
        let described: Vec<Outcome> = futures::stream::iter(found)
            .map(|f| {
                let this = self.clone();
                async move { this.describe(f).await }
            })
            .buffer_unordered(self.concurrency)
            .inspect(|(verdict, _)| progress.target(*verdict))
            .map(|(_, outcome)| outcome)
            .collect()
            .await;
        Ok(Snapshot::of(described).with_round(started.elapsed()))
    }

    /// Sends the Who-Is everywhere configured and collects the I-Am answers, one per
    /// device instance (the first address it answered from); and the instances that
    /// answered but are left out by their I-Am, with the field that leaves each out.
    async fn who_is(&self) -> Result<(Vec<Found>, BTreeMap<u32, &'static str>), DiscoveryError> {
        let socket = listener(self.port).map_err(|e| {
            DiscoveryError::Unavailable(format!(
                "cannot listen on UDP port {} for I-Am answers: {e}",
                self.port
            ))
        })?;
        let mut sent = 0;
        let sends = self
            .broadcasts
            .iter()
            .map(|a| (Bvlc::Broadcast, a))
            .chain(self.bbmds.iter().map(|a| (Bvlc::DistributeBroadcast, a)))
            .chain(self.addresses.iter().map(|a| (Bvlc::Unicast, a)));
        for (function, to) in sends {
            match socket
                .send_to(&codec::who_is(function, self.range), to)
                .await
            {
                Ok(_) => sent += 1,
                Err(e) => tracing::debug!(%to, "Who-Is not sent: {e}"),
            }
        }
        if sent == 0 {
            return Err(DiscoveryError::Unavailable(
                "no Who-Is could be sent: no broadcast route, BBMD or address reachable".into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + self.window;
        let mut found: BTreeMap<u32, Found> = BTreeMap::new();
        let mut dropped: BTreeMap<u32, &'static str> = BTreeMap::new();
        let mut buf = [0u8; 1500];
        loop {
            let Ok(Ok((n, from))) =
                tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
            else {
                break;
            };
            let SocketAddr::V4(from) = from else { continue };
            if let Some(Message::IAm {
                instance,
                vendor_id,
                remote,
                forwarded_from,
            }) = codec::parse(&buf[..n])
            {
                if let Some(filter) = self.selection.i_am_dropped_by(instance, vendor_id) {
                    if dropped.len() < MAX_DEVICES {
                        dropped.insert(instance, filter);
                    }
                    continue;
                }
                found.entry(instance).or_insert(Found {
                    instance,
                    vendor_id,
                    address: Some(forwarded_from.unwrap_or(from)),
                    remote,
                    identity: BTreeMap::new(),
                });
                if found.len() >= MAX_DEVICES {
                    break;
                }
            }
        }
        Ok((found.into_values().collect(), dropped))
    }

    /// Reads a device's identity; the object name (required of every device) first. With
    /// the verdict on the device.
    async fn describe(&self, mut f: Found) -> (Verdict, Outcome) {
        let Some(address) = f.address else {
            return (Verdict::Failed, Outcome::Nothing);
        };
        let Ok(socket) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
            return (Verdict::Failed, Outcome::Nothing);
        };
        for (i, property) in IDENTITY.iter().enumerate() {
            match self.read(&socket, address, &f, *property, i as u8).await {
                Some(Some(v)) => {
                    f.identity.insert(*property, v);
                }
                Some(None) => {}
                None if *property == Property::ObjectName => {
                    let problem = format!(
                        "BACnet device {} at {address} answers Who-Is but not ReadProperty",
                        f.instance
                    );
                    return (Verdict::Failed, Outcome::Problem(problem));
                }
                None => {}
            }
        }
        if let Some(filter) = self.selection.identity_dropped_by(&f) {
            return (Verdict::Dropped(filter), Outcome::Nothing);
        }
        (Verdict::Found(1), Outcome::Device(select::device(&f)))
    }

    /// One ReadProperty: `Some(Some(text))` answered, `Some(None)` refused (an optional
    /// property the device lacks), `None` no answer in time.
    async fn read(
        &self,
        socket: &UdpSocket,
        address: SocketAddrV4,
        f: &Found,
        property: Property,
        invoke_id: u8,
    ) -> Option<Option<String>> {
        let request = codec::read_property(f.instance, property, invoke_id, f.remote.as_ref());
        socket.send_to(&request, address).await.ok()?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            if from != SocketAddr::V4(address) {
                continue;
            }
            match codec::parse(&buf[..n]) {
                Some(Message::Value {
                    invoke_id: id,
                    value,
                }) if id == invoke_id => {
                    return Some(value.text());
                }
                Some(Message::Refused { invoke_id: id }) if id == invoke_id => return Some(None),
                _ => {}
            }
        }
    }
}

/// A socket on the BACnet port that takes broadcasts, shared with other BACnet software on
/// the node (SO_REUSEADDR, and SO_REUSEPORT, which BACnet stacks such as bacpypes3 set).
fn listener(port: u16) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(socket.into())
}

/// One round with a fresh scanner (for tests and `dowser discover`).
pub async fn scan(details: &BacnetDetails) -> Result<Snapshot, DiscoveryError> {
    Arc::new(Scanner::new(details)?).round().await
}
