//! Simulated ONVIF cameras: a WS-Discovery responder (one per fleet, on 239.255.255.250:3702:
//! ProbeMatches for NetworkVideoTransmitter probes, a Hello per camera at start, a Bye per
//! camera when the fleet stops) and each camera's device service over HTTP/1.1 and SOAP 1.2
//! (GetSystemDateAndTime, GetDeviceInformation, GetCapabilities), as the ONVIF Core
//! Specification describes them. A camera with `users` checks WS-UsernameToken password
//! digests (OASIS Username Token Profile 1.0) and answers `ter:NotAuthorized` otherwise.
//! Multicast needs a network where it stays local: the tests run the fleet in a private
//! network namespace.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use anyhow::Context as _;
use base64::Engine;
use serde::Deserialize;
use sha1::{Digest, Sha1};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    task::JoinHandle,
};

const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);
const PORT: u16 = 3702;

/// How a simulated camera behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    #[default]
    Normal,
    /// Answers WS-Discovery but never answers on its device service.
    Silent,
    /// Answers every SOAP call with bytes that are not SOAP.
    Garbage,
}

/// One simulated camera.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CameraConfig {
    /// Address of its device service; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Its endpoint reference (default: a fixed UUID made from the model and serial number).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    pub manufacturer: String,
    pub model: String,
    #[serde(default)]
    pub firmware_version: String,
    pub serial_number: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Users as `name:password`: when set, GetDeviceInformation and GetCapabilities need one.
    #[serde(default)]
    pub users: Vec<String>,
    /// Whether the fleet's responder answers WS-Discovery for it (off: only its device
    /// service runs, for another WS-Discovery implementation to announce it).
    #[serde(default = "yes")]
    pub announce: bool,
}

fn yes() -> bool {
    true
}

impl CameraConfig {
    pub fn new(manufacturer: &str, model: &str, serial: &str) -> Self {
        Self {
            listen: "127.0.0.1:0".parse().unwrap(),
            endpoint: None,
            mode: Mode::Normal,
            manufacturer: manufacturer.into(),
            model: model.into(),
            firmware_version: "1.0".into(),
            serial_number: serial.into(),
            scopes: Vec::new(),
            users: Vec::new(),
            announce: true,
        }
    }

    pub fn endpoint(&self) -> String {
        self.endpoint.clone().unwrap_or_else(|| {
            let mut h = Sha1::new();
            h.update(format!("{}/{}", self.model, self.serial_number));
            let d = h.finalize();
            format!(
                "urn:uuid:{:08x}-{:04x}-5{:03x}-8{:03x}-{:012x}",
                u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
                u16::from_be_bytes([d[4], d[5]]),
                u16::from_be_bytes([d[6], d[7]]) & 0xfff,
                u16::from_be_bytes([d[8], d[9]]) & 0xfff,
                u64::from_be_bytes([0, 0, d[10], d[11], d[12], d[13], d[14], d[15]])
            )
        })
    }
}

/// A camera that runs.
pub struct RunningCamera {
    pub config: CameraConfig,
    pub endpoint: String,
    /// Its device service URL.
    pub url: String,
    task: JoinHandle<()>,
}

impl Drop for RunningCamera {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fleet's WS-Discovery responder.
pub struct Responder {
    cameras: Arc<Vec<(String, String, Vec<String>)>>,
    task: JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
        // Goodbyes, as a camera that is switched off cleanly sends them.
        if let Ok(socket) = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
            for (endpoint, _, _) in self.cameras.iter() {
                let _ = socket.send_to(bye(endpoint).as_bytes(), (GROUP, PORT));
            }
        }
    }
}

/// Starts the cameras and one responder that answers for all of them.
pub async fn serve_all(
    configs: &[CameraConfig],
) -> anyhow::Result<(Vec<RunningCamera>, Option<Responder>)> {
    let mut cameras = Vec::new();
    for c in configs {
        let listener = TcpListener::bind(c.listen)
            .await
            .with_context(|| format!("ONVIF camera on {}", c.listen))?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}/onvif/device_service");
        let config = Arc::new(c.clone());
        let task = tokio::spawn(serve(listener, config.clone(), url.clone()));
        cameras.push(RunningCamera {
            endpoint: c.endpoint(),
            config: c.clone(),
            url,
            task,
        });
    }
    let described: Arc<Vec<(String, String, Vec<String>)>> = Arc::new(
        cameras
            .iter()
            .filter(|c| c.config.announce)
            .map(|c| (c.endpoint.clone(), c.url.clone(), c.config.scopes.clone()))
            .collect(),
    );
    if described.is_empty() {
        return Ok((cameras, None));
    }
    let socket = responder_socket().context("WS-Discovery responder on 239.255.255.250:3702")?;
    for (endpoint, url, scopes) in described.iter() {
        let _ = socket
            .send_to(hello(endpoint, url, scopes).as_bytes(), (GROUP, PORT))
            .await;
    }
    let task = tokio::spawn(respond(socket, described.clone()));
    Ok((
        cameras,
        Some(Responder {
            cameras: described,
            task,
        }),
    ))
}

fn responder_socket() -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)).into())?;
    socket.join_multicast_v4(&GROUP, &Ipv4Addr::UNSPECIFIED)?;
    UdpSocket::from_std(socket.into())
}

async fn respond(socket: UdpSocket, cameras: Arc<Vec<(String, String, Vec<String>)>>) {
    let mut buf = vec![0u8; 65536];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        let Ok(text) = std::str::from_utf8(&buf[..n]) else {
            continue;
        };
        let Ok(doc) = roxmltree::Document::parse(text) else {
            continue;
        };
        let is_probe = doc.descendants().any(|e| e.tag_name().name() == "Probe");
        let wants_cameras = doc
            .descendants()
            .find(|e| e.tag_name().name() == "Types")
            .and_then(|e| e.text())
            .is_none_or(|t| t.contains("NetworkVideoTransmitter"));
        if !is_probe || !wants_cameras {
            continue;
        }
        let id = doc
            .descendants()
            .find(|e| e.tag_name().name() == "MessageID")
            .and_then(|e| e.text())
            .unwrap_or("")
            .to_string();
        for (endpoint, url, scopes) in cameras.iter() {
            let _ = socket
                .send_to(probe_match(&id, endpoint, url, scopes).as_bytes(), from)
                .await;
        }
    }
}

fn description(endpoint: &str, url: &str, scopes: &[String]) -> String {
    format!(
        "<a:EndpointReference><a:Address>{endpoint}</a:Address></a:EndpointReference>\
         <d:Types>dn:NetworkVideoTransmitter tds:Device</d:Types><d:Scopes>{}</d:Scopes>\
         <d:XAddrs>{url}</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion>",
        scopes.join(" ")
    )
}

fn wsd_envelope(action: &str, relates_to: Option<&str>, body: &str) -> String {
    let relates = relates_to
        .map(|r| format!("<a:RelatesTo>{r}</a:RelatesTo>"))
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" xmlns:dn="http://www.onvif.org/ver10/network/wsdl" xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><s:Header><a:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/{action}</a:Action><a:MessageID>urn:uuid:{}</a:MessageID>{relates}</s:Header><s:Body>{body}</s:Body></s:Envelope>"#,
        uuid_like()
    )
}

fn probe_match(relates_to: &str, endpoint: &str, url: &str, scopes: &[String]) -> String {
    wsd_envelope(
        "ProbeMatches",
        Some(relates_to),
        &format!(
            "<d:ProbeMatches><d:ProbeMatch>{}</d:ProbeMatch></d:ProbeMatches>",
            description(endpoint, url, scopes)
        ),
    )
}

fn hello(endpoint: &str, url: &str, scopes: &[String]) -> String {
    wsd_envelope(
        "Hello",
        None,
        &format!("<d:Hello>{}</d:Hello>", description(endpoint, url, scopes)),
    )
}

fn bye(endpoint: &str) -> String {
    wsd_envelope(
        "Bye",
        None,
        &format!(
            "<d:Bye><a:EndpointReference><a:Address>{endpoint}</a:Address></a:EndpointReference></d:Bye>"
        ),
    )
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    let a = h.finish();
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        a >> 32,
        a & 0xffff,
        a & 0xffff_ffff_ffff
    )
}

async fn serve(listener: TcpListener, config: Arc<CameraConfig>, url: String) {
    let mut held = Vec::new();
    while let Ok((socket, _)) = listener.accept().await {
        if config.mode == Mode::Silent {
            held.push(socket);
            continue;
        }
        let (config, url) = (config.clone(), url.clone());
        tokio::spawn(async move {
            let _ = exchange(socket, &config, &url).await;
        });
    }
}

/// One request, one answer, then the connection is closed.
async fn exchange(mut socket: TcpStream, config: &CameraConfig, url: &str) -> std::io::Result<()> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let body = loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        data.extend_from_slice(&buf[..n]);
        if data.len() > 1 << 20 {
            return Ok(());
        }
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if data.len() >= end + 4 + length {
            break String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned();
        }
    };
    let (status, answer) = if config.mode == Mode::Garbage {
        (200, "\u{1}\u{2}not soap at all <<<".to_string())
    } else {
        answer(config, url, &body)
    };
    let reply = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/soap+xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        if status == 200 { "OK" } else { "Bad Request" },
        answer.len()
    );
    socket.write_all(reply.as_bytes()).await?;
    socket.shutdown().await
}

fn soap(body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:ter="http://www.onvif.org/ver10/error"><env:Body>{body}</env:Body></env:Envelope>"#
    )
}

fn not_authorized() -> (u16, String) {
    (
        400,
        soap(
            "<env:Fault><env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>ter:NotAuthorized</env:Value></env:Subcode></env:Code><env:Reason><env:Text xml:lang=\"en\">Sender not authorized</env:Text></env:Reason></env:Fault>",
        ),
    )
}

fn answer(config: &CameraConfig, url: &str, body: &str) -> (u16, String) {
    let Ok(doc) = roxmltree::Document::parse(body) else {
        return (
            400,
            soap("<env:Fault><env:Code><env:Value>env:Sender</env:Value></env:Code></env:Fault>"),
        );
    };
    let Some(op) = doc
        .descendants()
        .find(|n| n.tag_name().name() == "Body")
        .and_then(|b| b.children().find(|n| n.is_element()))
        .map(|n| n.tag_name().name().to_string())
    else {
        return (400, soap(""));
    };
    if op == "GetSystemDateAndTime" {
        let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
        return (
            200,
            soap(&format!(
                "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>NTP</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings><tt:UTCDateTime><tt:Time><tt:Hour>{}</tt:Hour><tt:Minute>{}</tt:Minute><tt:Second>{}</tt:Second></tt:Time><tt:Date><tt:Year>{}</tt:Year><tt:Month>{}</tt:Month><tt:Day>{}</tt:Day></tt:Date></tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>",
                now.hour(),
                now.minute(),
                now.second(),
                now.year(),
                now.month(),
                now.day()
            )),
        );
    }
    if !config.users.is_empty() && !authorized(config, &doc) {
        return not_authorized();
    }
    match op.as_str() {
        "GetDeviceInformation" => (
            200,
            soap(&format!(
                "<tds:GetDeviceInformationResponse><tds:Manufacturer>{}</tds:Manufacturer><tds:Model>{}</tds:Model><tds:FirmwareVersion>{}</tds:FirmwareVersion><tds:SerialNumber>{}</tds:SerialNumber><tds:HardwareId>{}</tds:HardwareId></tds:GetDeviceInformationResponse>",
                config.manufacturer,
                config.model,
                config.firmware_version,
                config.serial_number,
                "sim"
            )),
        ),
        "GetCapabilities" => {
            let media = url.replace("device_service", "media_service");
            (
                200,
                soap(&format!(
                    "<tds:GetCapabilitiesResponse><tds:Capabilities><tt:Device><tt:XAddr>{url}</tt:XAddr></tt:Device><tt:Media><tt:XAddr>{media}</tt:XAddr></tt:Media></tds:Capabilities></tds:GetCapabilitiesResponse>"
                )),
            )
        }
        _ => (
            400,
            soap(
                "<env:Fault><env:Code><env:Value>env:Receiver</env:Value><env:Subcode><env:Value>ter:ActionNotSupported</env:Value></env:Subcode></env:Code></env:Fault>",
            ),
        ),
    }
}

/// Whether the request carries a UsernameToken of a listed user with a right digest.
fn authorized(config: &CameraConfig, doc: &roxmltree::Document) -> bool {
    let text = |name: &str| {
        doc.descendants()
            .find(|n| n.tag_name().name() == name)
            .and_then(|n| n.text())
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let (user, digest, nonce, created) = (
        text("Username"),
        text("Password"),
        text("Nonce"),
        text("Created"),
    );
    let Ok(nonce) = base64::engine::general_purpose::STANDARD.decode(nonce) else {
        return false;
    };
    config.users.iter().any(|u| {
        let Some((name, password)) = u.split_once(':') else {
            return false;
        };
        if name != user {
            return false;
        }
        let mut h = Sha1::new();
        h.update(&nonce);
        h.update(created.as_bytes());
        h.update(password.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(h.finalize()) == digest
    })
}
