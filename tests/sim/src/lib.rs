//! dowser-sim: simulated industrial devices for tests, demos and benchmarks: Modbus TCP
//! devices on loopback, Modbus RTU units on pseudo-terminals, OPC UA servers and discovery
//! servers, and services announced over mDNS.
//!
//! A fleet is described by a small YAML file (or built in code) and served until dropped.

pub mod bacnet;
pub mod mdns;
pub mod modbus;
pub mod netns;
pub mod onvif;
pub mod opcua;
pub mod peers;
pub mod rtu;
pub mod zeroconf;

use serde::Deserialize;

/// A fleet of simulated devices.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetConfig {
    /// Modbus TCP listeners.
    #[serde(default)]
    pub modbus: Vec<modbus::ListenerConfig>,
    /// Modbus RTU lines, each on a pseudo-terminal of its own.
    #[serde(default)]
    pub rtu: Vec<rtu::LineConfig>,
    /// OPC UA servers and discovery servers.
    #[serde(default)]
    pub opcua: Vec<opcua::ServerConfig>,
    /// Services announced over mDNS / DNS-SD.
    #[serde(default)]
    pub mdns: Vec<mdns::ServiceConfig>,
    /// ONVIF cameras (WS-Discovery and their device services).
    #[serde(default)]
    pub onvif: Vec<onvif::CameraConfig>,
    /// BACnet/IP devices.
    #[serde(default)]
    pub bacnet: Vec<bacnet::DeviceConfig>,
}

impl FleetConfig {
    pub fn from_yaml(text: &str) -> anyhow::Result<Self> {
        Ok(serde_yaml::from_str(text)?)
    }
}

/// A running fleet; dropping it stops every listener.
pub struct Fleet {
    pub modbus: Vec<modbus::RunningListener>,
    pub rtu: Vec<rtu::RunningLine>,
    pub opcua: Vec<opcua::RunningServer>,
    /// Certificates of the OPC UA servers (one self-signed key pair shared by all).
    _pki: Option<tempfile::TempDir>,
    pub mdns: Option<mdns::RunningMdns>,
    pub onvif: Vec<onvif::RunningCamera>,
    pub bacnet: Vec<bacnet::RunningDevice>,
    /// Answers WS-Discovery for the cameras; says Bye for them when dropped.
    _wsd: Option<onvif::Responder>,
}

impl Fleet {
    pub async fn start(config: &FleetConfig) -> anyhow::Result<Self> {
        let mut modbus = Vec::new();
        for listener in &config.modbus {
            modbus.extend(modbus::serve(listener).await?);
        }
        let rtu = config
            .rtu
            .iter()
            .map(rtu::serve)
            .collect::<anyhow::Result<_>>()?;
        let (opcua, pki) = if config.opcua.is_empty() {
            (Vec::new(), None)
        } else {
            let pki = tempfile::Builder::new()
                .prefix("dowser-sim-pki-")
                .tempdir()?;
            (
                opcua::serve_all(&config.opcua, pki.path()).await?,
                Some(pki),
            )
        };
        let mdns = if config.mdns.is_empty() {
            None
        } else {
            Some(mdns::RunningMdns::start(&config.mdns)?)
        };
        let (onvif, wsd) = onvif::serve_all(&config.onvif).await?;
        let mut bacnet = Vec::new();
        for d in &config.bacnet {
            bacnet.push(bacnet::serve(d).await?);
        }
        Ok(Self {
            modbus,
            rtu,
            opcua,
            mdns,
            _pki: pki,
            onvif,
            _wsd: wsd,
            bacnet,
        })
    }

    /// One line per unit served, for people and for scripts.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for l in &self.modbus {
            for u in &l.config.units {
                lines.push(format!(
                    "modbus-tcp {} unit {} vendor={:?} product={:?} revision={:?} mode={}",
                    l.addr,
                    u.id,
                    u.vendor_name.as_deref().unwrap_or(""),
                    u.product_code.as_deref().unwrap_or(""),
                    u.revision.as_deref().unwrap_or(""),
                    u.mode.unwrap_or(l.config.mode),
                ));
            }
            if l.config.units.is_empty() {
                lines.push(format!(
                    "modbus-tcp {} (no units) mode={}",
                    l.addr, l.config.mode
                ));
            }
        }
        for l in &self.rtu {
            for u in &l.config.units {
                lines.push(format!(
                    "modbus-rtu {} unit {} vendor={:?} product={:?} revision={:?} mode={}",
                    l.path.display(),
                    u.id,
                    u.vendor_name.as_deref().unwrap_or(""),
                    u.product_code.as_deref().unwrap_or(""),
                    u.revision.as_deref().unwrap_or(""),
                    u.mode.unwrap_or(l.config.mode),
                ));
            }
        }
        for s in &self.opcua {
            lines.push(format!(
                "opcua {} {} name={:?} uri={:?} product={:?} mode={}",
                match s.kind {
                    opcua::Kind::Server => "server",
                    opcua::Kind::Discovery => "discovery-server",
                },
                s.url,
                s.application_name,
                s.application_uri,
                s.product_uri,
                s.mode,
            ));
        }
        for d in &self.bacnet {
            lines.push(format!(
                "bacnet {} device {} name={:?} vendor={:?} model={:?} mode={:?}",
                d.addr,
                d.config.instance,
                d.config.object_name,
                d.config.vendor_name,
                d.config.model_name,
                d.config.mode,
            ));
        }
        for c in &self.onvif {
            lines.push(format!(
                "onvif {} {} manufacturer={:?} model={:?} users={} mode={:?}",
                c.url,
                c.endpoint,
                c.config.manufacturer,
                c.config.model,
                c.config.users.len(),
                c.config.mode,
            ));
        }
        for s in self.mdns.iter().flat_map(|m| m.services()) {
            lines.push(format!(
                "mdns {:?} port {} txt={:?} mode={:?}",
                s.full_name(),
                s.port,
                s.txt,
                s.mode,
            ));
        }
        lines
    }
}
