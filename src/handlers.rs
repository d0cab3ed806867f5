//! The handlers this binary runs: the built-in ones of its cargo features, registered from
//! the one table of handlers ([`dowser_discovery_api::with_handlers`]), and any handler that
//! registers while it runs. The one place that starts discovery for a Configuration.

use std::sync::{Arc, LazyLock, RwLock};

use dowser_discovery_api::{
    AnyHandler, DiscoveryError, FieldError, Properties, SnapshotStream, details::Selected,
};

/// Every built-in handler's name, compiled into this binary or not.
pub use dowser_discovery_api::details::HANDLERS as BUILT_IN;

/// Handlers by name, in the order they registered.
pub struct Registry {
    handlers: RwLock<Vec<(String, Arc<dyn AnyHandler>)>>,
}

macro_rules! register_built_in {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident $key:literal $variant:ident($details:ty) $handler:path;
    )*) => {
        impl Registry {
            /// The handlers built into this binary (one cargo feature each).
            pub fn built_in() -> Self {
                let registry = Self::empty();
                $(
                    #[cfg(feature = $key)]
                    registry.register($key, Arc::new($handler));
                )*
                registry
            }
        }
    };
}

dowser_discovery_api::with_handlers!(register_built_in);

/// This process's handlers: the built-in ones, and those that register while it runs.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::built_in);

impl Registry {
    /// A registry without handlers.
    pub fn empty() -> Self {
        Self {
            handlers: RwLock::new(Vec::new()),
        }
    }

    /// Adds a handler, or replaces the one of that name. Any time: a handler out of process
    /// registers when it starts.
    pub fn register(&self, name: &str, handler: Arc<dyn AnyHandler>) {
        let mut handlers = self.handlers.write().expect("registry lock");
        match handlers.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = handler,
            None => handlers.push((name.to_string(), handler)),
        }
    }

    /// Names of the handlers registered, in the order they registered.
    pub fn names(&self) -> Vec<String> {
        let handlers = self.handlers.read().expect("registry lock");
        handlers.iter().map(|(n, _)| n.clone()).collect()
    }

    fn get(&self, name: &str) -> Option<Arc<dyn AnyHandler>> {
        let handlers = self.handlers.read().expect("registry lock");
        handlers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, h)| h.clone())
    }

    fn not_registered(&self, name: &str) -> String {
        let names = self.names();
        format!(
            "the {name} discovery handler is not available in this dowser binary (it has: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )
    }

    /// Checks that this binary can run the selected handler; `path` is `spec.discovery`.
    pub fn validate(&self, selected: Selected<'_>, path: &str) -> Vec<FieldError> {
        let name = selected.name();
        match self.get(name) {
            Some(_) => Vec::new(),
            None => vec![FieldError::new(
                format!("{path}.{name}"),
                self.not_registered(name),
            )],
        }
    }

    /// Starts discovery with the selected handler. The details must have been validated.
    pub fn discover(
        &self,
        selected: Selected<'_>,
        properties: Properties,
    ) -> Result<SnapshotStream, DiscoveryError> {
        let name = selected.name();
        match self.get(name) {
            Some(handler) => handler.start(selected.details(), properties),
            None => Err(DiscoveryError::Unavailable(self.not_registered(name))),
        }
    }
}

/// Whether the selected handler's devices can be reached from several nodes. An external
/// handler the Configuration does not say this of is as it registered: `None` until a handler
/// of its name has registered with this process.
pub fn shared(selected: Selected<'_>) -> Option<bool> {
    match selected {
        #[cfg(feature = "external")]
        Selected::External(details) => crate::external::shared(details),
        _ => Some(selected.shared()),
    }
}

/// Waits until [`shared`] knows (an external handler has registered).
pub async fn registered_sharing(selected: Selected<'_>) -> bool {
    match selected {
        #[cfg(feature = "external")]
        Selected::External(details) => crate::external::registered_sharing(details).await,
        _ => selected.shared(),
    }
}

/// Checks that this binary can run the selected handler (see [`Registry::validate`]).
pub fn validate(selected: Selected<'_>, path: &str) -> Vec<FieldError> {
    REGISTRY.validate(selected, path)
}

/// Starts discovery with a handler of this process (see [`Registry::discover`]).
pub fn discover(
    selected: Selected<'_>,
    properties: Properties,
) -> Result<SnapshotStream, DiscoveryError> {
    REGISTRY.discover(selected, properties)
}

#[cfg(test)]
mod tests {
    use dowser_discovery_api::{Device, Snapshot, details::Discovery};
    use futures::StreamExt;

    use super::*;

    /// A handler that is not built in: it finds one device named after its details.
    struct Echo;

    impl AnyHandler for Echo {
        fn start(
            &self,
            details: serde_json::Value,
            _properties: Properties,
        ) -> Result<SnapshotStream, DiscoveryError> {
            let id = details["targets"][0]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let device = Device {
                id,
                ..Device::default()
            };
            Ok(futures::stream::iter([Ok(Snapshot::new(vec![device]))]).boxed())
        }
    }

    fn modbus() -> Discovery {
        serde_json::from_value(serde_json::json!({"modbus": {"targets": ["10.0.7.1"]}})).unwrap()
    }

    #[tokio::test]
    async fn a_handler_registered_at_run_time_runs_its_configurations() {
        let registry = Registry::empty();
        let discovery = modbus();
        let selected = discovery.selected().unwrap();
        let refused = registry.validate(selected, "spec.discovery");
        assert_eq!(
            refused[0].to_string(),
            "spec.discovery.modbus: the modbus discovery handler is not available in this \
             dowser binary (it has: none)"
        );
        assert!(registry.discover(selected, Properties::new()).is_err());

        registry.register("modbus", Arc::new(Echo));
        assert_eq!(registry.names(), ["modbus"]);
        assert!(registry.validate(selected, "spec.discovery").is_empty());
        let mut stream = registry.discover(selected, Properties::new()).unwrap();
        let snapshot = stream.next().await.unwrap().unwrap();
        assert_eq!(snapshot.devices()[0].id, "10.0.7.1");
    }

    /// A handler that authenticates: it needs a user name and password to find anything.
    struct Login;

    impl AnyHandler for Login {
        fn start(
            &self,
            _details: serde_json::Value,
            properties: Properties,
        ) -> Result<SnapshotStream, DiscoveryError> {
            let login = properties.user_password()?.ok_or_else(|| {
                DiscoveryError::Unavailable("this handler needs USERNAME and PASSWORD".into())
            })?;
            let device = Device {
                id: format!("as {}", login.username),
                ..Device::default()
            };
            Ok(futures::stream::iter([Ok(Snapshot::new(vec![device]))]).boxed())
        }
    }

    #[tokio::test]
    async fn a_handler_gets_the_resolved_properties() {
        let registry = Registry::empty();
        registry.register("modbus", Arc::new(Login));
        let discovery = modbus();
        let selected = discovery.selected().unwrap();
        let only_user: Properties = [("USERNAME", "operator")].into_iter().collect();
        let refused = registry.discover(selected, only_user).err().unwrap();
        assert_eq!(
            refused.to_string(),
            "property PASSWORD is not set: add it to the Configuration's spec.properties"
        );
        let both: Properties = [("USERNAME", "operator"), ("PASSWORD", "pw")]
            .into_iter()
            .collect();
        let mut stream = registry.discover(selected, both).unwrap();
        let snapshot = stream.next().await.unwrap().unwrap();
        assert_eq!(snapshot.devices()[0].id, "as operator");
    }
}
