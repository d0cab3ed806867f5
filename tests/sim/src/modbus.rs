//! Simulated Modbus TCP devices, framed by hand so that every hostile behaviour a real
//! device shows on the wire can be reproduced exactly.

use std::{collections::BTreeMap, fmt, net::SocketAddr, sync::Arc, time::Duration};

use serde::Deserialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// How a device (or one unit) behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// Answers as the Modbus specification says.
    #[default]
    Normal,
    /// Accepts the connection and never answers.
    Silent,
    /// Answers correctly, after `slowMs`.
    Slow,
    /// Answers Read Device Identification with exception 0x01 (illegal function), as devices
    /// without it do; registers still work.
    Exception,
    /// Answers every request with bytes that are not Modbus.
    Garbage,
    /// Resets the connection on the first request.
    Reset,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Mode::Normal => "normal",
            Mode::Silent => "silent",
            Mode::Slow => "slow",
            Mode::Exception => "exception",
            Mode::Garbage => "garbage",
            Mode::Reset => "reset",
        };
        f.write_str(s)
    }
}

/// What a listener does for a unit id it does not serve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MissingUnits {
    /// No answer (a device that ignores other unit ids).
    #[default]
    Silent,
    /// Exception 0x0B, as a gateway does when nothing answers behind it.
    GatewayError,
}

/// One simulated unit.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnitConfig {
    pub id: u8,
    #[serde(default)]
    pub vendor_name: Option<String>,
    #[serde(default)]
    pub product_code: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    /// Regular identification objects 0x03–0x06 (vendor URL, product name, model name, user
    /// application name).
    #[serde(default)]
    pub extra_objects: BTreeMap<u8, String>,
    /// Holding registers from address 0.
    #[serde(default)]
    pub holding_registers: Vec<u16>,
    /// Overrides the listener's mode for this unit.
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// One listener (a simulated device or gateway) or a row of identical ones.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port, such as `127.0.0.1:5020`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How many listeners: the next ones take the following IPv4 addresses (or ports with
    /// `spread: ports`).
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub spread: Spread,
    #[serde(default)]
    pub mode: Mode,
    /// Delay of `slow` mode, in milliseconds.
    #[serde(default = "default_slow")]
    pub slow_ms: u64,
    #[serde(default)]
    pub missing_units: MissingUnits,
    #[serde(default)]
    pub units: Vec<UnitConfig>,
}

fn one() -> u32 {
    1
}

fn default_slow() -> u64 {
    3000
}

/// How a row of listeners is laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum Spread {
    #[default]
    Addresses,
    Ports,
}

impl ListenerConfig {
    /// A normal device at `listen` with the given units.
    pub fn device(listen: SocketAddr, units: Vec<UnitConfig>) -> Self {
        Self {
            listen,
            count: 1,
            spread: Spread::Addresses,
            mode: Mode::Normal,
            slow_ms: default_slow(),
            missing_units: MissingUnits::Silent,
            units,
        }
    }

    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
}

impl UnitConfig {
    pub fn identified(id: u8, vendor: &str, product: &str, revision: &str) -> Self {
        Self {
            id,
            vendor_name: Some(vendor.into()),
            product_code: Some(product.into()),
            revision: Some(revision.into()),
            holding_registers: vec![0; 16],
            ..Self::default()
        }
    }
}

/// A listener that is serving; dropping it closes the socket.
pub struct RunningListener {
    pub addr: SocketAddr,
    pub config: Arc<ListenerConfig>,
    task: JoinHandle<()>,
}

impl Drop for RunningListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the listener(s) of one config entry.
pub async fn serve(config: &ListenerConfig) -> anyhow::Result<Vec<RunningListener>> {
    let mut running = Vec::new();
    for i in 0..config.count {
        let addr = nth_addr(config.listen, config.spread, i)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr()?;
        let mut one = config.clone();
        one.listen = addr;
        one.count = 1;
        let one = Arc::new(one);
        let task = tokio::spawn(accept_loop(listener, one.clone()));
        running.push(RunningListener {
            addr,
            config: one,
            task,
        });
    }
    Ok(running)
}

fn nth_addr(base: SocketAddr, spread: Spread, i: u32) -> anyhow::Result<SocketAddr> {
    Ok(match (spread, base) {
        (_, _) if i == 0 => base,
        (Spread::Ports, _) => {
            if base.port() == 0 {
                base
            } else {
                let port = u16::try_from(u32::from(base.port()) + i)?;
                SocketAddr::new(base.ip(), port)
            }
        }
        (Spread::Addresses, SocketAddr::V4(v4)) => {
            let ip = u32::from(*v4.ip())
                .checked_add(i)
                .ok_or_else(|| anyhow::anyhow!("address overflow"))?;
            SocketAddr::new(std::net::Ipv4Addr::from(ip).into(), base.port())
        }
        (Spread::Addresses, SocketAddr::V6(_)) => {
            anyhow::bail!("spread: addresses needs an IPv4 listen address")
        }
    })
}

async fn accept_loop(listener: TcpListener, config: Arc<ListenerConfig>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(connection(stream, config.clone()));
    }
}

/// Longest MBAP length field a well-formed frame can carry (unit id + 253-byte PDU).
const MAX_MBAP_LEN: usize = 254;

async fn connection(mut stream: TcpStream, config: Arc<ListenerConfig>) {
    let _ = stream.set_nodelay(true);
    loop {
        let mut header = [0u8; 7];
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        if header[2..4] != [0, 0] || !(2..=MAX_MBAP_LEN).contains(&len) {
            return; // not Modbus TCP: drop the connection as devices do
        }
        let mut pdu = vec![0u8; len - 1];
        if stream.read_exact(&mut pdu).await.is_err() {
            return;
        }
        let unit_id = header[6];
        let unit = config.units.iter().find(|u| u.id == unit_id);
        let mode = unit.and_then(|u| u.mode).unwrap_or(config.mode);
        match mode {
            Mode::Silent => continue,
            Mode::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
            Mode::Garbage => {
                let junk: Vec<u8> = (0..37u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ pdu[0])
                    .collect();
                if stream.write_all(&junk).await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Slow => tokio::time::sleep(Duration::from_millis(config.slow_ms)).await,
            Mode::Normal | Mode::Exception => {}
        }
        let response = match unit {
            Some(unit) => respond(unit, mode, &pdu),
            None => match config.missing_units {
                MissingUnits::Silent => continue,
                MissingUnits::GatewayError => vec![pdu[0] | 0x80, 0x0B],
            },
        };
        for frame in response_frames(&header, &response) {
            if stream.write_all(&frame).await.is_err() {
                return;
            }
        }
    }
}

fn response_frames(header: &[u8; 7], pdu: &[u8]) -> Vec<Vec<u8>> {
    let mut frame = Vec::with_capacity(7 + pdu.len());
    frame.extend_from_slice(&header[0..4]);
    frame.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    frame.push(header[6]);
    frame.extend_from_slice(pdu);
    vec![frame]
}

fn exception(function: u8, code: u8) -> Vec<u8> {
    vec![function | 0x80, code]
}

/// Answers one request PDU (Modbus Application Protocol 1.1b3).
pub fn respond(unit: &UnitConfig, mode: Mode, pdu: &[u8]) -> Vec<u8> {
    let function = pdu[0];
    let u16_at = |i: usize| pdu.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match function {
        0x03 | 0x04 => {
            let (Some(addr), Some(count)) = (u16_at(1), u16_at(3)) else {
                return exception(function, 0x03);
            };
            if !(1..=125).contains(&count) {
                return exception(function, 0x03);
            }
            let end = usize::from(addr) + usize::from(count);
            if end > unit.holding_registers.len() {
                return exception(function, 0x02);
            }
            let mut out = vec![function, (count * 2) as u8];
            for r in &unit.holding_registers[usize::from(addr)..end] {
                out.extend_from_slice(&r.to_be_bytes());
            }
            out
        }
        0x01 | 0x02 => {
            let (Some(_addr), Some(count)) = (u16_at(1), u16_at(3)) else {
                return exception(function, 0x03);
            };
            if !(1..=2000).contains(&count) {
                return exception(function, 0x03);
            }
            let bytes = usize::from(count).div_ceil(8);
            let mut out = vec![function, bytes as u8];
            out.extend(std::iter::repeat_n(0u8, bytes));
            out
        }
        0x2B if mode == Mode::Exception => exception(function, 0x01),
        0x2B => device_identification(unit, pdu),
        _ => exception(function, 0x01),
    }
}

fn device_identification(unit: &UnitConfig, pdu: &[u8]) -> Vec<u8> {
    let (Some(&mei), Some(&read_code), Some(&start)) = (pdu.get(1), pdu.get(2), pdu.get(3)) else {
        return exception(0x2B, 0x03);
    };
    if mei != 0x0E {
        return exception(0x2B, 0x01);
    }
    let mut objects: BTreeMap<u8, &str> = BTreeMap::new();
    for (id, v) in [
        (0u8, &unit.vendor_name),
        (1, &unit.product_code),
        (2, &unit.revision),
    ] {
        objects.insert(id, v.as_deref().unwrap_or(""));
    }
    for (id, v) in &unit.extra_objects {
        objects.insert(*id, v);
    }
    let last = match read_code {
        0x01 => 0x02,
        0x02 => 0x7F,
        0x03 => 0xFF,
        0x04 => {
            return match objects.get(&start) {
                Some(v) => ident_response(read_code, false, 0, &[(start, v)]),
                None => exception(0x2B, 0x02),
            };
        }
        _ => return exception(0x2B, 0x03),
    };
    let start = if objects.contains_key(&start) {
        start
    } else {
        0
    };
    let selected: Vec<(u8, &str)> = objects
        .range(start..=last)
        .map(|(id, v)| (*id, *v))
        .collect();
    // Objects that do not fit in one PDU go in the next response ("more follows").
    let mut size = 7;
    let mut fit = Vec::new();
    for (id, v) in &selected {
        let len = 2 + v.len().min(240);
        if size + len > 253 && !fit.is_empty() {
            return ident_response(read_code, true, *id, &fit);
        }
        size += len;
        fit.push((*id, *v));
    }
    ident_response(read_code, false, 0, &fit)
}

fn ident_response(read_code: u8, more: bool, next: u8, objects: &[(u8, &str)]) -> Vec<u8> {
    let mut out = vec![
        0x2B,
        0x0E,
        read_code,
        0x83, // conformity: extended identification, individual access
        if more { 0xFF } else { 0x00 },
        next,
        objects.len() as u8,
    ];
    for (id, v) in objects {
        let bytes = &v.as_bytes()[..v.len().min(240)];
        out.push(*id);
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_identification_is_split_with_more_follows() {
        let mut unit = UnitConfig::identified(1, &"V".repeat(120), &"P".repeat(120), "1.0");
        unit.extra_objects.insert(4, "name".into());
        let first = respond(&unit, Mode::Normal, &[0x2B, 0x0E, 0x02, 0x00]);
        assert_eq!(first[4], 0xFF, "more follows");
        assert_eq!(first[5], 2, "next object");
        assert!(first.len() <= 253);
        let second = respond(&unit, Mode::Normal, &[0x2B, 0x0E, 0x02, 0x02]);
        assert_eq!(second[4], 0x00);
        assert_eq!(second[6], 2, "revision and product name");
    }

    #[test]
    fn registers_out_of_range_are_an_exception() {
        let unit = UnitConfig::identified(1, "a", "b", "c");
        assert_eq!(
            respond(&unit, Mode::Normal, &[0x03, 0, 15, 0, 2]),
            [0x83, 0x02]
        );
        assert_eq!(
            respond(&unit, Mode::Normal, &[0x03, 0, 0, 0, 1])[..2],
            [0x03, 2]
        );
        assert_eq!(
            respond(&unit, Mode::Exception, &[0x2B, 0x0E, 1, 0]),
            [0xAB, 0x01]
        );
    }
}
