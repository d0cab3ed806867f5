//! Drives the independent mDNS responder, python-zeroconf (`tests/peers/zeroconf_responder.py`),
//! so that the mDNS handler is not only tested against our own responder.
//!
//! The Python interpreter comes from `DOWSER_PYTHON` (set by `tests/test.sh`, which installs
//! the peers), else `python3`. A missing python-zeroconf fails with instructions.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;

/// A running python-zeroconf responder. Dropping it kills the process without goodbyes.
pub struct ZeroconfResponder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// A service for the responder to announce.
#[derive(Clone, Debug)]
pub struct ZeroconfService {
    pub instance: String,
    pub service_type: String,
    pub port: u16,
    pub host: String,
    pub txt: BTreeMap<String, String>,
    /// TTL of every record, in seconds.
    pub ttl: u32,
}

impl ZeroconfService {
    pub fn new(instance: &str, service_type: &str, port: u16) -> Self {
        Self {
            instance: instance.into(),
            service_type: service_type.into(),
            port,
            host: "zeroconf-peer.local.".into(),
            txt: BTreeMap::new(),
            ttl: 120,
        }
    }

    pub fn with_txt(mut self, key: &str, value: &str) -> Self {
        self.txt.insert(key.into(), value.into());
        self
    }

    pub fn with_ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn full_name(&self) -> String {
        format!("{}.{}", self.instance, self.service_type)
    }
}

impl ZeroconfResponder {
    /// Starts the responder on 127.0.0.1 and waits until its sockets are open.
    pub fn start() -> anyhow::Result<Self> {
        let mut child = crate::peers::script("zeroconf_responder.py", "zeroconf")?
            .args(["--address", "127.0.0.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start the python-zeroconf responder")?;
        let stdin = child.stdin.take().context("responder stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("responder stdout")?);
        let mut peer = Self {
            child,
            stdin,
            stdout,
        };
        let ready = peer.reply()?;
        anyhow::ensure!(ready["ready"] == true, "responder said {ready}");
        Ok(peer)
    }

    fn reply(&mut self) -> anyhow::Result<serde_json::Value> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        anyhow::ensure!(!line.is_empty(), "the python-zeroconf responder exited");
        let reply: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("responder said {line:?}"))?;
        if let Some(e) = reply.get("error") {
            anyhow::bail!("python-zeroconf responder: {e}");
        }
        Ok(reply)
    }

    fn command(&mut self, command: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        self.reply()
    }

    /// Registers a service (probing, then announcing) and returns when its first
    /// announcement went out.
    pub fn register(&mut self, service: &ZeroconfService) -> anyhow::Result<SystemTime> {
        let reply = self.command(&serde_json::json!({
            "op": "register",
            "name": service.instance,
            "type": service.service_type,
            "port": service.port,
            "host": service.host,
            "ttl": service.ttl,
            "txt": service.txt,
        }))?;
        let at = reply["at"]
            .as_f64()
            .with_context(|| format!("responder said {reply}"))?;
        Ok(UNIX_EPOCH + Duration::from_secs_f64(at))
    }

    /// Unregisters a service: goodbye packets go out before this returns.
    pub fn unregister(&mut self, service: &ZeroconfService) -> anyhow::Result<()> {
        self.command(&serde_json::json!({
            "op": "unregister",
            "name": service.instance,
            "type": service.service_type,
        }))?;
        Ok(())
    }

    /// Kills the responder (SIGKILL): no goodbye packets.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ZeroconfResponder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
