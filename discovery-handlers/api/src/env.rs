//! Environment variable names handed to brokers.
//!
//! Every property becomes `[A-Z_][A-Z0-9_]*`, prefixed by its handler (`MODBUS_HOST`), and is
//! also given suffixed with the Instance hash (`MODBUS_HOST_77F91FAFB55B`) for pods that hold
//! several devices.

/// Turns any key into an environment variable name: upper case, every character outside
/// `[A-Z0-9_]` replaced by `_`, and a leading `_` if it would start with a digit.
pub fn sanitize(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| {
            let c = c.to_ascii_uppercase();
            if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// `<PREFIX>_<KEY>` with both parts sanitised.
pub fn prefixed(prefix: &str, key: &str) -> String {
    sanitize(&format!("{prefix}_{key}"))
}

/// The Instance-specific form of a variable: `<NAME>_<HASH>`.
pub fn with_hash(name: &str, hash: &str) -> String {
    sanitize(&format!("{name}_{hash}"))
}

/// Whether `name` is already a valid variable name of dowser's form.
pub fn is_valid(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// A value from the wire made fit for an environment variable: control characters dropped,
/// surrounding spaces trimmed, at most `max_bytes` bytes (cut on a character boundary).
pub fn printable_value(value: &str, max_bytes: usize) -> String {
    let out: String = value.chars().filter(|c| !c.is_control()).collect();
    let mut out = out.trim_start();
    if out.len() > max_bytes {
        let mut end = max_bytes;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out = &out[..end];
    }
    // Trimmed after the cut, so that a cut before a space leaves none at the end.
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_to_upper_snake_case() {
        assert_eq!(sanitize("vendor-name"), "VENDOR_NAME");
        assert_eq!(sanitize("txt.model"), "TXT_MODEL");
        assert_eq!(sanitize("ünïcode"), "_N_CODE");
        assert_eq!(sanitize("9lives"), "_9LIVES");
        assert_eq!(sanitize(""), "_");
        assert!(is_valid(&sanitize("a b=c")));
    }

    #[test]
    fn prefix_and_hash_suffix() {
        assert_eq!(prefixed("MDNS_TXT", "fw-version"), "MDNS_TXT_FW_VERSION");
        assert_eq!(
            with_hash("MODBUS_HOST", "77f91fafb55b"),
            "MODBUS_HOST_77F91FAFB55B"
        );
    }

    #[test]
    fn values_are_printable_and_bounded() {
        assert_eq!(printable_value(" a\nb\u{0}c ", 100), "abc");
        assert_eq!(printable_value(&"é".repeat(10), 5), "éé");
        assert_eq!(printable_value("plain", 5), "plain");
        assert_eq!(printable_value("ab cd", 3), "ab");
    }

    #[test]
    fn validity() {
        assert!(is_valid("MODBUS_HOST"));
        assert!(is_valid("_X1"));
        assert!(!is_valid("1X"));
        assert!(!is_valid("modbus"));
        assert!(!is_valid(""));
    }
}
