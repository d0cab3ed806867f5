//! mDNS / DNS-SD discovery for dowser.
//!
//! Browses the configured service types with an mDNS querier (RFC 6762, RFC 6763) and
//! follows what responders announce: a service is a device from the moment it is resolved
//! (SRV, TXT and address records) until it says goodbye (records with TTL 0) or its
//! records expire without being refreshed. Discovery is event-driven: a snapshot is
//! yielded whenever the set of devices changes, with no polling interval.
//!
//! The device id is the service instance full name (`Press 7._opcua-tcp._tcp.local.`).
//! Brokers get `MDNS_INSTANCE_NAME`, `MDNS_SERVICE_TYPE`, `MDNS_HOST`, `MDNS_PORT`,
//! `MDNS_ADDRESS` (the first of) `MDNS_ADDRESSES`, and each TXT record as
//! `MDNS_TXT_<KEY>`, bounded in size and number.

mod browse;
pub mod service;

use dowser_discovery_api::{
    DiscoveryError, DiscoveryHandler, Properties, SnapshotStream, details::MdnsDetails,
};
use futures::StreamExt;

pub use browse::FIRST_SNAPSHOT_AFTER;

/// How long the handler waits before starting browsing again after the mDNS daemon failed
/// or stopped.
pub const RESTART_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

enum Phase {
    Start(Option<std::time::Duration>),
    Running(
        futures::stream::BoxStream<'static, Result<dowser_discovery_api::Snapshot, DiscoveryError>>,
    ),
}
pub use service::{Selection, Service};

/// The mDNS discovery handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct MdnsHandler;

impl DiscoveryHandler for MdnsHandler {
    type Details = MdnsDetails;

    fn discover(&self, details: MdnsDetails, properties: Properties) -> SnapshotStream {
        let progress = properties.progress().clone();
        let selection = match Selection::new(&details) {
            Ok(s) => s,
            Err(e) => {
                let e = DiscoveryError::Failed(e.to_string());
                return futures::stream::once(async move { Err(e) }).boxed();
            }
        };
        // The daemon and its task start when the stream is first polled, inside the
        // caller's runtime. Should the daemon fail or stop, the stream says so and starts
        // a new one after a pause: it never ends.
        futures::stream::unfold(Phase::Start(None), move |mut phase| {
            let (details, selection, progress) =
                (details.clone(), selection.clone(), progress.clone());
            async move {
                loop {
                    phase = match phase {
                        Phase::Start(pause) => {
                            if let Some(pause) = pause {
                                tokio::time::sleep(pause).await;
                            }
                            match browse::snapshots(
                                details.clone(),
                                selection.clone(),
                                progress.clone(),
                            ) {
                                Ok(snapshots) => Phase::Running(snapshots),
                                Err(e) => return Some((Err(e), Phase::Start(Some(RESTART_AFTER)))),
                            }
                        }
                        Phase::Running(mut snapshots) => match snapshots.next().await {
                            Some(item) => return Some((item, Phase::Running(snapshots))),
                            None => Phase::Start(Some(RESTART_AFTER)),
                        },
                    }
                }
            }
        })
        .boxed()
    }
}
