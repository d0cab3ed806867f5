//! `dowser discover --watch -o json` as a process: each change it prints is one snapshot.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

/// One printed snapshot: the Instances `dowser discover` would create, and when it came.
#[derive(Clone, Debug)]
pub struct Printed {
    pub at: Instant,
    pub instances: Vec<Value>,
}

impl Printed {
    pub fn device_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .instances
            .iter()
            .map(|i| i["deviceId"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }

    pub fn instance(&self, device_id: &str) -> Option<&Value> {
        self.instances.iter().find(|i| i["deviceId"] == device_id)
    }
}

pub struct Watch {
    child: Child,
    printed: mpsc::Receiver<Printed>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Watch {
    /// Starts `dowser discover --watch -o json -f <config> --node node-a` with `env`.
    pub fn start(config: &Path, env: &[(&str, String)]) -> Self {
        Self::start_bin(Path::new(env!("CARGO_BIN_EXE_dowser")), config, env)
    }

    /// The same with another `dowser` binary (the benchmark's release build).
    pub fn start_bin(bin: &Path, config: &Path, env: &[(&str, String)]) -> Self {
        let mut child = Command::new(bin)
            .args([
                "discover", "--watch", "-o", "json", "--node", "node-a", "-f",
            ])
            .arg(config)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("DOWSER_LOG", "info,dowser_serial=debug,dowser_ble=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run dowser discover --watch");
        let stdout = child.stdout.take().unwrap();
        let (tx, printed) = mpsc::channel();
        std::thread::spawn(move || {
            let values = serde_json::Deserializer::from_reader(stdout).into_iter::<Value>();
            for v in values {
                let Ok(Value::Array(instances)) = v else {
                    return;
                };
                let p = Printed {
                    at: Instant::now(),
                    instances,
                };
                if tx.send(p).is_err() {
                    return;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            printed,
            stderr,
        }
    }

    /// Waits up to `seconds` for a printed snapshot that satisfies `check`.
    pub fn until(&self, seconds: u64, what: &str, check: impl Fn(&Printed) -> bool) -> Printed {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.printed.recv_timeout(left) {
                Ok(p) if check(&p) => return p,
                Ok(_) => continue,
                Err(_) => panic!(
                    "timed out waiting for dowser discover --watch to show {what}; it said:\n{}",
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for a printed snapshot with exactly these device ids.
    pub fn until_ids(&self, seconds: u64, ids: &[&str]) -> Printed {
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        self.until(seconds, &format!("devices {want:?}"), |p| {
            p.device_ids() == want
        })
    }

    /// Waits up to `seconds` until the watch has said `text` on its standard error.
    pub fn until_said(&self, seconds: u64, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while !self.stderr().contains(text) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for dowser discover --watch to say {text:?}; it said:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Forgets what was printed so far (snapshots and standard error).
    pub fn drain(&self) {
        while self.printed.try_recv().is_ok() {}
        self.stderr.lock().unwrap().clear();
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
