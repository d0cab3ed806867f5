//! Dynamic Resource Allocation (`resource.k8s.io/v1`): the agent as the driver `dowser.dev`.
//!
//! - [`slices`] decides which ResourceSlices a node publishes; [`publisher`] keeps the
//!   cluster's slices equal to that.
//! - [`plugin`] is the kubelet's DRA plugin: it registers through the kubelet's plugin
//!   registry and serves `NodePrepareResources` (a CDI spec per claim, [`cdi`]) and
//!   `NodeUnprepareResources` (the spec removed).

pub mod authority;
pub mod cdi;
pub mod plugin;
pub mod publisher;
pub mod slices;

/// The driver name: in ResourceSlices, DeviceClasses, claims' allocations and attribute
/// names (`device.attributes["dowser.dev"].vendorName`).
pub const DRIVER: &str = "dowser.dev";
/// Where the kubelet looks for plugins to register (`pluginregistration/v1`).
pub const PLUGINS_REGISTRY_DIR: &str = "/var/lib/kubelet/plugins_registry";
/// Where the kubelet's plugins keep their sockets; dowser's is `<dir>/dowser.dev/dra.sock`.
pub const PLUGINS_DIR: &str = "/var/lib/kubelet/plugins";
/// Where the container runtime reads CDI specs written at run time.
pub const CDI_DIR: &str = "/var/run/cdi";

/// Generated from `proto/dra-v1.proto`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
}

/// Generated from `proto/pluginregistration-v1.proto`.
#[allow(clippy::all, missing_docs)]
pub mod registration {
    tonic::include_proto!("pluginregistration");
}

/// How the agent offers devices to the kubelet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One device plugin (extended resource) per Instance and per Configuration
    /// (Kubernetes 1.33 and later).
    #[value(name = "devicePlugin", alias = "device-plugin")]
    DevicePlugin,
    /// ResourceSlices of driver `dowser.dev` and a kubelet DRA plugin (Kubernetes 1.34 and
    /// later, a container runtime with CDI).
    Dra,
    /// Both: a device can then be given once through each, so brokers and claims must not
    /// both ask for the same device.
    Both,
}

impl Mode {
    pub fn device_plugins(self) -> bool {
        matches!(self, Mode::DevicePlugin | Mode::Both)
    }

    pub fn dra(self) -> bool {
        matches!(self, Mode::Dra | Mode::Both)
    }
}
