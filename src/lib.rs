//! dowser: discovers industrial and IoT leaf devices from the nodes that can reach them and
//! advertises each one to Kubernetes.

pub mod agent;
pub mod apiserver;
pub mod approval;
pub mod cli;
pub mod client;
pub mod controller;
pub mod crd;
pub mod device_instance;
pub mod deviceplugin;
pub mod dra;
#[cfg(feature = "external")]
pub mod external;
pub mod handlers;
pub mod naming;
pub mod slots;
pub mod telemetry;
pub mod validate;
