//! Simulated services announced over mDNS / DNS-SD (an mdns-sd responder), which can be
//! withdrawn (goodbye packets) and announced again while they run.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use mdns_sd::{DaemonEvent, ServiceDaemon, ServiceInfo, UnregisterStatus};
use serde::Deserialize;

/// How a simulated service behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MdnsMode {
    /// Announces its TXT records as configured.
    #[default]
    Normal,
    /// Adds about 8 KB of TXT records to the configured ones: 100 records of 70-byte values
    /// and one of 255 bytes (the most one TXT string can hold), about as much as one mDNS
    /// packet carries.
    GiantTxt,
}

/// One service instance.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceConfig {
    /// Instance name: `Press 7`.
    pub instance: String,
    /// Service type: `_opcua-tcp._tcp.local.`.
    pub service_type: String,
    pub port: u16,
    /// Host name of the SRV record. Default: `dowser-sim.local.`.
    #[serde(default)]
    pub host: Option<String>,
    /// Addresses announced for the host. Default: 127.0.0.1.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// TXT records (sent in key order).
    #[serde(default)]
    pub txt: BTreeMap<String, String>,
    #[serde(default)]
    pub mode: MdnsMode,
}

impl ServiceConfig {
    pub fn new(instance: &str, service_type: &str, port: u16) -> Self {
        Self {
            instance: instance.into(),
            service_type: service_type.into(),
            port,
            host: None,
            addresses: Vec::new(),
            txt: BTreeMap::new(),
            mode: MdnsMode::Normal,
        }
    }

    pub fn with_txt(mut self, key: &str, value: &str) -> Self {
        self.txt.insert(key.into(), value.into());
        self
    }

    pub fn with_mode(mut self, mode: MdnsMode) -> Self {
        self.mode = mode;
        self
    }

    /// The service instance full name: `Press 7._opcua-tcp._tcp.local.`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.instance, self.service_type)
    }

    fn txt_records(&self) -> Vec<(String, String)> {
        let mut records: Vec<(String, String)> = self
            .txt
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if self.mode == MdnsMode::GiantTxt {
            records.push(("giant".into(), "g".repeat(249)));
            for i in 0..100 {
                records.push((format!("filler{i:03}"), "f".repeat(70)));
            }
        }
        records
    }

    fn info(&self) -> anyhow::Result<ServiceInfo> {
        let addresses: Vec<IpAddr> = if self.addresses.is_empty() {
            vec![IpAddr::from([127, 0, 0, 1])]
        } else {
            self.addresses.clone()
        };
        let host = self.host.as_deref().unwrap_or("dowser-sim.local.");
        let txt = self.txt_records();
        let txt: Vec<(&str, &str)> = txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        ServiceInfo::new(
            &self.service_type,
            &self.instance,
            host,
            addresses.as_slice(),
            self.port,
            txt.as_slice(),
        )
        .with_context(|| format!("mDNS service {:?}", self.full_name()))
    }
}

/// Services being announced; dropping this withdraws them all (goodbye packets).
pub struct RunningMdns {
    daemon: ServiceDaemon,
    services: Vec<ServiceConfig>,
    monitor: mdns_sd::Receiver<DaemonEvent>,
}

impl RunningMdns {
    /// Starts a responder and announces every service.
    pub fn start(services: &[ServiceConfig]) -> anyhow::Result<Self> {
        let daemon = ServiceDaemon::new().context("cannot start the mDNS responder")?;
        let monitor = daemon.monitor().context("mDNS responder")?;
        let running = Self {
            daemon,
            services: services.to_vec(),
            monitor,
        };
        for s in services {
            running.daemon.register(s.info()?)?;
        }
        Ok(running)
    }

    pub fn services(&self) -> &[ServiceConfig] {
        &self.services
    }

    fn config(&self, instance: &str) -> anyhow::Result<&ServiceConfig> {
        self.services
            .iter()
            .find(|s| s.instance == instance)
            .with_context(|| format!("no simulated mDNS service {instance:?}"))
    }

    /// Withdraws a service: goodbye packets (TTL 0) go out before this returns.
    pub fn withdraw(&self, instance: &str) -> anyhow::Result<()> {
        let full_name = self.config(instance)?.full_name();
        let status = self.daemon.unregister(&full_name)?;
        match status.recv_timeout(Duration::from_secs(5)) {
            Ok(UnregisterStatus::OK) => Ok(()),
            Ok(UnregisterStatus::NotFound) => anyhow::bail!("{full_name} was not announced"),
            Err(e) => anyhow::bail!("withdrawing {full_name}: {e}"),
        }
    }

    /// Announces a service again (after probing for its name, as a device does on boot).
    pub fn announce(&self, instance: &str) -> anyhow::Result<()> {
        self.daemon.register(self.config(instance)?.info()?)?;
        Ok(())
    }

    /// Waits for the next announcement of `instance` and returns when it was seen (call
    /// [`RunningMdns::forget_announcements`] before [`RunningMdns::announce`] to wait for
    /// that one; the time is exact when this is already waiting as it goes out).
    pub fn wait_announced(&self, instance: &str, timeout: Duration) -> anyhow::Result<SystemTime> {
        let full_name = self.config(instance)?.full_name();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.monitor.recv_timeout(left) {
                Ok(DaemonEvent::Announce(name, _)) if name == full_name => {
                    return Ok(SystemTime::now());
                }
                Ok(_) => {}
                Err(_) => anyhow::bail!("{full_name} was not announced within {timeout:?}"),
            }
        }
    }

    /// Drops announcement events seen so far.
    pub fn forget_announcements(&self) {
        while self.monitor.try_recv().is_ok() {}
    }

    /// Withdraws every service (goodbye packets) and stops the responder.
    pub fn shutdown(&self) {
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for RunningMdns {
    fn drop(&mut self) {
        self.shutdown();
    }
}
