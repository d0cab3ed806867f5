//! ONVIF camera discovery for dowser.
//!
//! Every round sends a WS-Discovery Probe for NetworkVideoTransmitters (to the multicast
//! group and to the listed addresses), collects the ProbeMatches for the probe window, and
//! describes each camera kept with GetDeviceInformation and GetCapabilities on its device
//! service, with a WS-UsernameToken (password digest, the camera's clock) when the
//! Configuration has `USERNAME` and `PASSWORD`. Between rounds it listens to the multicast
//! group: a Hello starts a round at once, a Bye takes the camera out of the snapshot.
//! A camera is named by its endpoint reference, stable when its address changes. A camera
//! that demands or rejects the credentials is a problem of the snapshot, named; one that is
//! silent or answers garbage costs a timeout and is not found.

pub mod http;
mod scan;
pub mod select;
pub mod soap;
pub mod wsd;

use std::{sync::Arc, time::Duration};

use dowser_discovery_api::{
    DiscoveryError, DiscoveryHandler, Properties, Snapshot, SnapshotStream, details::OnvifDetails,
};
use futures::StreamExt;
use tokio::net::UdpSocket;

pub use scan::{MULTICAST, Scanner, scan, uuid};

/// After a Hello, how long to wait for more (cameras booting together) before the round.
const HELLO_SETTLE: Duration = Duration::from_millis(200);

/// The ONVIF discovery handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct OnvifHandler;

impl DiscoveryHandler for OnvifHandler {
    type Details = OnvifDetails;

    fn discover(&self, details: OnvifDetails, properties: Properties) -> SnapshotStream {
        let scanner = match Scanner::new(&details, &properties) {
            Ok(s) => Arc::new(s),
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let interval = Duration::from_secs(details.interval_seconds.into());
        let state = Watch {
            scanner,
            listener: None,
            listening: !details.multicast,
            interval,
            next: tokio::time::Instant::now(),
            last: None,
        };
        futures::stream::unfold(state, |mut s| async move {
            let item = s.next().await;
            Some((item, s))
        })
        .boxed()
    }
}

struct Watch {
    scanner: Arc<Scanner>,
    /// The multicast listener for Hello and Bye, once opened.
    listener: Option<UdpSocket>,
    /// Whether opening it was tried (or not wanted).
    listening: bool,
    interval: Duration,
    /// When the next round starts.
    next: tokio::time::Instant,
    /// The last snapshot yielded.
    last: Option<Snapshot>,
}

impl Watch {
    async fn next(&mut self) -> Result<Snapshot, DiscoveryError> {
        if !self.listening {
            self.listening = true;
            self.listener = match listener() {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::debug!("not listening for Hello and Bye: {e}");
                    None
                }
            };
        }
        let mut buf = vec![0u8; wsd::MAX_MESSAGE_BYTES];
        loop {
            let heard = async {
                match &self.listener {
                    Some(l) => l.recv_from(&mut buf).await.ok().map(|(n, _)| n),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(self.next) => {
                    self.next = tokio::time::Instant::now() + self.interval;
                    let snapshot = self.scanner.round().await?;
                    self.last = Some(snapshot.clone());
                    return Ok(snapshot);
                }
                Some(n) = heard => match wsd::parse(&buf[..n]) {
                    Some(wsd::Message::Hello(m)) if self.scanner.selection.keeps_match(&m) => {
                        let soon = tokio::time::Instant::now() + HELLO_SETTLE;
                        self.next = self.next.min(soon);
                    }
                    Some(wsd::Message::Bye { endpoint }) => {
                        if let Some(last) = &self.last
                            && last.devices().iter().any(|d| d.id == endpoint)
                        {
                            let rest = last.devices().iter().filter(|d| d.id != endpoint).cloned().collect();
                            let snapshot = Snapshot::new(rest).with_problems(last.problems().to_vec());
                            self.last = Some(snapshot.clone());
                            return Ok(snapshot);
                        }
                    }
                    _ => {}
                },
            }
        }
    }
}

/// A socket on WS-Discovery's port in its multicast group (shared with other listeners on
/// the node: SO_REUSEADDR).
fn listener() -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(
        &std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, MULTICAST.port())).into(),
    )?;
    socket.join_multicast_v4(MULTICAST.ip(), &std::net::Ipv4Addr::UNSPECIFIED)?;
    UdpSocket::from_std(socket.into())
}
