//! OS-level test doubles (umockdev for USB serial, a BlueZ mock on a private D-Bus for BLE)
//! and `dowser discover --watch` run as a process against them.
#![allow(dead_code)]

pub mod bluez;
pub mod umockdev;
pub mod watch;

/// Fails with a message that says what to install when a double's prerequisite is missing.
pub fn require(program: &str, hint: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()));
    assert!(
        found,
        "{program} is missing: {hint} (tests/test.sh installs it)"
    );
}
