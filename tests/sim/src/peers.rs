//! The independent protocol peers of `tests/peers/` (pymodbus, asyncua, python-zeroconf), run
//! as child processes so that dowser is not only tested against its own simulator.
//!
//! The Python interpreter comes from `DOWSER_PYTHON` (set by `tests/test.sh`, which installs
//! the peers), else `python3`. A peer that is not installed fails with instructions: the
//! tests that use one are never skipped.

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

/// The Python interpreter that has `tests/peers/requirements.txt` installed.
pub fn python() -> String {
    std::env::var("DOWSER_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// A command running `tests/peers/<script>` with [`python`], after checking that `modules`
/// (comma-separated, as in `import a, b`) are importable; the error tells how to get them.
pub fn script(script: &str, modules: &str) -> anyhow::Result<Command> {
    let python = python();
    let check = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .status();
    anyhow::ensure!(
        check.is_ok_and(|s| s.success()),
        "{modules} is not importable by {python:?}: run tests/test.sh (it installs the test \
         peers) or set DOWSER_PYTHON to a Python that has tests/peers/requirements.txt installed"
    );
    let mut command = Command::new(python);
    command.arg(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../peers")
            .join(script),
    );
    Ok(command)
}

/// A peer process, killed when dropped.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to 20 s for `ready`, polling every 50 ms.
pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        anyhow::ensure!(Instant::now() < deadline, "{what} did not come up in 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 for a peer to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}
