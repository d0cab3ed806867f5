//! The contract between dowser and its discovery handlers.
//!
//! A discovery handler knows one protocol and nothing about Kubernetes. Given its typed
//! [`details`] and the resolved [`Properties`], it produces [`Snapshot`]s: the full list of
//! devices it can see right now. Everything here is free of I/O so that the agent, the
//! controller and `dowser discover` share one set of rules.

pub mod details;
pub mod device;
pub mod env;
pub mod filter;
pub mod handler;
pub mod progress;
pub mod properties;
pub mod validation;

pub use device::{Device, DeviceSpec, Mount, Outcome, Snapshot};
pub use filter::{CompiledFilter, Filter, compile_optional};
pub use handler::{AnyHandler, DiscoveryError, DiscoveryHandler, SnapshotStream};
pub use progress::{Progress, Verdict};
pub use properties::{Properties, UserPassword};
pub use validation::FieldError;
