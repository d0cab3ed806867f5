//! OPC UA discovery for dowser.
//!
//! Every round calls FindServers on each configured discovery URL (a server answers with
//! itself, a local discovery server with every server registered with it), keeps the servers
//! that pass the filters, and calls GetEndpoints on each one's discovery URLs. A server becomes
//! a device named by its ApplicationUri (stable when its address changes) when it offers an
//! endpoint with the required security; the endpoint handed to brokers is chosen by the
//! configured preference. Both services run on a channel with security policy None, as the
//! specification allows for discovery, so no certificate is needed to find servers.
//! A Configuration with `session` also opens a session on each kept server, with the
//! credentials and certificates of its properties, and reads the server's nameplate
//! (`ServerStatus.BuildInfo`); a server that refuses it is a problem of the snapshot, named.
//!
//! Every connection and service call has a timeout and servers are queried with bounded
//! concurrency; a server that is silent, answers garbage or sends an absurd amount of data
//! costs a timeout or a decoding limit and is simply not found.

mod scan;
pub mod select;
pub mod session;

use dowser_discovery_api::{DiscoveryHandler, Properties, SnapshotStream, details::OpcuaDetails};
use futures::StreamExt;

pub use scan::{Scanner, scan};

/// The OPC UA discovery handler.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpcuaHandler;

impl DiscoveryHandler for OpcuaHandler {
    type Details = OpcuaDetails;

    fn discover(&self, details: OpcuaDetails, properties: Properties) -> SnapshotStream {
        let scanner = match Scanner::new(&details, &properties) {
            Ok(s) => std::sync::Arc::new(s),
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let interval = std::time::Duration::from_secs(u64::from(details.interval_seconds));
        futures::stream::unfold((scanner, true), move |(scanner, first)| async move {
            if !first {
                tokio::time::sleep(interval).await;
            }
            let snapshot = scanner.round().await;
            Some((Ok(snapshot), (scanner, false)))
        })
        .boxed()
    }
}
