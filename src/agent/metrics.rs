//! Prometheus metrics of the agent, and the small HTTP endpoint that serves them with
//! `/healthz` and `/readyz`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

#[derive(Default)]
pub struct Metrics {
    devices: Mutex<BTreeMap<(String, String), usize>>,
    rounds: Mutex<BTreeMap<(String, String), f64>>,
    scans: AtomicU64,
    errors: AtomicU64,
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn scanned(
        &self,
        namespace: &str,
        name: &str,
        devices: usize,
        round: Option<std::time::Duration>,
    ) {
        self.scans.fetch_add(1, Ordering::Relaxed);
        let key = (namespace.to_string(), name.to_string());
        if let Some(took) = round {
            self.rounds
                .lock()
                .expect("metrics lock")
                .insert(key.clone(), took.as_secs_f64());
        }
        self.devices
            .lock()
            .expect("metrics lock")
            .insert(key, devices);
    }

    pub fn discovery_error(&self, _namespace: &str, _name: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        self.devices.lock().expect("metrics lock").remove(&key);
        self.rounds.lock().expect("metrics lock").remove(&key);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP dowser_agent_devices Devices this node sees, by Configuration."
        );
        let _ = writeln!(out, "# TYPE dowser_agent_devices gauge");
        for ((ns, name), n) in self.devices.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "dowser_agent_devices{{namespace=\"{ns}\",configuration=\"{name}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP dowser_agent_discovery_round_seconds Duration of the last discovery round, by Configuration."
        );
        let _ = writeln!(out, "# TYPE dowser_agent_discovery_round_seconds gauge");
        for ((ns, name), s) in self.rounds.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "dowser_agent_discovery_round_seconds{{namespace=\"{ns}\",configuration=\"{name}\"}} {s}"
            );
        }
        let counters = [
            (
                "dowser_agent_discovery_rounds_total",
                "Discovery rounds completed.",
                self.scans.load(Ordering::Relaxed),
            ),
            (
                "dowser_agent_discovery_errors_total",
                "Discovery rounds that failed.",
                self.errors.load(Ordering::Relaxed),
            ),
            (
                "dowser_agent_api_writes_total",
                "Writes to the Kubernetes API.",
                super::instances::WRITES.load(Ordering::Relaxed),
            ),
            (
                "dowser_agent_allocations_total",
                "Successful device-plugin allocations.",
                super::plugins::ALLOCATIONS.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head (bounded); only the request line matters.
            while len < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf[len..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
                    ("200 OK", "ok\n".to_string())
                }
                "/readyz" => (
                    "503 Service Unavailable",
                    "caches not synced yet\n".to_string(),
                ),
                "/metrics" => ("200 OK", metrics.render()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
