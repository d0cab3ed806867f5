//! The README's install commands, run as a user would run them.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::cluster::{Cluster, repo};

/// The `sh` blocks of the README's Install section.
pub fn install_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Install\n"))
        .expect("the README has an Install section");
    section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_string())
        .collect()
}

/// The `lang` blocks (`sh`, `yaml`) of the README section whose heading starts with
/// `heading` (any level).
pub fn section_blocks(heading: &str, lang: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .lines()
        .position(|l| l.starts_with('#') && l.trim_start_matches('#').trim().starts_with(heading))
        .unwrap_or_else(|| panic!("the README has no section {heading:?}"));
    let section: Vec<&str> = readme
        .lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with("## ") && !l.starts_with("### "))
        .collect();
    section
        .join("\n")
        .split(&format!("```{lang}\n"))
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_string())
        .collect()
}

/// The `sh` block of the README's Install section that starts with `starting_with`.
pub fn block(starting_with: &str) -> String {
    install_blocks()
        .into_iter()
        .find(|b| b.starts_with(starting_with))
        .unwrap_or_else(|| panic!("no README install block starts with {starting_with:?}"))
}

/// Runs a README block with bash against the test cluster, with its kubectl and helm first
/// on the PATH; fails if the block fails, or if it has not finished within `seconds` when
/// given.
pub fn run(cluster: &Cluster, block: &str, seconds: Option<u64>) {
    run_with(
        &cluster.kubectl,
        &cluster.helm,
        &cluster.kubeconfig,
        block,
        seconds,
    );
}

/// [`run`] with a cluster's kubectl, helm and kubeconfig given by path.
pub fn run_with(kubectl: &Path, helm: &Path, kubeconfig: &Path, block: &str, seconds: Option<u64>) {
    let path = format!(
        "{}:{}:{}",
        kubectl.parent().unwrap().display(),
        helm.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .current_dir(repo())
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(seconds) = seconds {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                if let Err(e) = child.kill() {
                    eprintln!("cannot stop the README block: {e}");
                }
                let out = child.wait_with_output().unwrap();
                panic!(
                    "README block did not finish in {seconds} s:\n{block}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "README block failed:\n{block}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
