//! dowser-sim: simulated industrial devices on loopback for tests, demos and benchmarks.
//!
//! A fleet is described by a small YAML file (or built in code) and served until dropped.

pub mod modbus;

use serde::Deserialize;

/// A fleet of simulated devices.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetConfig {
    /// Modbus TCP listeners.
    #[serde(default)]
    pub modbus: Vec<modbus::ListenerConfig>,
}

impl FleetConfig {
    pub fn from_yaml(text: &str) -> anyhow::Result<Self> {
        Ok(serde_yaml::from_str(text)?)
    }
}

/// A running fleet; dropping it stops every listener.
pub struct Fleet {
    pub modbus: Vec<modbus::RunningListener>,
}

impl Fleet {
    pub async fn start(config: &FleetConfig) -> anyhow::Result<Self> {
        let mut modbus = Vec::new();
        for listener in &config.modbus {
            modbus.extend(modbus::serve(listener).await?);
        }
        Ok(Self { modbus })
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
        lines
    }
}
