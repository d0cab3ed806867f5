//! Simulated Modbus RTU units on a pseudo-terminal: the sim holds the master side and
//! prints the slave path (`/dev/pts/N`), which a client opens like a serial port.

use std::{
    fs::File,
    io::{Read, Write},
    os::fd::{FromRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde::Deserialize;

use crate::modbus::{Mode, UnitConfig, respond};

/// Units on one simulated serial line.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LineConfig {
    #[serde(default)]
    pub mode: Mode,
    pub units: Vec<UnitConfig>,
}

/// A line being served; dropping it hangs up the line.
pub struct RunningLine {
    /// What a client opens: the pty's slave side.
    pub path: PathBuf,
    pub config: LineConfig,
    stop: Arc<AtomicBool>,
    _slave: OwnedFd,
}

impl Drop for RunningLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// CRC-16/MODBUS of `data`, to append low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for b in data {
        crc ^= u16::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Length of a request frame (address to CRC) from its first bytes, for the functions the
/// sim serves; `None` until enough bytes are there, `Some(0)` for an unknown function.
fn request_len(buf: &[u8]) -> Option<usize> {
    let function = *buf.get(1)?;
    Some(match function {
        0x01..=0x06 => 8,
        0x2B => 7,
        0x0F | 0x10 => 9 + usize::from(*buf.get(6)?),
        _ => 0,
    })
}

/// Opens a pty and serves the line on it until dropped.
pub fn serve(config: &LineConfig) -> anyhow::Result<RunningLine> {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two valid descriptors on success.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    anyhow::ensure!(
        rc == 0,
        "openpty failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: both descriptors were just returned by openpty and are owned here.
    let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let path = {
        use std::os::fd::AsRawFd;
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: the slave descriptor is valid; termios is written by tcgetattr.
        unsafe {
            if libc::tcgetattr(slave.as_raw_fd(), termios.as_mut_ptr()) == 0 {
                let mut t = termios.assume_init();
                libc::cfmakeraw(&mut t);
                libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
            }
        }
        std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))?
    };
    let stop = Arc::new(AtomicBool::new(false));
    let line = config.clone();
    let flag = stop.clone();
    std::thread::spawn(move || serve_line(master, line, flag));
    Ok(RunningLine {
        path,
        config: config.clone(),
        stop,
        _slave: slave,
    })
}

fn serve_line(mut master: File, line: LineConfig, stop: Arc<AtomicBool>) {
    use std::os::fd::AsRawFd;
    let fd = master.as_raw_fd();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, 50) };
        if ready <= 0 {
            // Silence ends a frame: whatever is buffered and incomplete is dropped.
            buf.clear();
            continue;
        }
        let n = match master.read(&mut chunk) {
            Ok(0) | Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let Some(len) = request_len(&buf) else {
            continue;
        };
        if len == 0 || buf.len() > 256 {
            buf.clear();
            continue;
        }
        if buf.len() < len {
            continue;
        }
        let frame: Vec<u8> = buf.drain(..len).collect();
        let (body, crc) = frame.split_at(len - 2);
        if crc16(body).to_le_bytes() != [crc[0], crc[1]] {
            continue; // a corrupt frame is ignored, as devices do
        }
        let address = body[0];
        let Some(unit) = line.units.iter().find(|u| u.id == address) else {
            continue; // other units answer for themselves
        };
        let mode = unit.mode.unwrap_or(line.mode);
        let reply = match mode {
            Mode::Silent | Mode::Reset => continue,
            Mode::Garbage => vec![0x55; 9],
            Mode::Slow => {
                std::thread::sleep(Duration::from_secs(2));
                frame_of(address, &respond(unit, mode, &body[1..]))
            }
            Mode::Normal | Mode::Exception => frame_of(address, &respond(unit, mode, &body[1..])),
        };
        // Turnaround delay a real device needs before answering.
        std::thread::sleep(Duration::from_millis(2));
        let _ = master.write_all(&reply);
    }
}

fn frame_of(address: u8, pdu: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pdu.len() + 3);
    out.push(address);
    out.extend_from_slice(pdu);
    let crc = crc16(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_specification_example() {
        // Modbus over serial line V1.02, 6.2.2: read 2 holding registers of unit 1 → CRC 0x0BC4
        // sent as C4 0B.
        let frame = [0x01, 0x03, 0x00, 0x00, 0x00, 0x02];
        assert_eq!(crc16(&frame).to_le_bytes(), [0xC4, 0x0B]);
    }

    #[test]
    fn request_lengths() {
        assert_eq!(request_len(&[1]), None);
        assert_eq!(request_len(&[1, 0x03]), Some(8));
        assert_eq!(request_len(&[1, 0x2B]), Some(7));
        assert_eq!(request_len(&[1, 0x10, 0, 0, 0, 2]), None);
        assert_eq!(request_len(&[1, 0x10, 0, 0, 0, 2, 4]), Some(13));
        assert_eq!(request_len(&[1, 0x42]), Some(0));
    }
}
