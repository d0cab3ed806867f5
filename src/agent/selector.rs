//! `nodeSelector` of a Configuration against a node's labels (Kubernetes label selector
//! semantics).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` match `selector`; no selector matches every node.
pub fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|r| {
        let values = r.values.as_deref().unwrap_or_default();
        match r.operator.as_str() {
            "In" => labels.get(&r.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&r.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&r.key),
            "DoesNotExist" => !labels.contains_key(&r.key),
            // Validation rejects other operators; an unknown one selects nothing.
            _ => false,
        }
    });
    by_labels && by_expressions
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn no_selector_selects_every_node() {
        assert!(matches(None, &labels(&[])));
        assert!(matches(Some(&LabelSelector::default()), &labels(&[])));
    }

    #[test]
    fn match_labels_and_expressions_all_apply() {
        let s = LabelSelector {
            match_labels: Some([("site/line".to_string(), "3".to_string())].into()),
            match_expressions: Some(vec![
                req("zone", "In", &["a", "b"]),
                req("quarantine", "DoesNotExist", &[]),
            ]),
        };
        assert!(matches(
            Some(&s),
            &labels(&[("site/line", "3"), ("zone", "a")])
        ));
        assert!(!matches(
            Some(&s),
            &labels(&[("site/line", "4"), ("zone", "a")])
        ));
        assert!(!matches(
            Some(&s),
            &labels(&[("site/line", "3"), ("zone", "c")])
        ));
        assert!(!matches(
            Some(&s),
            &labels(&[("site/line", "3"), ("zone", "a"), ("quarantine", "")])
        ));
    }

    #[test]
    fn not_in_and_exists() {
        let s = LabelSelector {
            match_expressions: Some(vec![
                req("zone", "NotIn", &["x"]),
                req("ble", "Exists", &[]),
            ]),
            ..LabelSelector::default()
        };
        assert!(matches(Some(&s), &labels(&[("ble", "true")])));
        assert!(!matches(
            Some(&s),
            &labels(&[("ble", "true"), ("zone", "x")])
        ));
        assert!(!matches(Some(&s), &labels(&[])));
    }
}
