//! `spec.discovery.modbus`: Modbus TCP targets or Modbus RTU serial lines.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    str::FromStr,
};

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::defaults::u32_of;
use crate::{
    FieldError, Filter,
    validation::{Rule, add_rules},
};

/// Default Modbus TCP port (IANA "mbap").
pub const DEFAULT_PORT: u16 = 502;
/// The widest IPv4 CIDR that may be scanned (65,536 addresses).
pub const MIN_PREFIX_V4: u8 = 16;
/// The widest IPv6 CIDR that may be scanned (65,536 addresses).
pub const MIN_PREFIX_V6: u8 = 112;
/// The most addresses one target may name.
pub const MAX_TARGET_ADDRESSES: u128 = 1 << 16;

const MODBUS_RULES: &[Rule] = &[
    Rule::new(
        "(has(self.targets) && size(self.targets) > 0) != has(self.rtu)",
        "set either targets (Modbus TCP) or rtu (Modbus RTU serial lines), not both and not neither",
    ),
    Rule::new(
        "!has(self.targets) || self.targets.all(t, !isCIDR(t) || cidr(t).prefixLength() >= (cidr(t).ip().family() == 4 ? 16 : 112))",
        "CIDR targets wider than /16 (IPv4) or /112 (IPv6) are not scanned: split the network into smaller ranges",
    )
    .at(".targets"),
    Rule::new(
        "!has(self.rtu) || !has(self.ports)",
        "ports apply to Modbus TCP only; a serial line is chosen with rtu.lines",
    )
    .at(".ports"),
];

const PROBE_RULES: &[Rule] = &[
    Rule::new(
        "self.table == 'coils' || self.table == 'discreteInputs' || self.count <= 125",
        "at most 125 registers can be read at once",
    )
    .at(".count"),
    Rule::new(
        "self.address + self.count <= 65536",
        "address + count goes past the last address (65535)",
    ),
];

fn probe_rules(schema: &mut schemars::Schema) {
    add_rules(schema, PROBE_RULES);
}

fn modbus_rules(schema: &mut schemars::Schema) {
    add_rules(schema, MODBUS_RULES);
}

fn default_unit_ids() -> Vec<String> {
    vec!["1".into()]
}

/// Modbus devices: TCP hosts (shared: every node that can reach them sees the same device) or
/// RTU units on a node's serial lines (local to that node).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = modbus_rules)]
pub struct ModbusDetails {
    /// Modbus TCP targets: host names (`plc-7.plant.local`), addresses (`10.0.7.3`,
    /// `fd00::7`), an address or host with a port (`10.0.7.3:1502`, `[fd00::7]:1502`), CIDRs
    /// (`10.0.7.0/28`, at most /16) and ranges (`10.0.7.10-10.0.7.40` or `10.0.7.10-40`).
    /// Network and broadcast addresses of IPv4 CIDRs up to /30 are skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub targets: Vec<String>,
    /// TCP ports probed on every target that does not name its own port. Default: 502.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(range(min = 1)))]
    pub ports: Vec<u16>,
    /// Modbus RTU serial lines on the node. Devices found there are local to the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtu: Option<RtuDetails>,
    /// Unit identifiers (slave addresses) probed on every target or line: single ids
    /// (`"1"`) or inclusive ranges (`"1-4"`), 0 to 255 (RTU: 1 to 247). Default: `["1"]`.
    #[serde(default = "default_unit_ids")]
    #[schemars(
        length(min = 1, max = 32),
        inner(regex(
            pattern = r"^([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])(-([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5]))?$"
        ))
    )]
    pub unit_ids: Vec<String>,
    /// Register read used to detect a unit that answers Read Device Identification with an
    /// exception (many simple devices do not implement it). Without it, such a unit is still
    /// reported, without identification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_probe: Option<RegisterProbe>,
    /// Keeps devices by VendorName (identification object 0x00).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_names: Option<Filter>,
    /// Keeps devices by ProductCode (identification object 0x01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_codes: Option<Filter>,
    /// Keeps devices by MajorMinorRevision (identification object 0x02).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revisions: Option<Filter>,
    /// How long a TCP connection attempt may take, in milliseconds.
    #[serde(default = "u32_of::<500>")]
    #[schemars(range(min = 10, max = 60000))]
    pub connect_timeout_ms: u32,
    /// How long one request may wait for its response, in milliseconds. A unit that does not
    /// answer in time is skipped and the connection is opened anew, so that a late reply
    /// cannot be taken for the answer to the next request.
    #[serde(default = "u32_of::<1000>")]
    #[schemars(range(min = 10, max = 60000))]
    pub request_timeout_ms: u32,
    /// How many targets are probed at the same time.
    #[serde(default = "u32_of::<64>")]
    #[schemars(range(min = 1, max = 1024))]
    pub concurrency: u32,
    /// At most this many new TCP connections per second, to be gentle with plant networks.
    #[serde(default = "u32_of::<500>")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_connections_per_second: u32,
    /// Seconds between two scans.
    #[serde(default = "u32_of::<60>")]
    #[schemars(range(min = 1, max = 86400))]
    pub interval_seconds: u32,
    /// The most addresses (over all targets) one scan may probe.
    #[serde(default = "u32_of::<4096>")]
    #[schemars(range(min = 1, max = 65536))]
    pub max_addresses: u32,
}

impl Default for ModbusDetails {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("all fields have defaults")
    }
}

/// Modbus RTU: units on serial lines of the node (one scanner per line at a time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RtuDetails {
    /// The serial lines to scan.
    #[schemars(length(min = 1, max = 16))]
    pub lines: Vec<SerialLine>,
    /// Silence between two frames, in milliseconds. Default: 3.5 character times at the
    /// line's baud rate (1.75 ms above 19200 baud), as the Modbus specification requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub inter_frame_delay_ms: Option<u32>,
}

/// One serial line and its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SerialLine {
    /// Device node of the line on the node, such as `/dev/ttyUSB0` or a stable
    /// `/dev/serial/by-id/...` link.
    #[schemars(length(min = 6, max = 256), regex(pattern = r"^/dev/\S+$"))]
    pub path: String,
    /// Baud rate.
    #[serde(default = "u32_of::<19200>")]
    #[schemars(range(min = 300, max = 4000000))]
    pub baud_rate: u32,
    /// Parity. The Modbus specification's default is even.
    #[serde(default)]
    pub parity: Parity,
    /// Data bits per character.
    #[serde(default = "u32_of::<8>")]
    #[schemars(range(min = 7, max = 8))]
    pub data_bits: u32,
    /// Stop bits per character.
    #[serde(default = "u32_of::<1>")]
    #[schemars(range(min = 1, max = 2))]
    pub stop_bits: u32,
}

/// Serial parity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Parity {
    None,
    #[default]
    Even,
    Odd,
}

/// A register read that proves a unit is there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = probe_rules)]
pub struct RegisterProbe {
    /// Which table to read.
    pub table: RegisterTable,
    /// Zero-based address of the first register or bit.
    #[schemars(range(max = 65535))]
    pub address: u32,
    /// How many registers (at most 125) or bits (at most 2000) to read.
    #[serde(default = "u32_of::<1>")]
    #[schemars(range(min = 1, max = 2000))]
    pub count: u32,
}

/// Modbus data tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RegisterTable {
    /// Holding registers, function 0x03.
    HoldingRegisters,
    /// Input registers, function 0x04.
    InputRegisters,
    /// Coils, function 0x01.
    Coils,
    /// Discrete inputs, function 0x02.
    DiscreteInputs,
}

impl super::HandlerDetails for ModbusDetails {
    fn shared(&self) -> bool {
        // A TCP device is reachable from every node on its network; an RTU unit hangs off
        // one node's serial line.
        self.rtu.is_none()
    }
}

impl ModbusDetails {
    /// Ports probed on targets that name none.
    pub fn effective_ports(&self) -> Vec<u16> {
        if self.ports.is_empty() {
            vec![DEFAULT_PORT]
        } else {
            let mut p = self.ports.clone();
            p.sort_unstable();
            p.dedup();
            p
        }
    }

    /// The unit ids to probe, sorted, without duplicates. Call after [`Self::validate`].
    pub fn unit_id_list(&self) -> Vec<u8> {
        let mut ids: Vec<u8> = self
            .unit_ids
            .iter()
            .filter_map(|s| parse_unit_range(s).ok())
            .flat_map(|r| r.collect::<Vec<_>>())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The parsed targets. Call after [`Self::validate`].
    pub fn parsed_targets(&self) -> Vec<Target> {
        self.targets.iter().filter_map(|t| t.parse().ok()).collect()
    }

    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut total: u128 = 0;
        for (i, t) in self.targets.iter().enumerate() {
            match t.parse::<Target>() {
                Ok(target) => {
                    let n = target.address_count();
                    if n > MAX_TARGET_ADDRESSES {
                        errors.push(FieldError::new(
                            format!("{path}.targets[{i}]"),
                            format!(
                                "{t:?} names {n} addresses; one target may name at most {MAX_TARGET_ADDRESSES}"
                            ),
                        ));
                    }
                    total = total.saturating_add(n);
                }
                Err(e) => errors.push(FieldError::new(format!("{path}.targets[{i}]"), e.0)),
            }
        }
        if total > u128::from(self.max_addresses) {
            errors.push(FieldError::new(
                format!("{path}.targets"),
                format!(
                    "the targets name {total} addresses, more than maxAddresses ({}): narrow the targets or raise maxAddresses",
                    self.max_addresses
                ),
            ));
        }
        let rtu = self.rtu.is_some();
        for (i, u) in self.unit_ids.iter().enumerate() {
            match parse_unit_range(u) {
                Ok(r) if rtu && (*r.start() == 0 || *r.end() > 247) => errors.push(FieldError::new(
                    format!("{path}.unitIds[{i}]"),
                    format!(
                        "{u:?}: Modbus RTU unit ids are 1 to 247 (0 is broadcast, 248-255 are reserved)"
                    ),
                )),
                Ok(_) => {}
                Err(e) => errors.push(FieldError::new(format!("{path}.unitIds[{i}]"), e)),
            }
        }
        errors.extend(crate::filter::validate_all(
            path,
            &[
                ("vendorNames", &self.vendor_names),
                ("productCodes", &self.product_codes),
                ("revisions", &self.revisions),
            ],
        ));
        errors
    }
}

/// Parses `"7"` or `"1-4"` into an inclusive range of unit ids.
pub fn parse_unit_range(s: &str) -> Result<RangeInclusive<u8>, String> {
    let parse = |p: &str| {
        p.trim()
            .parse::<u8>()
            .map_err(|_| format!("{s:?} is not a unit id (0-255) or a range of them (\"1-4\")"))
    };
    match s.split_once('-') {
        None => {
            let id = parse(s)?;
            Ok(id..=id)
        }
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if a > b {
                return Err(format!("{s:?}: the range starts after it ends"));
            }
            Ok(a..=b)
        }
    }
}

/// One parsed entry of `targets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A host name, resolved at scan time, with an optional port.
    Host { name: String, port: Option<u16> },
    /// One address, with an optional port.
    Address { ip: IpAddr, port: Option<u16> },
    /// A network; IPv4 networks up to /30 skip their network and broadcast addresses.
    Network(IpNet),
    /// An inclusive range of addresses of one family.
    Range { start: IpAddr, end: IpAddr },
}

/// Why a target could not be parsed; the message names the accepted forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetError(pub String);

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            TargetError(format!(
                "{s:?} {why}; use a host name, an address, host:port, [IPv6]:port, a CIDR (10.0.7.0/28) or a range (10.0.7.10-10.0.7.40)"
            ))
        };
        let s_trim = s.trim();
        if s_trim.is_empty() || s_trim != s {
            return Err(bad("is empty or has surrounding spaces"));
        }
        if s.contains('/') {
            let net: IpNet = s.parse().map_err(|_| bad("is not a valid CIDR"))?;
            let (min, family) = match net {
                IpNet::V4(_) => (MIN_PREFIX_V4, "IPv4"),
                IpNet::V6(_) => (MIN_PREFIX_V6, "IPv6"),
            };
            if net.prefix_len() < min {
                return Err(TargetError(format!(
                    "{s:?}: {family} CIDRs wider than /{min} are not scanned: split the network into smaller ranges"
                )));
            }
            return Ok(Target::Network(net.trunc()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Target::Address { ip, port: None });
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (ip, port) = rest
                .split_once("]:")
                .ok_or_else(|| bad("is not [IPv6]:port"))?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| bad("has an invalid IPv6 address"))?;
            return Ok(Target::Address {
                ip: IpAddr::V6(ip),
                port: Some(parse_port(port).ok_or_else(|| bad("has an invalid port"))?),
            });
        }
        if let Some((a, b)) = s.split_once('-')
            && let Ok(start) = a.parse::<IpAddr>()
        {
            let end = match (start, b.parse::<IpAddr>(), b.parse::<u8>()) {
                (_, Ok(end), _) => end,
                (IpAddr::V4(v4), Err(_), Ok(last)) => {
                    let o = v4.octets();
                    IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], last))
                }
                _ => return Err(bad("is not a valid address range")),
            };
            if start.is_ipv4() != end.is_ipv4() {
                return Err(bad("mixes IPv4 and IPv6"));
            }
            if ip_to_u128(start) > ip_to_u128(end) {
                return Err(bad("starts after it ends"));
            }
            return Ok(Target::Range { start, end });
        }
        let (name, port) = match s.rsplit_once(':') {
            Some((h, p)) => (
                h,
                Some(parse_port(p).ok_or_else(|| bad("has an invalid port"))?),
            ),
            None => (s, None),
        };
        if let Ok(ip) = name.parse::<Ipv4Addr>() {
            return Ok(Target::Address {
                ip: IpAddr::V4(ip),
                port,
            });
        }
        if !is_hostname(name) {
            return Err(bad("is not a valid host name"));
        }
        Ok(Target::Host {
            name: name.to_string(),
            port,
        })
    }
}

fn parse_port(p: &str) -> Option<u16> {
    p.parse::<u16>().ok().filter(|p| *p != 0)
}

fn is_hostname(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        // An all-numeric name would be a mistyped address, not a host.
        && !s.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn u128_to_ip(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// A host to probe: an address, or a name to resolve at scan time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

impl Target {
    /// How many addresses the target names.
    pub fn address_count(&self) -> u128 {
        match self {
            Target::Host { .. } | Target::Address { .. } => 1,
            Target::Network(net) => {
                let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
                let all = 1u128 << host_bits;
                match net {
                    IpNet::V4(_) if net.prefix_len() <= 30 => all - 2,
                    _ => all,
                }
            }
            // Saturating: `::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff` names 2^128 addresses.
            Target::Range { start, end } => {
                (ip_to_u128(*end) - ip_to_u128(*start)).saturating_add(1)
            }
        }
    }

    /// The hosts the target names, each with its own port if it has one.
    pub fn hosts(&self) -> Box<dyn Iterator<Item = (Host, Option<u16>)> + Send + '_> {
        match self {
            Target::Host { name, port } => {
                Box::new(std::iter::once((Host::Name(name.clone()), *port)))
            }
            Target::Address { ip, port } => Box::new(std::iter::once((Host::Ip(*ip), *port))),
            Target::Network(IpNet::V4(net)) if net.prefix_len() <= 30 => {
                Box::new(net.hosts().map(|ip| (Host::Ip(IpAddr::V4(ip)), None)))
            }
            Target::Network(net) => {
                let first = ip_to_u128(net.network());
                let v4 = net.network().is_ipv4();
                let count = self.address_count();
                Box::new((0..count).map(move |i| (Host::Ip(u128_to_ip(first + i, v4)), None)))
            }
            Target::Range { start, end } => {
                let (a, b, v4) = (ip_to_u128(*start), ip_to_u128(*end), start.is_ipv4());
                Box::new((a..=b).map(move |n| (Host::Ip(u128_to_ip(n, v4)), None)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        s.parse().unwrap_or_else(|e: TargetError| panic!("{}", e.0))
    }

    fn hosts(s: &str) -> Vec<String> {
        t(s).hosts()
            .map(|(h, p)| match p {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
            .collect()
    }

    #[test]
    fn single_addresses_and_hosts() {
        assert_eq!(hosts("10.0.7.3"), ["10.0.7.3"]);
        assert_eq!(hosts("10.0.7.3:1502"), ["10.0.7.3:1502"]);
        assert_eq!(hosts("fd00::7"), ["[fd00::7]"]);
        assert_eq!(hosts("[fd00::7]:1502"), ["[fd00::7]:1502"]);
        assert_eq!(hosts("plc-7.plant.local"), ["plc-7.plant.local"]);
        assert_eq!(hosts("plc-7:1502"), ["plc-7:1502"]);
    }

    #[test]
    fn cidrs_skip_network_and_broadcast() {
        let h = hosts("10.0.7.0/30");
        assert_eq!(h, ["10.0.7.1", "10.0.7.2"]);
        assert_eq!(t("10.0.7.0/24").address_count(), 254);
        assert_eq!(hosts("10.0.7.0/24").len(), 254);
        assert_eq!(hosts("10.0.7.4/31"), ["10.0.7.4", "10.0.7.5"]);
        assert_eq!(hosts("10.0.7.9/32"), ["10.0.7.9"]);
        // host bits are ignored, as `ip route` does
        assert_eq!(t("10.0.7.77/24"), t("10.0.7.0/24"));
        assert_eq!(t("10.0.0.0/16").address_count(), 65534);
        assert_eq!(
            hosts("fd00::/126"),
            ["[fd00::]", "[fd00::1]", "[fd00::2]", "[fd00::3]"]
        );
    }

    #[test]
    fn ranges_full_and_short() {
        assert_eq!(
            hosts("10.0.7.10-10.0.7.12"),
            ["10.0.7.10", "10.0.7.11", "10.0.7.12"]
        );
        assert_eq!(hosts("10.0.7.254-10.0.8.1").len(), 4);
        assert_eq!(
            hosts("10.0.7.10-12"),
            ["10.0.7.10", "10.0.7.11", "10.0.7.12"]
        );
        assert_eq!(t("fd00::1-fd00::ff").address_count(), 255);
    }

    #[test]
    fn host_names_with_dashes_are_not_ranges() {
        assert_eq!(
            t("plc-1"),
            Target::Host {
                name: "plc-1".into(),
                port: None
            }
        );
    }

    #[test]
    fn bad_targets_name_the_problem() {
        for (input, needle) in [
            ("10.0.0.0/8", "wider than /16"),
            ("fd00::/64", "wider than /112"),
            ("10.0.7.40-10.0.7.10", "starts after it ends"),
            ("10.0.7.1-fd00::1", "mixes IPv4 and IPv6"),
            ("10.0.7.1-300", "not a valid address range"),
            ("plc:0", "invalid port"),
            ("plc:70000", "invalid port"),
            ("[fd00::7]", "not [IPv6]:port"),
            ("bad host", "not a valid host name"),
            ("10.0.7", "not a valid host name"),
            ("", "is empty"),
            (" 10.0.0.1", "surrounding spaces"),
            ("10.0.0.0/33", "not a valid CIDR"),
        ] {
            let e = input.parse::<Target>().expect_err(input);
            assert!(e.0.contains(needle), "{input}: {}", e.0);
        }
    }

    #[test]
    fn unit_ranges() {
        assert_eq!(parse_unit_range("7").unwrap(), 7..=7);
        assert_eq!(parse_unit_range("1-4").unwrap(), 1..=4);
        assert!(
            parse_unit_range("4-1")
                .unwrap_err()
                .contains("starts after it ends")
        );
        assert!(parse_unit_range("256").is_err());
        let d = ModbusDetails {
            unit_ids: vec!["3-5".into(), "1".into(), "4".into()],
            ..ModbusDetails::default()
        };
        assert_eq!(d.unit_id_list(), [1, 3, 4, 5]);
    }

    #[test]
    fn defaults_are_what_the_schema_says() {
        let d = ModbusDetails::default();
        assert_eq!(d.unit_ids, ["1"]);
        assert_eq!(d.effective_ports(), [502]);
        assert_eq!(d.connect_timeout_ms, 500);
        assert_eq!(d.max_addresses, 4096);
    }

    #[test]
    fn address_budget_counts_all_targets() {
        let d = ModbusDetails {
            targets: vec!["10.0.0.0/20".into(), "10.1.0.0/20".into()],
            ..ModbusDetails::default()
        };
        let errors = d.validate("spec.discovery.modbus");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "spec.discovery.modbus.targets");
        assert!(
            errors[0]
                .message
                .contains("8188 addresses, more than maxAddresses (4096)"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn the_whole_ipv6_space_is_refused_not_wrapped_around() {
        // Found by the property tests: 2^128 addresses overflowed the count, and two halves
        // of the space overflowed the total.
        let all = "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        assert_eq!(all.parse::<Target>().unwrap().address_count(), u128::MAX);
        for targets in [
            vec![all],
            vec![
                "::-8000::",
                "8000::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ],
        ] {
            let d = ModbusDetails {
                targets: targets.into_iter().map(String::from).collect(),
                ..ModbusDetails::default()
            };
            let errors = d.validate("m");
            assert!(errors.iter().any(|e| e.path == "m.targets"), "{errors:?}");
        }
    }
}
