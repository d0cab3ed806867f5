//! The wire edge: an mDNS daemon browsing the configured service types, its events folded
//! into [`Services`] by a task of its own, and snapshots handed out whenever they change.

use std::{net::IpAddr, time::Duration};

use dowser_discovery_api::{DiscoveryError, Progress, Snapshot, details::MdnsDetails};
use futures::{Stream, StreamExt, stream::BoxStream};
use mdns_sd::{DaemonEvent, IfKind, IfPredicate, ResolvedService, ServiceDaemon, ServiceEvent};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::service::{Change, Selection, Service, Services};

/// How long the first snapshot waits for answers to the first queries. Responders answer
/// a query for shared records within 20–120 ms (RFC 6762, section 6), and resolving a
/// service may take a second round of queries.
pub const FIRST_SNAPSHOT_AFTER: Duration = Duration::from_secs(1);

impl From<&ResolvedService> for Service {
    fn from(r: &ResolvedService) -> Self {
        Service {
            service_type: r.ty_domain.clone(),
            full_name: r.fullname.clone(),
            host: r.host.clone(),
            port: r.port,
            addresses: r
                .addresses
                .iter()
                .map(|a| a.to_ip_addr())
                .collect::<Vec<IpAddr>>(),
            txt: r
                .txt_properties
                .iter()
                .map(|p| (p.key().to_string(), p.val().map(<[u8]>::to_vec)))
                .collect(),
        }
    }
}

/// What the browsing task listens to.
enum Input {
    Service(ServiceEvent),
    Daemon(DaemonEvent),
    /// The daemon closed the events of a service type (it stopped, or we fell behind).
    Ended(String),
}

/// Shuts the daemon down when browsing stops.
struct Daemon(ServiceDaemon);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// Starts the daemon and its browse queries; the returned stream yields the first
/// snapshot after [`FIRST_SNAPSHOT_AFTER`], then one whenever the devices change.
pub fn snapshots(
    details: MdnsDetails,
    selection: Selection,
    progress: Progress,
) -> Result<BoxStream<'static, Result<Snapshot, DiscoveryError>>, DiscoveryError> {
    let unavailable = |e: mdns_sd::Error| DiscoveryError::Unavailable(format!("mDNS: {e}"));
    let daemon = ServiceDaemon::new().map_err(unavailable)?;
    let daemon = Daemon(daemon);
    if let Some(filter) = &details.interfaces {
        let filter = filter
            .compile()
            .map_err(|e| DiscoveryError::Failed(e.to_string()))?;
        // Later selections override earlier ones: none, then the named ones.
        daemon
            .0
            .disable_interface(IfKind::All)
            .map_err(unavailable)?;
        daemon
            .0
            .enable_interface(IfKind::Predicate(IfPredicate::new(move |intf| {
                filter.accepts(Some(&intf.name))
            })))
            .map_err(unavailable)?;
    }
    let mut inputs: Vec<BoxStream<'static, Input>> = vec![
        daemon
            .0
            .monitor()
            .map_err(unavailable)?
            .into_stream()
            .map(Input::Daemon)
            .boxed(),
    ];
    for ty in &details.service_types {
        let events = daemon.0.browse(ty).map_err(unavailable)?;
        let ended = Input::Ended(ty.clone());
        inputs.push(
            events
                .into_stream()
                .map(Input::Service)
                .chain(futures::stream::once(async move { ended }))
                .boxed(),
        );
    }
    let services = Services::new(selection);
    services.tally(&progress);
    let (tx, rx) = watch::channel(Ok(services.snapshot()));
    tokio::spawn(follow(
        daemon,
        futures::stream::select_all(inputs),
        services,
        tx,
        progress,
    ));
    Ok(handout(rx).boxed())
}

/// Folds daemon events into the set of services and publishes each change, until nobody
/// listens any more. The daemon is shut down when this returns.
async fn follow(
    daemon: Daemon,
    mut inputs: impl Stream<Item = Input> + Unpin,
    mut services: Services,
    tx: watch::Sender<Result<Snapshot, String>>,
    progress: Progress,
) {
    let mut full_warned = false;
    loop {
        let input = tokio::select! {
            input = inputs.next() => input,
            () = tx.closed() => break,
        };
        let change = match input {
            Some(Input::Service(ServiceEvent::ServiceResolved(resolved))) => {
                debug!(service = %resolved.fullname, "resolved");
                services.resolved(&Service::from(resolved.as_ref()))
            }
            Some(Input::Service(ServiceEvent::ServiceRemoved(_, full_name))) => {
                debug!(service = %full_name, "removed");
                services.removed(&full_name)
            }
            Some(Input::Service(_)) => Change::Unchanged,
            Some(Input::Daemon(DaemonEvent::Error(e))) => {
                warn!(error = %e, "mDNS daemon");
                Change::Unchanged
            }
            Some(Input::Daemon(_)) => Change::Unchanged,
            Some(Input::Ended(ty)) => {
                let _ = tx.send(Err(format!("mDNS browsing of {ty} stopped")));
                break;
            }
            None => break,
        };
        match change {
            Change::Changed => {
                services.tally(&progress);
                let _ = tx.send_replace(Ok(services.snapshot()));
            }
            Change::Full if !full_warned => {
                full_warned = true;
                warn!(
                    limit = crate::service::MAX_SERVICES,
                    "too many mDNS services: new ones are ignored until some leave"
                );
            }
            Change::Full | Change::Unchanged => {}
        }
    }
    drop(daemon);
}

/// The consumer's side: the first snapshot after the first browse, then each new one.
/// A slow consumer skips straight to the latest.
fn handout(
    rx: watch::Receiver<Result<Snapshot, String>>,
) -> impl Stream<Item = Result<Snapshot, DiscoveryError>> {
    futures::stream::unfold((rx, true, false), |(mut rx, first, done)| async move {
        if done {
            return None;
        }
        if first {
            tokio::time::sleep(FIRST_SNAPSHOT_AFTER).await;
        } else if rx.changed().await.is_err() {
            return None;
        }
        let latest = rx.borrow_and_update().clone();
        let done = latest.is_err();
        Some((latest.map_err(DiscoveryError::Failed), (rx, false, done)))
    })
}
