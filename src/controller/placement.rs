//! Where the controller runs broker pods: the slot rule of [`crate::slots`], plus what only
//! the controller decides (fair share across nodes, draining a node that lost the device).

use std::collections::BTreeMap;

use crate::slots::homes;

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
