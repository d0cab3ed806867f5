//! BlueZ as python-dbusmock's `bluez5` template on a private system bus
//! (tests/doubles/bluez_bed.py), with adapters and devices that come and go.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};

pub struct Bluez {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub address: String,
}

impl Bluez {
    /// A private system bus with nothing on it yet.
    pub fn start() -> Self {
        super::require("dbus-daemon", "install the Debian package dbus");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles/bluez_bed.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the BlueZ mock");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let address = first
            .strip_prefix("ready ")
            .unwrap_or_else(|| {
                panic!("the BlueZ mock did not start (needs python3-dbusmock and dbus): {first:?}")
            })
            .trim()
            .to_string();
        Self {
            child,
            stdin,
            stdout,
            address,
        }
    }

    /// BlueZ running with one adapter, `hci0`.
    pub fn with_adapter() -> Self {
        let mut b = Self::start();
        b.command(json!({"op": "start_bluez"}));
        b.command(json!({"op": "adapter", "name": "hci0"}));
        b
    }

    pub fn command(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        assert_eq!(answer.trim(), "ok", "BlueZ mock command {cmd} failed");
    }

    /// A device heard for the first time on `hci0`; `extra` sets `name`, `uuids`,
    /// `manufacturer` (`{"76": [1, 2]}`) and `rssi`.
    pub fn appear(&mut self, address: &str, extra: Value) {
        let mut cmd = json!({"op": "device", "adapter": "hci0", "address": address});
        cmd.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        self.command(cmd);
    }

    /// Another advertisement of a device on `hci0`, heard at `rssi`.
    pub fn advertise(&mut self, address: &str, rssi: i16) {
        self.command(
            json!({"op": "advertise", "adapter": "hci0", "address": address, "rssi": rssi}),
        );
    }

    /// BlueZ forgets a device of `hci0`.
    pub fn forget(&mut self, address: &str) {
        self.command(json!({"op": "remove", "adapter": "hci0", "address": address}));
    }

    pub fn env(&self) -> [(&'static str, String); 1] {
        [("DBUS_SYSTEM_BUS_ADDRESS", self.address.clone())]
    }
}

impl Drop for Bluez {
    fn drop(&mut self) {
        // End of input stops the mock and its bus.
        drop(self.stdin.take());
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
