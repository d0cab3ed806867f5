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

/// Which resource holds each slot on this node. The Instance's resource and its
/// Configuration's resource offer the same slots (the same device ids), and the kubelet
/// counts them apart: without one record a pod could get a slot through one while another
/// pod holds it through the other. `Allocate` takes a slot here, under one lock, before it
/// answers; the kubelet's PodResources confirms holders and frees them. Pure: the caller
/// feeds it what it sees.
#[derive(Debug, Default, Clone)]
pub struct Holders {
    by_device: BTreeMap<String, Holder>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    resource: String,
    /// PodResources has listed a pod holding it.
    listed: bool,
    /// When `Allocate` took it.
    since: std::time::Instant,
}

/// A slot another resource holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldElsewhere {
    pub device: String,
    pub resource: String,
}

impl Holders {
    /// Takes `devices` for `resource` for a pod being admitted: all of them, or none if
    /// another resource holds one. Returns the devices newly taken (to give back if the
    /// allocation fails after all).
    pub fn take(
        &mut self,
        resource: &str,
        devices: &[String],
        now: std::time::Instant,
    ) -> Result<Vec<String>, HeldElsewhere> {
        if let Some((device, holder)) = devices.iter().find_map(|d| {
            self.by_device
                .get(d)
                .filter(|h| h.resource != resource)
                .map(|h| (d, h))
        }) {
            return Err(HeldElsewhere {
                device: device.clone(),
                resource: holder.resource.clone(),
            });
        }
        let mut taken = Vec::new();
        for d in devices {
            if !self.by_device.contains_key(d) {
                self.by_device.insert(
                    d.clone(),
                    Holder {
                        resource: resource.to_string(),
                        listed: false,
                        since: now,
                    },
                );
                taken.push(d.clone());
            }
        }
        Ok(taken)
    }

    /// Gives back devices [`Self::take`] took for an allocation that failed.
    pub fn give_back(&mut self, devices: &[String]) {
        for d in devices {
            if self.by_device.get(d).is_some_and(|h| !h.listed) {
                self.by_device.remove(d);
            }
        }
    }

    /// What PodResources lists now (device → resource of the pod holding it). A listed
    /// device is held through the resource listed; a device listed before and no more is
    /// free; a device taken by `Allocate` and never listed (the kubelet refused the pod
    /// after all) is free once `grace` has passed. Returns whether anything changed.
    pub fn observe(
        &mut self,
        listed: &BTreeMap<String, String>,
        now: std::time::Instant,
        grace: std::time::Duration,
    ) -> bool {
        let before = self.by_device.clone();
        self.by_device.retain(|d, h| {
            listed.contains_key(d) || (!h.listed && now.saturating_duration_since(h.since) < grace)
        });
        for (d, resource) in listed {
            let h = self.by_device.entry(d.clone()).or_insert_with(|| Holder {
                resource: resource.clone(),
                listed: true,
                since: now,
            });
            h.resource = resource.clone();
            h.listed = true;
        }
        before != self.by_device
    }

    /// The resource through which a pod holds `device`, if one does.
    pub fn holder(&self, device: &str) -> Option<&str> {
        self.by_device.get(device).map(|h| h.resource.as_str())
    }
}

#[cfg(test)]
mod holders_tests {
    use std::time::{Duration, Instant};

    use super::*;

    const BY_INSTANCE: &str = "dowser.dev/plc-abc";
    const BY_CONFIG: &str = "dowser.dev/plc";

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn listed(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items
            .iter()
            .map(|(d, r)| (d.to_string(), r.to_string()))
            .collect()
    }

    #[test]
    fn a_slot_taken_through_one_resource_is_refused_to_the_other() {
        let now = Instant::now();
        let mut h = Holders::default();
        assert_eq!(
            h.take(BY_INSTANCE, &ids(&["plc-abc-0"]), now),
            Ok(ids(&["plc-abc-0"]))
        );
        assert_eq!(
            h.take(BY_CONFIG, &ids(&["plc-abc-0"]), now),
            Err(HeldElsewhere {
                device: "plc-abc-0".into(),
                resource: BY_INSTANCE.into()
            })
        );
        assert_eq!(h.holder("plc-abc-0"), Some(BY_INSTANCE));
        // The same resource again (the kubelet admitting a pod again) is not refused.
        assert_eq!(h.take(BY_INSTANCE, &ids(&["plc-abc-0"]), now), Ok(vec![]));
    }

    #[test]
    fn a_refused_take_takes_nothing() {
        let now = Instant::now();
        let mut h = Holders::default();
        h.take(BY_INSTANCE, &ids(&["plc-abc-1"]), now).unwrap();
        assert!(
            h.take(BY_CONFIG, &ids(&["plc-abc-0", "plc-abc-1"]), now)
                .is_err()
        );
        assert_eq!(h.holder("plc-abc-0"), None);
    }

    #[test]
    fn a_failed_allocation_gives_its_slots_back() {
        let now = Instant::now();
        let mut h = Holders::default();
        let taken = h.take(BY_CONFIG, &ids(&["plc-abc-0"]), now).unwrap();
        h.give_back(&taken);
        assert_eq!(
            h.take(BY_INSTANCE, &ids(&["plc-abc-0"]), now),
            Ok(ids(&["plc-abc-0"]))
        );
    }

    #[test]
    fn a_slot_is_held_until_pod_resources_lists_it_no_more() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        let mut h = Holders::default();
        h.take(BY_INSTANCE, &ids(&["plc-abc-0"]), t0).unwrap();
        // Not listed yet: the kubelet records the pod's devices after Allocate answers.
        assert!(!h.observe(&listed(&[]), t0 + Duration::from_secs(1), grace));
        assert_eq!(h.holder("plc-abc-0"), Some(BY_INSTANCE));
        assert!(h.observe(
            &listed(&[("plc-abc-0", BY_INSTANCE)]),
            t0 + Duration::from_secs(2),
            grace
        ));
        // Long past the grace period, still listed: still held.
        h.observe(
            &listed(&[("plc-abc-0", BY_INSTANCE)]),
            t0 + Duration::from_secs(100),
            grace,
        );
        assert_eq!(h.holder("plc-abc-0"), Some(BY_INSTANCE));
        // The pod is gone: the slot is free at once, for either resource.
        assert!(h.observe(&listed(&[]), t0 + Duration::from_secs(101), grace));
        assert_eq!(h.holder("plc-abc-0"), None);
        assert!(h.take(BY_CONFIG, &ids(&["plc-abc-0"]), t0).is_ok());
    }

    #[test]
    fn a_slot_never_listed_is_free_after_the_grace_period() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        let mut h = Holders::default();
        h.take(BY_CONFIG, &ids(&["plc-abc-0"]), t0).unwrap();
        assert!(!h.observe(&listed(&[]), t0 + Duration::from_secs(29), grace));
        assert!(h.observe(&listed(&[]), t0 + grace, grace));
        assert_eq!(h.holder("plc-abc-0"), None);
    }

    #[test]
    fn pod_resources_names_holders_the_agent_did_not_see_allocate() {
        // After an agent restart the kubelet's record is all there is.
        let t0 = Instant::now();
        let mut h = Holders::default();
        assert!(h.observe(
            &listed(&[("plc-abc-0", BY_CONFIG)]),
            t0,
            Duration::from_secs(30)
        ));
        assert!(h.take(BY_INSTANCE, &ids(&["plc-abc-0"]), t0).is_err());
    }
}
