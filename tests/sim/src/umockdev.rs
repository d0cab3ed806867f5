//! USB-serial adapters in a umockdev testbed: a fake sysfs and udev database (Debian
//! `umockdev`, driven through its GObject binding by `tests/peers/umockdev_testbed.py`)
//! in which a process enumerates adapters exactly as it would on a real node, and in
//! which adapters are plugged in and pulled out while it runs.
//!
//! [`run`] re-executes the calling test binary inside a testbed and runs just that test
//! there; [`Testbed::connect`] then adds and removes adapters. [`spawn`] runs any command
//! inside a testbed. A missing umockdev fails with instructions: it is never skipped.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// Set by the testbed in the environment of the command it runs.
const CONTROL: &str = "DOWSER_UMOCKDEV_CONTROL";

const MISSING: &str = "umockdev is missing: install the Debian packages umockdev, \
    gir1.2-umockdev-1.0 and python3-gi (tests/test.sh does); the serial tests run in its fake sysfs/udev";

/// One USB-serial adapter as the kernel and udev describe it.
#[derive(Clone, Debug)]
pub struct UsbSerialAdapter {
    pub vid: &'static str,
    pub pid: &'static str,
    pub serial_number: Option<String>,
    pub manufacturer: &'static str,
    pub product: &'static str,
    pub driver: &'static str,
    /// USB bus number.
    pub bus: u8,
    /// Ports from the root hub down (`[2]` is `1-2`; `[1, 3]` is `1-1.3` behind a hub).
    pub port_chain: Vec<u8>,
    /// Kernel name of the tty (`ttyUSB0`).
    pub tty: String,
}

impl UsbSerialAdapter {
    /// An FTDI FT232R: programmed with a serial number.
    pub fn ftdi(serial: &str, port_chain: &[u8], tty: &str) -> Self {
        Self {
            vid: "0403",
            pid: "6001",
            serial_number: Some(serial.to_string()),
            manufacturer: "FTDI",
            product: "FT232R USB UART",
            driver: "ftdi_sio",
            bus: 1,
            port_chain: port_chain.to_vec(),
            tty: tty.to_string(),
        }
    }

    /// A WCH CH340: no serial number, so only its USB port tells two apart.
    pub fn ch340(port_chain: &[u8], tty: &str) -> Self {
        Self {
            vid: "1a86",
            pid: "7523",
            serial_number: None,
            manufacturer: "1a86",
            product: "USB Serial",
            driver: "ch341",
            bus: 1,
            port_chain: port_chain.to_vec(),
            tty: tty.to_string(),
        }
    }

    /// A Silicon Labs CP2102.
    pub fn cp210x(serial: &str, port_chain: &[u8], tty: &str) -> Self {
        Self {
            vid: "10c4",
            pid: "ea60",
            serial_number: Some(serial.to_string()),
            manufacturer: "Silicon Labs",
            product: "CP2102 USB to UART Bridge Controller",
            driver: "cp210x",
            bus: 1,
            port_chain: port_chain.to_vec(),
            tty: tty.to_string(),
        }
    }

    /// The kernel's name of the USB device (`1-2`, `1-1.3`).
    pub fn usb_name(&self) -> String {
        let chain: Vec<String> = self.port_chain.iter().map(u8::to_string).collect();
        format!("{}-{}", self.bus, chain.join("."))
    }

    /// The sysfs path of the USB device; removing it unplugs the adapter.
    pub fn sys_path(&self) -> String {
        format!(
            "/sys/devices/pci0000:00/0000:00:14.0/usb{}/{}",
            self.bus,
            self.usb_name()
        )
    }

    /// The sysfs paths of the USB device, its interface, the usb-serial port and the tty,
    /// from the top down.
    pub fn sys_paths(&self) -> [String; 4] {
        let usb = self.sys_path();
        let interface = format!("{usb}/{}:1.0", self.usb_name());
        let port = format!("{interface}/{}", self.tty);
        let tty = format!("{port}/tty/{}", self.tty);
        [usb, interface, port, tty]
    }

    /// The device node (`/dev/ttyUSB0`).
    pub fn dev_node(&self) -> String {
        format!("/dev/{}", self.tty)
    }

    /// The adapter in umockdev's text format: the USB device, its interface, the
    /// usb-serial port and the tty with the properties udev's rules give it.
    pub fn umockdev_text(&self) -> String {
        let name = self.usb_name();
        let [usb, interface, port, tty] = self
            .sys_paths()
            .map(|p| p.trim_start_matches("/sys").to_string());
        let encoded = |s: &str| s.replace(' ', "\\x20");
        let underscored = |s: &str| s.replace(' ', "_");
        let mut serial_props = String::new();
        let mut serial_attr = String::new();
        let ident = match &self.serial_number {
            Some(sn) => {
                serial_props = format!("E: ID_SERIAL_SHORT={sn}\n");
                serial_attr = format!("A: serial={sn}\n");
                format!(
                    "{}_{}_{sn}",
                    underscored(self.manufacturer),
                    underscored(self.product)
                )
            }
            None => format!(
                "{}_{}",
                underscored(self.manufacturer),
                underscored(self.product)
            ),
        };
        let devnum = 2 + self.port_chain.iter().map(|p| *p as u32).sum::<u32>();
        format!(
            "P: {usb}\n\
             N: bus/usb/{bus:03}/{devnum:03}\n\
             E: DEVNAME=/dev/bus/usb/{bus:03}/{devnum:03}\n\
             E: SUBSYSTEM=usb\n\
             E: DEVTYPE=usb_device\n\
             E: DRIVER=usb\n\
             E: BUSNUM={bus:03}\n\
             E: DEVNUM={devnum:03}\n\
             E: ID_VENDOR_ID={vid}\n\
             E: ID_MODEL_ID={pid}\n\
             A: idVendor={vid}\n\
             A: idProduct={pid}\n\
             A: manufacturer={manufacturer}\n\
             A: product={product}\n\
             {serial_attr}\
             A: busnum={bus}\n\
             A: devnum={devnum}\n\
             \n\
             P: {interface}\n\
             E: SUBSYSTEM=usb\n\
             E: DEVTYPE=usb_interface\n\
             E: DRIVER={driver}\n\
             A: bInterfaceNumber=00\n\
             \n\
             P: {port}\n\
             E: SUBSYSTEM=usb-serial\n\
             E: DRIVER={driver}\n\
             \n\
             P: {tty}\n\
             N: {tty_name}\n\
             E: DEVNAME=/dev/{tty_name}\n\
             E: SUBSYSTEM=tty\n\
             E: ID_BUS=usb\n\
             E: ID_VENDOR_ID={vid}\n\
             E: ID_MODEL_ID={pid}\n\
             E: ID_VENDOR={vendor_u}\n\
             E: ID_VENDOR_ENC={vendor_enc}\n\
             E: ID_MODEL={model_u}\n\
             E: ID_MODEL_ENC={model_enc}\n\
             E: ID_SERIAL={ident}\n\
             {serial_props}\
             E: ID_USB_INTERFACE_NUM=00\n\
             E: ID_USB_DRIVER={driver}\n\
             E: ID_PATH=pci-0000:00:14.0-usb-0:{chain}:1.0\n",
            bus = self.bus,
            vid = self.vid,
            pid = self.pid,
            manufacturer = self.manufacturer,
            product = self.product,
            driver = self.driver,
            tty_name = self.tty,
            vendor_u = underscored(self.manufacturer),
            vendor_enc = encoded(self.manufacturer),
            model_u = underscored(self.product),
            model_enc = encoded(self.product),
            chain = name.split_once('-').map(|(_, c)| c).unwrap_or_default(),
        )
    }
}

/// The control connection to the testbed this process runs in.
pub struct Testbed {
    conn: BufReader<UnixStream>,
}

impl Testbed {
    /// Connects to the testbed of this process (inside [`run`] or [`spawn`]).
    pub fn connect() -> anyhow::Result<Self> {
        let path = std::env::var(CONTROL)
            .with_context(|| format!("not inside a umockdev testbed ({CONTROL} is unset)"))?;
        Self::connect_to(&path)
    }

    fn connect_to(path: &str) -> anyhow::Result<Self> {
        let conn = UnixStream::connect(path)
            .with_context(|| format!("connect to the umockdev testbed at {path}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Self {
            conn: BufReader::new(conn),
        })
    }

    fn request(&mut self, request: serde_json::Value) -> anyhow::Result<()> {
        let mut line = request.to_string();
        line.push('\n');
        self.conn.get_mut().write_all(line.as_bytes())?;
        let mut answer = String::new();
        self.conn.read_line(&mut answer)?;
        let answer: serde_json::Value =
            serde_json::from_str(&answer).context("the umockdev testbed's answer")?;
        if answer["ok"] == true {
            Ok(())
        } else {
            bail!("umockdev testbed: {}", answer["error"])
        }
    }

    /// Plugs an adapter in.
    pub fn add(&mut self, adapter: &UsbSerialAdapter) -> anyhow::Result<()> {
        self.request(serde_json::json!({ "add": adapter.umockdev_text() }))
    }

    /// Pulls an adapter out: its devices go from the bottom up, as the kernel removes
    /// them (umockdev then drops each one's class and bus links too).
    pub fn remove(&mut self, adapter: &UsbSerialAdapter) -> anyhow::Result<()> {
        for path in adapter.sys_paths().iter().rev() {
            self.request(serde_json::json!({ "remove": path }))?;
        }
        Ok(())
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../peers/umockdev_testbed.py")
}

/// Debian's Python, which sees the GObject binding of umockdev (a Python first on PATH,
/// such as a venv or pyenv, may not).
const PYTHON: &str = "/usr/bin/python3";

fn check() {
    let ok = Command::new("umockdev-wrapper")
        .args([PYTHON, "-c"])
        .arg("import gi; gi.require_version('UMockdev', '1.0'); from gi.repository import UMockdev")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{MISSING}");
}

fn command(control: &str) -> Command {
    let mut cmd = Command::new("umockdev-wrapper");
    cmd.arg(PYTHON).arg(script()).arg(control).arg("--");
    cmd
}

/// Whether this process runs inside a testbed.
pub fn inside() -> bool {
    std::env::var_os(CONTROL).is_some()
}

/// Runs `body` inside a fresh, empty testbed. `test` is the test's name as the test
/// harness knows it (for `--exact`).
pub fn run(test: &str, body: impl FnOnce()) {
    if inside() {
        body();
        return;
    }
    check();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let control = dir.path().join("control");
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = command(control.to_str().unwrap())
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap_or_else(|e| panic!("{MISSING} ({e})"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} failed in its umockdev testbed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    print!("{stdout}");
    eprint!("{stderr}");
}

/// A command running inside a testbed of its own. Dropping it stops both.
pub struct Spawned {
    pub child: Child,
    pub testbed: Testbed,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // The testbed passes SIGTERM on to the command.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Starts `program args...` inside a fresh, empty testbed, with its stdout piped.
pub fn spawn(program: &str, args: &[&str]) -> anyhow::Result<Spawned> {
    check();
    let dir = tempfile::tempdir()?;
    let control = dir.path().join("control");
    let control = control.to_str().context("a UTF-8 temporary path")?;
    let child = command(control)
        .arg(program)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context(MISSING)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let testbed = loop {
        match Testbed::connect_to(control) {
            Ok(t) => break t,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Ok(Spawned {
        child,
        testbed,
        _dir: dir,
    })
}
