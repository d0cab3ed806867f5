//! The resolved `properties` of a Configuration, as a handler gets them.
//!
//! A Configuration's `spec.properties` name values by `[A-Z_][A-Z0-9_]*` names: literals, or
//! keys of Secrets and ConfigMaps in its namespace. The agent reads them (the handler never
//! sees Kubernetes) and starts the handler with them; when a Secret or ConfigMap they come
//! from changes, the handler is started again with the new values. `dowser discover` takes
//! them from `--property NAME=VALUE`.
//!
//! Values may be credentials. [`Properties`] shows names only in `Debug` and cannot be
//! serialised; a handler must keep values out of its [`crate::Device`]s (their properties
//! become an Instance that anyone allowed to read Instances reads, and a broker's
//! environment), its errors and its logs.

use std::{collections::BTreeMap, fmt};

use crate::{DiscoveryError, Progress};

/// The well-known name of a user name, for protocols that authenticate a user (an OPC UA
/// user identity token, ...): see [`Properties::user_password`].
pub const USERNAME: &str = "USERNAME";
/// The well-known name of the password that goes with [`USERNAME`].
pub const PASSWORD: &str = "PASSWORD";

/// A Configuration's resolved properties, by name. A property from an `optional` key that
/// does not exist is absent.
///
/// They also carry where the handler reports the progress of its rounds
/// ([`Properties::progress`]), which is not a property: two `Properties` with the same values
/// are equal whatever their progress handles.
#[derive(Clone, Default)]
pub struct Properties {
    values: BTreeMap<String, String>,
    progress: Progress,
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}

impl Eq for Properties {}

impl Properties {
    pub fn new() -> Self {
        Self::default()
    }

    /// The same properties, with a handle on which the handler reports the progress of its
    /// rounds (see [`crate::progress`]); whoever starts discovery keeps a clone to read it.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Where the handler reports the progress of its rounds: disabled unless whoever started
    /// discovery shows it.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Sets a property (the agent and `dowser discover` resolve them; tests make their own).
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.values.insert(name.into(), value.into());
    }

    /// The value of a property, if it is set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value of a property the handler cannot work without; the error names the
    /// property and says where to set it.
    pub fn require(&self, name: &str) -> Result<&str, DiscoveryError> {
        self.get(name).ok_or_else(|| {
            DiscoveryError::Unavailable(format!(
                "property {name} is not set: add it to the Configuration's spec.properties"
            ))
        })
    }

    /// The names of the properties that are set, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Every property, name and value, in order of name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The user name and password ([`USERNAME`], [`PASSWORD`]) of a handler that
    /// authenticates: `None` when neither is set (anonymous), an error when only one is.
    pub fn user_password(&self) -> Result<Option<UserPassword<'_>>, DiscoveryError> {
        match (self.get(USERNAME), self.get(PASSWORD)) {
            (None, None) => Ok(None),
            (Some(username), Some(password)) => Ok(Some(UserPassword { username, password })),
            (Some(_), None) => Err(self.require(PASSWORD).unwrap_err()),
            (None, Some(_)) => Err(self.require(USERNAME).unwrap_err()),
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Properties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            values: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            progress: Progress::default(),
        }
    }
}

/// Names only: values may be credentials.
impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_map()
            .entries(self.values.keys().map(|k| (k, Redacted)))
            .finish()
    }
}

struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A user name and password from the properties ([`Properties::user_password`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UserPassword<'a> {
    pub username: &'a str,
    pub password: &'a str,
}

/// The user name only.
impl fmt::Debug for UserPassword<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("UserPassword")
            .field("username", &self.username)
            .field("password", &Redacted)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_by_name_and_never_shown() {
        let props: Properties = [("USERNAME", "operator"), ("PASSWORD", "hunter2-secret")]
            .into_iter()
            .collect();
        assert_eq!(props.get(PASSWORD), Some("hunter2-secret"));
        assert_eq!(props.names().collect::<Vec<_>>(), ["PASSWORD", "USERNAME"]);
        let shown = format!("{props:?} {:?}", props.user_password());
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(
            shown.contains("PASSWORD") && shown.contains("operator"),
            "{shown}"
        );
    }

    #[test]
    fn the_progress_handle_is_not_a_property() {
        let plain: Properties = [("MODE", "fast")].into_iter().collect();
        assert!(!plain.progress().is_enabled());
        let progress = Progress::enabled();
        let shown = plain.clone().with_progress(progress.clone());
        assert_eq!(shown, plain);
        assert_eq!(shown.names().collect::<Vec<_>>(), ["MODE"]);
        // The handler's clone reports to the caller's handle.
        shown
            .clone()
            .progress()
            .round(3)
            .target(crate::Verdict::Silent);
        assert_eq!(progress.state().unwrap().tried, 1);
    }

    #[test]
    fn a_missing_property_is_named() {
        let props = Properties::new();
        let e = props.require("API_KEY").unwrap_err().to_string();
        assert_eq!(
            e,
            "property API_KEY is not set: add it to the Configuration's spec.properties"
        );
    }

    #[test]
    fn user_and_password_come_together_or_not_at_all() {
        let mut props = Properties::new();
        assert_eq!(props.user_password().unwrap(), None);
        props.insert(USERNAME, "operator");
        let e = props.user_password().unwrap_err().to_string();
        assert!(e.contains("property PASSWORD is not set"), "{e}");
        props.insert(PASSWORD, "pw");
        assert_eq!(
            props.user_password().unwrap(),
            Some(UserPassword {
                username: "operator",
                password: "pw"
            })
        );
        let only_password: Properties = [(PASSWORD, "pw")].into_iter().collect();
        let e = only_password.user_password().unwrap_err().to_string();
        assert!(e.contains("property USERNAME is not set"), "{e}");
    }
}
