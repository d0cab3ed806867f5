//! An example dowser broker for Modbus devices, small enough to copy.
//!
//! dowser starts one broker per device and hands it the device's connection details as
//! environment variables: `MODBUS_HOST`, `MODBUS_PORT`, `MODBUS_UNIT_ID` for Modbus TCP;
//! `MODBUS_SERIAL_PORT`, `MODBUS_BAUD_RATE`, `MODBUS_PARITY`, `MODBUS_DATA_BITS`,
//! `MODBUS_STOP_BITS`, `MODBUS_UNIT_ID` for Modbus RTU (the line's device node is mounted into
//! the container). Each variable also comes suffixed with the Instance's hash
//! (`MODBUS_HOST_77F91FAFB55B`) for pods that hold several devices; a broker that holds one
//! device may read either form.
//!
//! The broker reads holding registers 0–9 every `POLL_INTERVAL_MS` (1000 by default), logs
//! each read on one line (`holding[0..10]=[...]`) and serves the last values as Prometheus
//! metrics on `METRICS_ADDR` (`0.0.0.0:9090` by default, path `/metrics`).

pub mod metrics;

use std::{collections::BTreeMap, fmt, time::Duration};

/// First register read and how many.
pub const FIRST_REGISTER: u16 = 0;
pub const REGISTER_COUNT: u16 = 10;

/// Serial parity, as dowser writes it into `MODBUS_PARITY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// The device this broker talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    Tcp {
        host: String,
        port: u16,
        unit: u8,
    },
    Rtu {
        path: String,
        baud_rate: u32,
        parity: Parity,
        data_bits: u8,
        stop_bits: u8,
        unit: u8,
    },
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Tcp { host, port, unit } if host.contains(':') => {
                write!(f, "modbus+tcp://[{host}]:{port}/{unit}")
            }
            Device::Tcp { host, port, unit } => write!(f, "modbus+tcp://{host}:{port}/{unit}"),
            Device::Rtu { path, unit, .. } => write!(f, "modbus+rtu://{path}/{unit}"),
        }
    }
}

/// Everything the broker is told by its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub device: Device,
    pub poll_interval: Duration,
    pub metrics_addr: String,
}

/// The broker's environment, with dowser's hash-suffixed names resolved: `get("MODBUS_HOST")`
/// answers `MODBUS_HOST`, else `MODBUS_HOST_<hash>` when the pod holds exactly one device.
pub struct Env {
    vars: BTreeMap<String, String>,
    hash: Option<String>,
}

/// Variables one of which names the device; their suffixed forms tell the Instance hashes.
const ANCHORS: [&str; 2] = ["MODBUS_HOST", "MODBUS_SERIAL_PORT"];

impl Env {
    pub fn new(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, String> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let mut hashes: Vec<&str> = vars
            .keys()
            .filter_map(|k| {
                ANCHORS.iter().find_map(|a| {
                    k.strip_prefix(a)
                        .and_then(|rest| rest.strip_prefix('_'))
                        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
                })
            })
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        let plain = ANCHORS.iter().any(|a| vars.contains_key(*a));
        let hash = match hashes.as_slice() {
            _ if plain => None,
            [] => None,
            [one] => Some(one.to_string()),
            several => {
                return Err(format!(
                    "this pod holds {} devices ({}): a broker reads one; set MODBUS_HOST or \
                     MODBUS_SERIAL_PORT to choose",
                    several.len(),
                    several.join(", ")
                ));
            }
        };
        Ok(Self { vars, hash })
    }

    pub fn from_process() -> Result<Self, String> {
        Self::new(std::env::vars())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .or_else(|| {
                self.hash
                    .as_ref()
                    .and_then(|h| self.vars.get(&format!("{name}_{h}")))
            })
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn parse<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> Result<T, String> {
        match self.get(name) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("{name}={v:?} is not a valid value")),
            None => default.ok_or_else(|| format!("{name} is not set")),
        }
    }

    pub fn settings(&self) -> Result<Settings, String> {
        let unit = self.parse("MODBUS_UNIT_ID", Some(1u8))?;
        let device = if let Some(path) = self.get("MODBUS_SERIAL_PORT") {
            let parity = match self.get("MODBUS_PARITY").map(str::to_ascii_lowercase) {
                None => Parity::None,
                Some(p) if p == "none" || p == "n" => Parity::None,
                Some(p) if p == "even" || p == "e" => Parity::Even,
                Some(p) if p == "odd" || p == "o" => Parity::Odd,
                Some(p) => return Err(format!("MODBUS_PARITY={p:?}: expected none, even or odd")),
            };
            let data_bits = self.parse("MODBUS_DATA_BITS", Some(8u8))?;
            let stop_bits = self.parse("MODBUS_STOP_BITS", Some(1u8))?;
            if !(7..=8).contains(&data_bits) {
                return Err(format!("MODBUS_DATA_BITS={data_bits}: expected 7 or 8"));
            }
            if !(1..=2).contains(&stop_bits) {
                return Err(format!("MODBUS_STOP_BITS={stop_bits}: expected 1 or 2"));
            }
            Device::Rtu {
                path: path.to_string(),
                baud_rate: self.parse("MODBUS_BAUD_RATE", Some(19200))?,
                parity,
                data_bits,
                stop_bits,
                unit,
            }
        } else if let Some(host) = self.get("MODBUS_HOST") {
            Device::Tcp {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port: self.parse("MODBUS_PORT", Some(502))?,
                unit,
            }
        } else {
            return Err(
                "no device: neither MODBUS_HOST (Modbus TCP) nor MODBUS_SERIAL_PORT (Modbus RTU) \
                 is set; dowser sets them in a pod that requests a dowser.dev/<namespace>_<instance> \
                 or dowser.dev/<namespace>.<configuration> resource"
                    .to_string(),
            );
        };
        let poll_ms: u64 = self.parse("POLL_INTERVAL_MS", Some(1000))?;
        if poll_ms == 0 {
            return Err("POLL_INTERVAL_MS must be at least 1".to_string());
        }
        Ok(Settings {
            device,
            poll_interval: Duration::from_millis(poll_ms),
            metrics_addr: self
                .get("METRICS_ADDR")
                .unwrap_or("0.0.0.0:9090")
                .to_string(),
        })
    }
}

/// The log line of one read: `holding[0..10]=[1, 2, ...]`.
pub fn format_read(first: u16, values: &[u16]) -> String {
    let end = usize::from(first) + values.len();
    format!("holding[{first}..{end}]={values:?}")
}

/// Waits before the n-th reconnection in a row: 1 s, 2 s, 4 s, then 10 s at most.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(4)).min(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        Env::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))?.settings()
    }

    #[test]
    fn tcp_device_from_plain_names() {
        let s = env(&[
            ("MODBUS_HOST", "127.77.0.1"),
            ("MODBUS_PORT", "5020"),
            ("MODBUS_UNIT_ID", "2"),
        ])
        .unwrap();
        assert_eq!(
            s.device,
            Device::Tcp {
                host: "127.77.0.1".into(),
                port: 5020,
                unit: 2
            }
        );
        assert_eq!(s.poll_interval, Duration::from_secs(1));
        assert_eq!(s.metrics_addr, "0.0.0.0:9090");
        assert_eq!(s.device.to_string(), "modbus+tcp://127.77.0.1:5020/2");
    }

    #[test]
    fn hash_suffixed_names_alone_are_enough() {
        let s = env(&[
            ("MODBUS_HOST_77F91FAFB55B", "10.0.7.3"),
            ("MODBUS_PORT_77F91FAFB55B", "502"),
            ("MODBUS_UNIT_ID_77F91FAFB55B", "4"),
        ])
        .unwrap();
        assert_eq!(
            s.device,
            Device::Tcp {
                host: "10.0.7.3".into(),
                port: 502,
                unit: 4
            }
        );
    }

    #[test]
    fn several_devices_must_be_chosen_between() {
        let err = env(&[
            ("MODBUS_HOST_AAAA", "10.0.7.3"),
            ("MODBUS_HOST_BBBB", "10.0.7.4"),
        ])
        .unwrap_err();
        assert!(err.contains("2 devices"), "{err}");
        // The plain name chooses; suffixed ones are then ignored.
        let s = env(&[
            ("MODBUS_HOST", "10.0.7.4"),
            ("MODBUS_HOST_AAAA", "10.0.7.3"),
            ("MODBUS_HOST_BBBB", "10.0.7.4"),
            ("MODBUS_UNIT_ID_AAAA", "9"),
        ])
        .unwrap();
        assert_eq!(
            s.device,
            Device::Tcp {
                host: "10.0.7.4".into(),
                port: 502,
                unit: 1
            }
        );
    }

    #[test]
    fn rtu_device_with_line_settings_as_dowser_writes_them() {
        let s = env(&[
            ("MODBUS_TRANSPORT", "rtu"),
            ("MODBUS_SERIAL_PORT", "/dev/ttyUSB0"),
            ("MODBUS_BAUD_RATE", "9600"),
            ("MODBUS_PARITY", "even"),
            ("MODBUS_DATA_BITS", "8"),
            ("MODBUS_STOP_BITS", "1"),
            ("MODBUS_UNIT_ID", "7"),
            ("POLL_INTERVAL_MS", "250"),
        ])
        .unwrap();
        assert_eq!(
            s.device,
            Device::Rtu {
                path: "/dev/ttyUSB0".into(),
                baud_rate: 9600,
                parity: Parity::Even,
                data_bits: 8,
                stop_bits: 1,
                unit: 7
            }
        );
        assert_eq!(s.poll_interval, Duration::from_millis(250));
    }

    #[test]
    fn bad_or_missing_settings_say_which_variable() {
        assert!(env(&[]).unwrap_err().contains("MODBUS_HOST"));
        assert!(
            env(&[("MODBUS_HOST", "h"), ("MODBUS_PORT", "x")])
                .unwrap_err()
                .contains("MODBUS_PORT")
        );
        assert!(
            env(&[("MODBUS_HOST", "h"), ("MODBUS_UNIT_ID", "300")])
                .unwrap_err()
                .contains("MODBUS_UNIT_ID")
        );
        assert!(
            env(&[("MODBUS_SERIAL_PORT", "/dev/x"), ("MODBUS_PARITY", "mark")])
                .unwrap_err()
                .contains("MODBUS_PARITY")
        );
        assert!(
            env(&[("MODBUS_HOST", "h"), ("POLL_INTERVAL_MS", "0")])
                .unwrap_err()
                .contains("POLL_INTERVAL_MS")
        );
    }

    #[test]
    fn read_line_names_the_registers() {
        assert_eq!(
            format_read(0, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
            "holding[0..10]=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"
        );
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(50), Duration::from_secs(10));
    }
}
