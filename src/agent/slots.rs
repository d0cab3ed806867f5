//! A node's side of the slots of [`crate::slots`]: the device ids its device plugins offer,
//! and when its claims are released.

use std::collections::{BTreeMap, BTreeSet};

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
