//! `kubectl dowser why`: per node, why a Configuration's devices are or are not found.
//!
//! Everything comes from the Configuration's `status.nodes` (each agent writes its own entry,
//! with the counts of its latest round: targets tried, answered, left out by which filter,
//! failed) and, when they may be read, the Nodes its `nodeSelector` selects: a selected node
//! without an entry is a node where no agent reports. Pure: objects in, text out.

use std::collections::BTreeSet;

use dowser::{
    agent::selector,
    crd::{Configuration, DiscoveryRound, NodeDiscoveryStatus},
};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use crate::output::{self, Health, Style};

/// One node of one Configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub namespace: String,
    pub configuration: String,
    pub node: String,
    /// The node's entry in the Configuration's status; none when its agent never reported.
    pub entry: Option<NodeDiscoveryStatus>,
}

/// The nodes to explain: each that reported, and each node the `nodeSelector` selects
/// (`nodes`: none when the Nodes may not be read), by Configuration then node.
pub fn rows(configs: &[Configuration], nodes: Option<&[Node]>) -> Vec<Row> {
    let mut out = vec![];
    for config in configs {
        let namespace = config.namespace().unwrap_or_default();
        let configuration = config.name_any();
        let reported: Vec<&NodeDiscoveryStatus> =
            config.status.iter().flat_map(|s| &s.nodes).collect();
        let mut names: BTreeSet<String> = reported.iter().map(|n| n.node.clone()).collect();
        for node in nodes.unwrap_or_default() {
            let labels = node.metadata.labels.clone().unwrap_or_default();
            if selector::matches(config.spec.node_selector.as_ref(), &labels) {
                names.insert(node.name_any());
            }
        }
        for name in names {
            out.push(Row {
                namespace: namespace.clone(),
                configuration: configuration.clone(),
                entry: reported
                    .iter()
                    .find(|n| n.node == name)
                    .map(|n| (*n).clone()),
                node: name,
            });
        }
    }
    out
}

fn plural(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The verdict on one node: the sentence a user reads first, and its colour.
pub fn explain(entry: Option<&NodeDiscoveryStatus>) -> (String, Health) {
    let Some(e) = entry else {
        return (
            "no report: no dowser agent runs this Configuration on this node".into(),
            Health::Waiting,
        );
    };
    if let Some(error) = &e.error {
        return (format!("discovery fails: {error}"), Health::Bad);
    }
    let problems = if e.problems.is_empty() {
        String::new()
    } else {
        format!(
            "; {} (below)",
            plural(e.problems.len() as u32, "problem", "problems")
        )
    };
    let Some(r) = &e.last_round else {
        return if e.devices > 0 {
            (
                format!("{}{problems}", plural(e.devices, "device", "devices")),
                Health::Good,
            )
        } else {
            (
                format!("no round counted yet, or the handler counts none{problems}"),
                Health::Waiting,
            )
        };
    };
    let health = if r.found > 0 {
        Health::Good
    } else {
        Health::Waiting
    };
    let text = r.verdict();
    (format!("{text}{problems}"), health)
}

/// Seconds since a time, for the SINCE column (since when the counts are what they are).
fn since(at: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time, now: i64) -> i64 {
    now - at.0.as_second()
}

/// The table, then the problems each node names. `all_namespaces` adds NAMESPACE, `several`
/// (more than one Configuration asked for) CONFIGURATION; `wide` adds FOUND, SILENT and
/// TOOK.
pub fn render(rows: &[Row], wide: bool, several: bool, style: &Style, now: i64) -> String {
    let mut headers = vec![];
    if style.all_namespaces {
        headers.push("NAMESPACE");
    }
    if several {
        headers.push("CONFIGURATION");
    }
    headers.extend(["NODE", "DEVICES", "TRIED", "ANSWERED", "DROPPED", "FAILED"]);
    if wide {
        headers.extend(["FOUND", "SILENT", "TOOK"]);
    }
    headers.extend(["SINCE", "WHY"]);
    let plain = |s: String| (s, Health::Plain);
    let mut table = vec![];
    let mut problems = vec![];
    for row in rows {
        let mut cells = vec![];
        if style.all_namespaces {
            cells.push(plain(row.namespace.clone()));
        }
        if several {
            cells.push(plain(row.configuration.clone()));
        }
        cells.push(plain(row.node.clone()));
        let entry = row.entry.as_ref();
        cells.push(plain(entry.map_or("-".into(), |e| e.devices.to_string())));
        let round = entry.and_then(|e| e.last_round.as_ref());
        let count = |f: fn(&DiscoveryRound) -> u32| round.map_or("-".into(), |r| f(r).to_string());
        cells.push(plain(count(|r| r.tried)));
        cells.push(plain(count(|r| r.answered)));
        cells.push(plain(round.map_or("-".into(), |r| {
            if r.dropped.is_empty() {
                "0".into()
            } else {
                r.dropped
                    .iter()
                    .map(|(f, n)| format!("{f}={n}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        })));
        cells.push(plain(count(|r| r.failed)));
        if wide {
            cells.push(plain(count(|r| r.found)));
            cells.push(plain(count(|r| r.tried.saturating_sub(r.answered))));
            cells.push(plain(
                round.and_then(|r| r.duration_ms).map_or("-".into(), took),
            ));
        }
        cells.push(plain(
            round
                .and_then(|r| r.at.as_ref())
                .map_or("-".into(), |at| output::age(since(at, now))),
        ));
        cells.push(explain(entry));
        table.push(cells);
        for p in entry.map(|e| e.problems.as_slice()).unwrap_or_default() {
            problems.push(format!("  {}: {p}", row.node));
        }
    }
    let mut out = output::table(&headers, &table, style);
    if !problems.is_empty() {
        out.push_str("\nProblems to act on:\n");
        for p in problems {
            out.push_str(&p);
            out.push('\n');
        }
    }
    out
}

/// A round's duration as kubectl shows short durations: `850ms`, `1.2s`, `2m05s`.
fn took(ms: u32) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", f64::from(ms) / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
    }
}

#[cfg(test)]
mod tests;
