//! Slots: the `capacity` virtual devices of an Instance, and which node may hand out each.
//!
//! One rule, applied to the same Instance status by every agent (`agent::plugins`) and by
//! the controller when it places brokers (`controller::placement`), so that the slots offered
//! across all nodes never exceed capacity and the scheduler never places a pod that a kubelet
//! must then reject:
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
}
