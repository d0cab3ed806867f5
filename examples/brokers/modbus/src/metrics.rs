//! The last values read, as Prometheus text on a tiny HTTP endpoint (no web framework: one
//! route, `GET /metrics`, and `GET /healthz`).

use std::sync::{Arc, Mutex};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::FIRST_REGISTER;

#[derive(Debug, Default)]
struct State {
    device: String,
    registers: Option<Vec<u16>>,
    up: bool,
    reads_ok: u64,
    reads_failed: u64,
}

/// What the broker has seen so far; cheap to clone and share.
#[derive(Clone, Debug, Default)]
pub struct Metrics(Arc<Mutex<State>>);

impl Metrics {
    pub fn new(device: &str) -> Self {
        let metrics = Self::default();
        metrics.0.lock().unwrap().device = device.to_string();
        metrics
    }

    pub fn read_ok(&self, values: &[u16]) {
        let mut s = self.0.lock().unwrap();
        s.registers = Some(values.to_vec());
        s.up = true;
        s.reads_ok += 1;
    }

    /// A failed read: the last values stay (with `modbus_device_up 0` beside them).
    pub fn read_failed(&self) {
        let mut s = self.0.lock().unwrap();
        s.up = false;
        s.reads_failed += 1;
    }

    pub fn render(&self) -> String {
        let s = self.0.lock().unwrap();
        let device = s.device.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::new();
        out.push_str("# HELP modbus_device_up Whether the last read of the device succeeded.\n");
        out.push_str("# TYPE modbus_device_up gauge\n");
        out.push_str(&format!(
            "modbus_device_up{{device=\"{device}\"}} {}\n",
            u8::from(s.up)
        ));
        out.push_str("# HELP modbus_reads_total Reads of the holding registers, by outcome.\n");
        out.push_str("# TYPE modbus_reads_total counter\n");
        out.push_str(&format!(
            "modbus_reads_total{{device=\"{device}\",outcome=\"ok\"}} {}\n",
            s.reads_ok
        ));
        out.push_str(&format!(
            "modbus_reads_total{{device=\"{device}\",outcome=\"error\"}} {}\n",
            s.reads_failed
        ));
        if let Some(registers) = &s.registers {
            out.push_str(
                "# HELP modbus_holding_register Last value read from a holding register.\n",
            );
            out.push_str("# TYPE modbus_holding_register gauge\n");
            for (i, v) in registers.iter().enumerate() {
                let address = usize::from(FIRST_REGISTER) + i;
                out.push_str(&format!(
                    "modbus_holding_register{{device=\"{device}\",address=\"{address}\"}} {v}\n"
                ));
            }
        }
        out
    }

    /// Serves `/metrics` and `/healthz` on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(5), metrics.answer(stream))
                        .await;
            });
        }
    }

    async fn answer(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let mut request = Vec::with_capacity(512);
        let mut buf = [0u8; 512];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&request);
        let path = line.split_whitespace().nth(1).unwrap_or("");
        let (status, body) = match path.split('?').next() {
            Some("/metrics") => ("200 OK", self.render()),
            Some("/healthz") => ("200 OK", "ok\n".to_string()),
            _ => ("404 Not Found", "not found: try /metrics\n".to_string()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registers_and_outcomes() {
        let m = Metrics::new("modbus+tcp://10.0.7.3:502/1");
        assert!(!m.render().contains("modbus_holding_register{"));
        m.read_ok(&[5, 6]);
        m.read_failed();
        let text = m.render();
        assert!(text.contains(
            "modbus_holding_register{device=\"modbus+tcp://10.0.7.3:502/1\",address=\"1\"} 6\n"
        ));
        assert!(text.contains("outcome=\"ok\"} 1\n"));
        assert!(text.contains("outcome=\"error\"} 1\n"));
        assert!(text.contains("modbus_device_up{device=\"modbus+tcp://10.0.7.3:502/1\"} 0\n"));
    }
}
