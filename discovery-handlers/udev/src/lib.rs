//! udev discovery for dowser: any device the kernel announces on the node.
//!
//! Devices of the configured subsystems are read from sysfs and the udev database
//! ([`sysfs`]), kept by the Configuration's filters and grouped by parent ([`select`]), and
//! listed again on every uevent and every second ([`watch`]). Devices are local to their
//! node; their device nodes, and udev's links to them, go to the broker container.
//!
//! The uevent socket and the watch loop are shared with the USB serial handler.

mod hotplug;
pub mod select;
pub mod sysfs;
mod watch;

use std::sync::Arc;

use dowser_discovery_api::{
    DiscoveryError, DiscoveryHandler, Properties, SnapshotStream, details::UdevDetails,
};
use futures::StreamExt;

pub use hotplug::Uevents;
pub use watch::{RESCAN, SETTLE, Scan, watch};

/// The udev discovery handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct UdevHandler;

impl DiscoveryHandler for UdevHandler {
    type Details = UdevDetails;

    /// Yields a snapshot at once, then whenever the kept devices change.
    fn discover(&self, details: UdevDetails, properties: Properties) -> SnapshotStream {
        let selection = match select::Selection::new(&details) {
            Ok(s) => s,
            Err(e) => {
                let e = DiscoveryError::Invalid(e);
                return futures::stream::once(async move { Err(e) }).boxed();
            }
        };
        // The udev database's place is read once per start, not every listing.
        let reader = sysfs::Reader::default();
        let progress = properties.progress().clone();
        watch(Arc::new(move || scan(&reader, &selection, &progress)))
    }
}

/// One look at the node's devices, reported as a round on `progress`.
pub fn scan(
    reader: &sysfs::Reader,
    selection: &select::Selection,
    progress: &dowser_discovery_api::Progress,
) -> Result<dowser_discovery_api::Snapshot, DiscoveryError> {
    let devices = reader.devices(
        &selection.subsystems,
        &selection.attribute_names(),
        &selection.parent_attribute_names(),
    )?;
    selection.tally(&devices, progress);
    Ok(selection.snapshot(&devices))
}
