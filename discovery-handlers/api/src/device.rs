//! What a handler reports: devices and snapshots.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One device as a handler sees it. Only stable facts belong here: two scans of an unchanged
/// device must produce equal values, so that nothing is written to the cluster for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Stable identity of the device within its handler (for example
    /// `modbus+tcp://10.0.7.3:502/1`). It names the Instance, so it must not change when
    /// the device is seen again.
    pub id: String,
    /// Connection details handed to brokers as environment variables. Keys are already
    /// sanitised environment variable names with the handler's prefix (`MODBUS_HOST`).
    pub properties: BTreeMap<String, String>,
    /// Device nodes to pass into a broker container (local devices only).
    pub device_specs: Vec<DeviceSpec>,
    /// Host paths to mount into a broker container (local devices only).
    pub mounts: Vec<Mount>,
}

/// A device node made available to a broker container.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// Path of the device node inside the container.
    pub container_path: String,
    /// Path of the device node on the host.
    pub host_path: String,
    /// cgroup permissions: any combination of `r` (read), `w` (write) and `m` (mknod).
    pub permissions: String,
}

/// A host path mounted into a broker container.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// Path inside the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// Whether the mount is read-only.
    pub read_only: bool,
}

/// What a polled handler's round made of one target: a device, a problem a user must act on
/// (see [`Snapshot::with_problems`]), or nothing (silent, garbage, filtered out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Device(Device),
    Problem(String),
    Nothing,
}

/// Every device a handler can see at one moment, sorted by id. A device that is missing from
/// a snapshot is not gone yet: the agent applies the Configuration's offline grace period.
/// Two snapshots are equal when their devices and problems are; how long the round took is
/// not compared.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    devices: Vec<Device>,
    problems: Vec<String>,
    round: Option<std::time::Duration>,
}

/// Most problems a snapshot keeps (the rest are counted in the last one).
pub const MAX_PROBLEMS: usize = 10;
/// Longest problem kept, in bytes.
const MAX_PROBLEM_BYTES: usize = 300;

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.devices == other.devices && self.problems == other.problems
    }
}

impl Eq for Snapshot {}

impl Snapshot {
    /// Builds a snapshot; devices are sorted by id and duplicates (same id) are merged,
    /// keeping the first.
    pub fn new(mut devices: Vec<Device>) -> Self {
        devices.sort_by(|a, b| a.id.cmp(&b.id));
        devices.dedup_by(|later, first| later.id == first.id);
        Self {
            devices,
            problems: Vec::new(),
            round: None,
        }
    }

    /// Records what a user must act on although the round itself worked: a target that
    /// answered but could not be used (a server that refused the credentials). Each names
    /// its target; they must be the same words every round while nothing changes (the agent
    /// writes them to the Configuration's status when they change). Kept sorted, each at most
    /// 300 bytes, at most [`MAX_PROBLEMS`] (the last then says how many more there were).
    pub fn with_problems(mut self, mut problems: Vec<String>) -> Self {
        problems.sort();
        problems.dedup();
        for p in &mut problems {
            if p.len() > MAX_PROBLEM_BYTES {
                let mut end = MAX_PROBLEM_BYTES;
                while !p.is_char_boundary(end) {
                    end -= 1;
                }
                p.truncate(end);
                p.push('…');
            }
        }
        if problems.len() > MAX_PROBLEMS {
            let more = problems.len() - (MAX_PROBLEMS - 1);
            problems.truncate(MAX_PROBLEMS - 1);
            problems.push(format!("and {more} more"));
        }
        self.problems = problems;
        self
    }

    /// The snapshot of a round's outcomes: its devices and its problems.
    pub fn of(outcomes: impl IntoIterator<Item = Outcome>) -> Self {
        let (mut devices, mut problems) = (Vec::new(), Vec::new());
        for o in outcomes {
            match o {
                Outcome::Device(d) => devices.push(d),
                Outcome::Problem(p) => problems.push(p),
                Outcome::Nothing => {}
            }
        }
        Self::new(devices).with_problems(problems)
    }

    /// What a user must act on ([`Snapshot::with_problems`]).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Records how long the discovery round that produced this snapshot took (polled
    /// handlers; event-driven ones have no rounds).
    pub fn with_round(mut self, took: std::time::Duration) -> Self {
        self.round = Some(took);
        self
    }

    /// How long the discovery round took, when the handler works in rounds.
    pub fn round(&self) -> Option<std::time::Duration> {
        self.round
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    pub fn into_devices(self) -> Vec<Device> {
        self.devices
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str, v: &str) -> Device {
        Device {
            id: id.into(),
            properties: [("X".to_string(), v.to_string())].into(),
            ..Device::default()
        }
    }

    #[test]
    fn problems_are_sorted_bounded_and_compared() {
        let many: Vec<String> = (0..25).rev().map(|i| format!("server {i:02}")).collect();
        let s = Snapshot::new(vec![]).with_problems(many);
        assert_eq!(s.problems().len(), MAX_PROBLEMS);
        assert_eq!(s.problems()[0], "server 00");
        assert_eq!(s.problems()[MAX_PROBLEMS - 1], "and 16 more");
        let long = Snapshot::new(vec![]).with_problems(vec!["é".repeat(400)]);
        assert!(long.problems()[0].len() <= MAX_PROBLEM_BYTES + '…'.len_utf8());
        assert_ne!(Snapshot::new(vec![]), long);
    }

    #[test]
    fn snapshot_is_sorted_and_deduplicated() {
        let s = Snapshot::new(vec![dev("b", "1"), dev("a", "1"), dev("b", "2")]);
        let ids: Vec<_> = s.devices().iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(s.devices()[1].properties["X"], "1");
    }

    #[test]
    fn order_of_discovery_does_not_change_a_snapshot() {
        let a = Snapshot::new(vec![dev("x", "1"), dev("y", "1")]);
        let b = Snapshot::new(vec![dev("y", "1"), dev("x", "1")]);
        assert_eq!(a, b);
    }
}
