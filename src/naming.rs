//! Names that dowser gives to things: Instances, extended resources and device-plugin
//! sockets. Every rule lives here.
//!
//! Instance name: `<configuration>-<hash>`, where the hash is over the device id (plus the
//! node name for devices that only one node can see, plus the Configuration's name when
//! that had to be shortened or changed to fit). The whole name is a valid DNS label of at
//! most 63 characters; the configuration part is shortened, never the hash.
//!
//! Broker Services and Jobs are named after their Instance or Configuration, changed where
//! that would not be a valid name of their kind ([`service_name`], [`job_name`]).
//!
//! Extended resources (what a pod requests), `dowser.dev/<name>` where `<name>` is
//! - `<namespace>.<configuration>` for any device of a Configuration, such as
//!   `dowser.dev/default.plc-line3`;
//! - `<namespace>_<instance>` for one device, such as
//!   `dowser.dev/default_plc-line3-77f91fafb55b`;
//! - when that is longer than 63 characters (the limit of the name part), its first 49
//!   characters, `__` and the first 12 hex digits of the SHA-256 of the whole of it.
//!
//! The `dowser.dev/configuration` label holds a Configuration's name, shortened the same way
//! when longer than 63 characters ([`configuration_label`]).
//!
//! No two of these can be equal: namespaces, Configuration and Instance names never contain
//! `_` (so `_` tells an Instance from a Configuration, and a namespace never holds the `.`
//! that ends it), and `__` appears only in shortened names, which differ by their hash.

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
    hex(&h.finalize())
}

/// The first [`HASH_LEN`] hex digits of a digest.
fn hex(digest: &[u8]) -> String {
    let mut hex = String::with_capacity(HASH_LEN);
    for byte in digest.iter().take(HASH_LEN / 2) {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The hash that ends the Instance name of a device of `configuration`: [`device_hash`]
/// when the Configuration's name is the start of its Instances' names unchanged; when the
/// name had to be shortened or changed to fit a DNS label (over 50 characters, dots), the
/// name goes into the hash too, so that Configurations that share the changed start never
/// share an Instance.
pub fn instance_hash(configuration: &str, device_id: &str, node: Option<&str>) -> String {
    if label_prefix(configuration, INSTANCE_PREFIX) == configuration {
        return device_hash(device_id, node);
    }
    let mut h = Sha256::new();
    // Names never hold a NUL: the parts cannot run into each other.
    h.update(configuration.as_bytes());
    h.update(b"\0");
    h.update(device_id.as_bytes());
    if let Some(node) = node {
        h.update(b"\0");
        h.update(node.as_bytes());
    }
    hex(&h.finalize())
}

/// The Instance name for a device of a Configuration.
pub fn instance_name(configuration: &str, device_id: &str, node: Option<&str>) -> String {
    instance_name_with_hash(
        configuration,
        &instance_hash(configuration, device_id, node),
    )
}

/// Longest start of a Configuration's name in its Instances' names: the rest is `-` and the
/// hash.
const INSTANCE_PREFIX: usize = MAX_LABEL - HASH_LEN - 1;

/// The Service of a broker: `<name>-svc` when that is a valid Service name (a DNS-1035
/// label: starts with a letter, at most 63 characters, no dots); otherwise
/// `svc-<start of the name as a label>-<hash of the name>`, which is one and differs for
/// every name.
pub fn service_name(name: &str) -> String {
    let plain = format!("{name}-svc");
    if is_dns_label(&plain) && plain.starts_with(|c: char| c.is_ascii_lowercase()) {
        return plain;
    }
    let hash = hex_sha256(name.as_bytes());
    let start = label_prefix(name, MAX_LABEL - 4 - 1 - HASH_LEN);
    if start.is_empty() {
        format!("svc-{hash}")
    } else {
        format!("svc-{start}-{hash}")
    }
}

/// The broker Job of an Instance for one Job spec (`spec_hash`, 10 hex digits):
/// `<instance>-<spec_hash>`, at most 63 characters (the Job's name becomes a label value of
/// its pods). A longer Instance name keeps its start and its hash, the 12 characters that
/// set it apart from the other Instances of its Configuration.
pub fn job_name(instance: &str, spec_hash: &str) -> String {
    let room = MAX_LABEL - 1 - spec_hash.len();
    if instance.len() <= room {
        return format!("{instance}-{spec_hash}");
    }
    let tail = &instance[instance.len() - HASH_LEN..];
    let start = label_prefix(instance, room - HASH_LEN - 1);
    if start.is_empty() {
        format!("{tail}-{spec_hash}")
    } else {
        format!("{start}-{tail}-{spec_hash}")
    }
}

/// The Instance name of a Configuration's device whose [`instance_hash`] is `hash`.
pub fn instance_name_with_hash(configuration: &str, hash: &str) -> String {
    let prefix = label_prefix(configuration, INSTANCE_PREFIX);
    if prefix.is_empty() {
        // A label must start with a letter or digit; hex digits are both.
        hash.to_string()
    } else {
        format!("{prefix}-{hash}")
    }
}

/// The extended resource of one Instance: `dowser.dev/<namespace>_<instance>`, shortened
/// when longer (see the module's documentation).
pub fn instance_resource(namespace: &str, instance: &str) -> String {
    resource(format!("{namespace}_{instance}"))
}

/// The extended resource of any device of a Configuration:
/// `dowser.dev/<namespace>.<configuration>`, shortened when longer (see the module's
/// documentation).
pub fn configuration_resource(namespace: &str, configuration: &str) -> String {
    resource(format!("{namespace}.{configuration}"))
}

/// Characters of a shortened resource name kept from the start of the full one.
const SHORTENED_PREFIX: usize = MAX_LABEL - 2 - HASH_LEN;

fn resource(name: String) -> String {
    format!("{RESOURCE_DOMAIN}/{}", shorten(name))
}

/// `name` if it has at most 63 characters, else its first 49, `__` and 12 hex digits of
/// its SHA-256.
fn shorten(name: String) -> String {
    if name.len() <= MAX_LABEL {
        return name;
    }
    let hash = hex_sha256(name.as_bytes());
    let mut prefix = name;
    // Namespaces and names are ASCII; this only keeps a stray character whole.
    while prefix.len() > SHORTENED_PREFIX || !prefix.is_char_boundary(prefix.len()) {
        prefix.pop();
    }
    format!("{prefix}__{hash}")
}

/// The value of the `dowser.dev/configuration` label on a Configuration's Instances, broker
/// Pods, Jobs and Services: the Configuration's name, shortened like a resource name when
/// longer than a label value may be (63 characters).
pub fn configuration_label(configuration: &str) -> String {
    shorten(configuration.to_string())
}

/// The prefix of the labels that name the nodes taking part in an Instance.
pub const NODE_LABEL_PREFIX: &str = "nodes.dowser.dev/";

/// The label a node's agent puts on each Instance it takes part in (it sees the device, or
/// a pod there holds one of its slots), with an empty value: `nodes.dowser.dev/<node>`, the
/// node's name shortened like a resource name when longer than 63 characters. Each agent
/// watches the Instances with its own label only, so its cache holds its node's share of
/// the cluster; `kubectl get instances -l nodes.dowser.dev/<node>` lists the same.
pub fn node_label(node: &str) -> String {
    format!("{NODE_LABEL_PREFIX}{}", shorten(node.to_string()))
}

/// The field manager of one controller replica's writes to the leader Lease. It must differ
/// between replicas: server-side apply refuses to hand a field owned by one manager to
/// another, and that refusal is what keeps a second replica from taking a Lease the first
/// has just taken.
pub fn lease_field_manager(identity: &str) -> String {
    format!("dowser-controller-{}", shorten(identity.to_string()))
}

/// Whether a `dowser.dev/configuration` label value is a shortened name (so the name must
/// be looked up, not read from it).
pub fn is_shortened(label: &str) -> bool {
    label.len() == MAX_LABEL && label.get(SHORTENED_PREFIX..SHORTENED_PREFIX + 2) == Some("__")
}

/// The first [`HASH_LEN`] hex digits of the SHA-256 of `bytes`.
fn hex_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Longest path a unix socket address holds (`sun_path` is 108 bytes with the final NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Characters of a resource name kept readable in its plugin's socket name.
const SOCKET_READABLE: usize = 32;
/// The shortest socket name: `dowser-<hash>.sock`.
pub const MIN_SOCKET_NAME: usize = "dowser-".len() + HASH_LEN + ".sock".len();
/// The longest socket name; the kubelet's own directory, `/var/lib/kubelet/device-plugins/`,
/// leaves room for it.
pub const MAX_SOCKET_NAME: usize = MIN_SOCKET_NAME + SOCKET_READABLE + 1;

/// How long a socket name may be in `dir` (the bytes left of [`MAX_SOCKET_PATH`] after the
/// directory and its `/`); `None` when not even the shortest name fits.
pub fn socket_room(dir: &std::path::Path) -> Option<usize> {
    let used =
        dir.as_os_str().len() + usize::from(!dir.as_os_str().as_encoded_bytes().ends_with(b"/"));
    MAX_SOCKET_PATH
        .checked_sub(used)
        .filter(|room| *room >= MIN_SOCKET_NAME)
}

/// The file name of the socket of the device plugin of `resource`, at most `room` bytes
/// (from [`socket_room`]) and [`MAX_SOCKET_NAME`]: `dowser-<start of the resource's
/// name>-<hash of the resource>.sock`, such as `dowser-default.plc-line3-1f0c44d03b5a.sock`.
/// The same resource always gets the same name in the same directory; the readable part is
/// shortened, then left out, when the directory leaves little room.
pub fn plugin_socket(resource: &str, room: usize) -> String {
    let hash = hex_sha256(resource.as_bytes());
    let name = resource
        .strip_prefix(&format!("{RESOURCE_DOMAIN}/"))
        .unwrap_or(resource);
    let readable = room
        .min(MAX_SOCKET_NAME)
        .saturating_sub(MIN_SOCKET_NAME + 1)
        .min(SOCKET_READABLE);
    let start: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(readable)
        .collect();
    if start.is_empty() {
        format!("dowser-{hash}.sock")
    } else {
        format!("dowser-{start}-{hash}.sock")
    }
}

/// Whether `s` is a valid qualified name without prefix, as the name part of an extended
/// resource must be: 1–63 characters of `[A-Za-z0-9-_.]`, starting and ending with a letter
/// or digit.
pub fn is_qualified_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
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
    fn each_replica_writes_the_lease_as_its_own_manager() {
        let a = lease_field_manager("dowser-controller-7d9f8-abcde");
        let b = lease_field_manager("dowser-controller-7d9f8-fghij");
        assert_eq!(a, "dowser-controller-dowser-controller-7d9f8-abcde");
        assert_ne!(a, b);
        // Field managers may have 128 characters; a pod name may have 253.
        let long = lease_field_manager(&"x".repeat(253));
        assert!(long.len() <= 128, "{long}");
        assert_ne!(long, lease_field_manager(&"x".repeat(252)));
    }

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
        assert!(name.ends_with(&instance_hash(&config, "dev", None)));
        assert!(is_dns_label(&name));
        // Another Configuration with the same first 50 characters, the same device.
        let other = instance_name(&"a".repeat(252), "dev", None);
        assert_eq!(other[..50], name[..50]);
        assert_ne!(other, name);
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
        assert_eq!(name, instance_hash("...", "dev", None));
        // The name is changed, so it is in the hash: `a.b` and `a-b` keep apart.
        assert_ne!(
            instance_name("a.b", "dev", None),
            instance_name("a-b", "dev", None)
        );
        assert_eq!(
            instance_hash("a-b", "dev", Some("n")),
            device_hash("dev", Some("n"))
        );
    }

    #[test]
    fn services_have_valid_names_and_keep_the_plain_ones() {
        assert_eq!(service_name("plc-line3"), "plc-line3-svc");
        let dotted = service_name("line3.press");
        assert!(dotted.starts_with("svc-line3-press-"), "{dotted}");
        // A Service's name starts with a letter.
        assert!(service_name("3rd-line").starts_with("svc-3rd-line-"));
        let long = service_name(&"a".repeat(60));
        assert!(is_dns_label(&long) && long.starts_with("svc-"), "{long}");
        assert_ne!(long, service_name(&"a".repeat(61)));
    }

    #[test]
    fn jobs_keep_the_hash_of_a_long_instance_name() {
        assert_eq!(
            job_name("plc-77f91fafb55b", "0123456789"),
            "plc-77f91fafb55b-0123456789"
        );
        let instance = instance_name(&"a".repeat(80), "dev", None);
        let job = job_name(&instance, "0123456789");
        assert_eq!(job.len(), MAX_LABEL);
        assert!(
            job.ends_with(&format!("{}-0123456789", &instance[51..])),
            "{job}"
        );
        assert!(is_dns_label(&job));
    }

    #[test]
    fn resource_names_carry_the_namespace() {
        assert_eq!(
            instance_resource("default", "plc-abc"),
            "dowser.dev/default_plc-abc"
        );
        assert_eq!(
            configuration_resource("default", "plc"),
            "dowser.dev/default.plc"
        );
        assert_eq!(
            configuration_resource("plant", "line3.plc"),
            "dowser.dev/plant.line3.plc"
        );
        // Same name, two namespaces: two resources.
        assert_ne!(
            configuration_resource("a", "plc"),
            configuration_resource("b", "plc")
        );
        assert_ne!(
            instance_resource("a", "plc-1"),
            instance_resource("b", "plc-1")
        );
        // A Configuration named like an Instance of the same namespace.
        assert_ne!(
            configuration_resource("a", "plc-77f91fafb55b"),
            instance_resource("a", "plc-77f91fafb55b")
        );
    }

    fn name_part(resource: &str) -> &str {
        resource.strip_prefix("dowser.dev/").unwrap()
    }

    #[test]
    fn long_resource_names_are_shortened_with_a_hash_and_stay_apart() {
        // 63 characters fit as they are.
        let exact = configuration_resource("default", &"c".repeat(55));
        assert_eq!(name_part(&exact).len(), 63);
        assert!(!exact.contains("__"));
        // The longest a user can give: a 63-character namespace, a 253-character name.
        let ns = "n".repeat(63);
        let config = format!("{}.{}", "c".repeat(126), "d".repeat(126));
        for r in [
            configuration_resource("default", &"c".repeat(56)),
            configuration_resource(&ns, &config),
            instance_resource(&ns, &instance_name(&config, "dev", None)),
        ] {
            let part = name_part(&r);
            assert_eq!(part.len(), MAX_LABEL, "{r}");
            assert!(is_qualified_name(part), "{r}");
            assert_eq!(&part[SHORTENED_PREFIX..SHORTENED_PREFIX + 2], "__", "{r}");
        }
        // Names that only differ after the cut get different resources.
        let a = configuration_resource(&ns, &format!("{}a", "c".repeat(100)));
        let b = configuration_resource(&ns, &format!("{}b", "c".repeat(100)));
        assert_ne!(a, b);
        // A shortened name never equals one that was not shortened.
        let short = configuration_resource("default", &"c".repeat(56));
        assert!(short.starts_with(&format!("dowser.dev/default.{}__", "c".repeat(41))));
        // Stable: users and tests may write it down (the README's example).
        assert_eq!(short, configuration_resource("default", &"c".repeat(56)));
        assert_eq!(
            configuration_resource(
                "packaging-line-3",
                "palletizer-safety-controllers.building-7.plant-east"
            ),
            "dowser.dev/packaging-line-3.palletizer-safety-controllers.bu__8df983caab06"
        );
    }

    #[test]
    fn node_labels_are_qualified_names_for_any_node_name() {
        assert_eq!(node_label("edge-7.plant"), "nodes.dowser.dev/edge-7.plant");
        // Node names are DNS subdomains of up to 253 characters; label names stop at 63.
        let long = format!("{}.{}", "n".repeat(126), "m".repeat(126));
        let label = node_label(&long);
        let name = label.strip_prefix(NODE_LABEL_PREFIX).unwrap();
        assert!(is_qualified_name(name), "{label}");
        assert_ne!(
            label,
            node_label(&format!("{}.{}", "n".repeat(126), "o".repeat(126)))
        );
    }

    #[test]
    fn configuration_labels_are_the_name_until_too_long() {
        assert_eq!(configuration_label("plant.line-3"), "plant.line-3");
        assert!(!is_shortened("plant.line-3"));
        let name63 = "c".repeat(63);
        assert_eq!(configuration_label(&name63), name63);
        assert!(!is_shortened(&name63));
        let long = format!("{}.{}", "c".repeat(126), "d".repeat(126));
        let label = configuration_label(&long);
        assert!(is_qualified_name(&label), "{label}");
        assert!(is_shortened(&label), "{label}");
        assert_ne!(
            label,
            configuration_label(&format!("{}.{}", "c".repeat(126), "e".repeat(126)))
        );
    }

    #[test]
    fn every_resource_name_is_a_qualified_name() {
        for (ns, name) in [
            ("default", "plc"),
            ("a", "b"),
            ("kube-system", "plant.line-3.plc"),
            (&"n".repeat(63)[..], &"x".repeat(253)[..]),
        ] {
            assert!(is_qualified_name(name_part(&configuration_resource(
                ns, name
            ))));
            let instance = instance_name(name, "dev", None);
            assert!(is_qualified_name(name_part(&instance_resource(
                ns, &instance
            ))));
        }
    }

    #[test]
    fn socket_names_are_short_unique_stable_and_readable() {
        let kubelet = std::path::Path::new("/var/lib/kubelet/device-plugins/");
        let room = socket_room(kubelet).unwrap();
        let ns = "n".repeat(63);
        let long = instance_resource(&ns, &instance_name(&"c".repeat(253), "dev", None));
        let short = configuration_resource("default", "plc-line3");
        for r in [&long, &short] {
            let name = plugin_socket(r, room);
            assert!(name.len() <= MAX_SOCKET_NAME, "{name}");
            assert!(kubelet.join(&name).as_os_str().len() <= MAX_SOCKET_PATH);
            assert_eq!(name, plugin_socket(r, room));
        }
        // The README's example.
        assert_eq!(
            plugin_socket(&short, room),
            "dowser-default.plc-line3-096d5251fb3d.sock"
        );
        assert_ne!(
            plugin_socket(&configuration_resource("a", &"x".repeat(100)), room),
            plugin_socket(&configuration_resource("a", &"x".repeat(101)), room)
        );
        // A long directory shortens the readable part, then leaves it out.
        let deep = std::path::PathBuf::from(format!("/{}", "d".repeat(60)));
        let room = socket_room(&deep).unwrap();
        let name = plugin_socket(&long, room);
        assert!(
            deep.join(&name).as_os_str().len() <= MAX_SOCKET_PATH,
            "{name}"
        );
        assert!(name.starts_with("dowser-nnn"), "{name}");
        let deeper = std::path::PathBuf::from(format!("/{}", "d".repeat(80)));
        let room = socket_room(&deeper).unwrap();
        let name = plugin_socket(&long, room);
        assert_eq!(name.len(), MIN_SOCKET_NAME, "{name}");
        assert!(deeper.join(&name).as_os_str().len() <= MAX_SOCKET_PATH);
        // No room at all: the agent says so instead of trying forever.
        assert_eq!(
            socket_room(&std::path::PathBuf::from(format!("/{}", "d".repeat(90)))),
            None
        );
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
