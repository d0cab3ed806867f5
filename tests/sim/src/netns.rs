//! Tests in a private network namespace: only a loopback interface, so that multicast
//! (mDNS) never leaves the machine and tests do not hear each other or the LAN.
//!
//! [`run`] re-executes the calling test binary under `unshare --net`, brings loopback up,
//! and runs just that test inside; the outer test fails with the inner one's output. It
//! needs root (or unprivileged user namespaces) and `ip` from iproute2: when it cannot
//! make the namespace, the test fails and says why — it is never skipped.

use std::process::Command;

/// Set in the environment of a test that runs inside its namespace.
const INSIDE: &str = "DOWSER_PRIVATE_NETNS";

/// Runs `body` in a private network namespace. `test` is the test's name as the test
/// harness knows it (for `--exact`).
pub fn run(test: &str, body: impl FnOnce()) {
    if std::env::var_os(INSIDE).is_some() {
        body();
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg(r#"ip link set lo up && exec "$@""#)
        .arg("sh")
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run unshare to make a private network namespace ({e}): install util-linux; \
             the mDNS tests need it so that no multicast leaves the machine"
        ),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if !stdout.contains("running 1 test") {
            panic!(
                "cannot make a private network namespace for {test} (unshare --net, then ip link set lo up; \
                 it needs root or unprivileged user namespaces, and iproute2): {}\n{stderr}",
                out.status
            );
        }
        panic!("{test} failed in its private network namespace:\n{stdout}\n{stderr}");
    }
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{test} did not run in its private network namespace:\n{stdout}\n{stderr}"
    );
    // Shown by the harness with --nocapture or when a later assertion fails.
    print!("{stdout}");
    eprint!("{stderr}");
}

/// Whether this process runs inside a namespace made by [`run`] or [`reexec`].
pub fn inside() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// For programs (benchmarks): returns at once inside a private network namespace;
/// otherwise runs this program again, with the same arguments, in a new one, and exits
/// with its status.
pub fn reexec() {
    if inside() {
        return;
    }
    let exe = std::env::current_exe().expect("this program's path");
    let status = Command::new("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg(r#"ip link set lo up && exec "$@""#)
        .arg("sh")
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .env(INSIDE, "1")
        .status()
        .unwrap_or_else(|e| panic!("cannot run unshare ({e}): install util-linux"));
    std::process::exit(status.code().unwrap_or(1));
}

/// Inside a namespace made by [`run`]: gives loopback a second, non-loopback address
/// (`10.77.0.1`) and a multicast route, for peers that will not use a loopback address
/// (python `wsdiscovery` skips 127.0.0.0/8) and for multicast to the WS-Discovery group.
pub fn multicast_on_loopback() {
    assert!(
        inside(),
        "multicast_on_loopback runs only in a private network namespace"
    );
    for args in [
        &["addr", "add", "10.77.0.1/32", "dev", "lo"][..],
        &["link", "set", "lo", "multicast", "on"],
        &["route", "add", "224.0.0.0/4", "dev", "lo"],
    ] {
        let status = Command::new("ip").args(args).status().expect("run ip");
        assert!(status.success(), "ip {args:?} failed");
    }
}
