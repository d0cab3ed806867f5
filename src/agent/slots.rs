//! Slots: the `capacity` virtual devices of an Instance, and which node may hand out each.
//!
//! One rule, applied by every agent (and by the controller when it places brokers) to the
//! same Instance status, so that the slots offered across all nodes never exceed capacity and
//! the scheduler never places a pod that a kubelet must then reject:
//! - a claimed slot (`status.slots`) belongs to the node that claimed it;
//! - unclaimed slots are dealt, in slot order, to the nodes that see the device
//!   (`status.nodes`), each going to the node holding the fewest slots so far (ties by name).

use std::collections::{BTreeMap, BTreeSet};

/// The node each slot belongs to (`None` when no node sees the device).
pub fn homes(
    capacity: u32,
    nodes: &[String],
    claims: &BTreeMap<String, String>,
) -> BTreeMap<u32, Option<String>> {
    let mut load: BTreeMap<&str, usize> = nodes.iter().map(|n| (n.as_str(), 0)).collect();
    let mut out = BTreeMap::new();
    for slot in 0..capacity {
        if let Some(node) = claims.get(&slot.to_string()) {
            if let Some(l) = load.get_mut(node.as_str()) {
                *l += 1;
            }
            out.insert(slot, Some(node.clone()));
        }
    }
    for slot in 0..capacity {
        if out.contains_key(&slot) {
            continue;
        }
        let home = load
            .iter()
            .min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
            .map(|(n, _)| n.to_string());
        if let Some(n) = &home {
            *load.get_mut(n.as_str()).expect("from load") += 1;
        }
        out.insert(slot, home);
    }
    out
}

/// The slots that belong to `node`.
pub fn slots_of(
    node: &str,
    capacity: u32,
    nodes: &[String],
    claims: &BTreeMap<String, String>,
) -> BTreeSet<u32> {
    homes(capacity, nodes, claims)
        .into_iter()
        .filter(|(_, home)| home.as_deref() == Some(node))
        .map(|(slot, _)| slot)
        .collect()
}

/// The device id of a slot, unique across the resources of a node: `<instance>-<slot>`.
pub fn device_id(instance: &str, slot: u32) -> String {
    format!("{instance}-{slot}")
}

/// The Instance and slot of a device id made by [`device_id`].
pub fn parse_device_id(id: &str) -> Option<(&str, u32)> {
    let (instance, slot) = id.rsplit_once('-')?;
    Some((instance, slot.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn claims(c: &[(u32, &str)]) -> BTreeMap<String, String> {
        c.iter()
            .map(|(s, n)| (s.to_string(), n.to_string()))
            .collect()
    }

    #[test]
    fn capacity_is_never_exceeded_across_nodes() {
        for cap in 1..6 {
            for n in 1..5 {
                let ns: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
                let total: usize = ns
                    .iter()
                    .map(|node| slots_of(node, cap, &ns, &BTreeMap::new()).len())
                    .sum();
                assert_eq!(total, cap as usize);
            }
        }
    }

    #[test]
    fn unclaimed_slots_are_spread_over_the_nodes() {
        let h = homes(2, &nodes(&["b", "a", "c"]), &BTreeMap::new());
        assert_eq!(h[&0].as_deref(), Some("a"));
        assert_eq!(h[&1].as_deref(), Some("b"));
    }

    #[test]
    fn a_claim_keeps_its_slot_and_the_rest_fills_around_it() {
        let h = homes(2, &nodes(&["a", "b", "c"]), &claims(&[(0, "c")]));
        assert_eq!(h[&0].as_deref(), Some("c"));
        assert_eq!(h[&1].as_deref(), Some("a"));
    }

    #[test]
    fn a_claim_by_a_node_that_left_is_kept_until_released() {
        // The pod may still run there; the slot is released by PodResources, not by presence.
        let h = homes(1, &nodes(&["a"]), &claims(&[(0, "gone")]));
        assert_eq!(h[&0].as_deref(), Some("gone"));
        assert!(slots_of("a", 1, &nodes(&["a"]), &claims(&[(0, "gone")])).is_empty());
    }

    #[test]
    fn no_nodes_no_homes() {
        assert_eq!(
            homes(2, &[], &BTreeMap::new()),
            [(0, None), (1, None)].into()
        );
    }

    #[test]
    fn the_rule_is_the_same_whatever_the_order_of_nodes() {
        let a = homes(3, &nodes(&["x", "y"]), &BTreeMap::new());
        let b = homes(3, &nodes(&["y", "x"]), &BTreeMap::new());
        assert_eq!(a, b);
    }

    #[test]
    fn device_ids_round_trip() {
        assert_eq!(device_id("plc-abc", 3), "plc-abc-3");
        assert_eq!(parse_device_id("plc-abc-3"), Some(("plc-abc", 3)));
        assert_eq!(parse_device_id("nodash"), None);
        assert_eq!(parse_device_id("plc-x"), None);
    }
}

/// Decides when this node's claims can be released: a claimed slot that the kubelet's
/// PodResources shows no pod holding, continuously for a grace period. Pure: the caller
/// feeds it what it sees.
#[derive(Debug, Default)]
pub struct Releaser {
    free_since: BTreeMap<(String, u32), std::time::Instant>,
}

impl Releaser {
    /// `claimed`: slots this node claims; `held`: slots some pod holds now. Returns the
    /// claims to release.
    pub fn update(
        &mut self,
        claimed: &BTreeSet<(String, u32)>,
        held: &BTreeSet<(String, u32)>,
        now: std::time::Instant,
        grace: std::time::Duration,
    ) -> Vec<(String, u32)> {
        self.free_since
            .retain(|k, _| claimed.contains(k) && !held.contains(k));
        let mut release = Vec::new();
        for slot in claimed.difference(held) {
            let since = *self.free_since.entry(slot.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= grace {
                release.push(slot.clone());
            }
        }
        for slot in &release {
            self.free_since.remove(slot);
        }
        release
    }
}

#[cfg(test)]
mod releaser_tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn set(items: &[(&str, u32)]) -> BTreeSet<(String, u32)> {
        items.iter().map(|(i, s)| (i.to_string(), *s)).collect()
    }

    #[test]
    fn a_slot_is_released_only_after_being_free_for_the_whole_grace_period() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let mut r = Releaser::default();
        let claimed = set(&[("i", 0), ("i", 1)]);
        assert!(r.update(&claimed, &set(&[("i", 0)]), t0, grace).is_empty());
        assert!(
            r.update(
                &claimed,
                &set(&[("i", 0)]),
                t0 + Duration::from_secs(9),
                grace
            )
            .is_empty()
        );
        assert_eq!(
            r.update(&claimed, &set(&[("i", 0)]), t0 + grace, grace),
            [("i".to_string(), 1)]
        );
    }

    #[test]
    fn a_slot_held_again_starts_over() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let mut r = Releaser::default();
        let claimed = set(&[("i", 0)]);
        r.update(&claimed, &set(&[]), t0, grace);
        r.update(
            &claimed,
            &set(&[("i", 0)]),
            t0 + Duration::from_secs(5),
            grace,
        );
        assert!(
            r.update(&claimed, &set(&[]), t0 + Duration::from_secs(12), grace)
                .is_empty()
        );
        assert_eq!(
            r.update(&claimed, &set(&[]), t0 + Duration::from_secs(22), grace)
                .len(),
            1
        );
    }
}

/// Where the controller runs broker pods, one per slot: a slot claimed by a node that still
/// sees the device stays there, up to that node's fair share (capacity over the number of
/// nodes, rounded up); a slot claimed by a node that no longer sees it, or beyond a node's
/// fair share (nodes that joined later), gets no broker: its pod is removed, the claim is
/// released and the slot is dealt again, so brokers end up spread. The other slots follow
/// [`homes`].
pub fn broker_nodes(
    capacity: u32,
    nodes: &[String],
    claims: &BTreeMap<String, String>,
) -> BTreeMap<u32, Option<String>> {
    let fair = if nodes.is_empty() {
        0
    } else {
        (capacity as usize).div_ceil(nodes.len())
    };
    let mut kept: BTreeMap<String, usize> = BTreeMap::new();
    homes(capacity, nodes, claims)
        .into_iter()
        .map(|(slot, home)| {
            let home = home.filter(|n| nodes.contains(n));
            let claimed = claims.contains_key(&slot.to_string());
            let home = match home {
                Some(n) if claimed => {
                    let count = kept.entry(n.clone()).or_default();
                    *count += 1;
                    (*count <= fair).then(|| n.clone())
                }
                other => other,
            };
            (slot, home)
        })
        .collect()
}

#[cfg(test)]
mod broker_tests {
    use super::*;

    #[test]
    fn brokers_placed_before_other_nodes_joined_are_spread_again() {
        // Both slots were claimed by node a while it was alone.
        let claims: BTreeMap<String, String> = [
            ("0".to_string(), "a".to_string()),
            ("1".to_string(), "a".to_string()),
        ]
        .into();
        let nodes: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let placed = broker_nodes(2, &nodes, &claims);
        assert_eq!(placed[&0].as_deref(), Some("a"));
        assert_eq!(
            placed[&1], None,
            "beyond a's fair share: moved once released"
        );
        // After the release, slot 1 goes to a node without one.
        let claims: BTreeMap<String, String> = [("0".to_string(), "a".to_string())].into();
        assert_eq!(broker_nodes(2, &nodes, &claims)[&1].as_deref(), Some("b"));
        // With one node, everything stays.
        let alone = broker_nodes(
            2,
            &["a".to_string()],
            &[
                ("0".to_string(), "a".to_string()),
                ("1".to_string(), "a".to_string()),
            ]
            .into(),
        );
        assert!(alone.values().all(|n| n.as_deref() == Some("a")));
    }

    #[test]
    fn a_broker_leaves_a_node_that_lost_the_device() {
        let nodes: Vec<String> = vec!["b".into(), "c".into()];
        let claims: BTreeMap<String, String> = [("0".to_string(), "a".to_string())].into();
        let placed = broker_nodes(2, &nodes, &claims);
        assert_eq!(placed[&0], None, "drained until node a releases the slot");
        assert_eq!(placed[&1].as_deref(), Some("b"));
        // Once released, slot 0 goes to the other remaining node.
        let placed = broker_nodes(2, &nodes, &BTreeMap::new());
        assert_eq!(placed[&0].as_deref(), Some("b"));
        assert_eq!(placed[&1].as_deref(), Some("c"));
    }
}
