//! `dowser discover`'s progress line: on a terminal a long sweep shows how far it has got, on
//! stderr; piped, nothing is added, and standard output is the same either way.

use std::{
    fs::File,
    io::Read,
    net::TcpListener,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
    process::{Command, Output, Stdio},
};

/// Closed ports on 127.0.0.1 (nothing listens: each was free to bind a moment ago), below the
/// ephemeral range so that no outgoing connection of the sweep uses one as its own port.
fn closed_ports(n: usize) -> Vec<u16> {
    (20000..32000)
        .filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .take(n)
        .collect()
}

/// A Modbus sweep of `ports.len()` endpoints that takes a few seconds (100 connections per
/// second).
fn write_sweep(dir: &Path, ports: &[u16]) -> String {
    let targets: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let body = format!(
        r#"
apiVersion: dowser.dev/v1alpha1
kind: Configuration
metadata: {{name: loopback-sweep}}
spec:
  discovery:
    modbus:
      targets: [{}]
      maxConnectionsPerSecond: 100
      connectTimeoutMs: 200
      requestTimeoutMs: 200
"#,
        targets.join(", ")
    );
    let path = dir.join("sweep.yaml");
    std::fs::write(&path, body).unwrap();
    path.to_string_lossy().into_owned()
}

/// `dowser discover -f FILE`, as from a terminal emulator that sets `TERM`.
fn dowser(file: &str, term: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dowser"));
    c.args(["discover", "-f", file])
        .env_remove("NODE_NAME")
        .env_remove("DOWSER_LOG")
        .env("TERM", term)
        .stdin(Stdio::null());
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A new pseudo-terminal of 160 × 40 characters: its controlling side, and the terminal a
/// process writes to.
fn pseudo_terminal() -> (File, OwnedFd) {
    // SAFETY: plain calls on file descriptors this function owns; each result is checked.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(
            master >= 0,
            "posix_openpt: {}",
            std::io::Error::last_os_error()
        );
        let master_file = File::from_raw_fd(master);
        assert_eq!(libc::grantpt(master), 0, "grantpt");
        assert_eq!(libc::unlockpt(master), 0, "unlockpt");
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 160,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        assert_eq!(
            libc::ioctl(master, libc::TIOCSWINSZ, &size),
            0,
            "TIOCSWINSZ"
        );
        let slave = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        assert!(
            slave >= 0,
            "open the terminal: {}",
            std::io::Error::last_os_error()
        );
        (master_file, OwnedFd::from_raw_fd(slave))
    }
}

/// Runs `command` with its standard error on a pseudo-terminal (standard output piped): its
/// output, and everything it wrote to the terminal.
fn on_terminal(mut command: Command) -> (Output, String) {
    let (mut master, slave) = pseudo_terminal();
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("run dowser");
    // The child holds the only other end now: reading stops (EIO) when it exits.
    drop(command);
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    });
    let output = child.wait_with_output().unwrap();
    (output, text(&reader.join().unwrap()))
}

#[test]
fn a_long_sweep_shows_progress_on_a_terminal_and_nothing_when_piped() {
    let dir = tempfile::tempdir().unwrap();
    let ports = closed_ports(250);
    assert_eq!(ports.len(), 250, "not enough free ports on 127.0.0.1");
    let file = write_sweep(dir.path(), &ports);

    let piped = dowser(&file, "xterm").output().expect("run dowser");
    let stderr = text(&piped.stderr);
    assert!(piped.status.success(), "{stderr}");
    assert_eq!(text(&piped.stdout), "No devices found.\n");
    // The result and why nothing was found, nothing drawn: no progress, no spinner, no
    // escape sequences.
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr:?}");
    assert!(
        lines[0].starts_with("loopback-sweep found 0 devices in "),
        "{stderr:?}"
    );
    assert_eq!(
        lines[1],
        "  none of 250 targets answered: nothing listening, or no reply in time"
    );
    for drawn in ["/250 targets", "discovering", "ETA", "\x1b", "\r"] {
        assert!(!stderr.contains(drawn), "{drawn:?} in {stderr:?}");
    }

    let (shown, terminal) = on_terminal(dowser(&file, "xterm"));
    assert!(shown.status.success(), "{terminal}");
    // Standard output does not depend on where standard error goes.
    assert_eq!(shown.stdout, piped.stdout);
    // The sweep took seconds (250 connections at 100 per second), drawn every 100 ms: the
    // line was drawn with part of the targets tried, and taken away at the end.
    let drawn: Vec<&str> = terminal
        .split(['\r', '\n'])
        .filter(|l| l.contains("/250 targets"))
        .collect();
    assert!(!drawn.is_empty(), "no progress line in {terminal:?}");
    let midway = drawn
        .iter()
        .rfind(|l| !l.contains(" 0/250 ") && !l.contains("250/250") && l.contains("ETA "));
    assert!(midway.is_some(), "{drawn:#?}");
    for line in &drawn {
        assert!(
            line.contains("modbus loopback-sweep") && line.contains("0 devices found"),
            "{line:?}"
        );
    }
    assert!(
        terminal.contains("loopback-sweep found 0 devices in "),
        "{terminal:?}"
    );
    eprintln!(
        "{} progress lines drawn, such as {:?}",
        drawn.len(),
        midway.unwrap()
    );

    // A terminal that cannot redraw a line gets what a pipe gets.
    let (dumb, terminal) = on_terminal(dowser(&file, "dumb"));
    assert!(dumb.status.success(), "{terminal}");
    assert_eq!(dumb.stdout, piped.stdout);
    let dumb_lines: Vec<&str> = terminal.lines().collect();
    assert!(
        dumb_lines.len() == 2
            && dumb_lines[0].starts_with("loopback-sweep found 0 devices in ")
            && dumb_lines[1].trim_end() == lines[1],
        "{terminal:?}"
    );
}
