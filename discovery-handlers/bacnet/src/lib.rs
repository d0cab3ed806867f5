//! BACnet/IP discovery for dowser.
//!
//! Every round sends a global Who-Is (optionally for an instance range) as a broadcast on
//! the configured broadcast addresses, as Distribute-Broadcast-To-Network through the listed
//! BBMDs and by unicast to the listed addresses, collects the I-Am answers on the BACnet port
//! for the window, then reads each device's identity with ReadProperty on its Device object
//! (object name, vendor name, model name, firmware and application software revisions,
//! location, description), through its router when it is behind one. A device is named
//! `bacnet://<instance>`, stable when its address changes. A device that answers Who-Is but
//! not ReadProperty is named as a problem; one that sends garbage is not understood and costs
//! nothing but the window.

pub mod codec;
mod scan;
pub mod select;

use std::{sync::Arc, time::Duration};

use dowser_discovery_api::{DiscoveryHandler, Properties, SnapshotStream, details::BacnetDetails};
use futures::StreamExt;

pub use scan::{Scanner, scan};

/// The BACnet/IP discovery handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct BacnetHandler;

impl DiscoveryHandler for BacnetHandler {
    type Details = BacnetDetails;

    fn discover(&self, details: BacnetDetails, properties: Properties) -> SnapshotStream {
        let scanner = match Scanner::new(&details) {
            Ok(s) => Arc::new(s.reporting(properties.progress().clone())),
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let interval = Duration::from_secs(details.interval_seconds.into());
        futures::stream::unfold((scanner, true), move |(scanner, first)| async move {
            if !first {
                tokio::time::sleep(interval).await;
            }
            let result = scanner.round().await;
            Some((result, (scanner, false)))
        })
        .boxed()
    }
}
