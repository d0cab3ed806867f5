//! USB serial adapters in a umockdev testbed: sysfs, udev properties and device nodes in
//! the shapes the Linux drivers give them.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

/// What a USB serial adapter tells about itself.
#[derive(Clone, Copy, Debug)]
pub struct Adapter {
    pub vid: &'static str,
    pub pid: &'static str,
    pub serial: Option<&'static str>,
    pub manufacturer: Option<&'static str>,
    pub product: Option<&'static str>,
    /// The kernel driver; `cdc_acm` ports hang off the USB interface (`ttyACM*`), the
    /// usb-serial drivers (`ftdi_sio`, `ch341`, `cp210x`) off a usb-serial port (`ttyUSB*`).
    pub driver: &'static str,
}

pub const FTDI_FT232R: Adapter = Adapter {
    vid: "0403",
    pid: "6001",
    serial: Some("A10K3XYZ"),
    manufacturer: Some("FTDI"),
    product: Some("FT232R USB UART"),
    driver: "ftdi_sio",
};

/// The CH340 has no serial number and no manufacturer string.
pub const CH340: Adapter = Adapter {
    vid: "1a86",
    pid: "7523",
    serial: None,
    manufacturer: None,
    product: Some("USB Serial"),
    driver: "ch341",
};

pub const CP2102: Adapter = Adapter {
    vid: "10c4",
    pid: "ea60",
    serial: Some("0001"),
    manufacturer: Some("Silicon Labs"),
    product: Some("CP2102 USB to UART Bridge Controller"),
    driver: "cp210x",
};

pub const ARDUINO_UNO: Adapter = Adapter {
    vid: "2341",
    pid: "0043",
    serial: Some("75833353035351F0F1C1"),
    manufacturer: Some("Arduino (www.arduino.cc)"),
    product: None,
    driver: "cdc_acm",
};

const HOST: &str = "/devices/pci0000:00/0000:00:14.0";

/// The sysfs path of the USB device plugged into `port` (`1-2`: bus 1, port 2).
pub fn usb_device_path(port: &str) -> String {
    let bus = port.split('-').next().unwrap();
    format!("/sys{HOST}/usb{bus}/{port}")
}

/// The umockdev description of `adapter` plugged into USB `port` whose serial port the
/// kernel named `tty` (`ttyUSB0`).
pub fn usb_serial(adapter: &Adapter, port: &str, tty: &str) -> String {
    let (bus, devpath) = port.split_once('-').unwrap();
    let dev = format!("{HOST}/usb{bus}/{port}");
    let intf = format!("{dev}/{port}:1.0");
    let minor: u32 = tty
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap();
    let devnum = 2 + minor;
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    // The USB device.
    line(format!("P: {dev}"));
    line(format!("N: bus/usb/{bus:0>3}/{devnum:03}"));
    line(format!("E: DEVNAME=/dev/bus/usb/{bus:0>3}/{devnum:03}"));
    line("E: DEVTYPE=usb_device".into());
    line("E: DRIVER=usb".into());
    line("E: SUBSYSTEM=usb".into());
    line(format!("E: BUSNUM={bus:0>3}"));
    line(format!("E: DEVNUM={devnum:03}"));
    line(format!("E: ID_VENDOR_ID={}", adapter.vid));
    line(format!("E: ID_MODEL_ID={}", adapter.pid));
    line(format!("A: idVendor={}", adapter.vid));
    line(format!("A: idProduct={}", adapter.pid));
    if let Some(v) = adapter.serial {
        line(format!("A: serial={v}"));
        line(format!("E: ID_SERIAL_SHORT={v}"));
    }
    if let Some(v) = adapter.manufacturer {
        line(format!("A: manufacturer={v}"));
    }
    if let Some(v) = adapter.product {
        line(format!("A: product={v}"));
    }
    line(format!("A: busnum={bus}"));
    line(format!("A: devnum={devnum}"));
    line(format!("A: devpath={devpath}"));
    line(String::new());
    // Its interface.
    line(format!("P: {intf}"));
    line("E: DEVTYPE=usb_interface".into());
    line(format!("E: DRIVER={}", adapter.driver));
    line("E: SUBSYSTEM=usb".into());
    line("A: bInterfaceNumber=00".into());
    line(String::new());
    let (parent, major) = if adapter.driver == "cdc_acm" {
        (intf.clone(), 166)
    } else {
        // A usb-serial port between the interface and the tty.
        line(format!("P: {intf}/{tty}"));
        line(format!("E: DRIVER={}", adapter.driver));
        line("E: SUBSYSTEM=usb-serial".into());
        line(String::new());
        (format!("{intf}/{tty}"), 188)
    };
    line(format!("P: {parent}/tty/{tty}"));
    line(format!("N: {tty}"));
    line(format!("E: DEVNAME=/dev/{tty}"));
    line(format!("E: MAJOR={major}"));
    line(format!("E: MINOR={minor}"));
    line("E: SUBSYSTEM=tty".into());
    line(format!("A: dev={major}:{minor}"));
    let target = parent.rsplit('/').next().unwrap();
    line(format!("L: device=../../../{target}"));
    line(String::new());
    s
}

/// An on-board UART (`ttyS0`), which is not a USB serial adapter.
pub fn onboard_uart() -> String {
    "P: /devices/platform/serial8250\nE: DRIVER=serial8250\nE: SUBSYSTEM=platform\n\n\
     P: /devices/platform/serial8250/tty/ttyS0\nN: ttyS0\nE: DEVNAME=/dev/ttyS0\nE: MAJOR=4\n\
     E: MINOR=64\nE: SUBSYSTEM=tty\nA: dev=4:64\nL: device=../../../serial8250\n\n"
        .to_string()
}

/// Writes a umockdev description to a file in `dir`.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.umockdev"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Environment for a process that should see the testbed at `root` as its /sys and /dev.
pub fn preload_env(root: &str) -> [(&'static str, String); 2] {
    [
        ("LD_PRELOAD", "libumockdev-preload.so.0".to_string()),
        ("UMOCKDEV_DIR", root.to_string()),
    ]
}

/// A live testbed (tests/doubles/umockdev_bed.py) in which adapters are plugged and
/// unplugged while other processes watch.
pub struct Bed {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub root: String,
    files: tempfile::TempDir,
    added: usize,
}

impl Bed {
    pub fn start() -> Self {
        super::require(
            "umockdev-wrapper",
            "install the Debian packages umockdev, gir1.2-umockdev-1.0 and python3-gi",
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doubles/umockdev_bed.py");
        let mut child = Command::new("umockdev-wrapper")
            .arg("/usr/bin/python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the umockdev testbed");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let root = first
            .strip_prefix("ready ")
            .unwrap_or_else(|| {
                panic!(
                    "the umockdev testbed did not start (needs gir1.2-umockdev-1.0 and python3-gi): {first:?}"
                )
            })
            .trim()
            .to_string();
        Self {
            child,
            stdin,
            stdout,
            root,
            files: tempfile::tempdir().unwrap(),
            added: 0,
        }
    }

    fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        assert_eq!(answer.trim(), "ok", "testbed command {line:?} failed");
    }

    /// Adds the devices of a umockdev description, with their "add" uevents.
    pub fn add(&mut self, text: &str) {
        self.added += 1;
        let path = write(self.files.path(), &format!("add-{}", self.added), text);
        self.command(&format!("add {}", path.display()));
    }

    /// Plugs `adapter` into USB `port`; the kernel names its serial port `tty`.
    pub fn plug(&mut self, adapter: &Adapter, port: &str, tty: &str) {
        self.add(&usb_serial(adapter, port, tty));
    }

    /// Unplugs whatever is in USB `port`.
    pub fn unplug(&mut self, port: &str) {
        self.command(&format!("remove {}", usb_device_path(port)));
    }

    pub fn env(&self) -> [(&'static str, String); 2] {
        preload_env(&self.root)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Lines of a umockdev description.
struct Lines(String);

impl Lines {
    fn device(&mut self, path: &str, lines: &[String]) {
        self.0.push_str(&format!("P: {path}\n"));
        for l in lines {
            self.0.push_str(l);
            self.0.push('\n');
        }
        self.0.push('\n');
    }
}

/// A USB device in `port` with the given descriptors, as `P:` path and its lines.
fn usb_device(
    port: &str,
    vid: &str,
    pid: &str,
    serial: Option<&str>,
    product: &str,
) -> (String, Vec<String>) {
    let (bus, devpath) = port.split_once('-').unwrap();
    let dev = format!("{HOST}/usb{bus}/{port}");
    let devnum = 10 + devpath.len();
    let mut l = vec![
        format!("N: bus/usb/{bus:0>3}/{devnum:03}"),
        format!("E: DEVNAME=/dev/bus/usb/{bus:0>3}/{devnum:03}"),
        "E: DEVTYPE=usb_device".into(),
        "E: DRIVER=usb".into(),
        "E: SUBSYSTEM=usb".into(),
        format!("A: idVendor={vid}"),
        format!("A: idProduct={pid}"),
        format!("A: product={product}"),
        format!("A: devpath={devpath}"),
    ];
    if let Some(s) = serial {
        l.push(format!("A: serial={s}"));
    }
    (dev, l)
}

/// A USB interface `n` of the device at `dev`, bound to `driver`.
fn usb_interface(dev: &str, n: u8, driver: &str) -> (String, Vec<String>) {
    let port = dev.rsplit('/').next().unwrap();
    (
        format!("{dev}/{port}:1.{n}"),
        vec![
            "E: DEVTYPE=usb_interface".into(),
            format!("E: DRIVER={driver}"),
            "E: SUBSYSTEM=usb".into(),
            format!("A: bInterfaceNumber={n:02}"),
        ],
    )
}

/// A UVC webcam (Logitech C270, 046d:0825) in USB `port`: the uvcvideo driver gives it two
/// video4linux nodes, `video<first>` (capture) and the next (metadata), under its video
/// interface; udev adds the capability property.
pub fn uvc_camera(port: &str, serial: &str, first: u32) -> String {
    let mut s = Lines(String::new());
    let (dev, l) = usb_device(port, "046d", "0825", Some(serial), "C270 HD WEBCAM");
    s.device(&dev, &l);
    let (intf, l) = usb_interface(&dev, 0, "uvcvideo");
    s.device(&intf, &l);
    for (n, caps) in [(first, ":capture:"), (first + 1, ":")] {
        s.device(
            &format!("{intf}/video4linux/video{n}"),
            &[
                format!("N: video{n}"),
                format!("E: DEVNAME=/dev/video{n}"),
                "E: MAJOR=81".into(),
                format!("E: MINOR={n}"),
                "E: SUBSYSTEM=video4linux".into(),
                format!("E: ID_V4L_CAPABILITIES={caps}"),
                "E: ID_MODEL=C270_HD_WEBCAM".into(),
                "A: name=C270 HD WEBCAM".into(),
                format!("A: dev=81:{n}"),
            ],
        );
    }
    s.0
}

/// A GPIO chip of the platform (gpio-mockup), `/dev/gpiochip0` on the gpio bus.
pub fn gpio_chip() -> String {
    let mut s = Lines(String::new());
    let parent = "/devices/platform/gpio-mockup.0";
    s.device(
        parent,
        &[
            "E: DRIVER=gpio-mockup".into(),
            "E: SUBSYSTEM=platform".into(),
        ],
    );
    s.device(
        &format!("{parent}/gpiochip0"),
        &[
            "N: gpiochip0".into(),
            "E: DEVNAME=/dev/gpiochip0".into(),
            "E: MAJOR=254".into(),
            "E: MINOR=0".into(),
            "E: SUBSYSTEM=gpio".into(),
            "A: label=gpio-mockup-A".into(),
            "A: ngpio=8".into(),
            "A: dev=254:0".into(),
        ],
    );
    s.0
}

/// A USB keyboard (046d:c31c, no serial number) in `port`: usbhid, its HID device, the
/// input device and its event node `/dev/input/event<event>`.
pub fn usb_keyboard(port: &str, event: u32) -> String {
    let mut s = Lines(String::new());
    let (dev, l) = usb_device(port, "046d", "c31c", None, "USB Keyboard");
    s.device(&dev, &l);
    let (intf, l) = usb_interface(&dev, 0, "usbhid");
    s.device(&intf, &l);
    let hid = format!("{intf}/0003:046D:C31C.0001");
    s.device(
        &hid,
        &["E: DRIVER=hid-generic".into(), "E: SUBSYSTEM=hid".into()],
    );
    let input = format!("{hid}/input/input{event}");
    s.device(
        &input,
        &[
            "E: SUBSYSTEM=input".into(),
            "E: ID_INPUT_KEYBOARD=1".into(),
            "A: name=Logitech USB Keyboard".into(),
        ],
    );
    s.device(
        &format!("{input}/event{event}"),
        &[
            format!("N: input/event{event}"),
            format!("E: DEVNAME=/dev/input/event{event}"),
            "E: MAJOR=13".into(),
            format!("E: MINOR={}", 64 + event),
            "E: SUBSYSTEM=input".into(),
            "E: ID_INPUT=1".into(),
            "E: ID_INPUT_KEYBOARD=1".into(),
            format!("A: dev=13:{}", 64 + event),
        ],
    );
    s.0
}

/// A USB flash drive (SanDisk 0781:5567) in `port`: usb-storage, a SCSI disk `/dev/<disk>`.
pub fn usb_storage(port: &str, disk: &str) -> String {
    let mut s = Lines(String::new());
    let (dev, l) = usb_device(
        port,
        "0781",
        "5567",
        Some("4C530001230101115243"),
        "Cruzer Blade",
    );
    s.device(&dev, &l);
    let (intf, l) = usb_interface(&dev, 0, "usb-storage");
    s.device(&intf, &l);
    s.device(
        &format!("{intf}/host6/target6:0:0/6:0:0:0/block/{disk}"),
        &[
            format!("N: {disk}"),
            format!("E: DEVNAME=/dev/{disk}"),
            "E: DEVTYPE=disk".into(),
            "E: MAJOR=8".into(),
            "E: MINOR=16".into(),
            "E: SUBSYSTEM=block".into(),
            "E: ID_BUS=usb".into(),
            "A: dev=8:16".into(),
        ],
    );
    s.0
}

/// `dowser discover -o json` once, as node `node-a`, in a testbed made of `devices`.
pub fn discover_json(dir: &Path, devices: &str, config: &Path) -> Vec<serde_json::Value> {
    super::require("umockdev-run", "install the Debian package umockdev");
    let bed = write(dir, "plant", devices);
    let out = Command::new("umockdev-run")
        .arg("-d")
        .arg(&bed)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_dowser"))
        .args(["discover", "-o", "json", "--node", "node-a", "-f"])
        .arg(config)
        .output()
        .expect("run umockdev-run");
    assert!(
        out.status.success(),
        "dowser discover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The device ids of `dowser discover -o json` output, sorted.
pub fn device_ids(instances: &[serde_json::Value]) -> Vec<&str> {
    let mut ids: Vec<&str> = instances
        .iter()
        .map(|i| i["deviceId"].as_str().unwrap())
        .collect();
    ids.sort();
    ids
}

/// The instance of a device in `dowser discover -o json` output.
pub fn instance<'a>(instances: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    instances
        .iter()
        .find(|i| i["deviceId"] == id)
        .unwrap_or_else(|| panic!("no device {id} in {instances:?}"))
}
