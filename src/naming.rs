//! Names that dowser gives to things: Instances and extended resources.
//!
//! Instance name: `<configuration>-<hash>`, where the hash is over the device id (plus the
//! node name for devices that only one node can see). The whole name is a valid DNS label of
//! at most 63 characters; the configuration part is shortened, never the hash.

use sha2::{Digest, Sha256};

/// The API group, also the prefix of every extended resource.
pub const RESOURCE_DOMAIN: &str = "dowser.dev";
/// Length of the hash part of an Instance name, in hex digits (48 bits).
pub const HASH_LEN: usize = 12;
/// Longest DNS label.
pub const MAX_LABEL: usize = 63;

/// The hash that identifies a device of a Configuration: lower-case hex, [`HASH_LEN`] long.
/// `node` is given for devices that are not shared.
pub fn device_hash(device_id: &str, node: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(device_id.as_bytes());
    if let Some(node) = node {
        // A separator that cannot appear in a node name keeps ("a", "bc") and ("ab", "c") apart.
        h.update(b"\0");
        h.update(node.as_bytes());
    }
    let digest = h.finalize();
    let mut hex = String::with_capacity(HASH_LEN);
    for byte in digest.iter().take(HASH_LEN / 2) {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The Instance name for a device of a Configuration.
pub fn instance_name(configuration: &str, device_id: &str, node: Option<&str>) -> String {
    instance_name_with_hash(configuration, &device_hash(device_id, node))
}

/// The Instance name of a Configuration's device whose [`device_hash`] is `hash`.
pub fn instance_name_with_hash(configuration: &str, hash: &str) -> String {
    let prefix = label_prefix(configuration, MAX_LABEL - HASH_LEN - 1);
    if prefix.is_empty() {
        // A label must start with a letter or digit; hex digits are both.
        hash.to_string()
    } else {
        format!("{prefix}-{hash}")
    }
}

/// The extended resource of one Instance: `dowser.dev/<instance>`.
pub fn instance_resource(instance: &str) -> String {
    format!("{RESOURCE_DOMAIN}/{instance}")
}

/// The extended resource of any device of a Configuration: `dowser.dev/<configuration>`.
pub fn configuration_resource(configuration: &str) -> String {
    format!(
        "{RESOURCE_DOMAIN}/{}",
        label_prefix(configuration, MAX_LABEL)
    )
}

/// Whether `s` is a valid DNS label (RFC 1123): 1–63 characters of `[a-z0-9-]`, starting
/// and ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Turns any name (a Configuration name may contain dots) into the start of a DNS label of
/// at most `max` characters that does not end with a dash.
fn label_prefix(name: &str, max: usize) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(max);
    out.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_has_a_fixed_length() {
        // A changed hash renames every Instance of every user: never change this value.
        assert_eq!(
            device_hash("modbus+tcp://10.0.7.3:502/1", None),
            "77f91fafb55b"
        );
        assert_eq!(device_hash("x", None).len(), HASH_LEN);
        assert_eq!(device_hash("x", None), device_hash("x", None));
    }

    #[test]
    fn node_name_takes_part_in_the_hash_of_local_devices() {
        let a = device_hash("/dev/ttyUSB0", Some("node-a"));
        let b = device_hash("/dev/ttyUSB0", Some("node-b"));
        assert_ne!(a, b);
        assert_ne!(a, device_hash("/dev/ttyUSB0", None));
        assert_ne!(device_hash("a", Some("bc")), device_hash("ab", Some("c")));
    }

    #[test]
    fn instance_name_is_configuration_dash_hash() {
        let name = instance_name("plc-line3", "modbus+tcp://10.0.7.3:502/1", None);
        assert_eq!(name, "plc-line3-77f91fafb55b");
        assert!(is_dns_label(&name));
    }

    #[test]
    fn long_configuration_names_are_truncated_never_the_hash() {
        let config = "a".repeat(253);
        let name = instance_name(&config, "dev", None);
        assert_eq!(name.len(), MAX_LABEL);
        assert!(name.ends_with(&device_hash("dev", None)));
        assert!(is_dns_label(&name));
    }

    #[test]
    fn truncation_never_leaves_a_double_dash_or_a_trailing_dash() {
        // 49 characters then a dash at position 50: the cut lands right after the dash.
        let config = format!("{}-{}", "a".repeat(49), "b".repeat(40));
        let name = instance_name(&config, "dev", None);
        assert!(is_dns_label(&name), "{name}");
        assert!(!name.contains("--"), "{name}");
    }

    #[test]
    fn dotted_and_upper_case_names_become_valid_labels() {
        let name = instance_name("Plant.Line-3", "dev", None);
        assert!(name.starts_with("plant-line-3-"), "{name}");
        assert!(is_dns_label(&name));
        let name = instance_name("...", "dev", None);
        assert_eq!(name, device_hash("dev", None));
    }

    #[test]
    fn resource_names() {
        assert_eq!(instance_resource("plc-abc"), "dowser.dev/plc-abc");
        assert_eq!(configuration_resource("plc"), "dowser.dev/plc");
        let long = configuration_resource(&"x".repeat(100));
        assert_eq!(long.len(), "dowser.dev/".len() + MAX_LABEL);
    }

    #[test]
    fn dns_label_rules() {
        assert!(is_dns_label("a"));
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
