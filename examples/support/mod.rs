//! What the cluster benchmarks (`bench_e2e`, `bench_scale`) share: child processes, the
//! environment `scripts/bench` sets, kubectl, /proc figures and the apiserver audit log.
// Compiled into each example, which uses a part of it.
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::Path,
    process::{Child, Command, Stdio},
};

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (run scripts/bench)"))
}

fn kubectl_command() -> Command {
    Command::new(format!("{}/kubectl", env("DOWSER_K8S_BIN")))
}

/// Runs kubectl and returns its standard output; panics with its error if it fails.
pub fn kubectl(args: &[&str]) -> String {
    let out = kubectl_command().args(args).output().expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl apply -f -` of a YAML text.
pub fn apply(yaml: &str) {
    let mut child = kubectl_command()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// A `/proc/<pid>/status` figure in KiB (VmRSS, VmHWM, RssAnon, RssFile…), 0 if absent.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Requests in the apiserver audit log, counted once each.
pub struct Audit {
    /// Requests made with the user agent prefix.
    pub requests: usize,
    /// Of them, writes (create, update, patch, delete).
    pub writes: usize,
    /// Lines in the log: where the next count starts.
    pub lines: usize,
    /// The requests by verb and resource (`patch instances/status`).
    pub kinds: BTreeMap<String, usize>,
}

impl Audit {
    /// The kinds of request, most frequent first: `patch instances/status 9000, ...`.
    pub fn kinds_text(&self) -> String {
        let mut kinds: Vec<(&String, &usize)> = self.kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let text: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        text.join(", ")
    }
}

/// Requests made with a user agent prefix in the audit log lines from `from` on.
pub fn audit(log: &Path, from: usize, agent: &str) -> Audit {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut ids = BTreeSet::new();
    let mut writes = 0;
    let mut kinds = BTreeMap::new();
    for line in &lines[from.min(lines.len())..] {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if !v["userAgent"].as_str().unwrap_or("").starts_with(agent) {
            continue;
        }
        if !ids.insert(v["auditID"].as_str().unwrap_or("").to_string()) {
            continue;
        }
        if matches!(
            v["verb"].as_str(),
            Some("create" | "update" | "patch" | "delete" | "deletecollection")
        ) {
            writes += 1;
        }
        let object = &v["objectRef"];
        let resource = match (object["resource"].as_str(), object["subresource"].as_str()) {
            (Some(r), Some(sub)) => format!("{r}/{sub}"),
            (Some(r), None) => r.to_string(),
            (None, _) => v["requestURI"].as_str().unwrap_or("?").to_string(),
        };
        let kind = format!("{} {resource}", v["verb"].as_str().unwrap_or("?"));
        *kinds.entry(kind).or_insert(0) += 1;
    }
    Audit {
        requests: ids.len(),
        writes,
        lines: lines.len(),
        kinds,
    }
}
