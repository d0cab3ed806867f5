//! Simulated BACnet/IP devices: each a UDP socket that answers a Who-Is (within its instance
//! range limits) with an I-Am to the sender and a ReadProperty of its Device object's
//! identity with a ComplexAck (an Error for a property it lacks), encoded by ASHRAE 135
//! clause 20 independently of dowser's handler. Modes make the ones that break clients.

use std::net::SocketAddr;

use anyhow::Context as _;
use serde::Deserialize;
use tokio::{net::UdpSocket, task::JoinHandle};

/// How a simulated BACnet device behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    #[default]
    Normal,
    /// Never answers anything.
    Silent,
    /// Answers every request with bytes that are not BACnet.
    Garbage,
    /// Answers Who-Is, never ReadProperty.
    WhoIsOnly,
}

/// One simulated device.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    pub instance: u32,
    #[serde(default = "default_vendor")]
    pub vendor_id: u16,
    pub object_name: String,
    #[serde(default)]
    pub vendor_name: String,
    #[serde(default)]
    pub model_name: String,
    #[serde(default)]
    pub firmware_revision: String,
    /// Absent: the device has no location property (ReadProperty answers an Error).
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub mode: Mode,
}

fn default_vendor() -> u16 {
    5
}

impl DeviceConfig {
    pub fn new(instance: u32, object_name: &str, vendor_name: &str, model_name: &str) -> Self {
        Self {
            listen: "127.0.0.1:0".parse().unwrap(),
            instance,
            vendor_id: default_vendor(),
            object_name: object_name.into(),
            vendor_name: vendor_name.into(),
            model_name: model_name.into(),
            firmware_revision: "1.0".into(),
            location: None,
            mode: Mode::Normal,
        }
    }
}

/// A device that runs.
pub struct RunningDevice {
    pub config: DeviceConfig,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for RunningDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(config: &DeviceConfig) -> anyhow::Result<RunningDevice> {
    let socket = UdpSocket::bind(config.listen)
        .await
        .with_context(|| format!("BACnet device on {}", config.listen))?;
    let addr = socket.local_addr()?;
    let c = config.clone();
    let task = tokio::spawn(async move { run(socket, c).await });
    Ok(RunningDevice {
        config: config.clone(),
        addr,
        task,
    })
}

async fn run(socket: UdpSocket, c: DeviceConfig) {
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        if c.mode == Mode::Silent {
            continue;
        }
        if c.mode == Mode::Garbage {
            let _ = socket.send_to(b"\x81\x0b\x00\x09garbage!", from).await;
            continue;
        }
        if let Some(reply) = answer(&c, &buf[..n]) {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

fn frame(function: u8, npdu_apdu: &[u8]) -> Vec<u8> {
    let len = (4 + npdu_apdu.len()) as u16;
    let mut out = vec![0x81, function];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(npdu_apdu);
    out
}

/// The APDU of a request (past the BVLC and NPDU headers), if it is one.
fn apdu(data: &[u8]) -> Option<&[u8]> {
    if data.len() < 6 || data[0] != 0x81 || data[4] != 0x01 {
        return None;
    }
    let control = data[5];
    let mut at = 6;
    if control & 0x20 != 0 {
        let dlen = *data.get(at + 2)? as usize;
        at += 3 + dlen;
    }
    if control & 0x08 != 0 {
        let slen = *data.get(at + 2)? as usize;
        at += 3 + slen;
    }
    if control & 0x20 != 0 {
        at += 1;
    }
    data.get(at..)
}

fn context_unsigned(data: &[u8], at: &mut usize, tag: u8) -> Option<u32> {
    let first = *data.get(*at)?;
    if first >> 4 != tag || first & 0x08 == 0 {
        return None;
    }
    let len = (first & 0x07) as usize;
    let bytes = data.get(*at + 1..*at + 1 + len)?;
    *at += 1 + len;
    Some(bytes.iter().fold(0u32, |n, b| (n << 8) | *b as u32))
}

fn answer(c: &DeviceConfig, data: &[u8]) -> Option<Vec<u8>> {
    let apdu = apdu(data)?;
    match (apdu.first()? >> 4, *apdu.get(1)?) {
        // Who-Is.
        (1, 0x08) => {
            let mut at = 2;
            if apdu.len() > 2 {
                let low = context_unsigned(apdu, &mut at, 0)?;
                let high = context_unsigned(apdu, &mut at, 1)?;
                if !(low..=high).contains(&c.instance) {
                    return None;
                }
            }
            let oid = (8u32 << 22) | c.instance;
            let mut p = vec![0x01, 0x00, 0x10, 0x00, 0xc4];
            p.extend_from_slice(&oid.to_be_bytes());
            p.extend_from_slice(&[0x22, 0x05, 0xc4, 0x91, 0x03, 0x22]);
            p.extend_from_slice(&c.vendor_id.to_be_bytes());
            Some(frame(0x0a, &p))
        }
        // A confirmed request: ReadProperty (service 12).
        (0, _) => {
            if c.mode == Mode::WhoIsOnly {
                return None;
            }
            let invoke = *apdu.get(2)?;
            if *apdu.get(3)? != 0x0c {
                return None;
            }
            let mut at = 4;
            if *apdu.get(at)? != 0x0c {
                return None;
            }
            let oid = apdu.get(at + 1..at + 5)?.to_vec();
            at += 5;
            let property = context_unsigned(apdu, &mut at, 1)?;
            let text = match property {
                77 => Some(c.object_name.clone()),
                121 => Some(c.vendor_name.clone()),
                70 => Some(c.model_name.clone()),
                44 => Some(c.firmware_revision.clone()),
                12 => Some("dowser-sim".to_string()),
                58 => c.location.clone(),
                _ => None,
            };
            let Some(text) = text else {
                // Error: property, unknown-property (class 2, code 32).
                return Some(frame(
                    0x0a,
                    &[0x01, 0x00, 0x50, invoke, 0x0c, 0x91, 0x02, 0x91, 0x20],
                ));
            };
            let mut p = vec![0x01, 0x00, 0x30, invoke, 0x0c, 0x0c];
            p.extend_from_slice(&oid);
            p.extend_from_slice(&[0x19, property as u8, 0x3e]);
            let bytes = text.as_bytes();
            p.extend_from_slice(&[0x75, (bytes.len() + 1) as u8, 0x00]);
            p.extend_from_slice(bytes);
            p.push(0x3f);
            Some(frame(0x0a, &p))
        }
        _ => None,
    }
}
