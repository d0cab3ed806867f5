//! Keeps this node's status free of the `dowser.dev/` resources the kubelet leaves behind.
//!
//! The kubelet never removes a device-plugin resource from its Node (kubernetes#52510): when a
//! plugin stops, its device manager keeps the resource for `endpointStopGracePeriod` (5 min)
//! with capacity = the plugin's last device count and allocatable 0, then drops it from its own
//! state and writes capacity 0 once (`GetCapacity` in `pkg/kubelet/cm/devicemanager/manager.go`
//! lists it as deleted; `MachineInfo` in `pkg/kubelet/nodestatus/setters.go` sets it to 0,
//! and allocatable follows capacity). From then on the kubelet neither writes nor re-adds it:
//! every Instance a node ever saw would stay in its status as `dowser.dev/<instance>: 0`.
//! The agent removes those entries.
//!
//! Which entries are stale is [`stale`], a pure decision; [`sweep`] is the I/O around it.
//! While the kubelet still tracks a stopped plugin its entry has a non-zero capacity and is
//! left alone: removing it then would only see it re-added by the kubelet's next status update.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::deviceplugin::{
    connect_unix,
    podresources::{
        ListPodResourcesRequest, pod_resources_lister_client::PodResourcesListerClient,
    },
};

/// The prefix of every resource dowser's device plugins serve.
pub const PREFIX: &str = "dowser.dev/";

/// Entries removed by one patch at most: a node that saw thousands of devices is cleaned in
/// a few requests of bounded size.
const PATCH_ENTRIES: usize = 500;

/// One `dowser.dev/` resource in the Node's status, as the API server holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub capacity: Option<String>,
    pub allocatable: Option<String>,
}

/// The Node's `dowser.dev/` resources by name.
pub type Entries = BTreeMap<String, Entry>;

/// The `dowser.dev/` entries of a Node's capacity and allocatable.
pub fn entries(node: &Node) -> Entries {
    let mut out = Entries::new();
    let Some(status) = &node.status else {
        return out;
    };
    for (name, q) in status.capacity.iter().flatten() {
        if name.starts_with(PREFIX) {
            out.entry(name.clone()).or_default().capacity = Some(q.0.clone());
        }
    }
    for (name, q) in status.allocatable.iter().flatten() {
        if name.starts_with(PREFIX) {
            out.entry(name.clone()).or_default().allocatable = Some(q.0.clone());
        }
    }
    out
}

/// A quantity that is zero ("0" as the API server writes it, or "0k", "0.0", ...).
fn is_zero(quantity: &str) -> bool {
    let number = quantity.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    number.parse::<f64>().is_ok_and(|v| v == 0.0)
}

/// The entries to remove: a `dowser.dev/` resource that no running plugin of this agent
/// serves (`served`), that no pod on this node holds devices of (`held`, from the kubelet's
/// PodResources), and whose capacity and allocatable are both 0 or absent — what the kubelet
/// leaves once its device manager has forgotten the plugin.
pub fn stale(entries: &Entries, served: &BTreeSet<String>, held: &BTreeSet<String>) -> Vec<String> {
    entries
        .iter()
        .filter(|(name, entry)| {
            name.starts_with(PREFIX)
                && !served.contains(*name)
                && !held.contains(*name)
                && entry.capacity.as_deref().is_none_or(is_zero)
                && entry.allocatable.as_deref().is_none_or(is_zero)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// A JSON Pointer token (RFC 6901): `dowser.dev/x` → `dowser.dev~1x`.
fn pointer_token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// The JSON patch (RFC 6902) of nodes/status that removes `names`. Each value is tested
/// first: if the kubelet wrote the entry again since it was read (its plugin registered
/// again), the API server refuses the whole patch and nothing is removed.
pub fn removal_patch(entries: &Entries, names: &[String]) -> Value {
    let mut ops = vec![];
    for name in names {
        let Some(entry) = entries.get(name) else {
            continue;
        };
        for (field, value) in [
            ("capacity", &entry.capacity),
            ("allocatable", &entry.allocatable),
        ] {
            if let Some(v) = value {
                let path = format!("/status/{field}/{}", pointer_token(name));
                ops.push(json!({"op": "test", "path": path, "value": v}));
                ops.push(json!({"op": "remove", "path": path}));
            }
        }
    }
    Value::Array(ops)
}

/// The `dowser.dev/` resources pods on this node hold devices of, from the kubelet's
/// PodResources; `None` when it cannot be read.
async fn held(socket: &Path) -> Option<BTreeSet<String>> {
    let channel = connect_unix(socket).await.ok()?;
    let listed = tokio::time::timeout(
        Duration::from_secs(5),
        PodResourcesListerClient::new(channel).list(ListPodResourcesRequest {}),
    )
    .await
    .ok()?
    .ok()?
    .into_inner();
    Some(
        listed
            .pod_resources
            .iter()
            .flat_map(|p| &p.containers)
            .flat_map(|c| &c.devices)
            .map(|d| d.resource_name.clone())
            .filter(|r| r.starts_with(PREFIX))
            .collect(),
    )
}

/// Removes this node's stale entries (see [`stale`]), given its last watched status and the
/// resources this agent serves. Returns how many were removed. Nothing is removed while
/// PodResources cannot be read.
pub async fn sweep(
    client: &kube::Client,
    node: &str,
    entries: &Entries,
    served: &BTreeSet<String>,
    pod_resources: &Path,
) -> usize {
    // Most sweeps end here, without a request: nothing looks stale.
    if stale(entries, served, &BTreeSet::new()).is_empty() {
        return 0;
    }
    let Some(held) = held(pod_resources).await else {
        warn!("PodResources cannot be read: stale node resources are kept for now");
        return 0;
    };
    let names = stale(entries, served, &held);
    let mut removed = 0;
    for chunk in names.chunks(PATCH_ENTRIES) {
        let patch = removal_patch(entries, chunk);
        let request = http::Request::patch(format!("/api/v1/nodes/{node}/status"))
            .header(http::header::CONTENT_TYPE, "application/json-patch+json")
            .body(serde_json::to_vec(&patch).unwrap_or_default());
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot build the node status patch");
                return removed;
            }
        };
        match client.request::<Node>(request).await {
            Ok(_) => {
                removed += chunk.len();
                debug!(resources = ?chunk, "removed from the node's status");
            }
            // A test failed (the kubelet wrote an entry meanwhile) or the API server is
            // away: the next sweep decides again from a fresher status.
            Err(e) => {
                warn!(error = %e, "cannot remove stale resources from the node's status");
                return removed;
            }
        }
    }
    if removed > 0 {
        info!(
            removed,
            "stale device-plugin resources removed from the node's status"
        );
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(capacity: Option<&str>, allocatable: Option<&str>) -> Entry {
        Entry {
            capacity: capacity.map(str::to_string),
            allocatable: allocatable.map(str::to_string),
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_forgotten_unserved_unheld_dowser_entries_are_stale() {
        let entries: Entries = [
            // What the kubelet leaves for good: capacity 0, allocatable 0.
            ("dowser.dev/gone-1", entry(Some("0"), Some("0"))),
            // Allocatable already removed (the kubelet drops it when capacity is gone).
            ("dowser.dev/gone-2", entry(Some("0"), None)),
            ("dowser.dev/gone-3", entry(None, Some("0"))),
            // Within the kubelet's 5 minutes after its plugin stopped: it still tracks the
            // resource and would write it again.
            ("dowser.dev/stopping", entry(Some("1"), Some("0"))),
            // Served by a running plugin, even at 0 (all slots elsewhere, registering).
            ("dowser.dev/served", entry(Some("0"), Some("0"))),
            // A pod here holds one of its devices.
            ("dowser.dev/held", entry(Some("0"), Some("0"))),
            ("dowser.dev/live", entry(Some("2"), Some("2"))),
            // Not dowser's.
            ("example.com/gpu", entry(Some("0"), Some("0"))),
            ("dowser.devices/x", entry(Some("0"), Some("0"))),
        ]
        .into_iter()
        .map(|(n, e)| (n.to_string(), e))
        .collect();
        let served = set(&["dowser.dev/served", "dowser.dev/live"]);
        let held = set(&["dowser.dev/held"]);
        assert_eq!(
            stale(&entries, &served, &held),
            [
                "dowser.dev/gone-1",
                "dowser.dev/gone-2",
                "dowser.dev/gone-3"
            ]
        );
        // Once the pod is gone, its resource goes too.
        assert_eq!(
            stale(&entries, &served, &set(&[])),
            [
                "dowser.dev/gone-1",
                "dowser.dev/gone-2",
                "dowser.dev/gone-3",
                "dowser.dev/held"
            ]
        );
    }

    #[test]
    fn zero_is_read_in_any_spelling_of_a_quantity() {
        for zero in ["0", "0k", "0.0", "0m", "0Ki"] {
            assert!(is_zero(zero), "{zero}");
        }
        for not in ["1", "100m", "1k", "", "x"] {
            assert!(!is_zero(not), "{not}");
        }
    }

    #[test]
    fn entries_are_read_from_both_maps_of_the_status() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "status": {
                "capacity": {"cpu": "4", "dowser.dev/a": "1", "dowser.dev/b": "0"},
                "allocatable": {"cpu": "4", "dowser.dev/a": "0"},
            },
        }))
        .unwrap();
        let got = entries(&node);
        assert_eq!(got.len(), 2);
        assert_eq!(got["dowser.dev/a"], entry(Some("1"), Some("0")));
        assert_eq!(got["dowser.dev/b"], entry(Some("0"), None));
        assert!(entries(&Node::default()).is_empty());
    }

    #[test]
    fn the_patch_tests_each_value_before_removing_it() {
        let entries: Entries = [
            ("dowser.dev/a~b", entry(Some("0"), Some("0"))),
            ("dowser.dev/c", entry(Some("0"), None)),
        ]
        .into_iter()
        .map(|(n, e)| (n.to_string(), e))
        .collect();
        let patch = removal_patch(
            &entries,
            &[
                "dowser.dev/a~b".into(),
                "dowser.dev/c".into(),
                "dowser.dev/x".into(),
            ],
        );
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/status/capacity/dowser.dev~1a~0b", "value": "0"},
                {"op": "remove", "path": "/status/capacity/dowser.dev~1a~0b"},
                {"op": "test", "path": "/status/allocatable/dowser.dev~1a~0b", "value": "0"},
                {"op": "remove", "path": "/status/allocatable/dowser.dev~1a~0b"},
                {"op": "test", "path": "/status/capacity/dowser.dev~1c", "value": "0"},
                {"op": "remove", "path": "/status/capacity/dowser.dev~1c"},
            ])
        );
    }
}
