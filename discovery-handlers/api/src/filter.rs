//! The one filter convention of every handler: `{ include: [regex...], exclude: [regex...] }`.
//!
//! Absent or empty `include` lets everything in; `exclude` then removes. Each regular
//! expression must match the whole value (it is anchored), as in Prometheus relabelling:
//! `Acme` matches only "Acme", `Acme.*` matches "Acme Corp".

use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::FieldError;

/// Longest regular expression accepted in a filter.
pub const MAX_PATTERN_LEN: usize = 256;
/// Most patterns in one `include` or `exclude` list.
pub const MAX_PATTERNS: usize = 32;

/// Selects values by regular expressions matched against the whole value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    /// Values to keep, as regular expressions (RE2 syntax) that must match the whole value.
    /// Absent or empty: keep everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_PATTERNS), inner(length(min = 1, max = MAX_PATTERN_LEN)))]
    pub include: Vec<String>,
    /// Values to drop, as regular expressions that must match the whole value. Applied after
    /// `include`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_PATTERNS), inner(length(min = 1, max = MAX_PATTERN_LEN)))]
    pub exclude: Vec<String>,
}

impl Filter {
    /// Every pattern that does not compile, as field errors under `path`.
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (list, patterns) in [("include", &self.include), ("exclude", &self.exclude)] {
            for (i, p) in patterns.iter().enumerate() {
                if let Err(e) = anchored(p) {
                    errors.push(FieldError::new(
                        format!("{path}.{list}[{i}]"),
                        format!("invalid regular expression {p:?}: {}", first_line(&e)),
                    ));
                }
            }
        }
        errors
    }

    /// Compiles the filter. Call [`Filter::validate`] first for errors a user can read.
    pub fn compile(&self) -> Result<CompiledFilter, regex::Error> {
        Ok(CompiledFilter {
            include: self
                .include
                .iter()
                .map(|p| anchored(p))
                .collect::<Result<_, _>>()?,
            exclude: self
                .exclude
                .iter()
                .map(|p| anchored(p))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Compiles a filter that may be absent (absent: keeps everything).
pub fn compile_optional(filter: Option<&Filter>) -> Result<CompiledFilter, regex::Error> {
    filter
        .map(Filter::compile)
        .transpose()
        .map(Option::unwrap_or_default)
}

/// Validates the optional filters of a details type, each under `path.<name>`.
pub fn validate_all(path: &str, filters: &[(&str, &Option<Filter>)]) -> Vec<FieldError> {
    filters
        .iter()
        .filter_map(|(name, f)| f.as_ref().map(|f| f.validate(&format!("{path}.{name}"))))
        .flatten()
        .collect()
}

fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

fn first_line(e: &regex::Error) -> String {
    // regex errors are multi-line drawings; the last line says what is wrong.
    e.to_string()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .trim_start_matches("error: ")
        .to_string()
}

/// A filter ready to use.
#[derive(Clone, Debug, Default)]
pub struct CompiledFilter {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
}

impl CompiledFilter {
    /// Whether `value` passes. A missing value (`None`) passes only when nothing is
    /// included explicitly.
    pub fn accepts(&self, value: Option<&str>) -> bool {
        match value {
            None => self.include.is_empty(),
            Some(v) => {
                (self.include.is_empty() || self.include.iter().any(|r| r.is_match(v)))
                    && !self.exclude.iter().any(|r| r.is_match(v))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(include: &[&str], exclude: &[&str]) -> CompiledFilter {
        Filter {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
        .compile()
        .unwrap()
    }

    #[test]
    fn empty_filter_accepts_everything_even_missing_values() {
        let f = f(&[], &[]);
        assert!(f.accepts(Some("anything")));
        assert!(f.accepts(None));
    }

    #[test]
    fn include_is_anchored() {
        let f = f(&["Acme"], &[]);
        assert!(f.accepts(Some("Acme")));
        assert!(!f.accepts(Some("Acme Corp")));
        assert!(!f.accepts(Some("Not Acme")));
        assert!(!f.accepts(None));
    }

    #[test]
    fn alternation_stays_anchored() {
        let f = f(&["a|b"], &[]);
        assert!(f.accepts(Some("a")));
        assert!(!f.accepts(Some("ab")));
        assert!(!f.accepts(Some("xa")));
    }

    #[test]
    fn exclude_applies_after_include() {
        let f = f(&["Acme.*"], &[".*Test.*"]);
        assert!(f.accepts(Some("Acme PLC")));
        assert!(!f.accepts(Some("Acme Test Rig")));
        let only_exclude = self::f(&[], &["Test"]);
        assert!(only_exclude.accepts(Some("Prod")));
        assert!(!only_exclude.accepts(Some("Test")));
        assert!(only_exclude.accepts(None));
    }

    #[test]
    fn invalid_patterns_are_reported_per_field() {
        let filter = Filter {
            include: vec!["ok".into(), "(unclosed".into()],
            exclude: vec!["[z-a]".into()],
        };
        let errors = filter.validate("spec.x.names");
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].path, "spec.x.names.include[1]");
        assert!(
            errors[0]
                .message
                .starts_with("invalid regular expression \"(unclosed\""),
            "{}",
            errors[0].message
        );
        assert_eq!(errors[1].path, "spec.x.names.exclude[0]");
    }
}
