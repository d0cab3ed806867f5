//! One discovery round on the wire: a Probe (multicast and to the listed addresses), the
//! answers collected for the probe window, then each camera described over SOAP.
//! Decisions are in [`crate::select`].

use std::{
    collections::BTreeMap,
    hash::{BuildHasher, Hasher},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use dowser_discovery_api::{
    DiscoveryError, Outcome, Progress, Properties, Snapshot, Verdict, details::OnvifDetails,
};
use futures::StreamExt;
use tokio::net::UdpSocket;

use crate::{
    http,
    select::{self, Selection},
    soap::{self, Credentials, Failure},
    wsd::{self, Match, Message},
};

/// WS-Discovery's multicast group and port.
pub const MULTICAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 3702);

/// Runs discovery rounds for one Configuration.
pub struct Scanner {
    pub selection: Selection,
    login: Option<(String, String)>,
    addresses: Vec<SocketAddr>,
    multicast: bool,
    window: Duration,
    timeout: Duration,
    concurrency: usize,
    /// Where rounds report the cameras described.
    progress: Progress,
}

impl Scanner {
    pub fn new(details: &OnvifDetails, properties: &Properties) -> Result<Self, DiscoveryError> {
        let selection = Selection::new(details).map_err(DiscoveryError::Invalid)?;
        let login = properties
            .user_password()?
            .map(|l| (l.username.to_string(), l.password.to_string()));
        Ok(Self {
            selection,
            login,
            addresses: details
                .addresses
                .iter()
                .filter_map(|a| dowser_discovery_api::details::onvif::parse_address(a))
                .collect(),
            multicast: details.multicast,
            window: Duration::from_millis(details.probe_window_ms.into()),
            timeout: Duration::from_millis(details.timeout_ms.into()),
            concurrency: details.concurrency.max(1) as usize,
            progress: properties.progress().clone(),
        })
    }

    /// One round: every camera that answered the probe, described and filtered. Its
    /// targets, for progress, are the cameras kept from the probe's answers.
    pub async fn round(self: &Arc<Self>) -> Result<Snapshot, DiscoveryError> {
        let started = Instant::now();
        let progress = self.progress.round(0);
        let answers: Vec<Match> = self
            .probe()
            .await?
            .into_iter()
            .filter(select::is_camera)
            .collect();
        progress.add_targets(answers.len());
        let mut cameras = Vec::with_capacity(answers.len());
        for m in answers {
            match self.selection.match_dropped_by(&m) {
                Some(filter) => progress.target(Verdict::Dropped(filter)),
                None => cameras.push(m),
            }
        }
        let described: Vec<Outcome> = futures::stream::iter(cameras)
            .map(|m| {
                let this = self.clone();
                async move { this.describe(&m).await }
            })
            .buffer_unordered(self.concurrency)
            .inspect(|(verdict, _)| progress.target(*verdict))
            .map(|(_, outcome)| outcome)
            .collect()
            .await;
        Ok(Snapshot::of(described).with_round(started.elapsed()))
    }

    /// Sends the probe and collects the cameras that answer within the window, one per
    /// endpoint reference.
    pub async fn probe(&self) -> Result<Vec<Match>, DiscoveryError> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .await
            .map_err(|e| DiscoveryError::Failed(format!("cannot open a UDP socket: {e}")))?;
        let id = format!("urn:uuid:{}", uuid());
        let probe = wsd::probe(&id);
        let mut sent = 0;
        if self.multicast {
            match socket.send_to(probe.as_bytes(), MULTICAST).await {
                Ok(_) => sent += 1,
                Err(e) => tracing::debug!("multicast probe not sent: {e}"),
            }
        }
        for a in &self.addresses {
            match socket.send_to(probe.as_bytes(), a).await {
                Ok(_) => sent += 1,
                Err(e) => tracing::debug!(address = %a, "probe not sent: {e}"),
            }
        }
        if sent == 0 {
            return Err(DiscoveryError::Unavailable(
                "no WS-Discovery probe could be sent (no multicast route and no reachable address)"
                    .into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + self.window;
        let mut found: BTreeMap<String, Match> = BTreeMap::new();
        let mut buf = vec![0u8; wsd::MAX_MESSAGE_BYTES];
        loop {
            let recv = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
            let Ok(Ok((n, _from))) = recv else { break };
            if let Some(Message::ProbeMatches {
                relates_to,
                matches,
            }) = wsd::parse(&buf[..n])
                && (relates_to.is_empty() || relates_to == id)
            {
                for m in matches {
                    found.entry(m.endpoint.clone()).or_insert(m);
                }
            }
            if found.len() >= 4096 {
                break;
            }
        }
        Ok(found.into_values().collect())
    }

    /// Describes one camera over SOAP, on the first of its device services that answers;
    /// with the verdict on the camera.
    async fn describe(&self, m: &Match) -> (Verdict, Outcome) {
        for service in select::device_services(m) {
            match self.call_all(service).await {
                Ok((info, media)) => {
                    if let Some(filter) = self.selection.information_dropped_by(&info) {
                        return (Verdict::Dropped(filter), Outcome::Nothing);
                    }
                    let device = select::device(m, service, &info, media.as_deref());
                    return (Verdict::Found(1), Outcome::Device(device));
                }
                Err(Failure::NotAuthorized) => {
                    let why = if self.login.is_some() {
                        "rejected the credentials: check USERNAME and PASSWORD"
                    } else {
                        "demands credentials: set USERNAME and PASSWORD in the Configuration's properties"
                    };
                    let problem = format!("ONVIF camera {} at {service} {why}", m.endpoint);
                    return (Verdict::Failed, Outcome::Problem(problem));
                }
                Err(e) => tracing::debug!(camera = %m.endpoint, %service, "not described: {e:?}"),
            }
        }
        // It answered the probe, but none of its device services answered as ONVIF does.
        (Verdict::Failed, Outcome::Nothing)
    }

    async fn call_all(
        &self,
        service: &str,
    ) -> Result<(soap::DeviceInformation, Option<String>), Failure> {
        let post = |action: &'static str, body: String| async move {
            http::post(service, action, body, self.timeout)
                .await
                .map_err(Failure::Transport)
        };
        // The camera's clock, for the token's Created (cameras refuse tokens from clocks
        // far from theirs): without credentials, no need.
        let offset = match &self.login {
            None => None,
            Some(_) => {
                let (status, text) = post(
                    "http://www.onvif.org/ver10/device/wsdl/GetSystemDateAndTime",
                    soap::get_system_date_and_time(),
                )
                .await?;
                Some(
                    soap::system_time(&text, status)
                        .map(|t| t.duration_since(jiff::Timestamp::now()))
                        .unwrap_or_default(),
                )
            }
        };
        let credentials = || {
            self.login.as_ref().map(|(u, p)| Credentials {
                username: u,
                password: p,
                nonce: nonce(),
                created: soap::created(
                    jiff::Timestamp::now()
                        .checked_add(offset.unwrap_or_default())
                        .unwrap_or_else(|_| jiff::Timestamp::now()),
                ),
            })
        };
        let (status, text) = post(
            "http://www.onvif.org/ver10/device/wsdl/GetDeviceInformation",
            soap::get_device_information(credentials().as_ref()),
        )
        .await?;
        let info = soap::device_information(&text, status)?;
        let media = match post(
            "http://www.onvif.org/ver10/device/wsdl/GetCapabilities",
            soap::get_capabilities(credentials().as_ref()),
        )
        .await
        {
            Ok((status, text)) => soap::media_address(&text, status).ok().flatten(),
            Err(_) => None,
        };
        Ok((info, media))
    }
}

/// 64 random bits (the standard library's hasher keys come from the OS's random source).
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// A random (version 4) UUID.
pub fn uuid() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0x0fff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// A fresh nonce for a UsernameToken.
fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    n[..8].copy_from_slice(&random_u64().to_le_bytes());
    n[8..].copy_from_slice(&random_u64().to_le_bytes());
    n
}

/// One round with a fresh scanner (for tests).
pub async fn scan(
    details: &OnvifDetails,
    properties: &Properties,
) -> Result<Snapshot, DiscoveryError> {
    Arc::new(Scanner::new(details, properties)?).round().await
}
