//! Discovery through registered handlers: one stream per endpoint registered under the
//! Configuration's handler name, merged into the snapshots the agent's worker takes.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use dowser_discovery_api::{Device, Snapshot};
use dowser_handler_sdk::{
    v0::{DiscoverRequest, discovery_handler_client::DiscoveryHandlerClient},
    wire::{self, Limits},
};
use tokio::{sync::Notify, task::JoinSet, time::Instant};
use tracing::{debug, info};

use super::{
    REGISTRATIONS,
    registry::{ByName, Registration},
};

/// Least time between two snapshots handed to the worker: a handler that floods updates
/// costs at most ten writes' worth of decisions a second; the latest update wins.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How long a handler may take to answer `Discover` (its stream's first headers).
const ANSWER: Duration = Duration::from_secs(10);
/// First and longest wait before a lost endpoint is asked again.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// A stream open this long resets the wait before asking again.
const STEADY: Duration = Duration::from_secs(10);
/// An endpoint that cannot be reached for this long is forgotten (a handler that moved to a
/// new address registers again; a removed one is gone).
pub const FORGET_AFTER: Duration = Duration::from_secs(300);

/// What one endpoint contributes now.
#[derive(Clone, Debug)]
enum Part {
    /// Not answered yet.
    Waiting,
    Devices(Vec<Device>, Vec<String>),
    /// Lost, with why: its devices are not in the snapshot (so they follow the grace period).
    Lost(String),
    /// Refused the details (`InvalidArgument`), with its words: the Configuration must change.
    Refused(String),
}

type Parts = Arc<Mutex<BTreeMap<String, Part>>>;

/// Runs discovery with the endpoints registered as `name`, sending snapshots to `tx` until
/// it is closed.
pub async fn run(
    name: String,
    request: DiscoverRequest,
    tx: tokio::sync::mpsc::Sender<Result<Snapshot, dowser_discovery_api::DiscoveryError>>,
    limits: Limits,
) {
    let mut registrations = REGISTRATIONS.subscribe();
    let parts: Parts = Arc::default();
    let changed = Arc::new(Notify::new());
    let mut tasks: BTreeMap<String, tokio::task::AbortHandle> = BTreeMap::new();
    let mut set = JoinSet::new();
    let mut last_sent: Option<Instant> = None;
    let mut said_unregistered = false;
    loop {
        // Start and stop endpoint tasks to match the registrations.
        let wanted: Vec<Registration> = endpoints(&registrations.borrow_and_update(), &name);
        tasks.retain(|endpoint, task| {
            let keep = wanted.iter().any(|r| &r.endpoint == endpoint);
            if !keep {
                task.abort();
                parts.lock().expect("parts lock").remove(endpoint);
            }
            keep
        });
        for r in wanted {
            if let std::collections::btree_map::Entry::Vacant(entry) =
                tasks.entry(r.endpoint.clone())
            {
                parts
                    .lock()
                    .expect("parts lock")
                    .insert(r.endpoint.clone(), Part::Waiting);
                let task = set.spawn(endpoint(
                    r,
                    request.clone(),
                    parts.clone(),
                    changed.clone(),
                    limits,
                ));
                entry.insert(task);
            }
        }
        if tasks.is_empty() {
            if !said_unregistered {
                said_unregistered = true;
                let why = format!(
                    "no discovery handler named {name:?} has registered with this node's agent"
                );
                if tx
                    .send(Err(dowser_discovery_api::DiscoveryError::Unavailable(why)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        } else {
            said_unregistered = false;
        }
        tokio::select! {
            r = registrations.changed() => if r.is_err() { return },
            () = changed.notified() => {
                // Coalesce a burst: what arrives meanwhile is in the same snapshot.
                if let Some(at) = last_sent {
                    tokio::time::sleep_until(at + MIN_INTERVAL).await;
                }
                let merged = merge(&parts.lock().expect("parts lock"));
                if let Some(merged) = merged {
                    last_sent = Some(Instant::now());
                    if tx.send(merged).await.is_err() {
                        return;
                    }
                }
            }
            Some(_) = set.join_next() => {}
            () = tx.closed() => return,
        }
    }
}

fn endpoints(by_name: &ByName, name: &str) -> Vec<Registration> {
    by_name.get(name).cloned().unwrap_or_default()
}

/// The snapshot of all endpoints, once every one has answered or been lost; an error when
/// every one refused the details.
fn merge(
    parts: &BTreeMap<String, Part>,
) -> Option<Result<Snapshot, dowser_discovery_api::DiscoveryError>> {
    if parts.values().any(|p| matches!(p, Part::Waiting)) {
        return None;
    }
    if let Some(Part::Refused(why)) = parts.values().next()
        && parts.values().all(|p| matches!(p, Part::Refused(_)))
    {
        return Some(Err(dowser_discovery_api::DiscoveryError::Invalid(format!(
            "the handler refused the details: {why}"
        ))));
    }
    let mut devices = Vec::new();
    let mut problems = Vec::new();
    for (endpoint, part) in parts {
        match part {
            Part::Waiting => {}
            Part::Devices(d, p) => {
                devices.extend(d.iter().cloned());
                problems.extend(p.iter().map(|p| format!("handler at {endpoint}: {p}")));
            }
            Part::Lost(why) => problems.push(format!("handler at {endpoint}: {why}")),
            Part::Refused(why) => {
                problems.push(format!("handler at {endpoint}: refused the details: {why}"));
            }
        }
    }
    Some(Ok(Snapshot::new(devices).with_problems(problems)))
}

/// Keeps one endpoint's stream open: connects, asks, reads; when lost, says so at once and
/// asks again after a growing wait. Forgets the endpoint after [`FORGET_AFTER`] unreachable.
async fn endpoint(
    registration: Registration,
    request: DiscoverRequest,
    parts: Parts,
    changed: Arc<Notify>,
    limits: Limits,
) {
    let key = registration.endpoint.clone();
    let set = |part: Part| {
        parts.lock().expect("parts lock").insert(key.clone(), part);
        changed.notify_one();
    };
    let mut wait = RETRY_FIRST;
    let mut unreachable_since: Option<Instant> = None;
    let mut again = REGISTRATIONS.registered();
    loop {
        again.borrow_and_update();
        let connected = dowser_handler_sdk::connect(&registration.endpoint, registration.kind());
        let lost = match connected.await {
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                let why = Part::Lost(format!("unreachable: {}", describe(&e)));
                if since.elapsed() >= FORGET_AFTER {
                    info!(
                        name = %registration.name,
                        endpoint = %registration.endpoint,
                        "discovery handler unreachable for long: forgotten"
                    );
                    set(why);
                    REGISTRATIONS.forget(&registration.name, &registration.endpoint);
                    return;
                }
                why
            }
            Ok(channel) => {
                unreachable_since = None;
                let mut client = DiscoveryHandlerClient::new(channel)
                    .max_decoding_message_size(limits.message_bytes);
                match tokio::time::timeout(ANSWER, client.discover(request.clone())).await {
                    Err(_) => Part::Lost(format!(
                        "did not answer Discover within {}s",
                        ANSWER.as_secs()
                    )),
                    Ok(Err(status)) => failed("refused Discover", &status),
                    Ok(Ok(response)) => {
                        let opened = Instant::now();
                        let mut stream = response.into_inner();
                        let ended = loop {
                            match stream.message().await {
                                Ok(Some(response)) => {
                                    let accepted = wire::accept(response, &limits);
                                    set(Part::Devices(accepted.devices, accepted.problems));
                                }
                                Ok(None) => {
                                    break Part::Lost("closed its discovery stream".to_string());
                                }
                                Err(status) => break failed("discovery stream failed", &status),
                            }
                        };
                        // A stream that stayed open a while was a handler that worked: ask
                        // again soon.
                        if opened.elapsed() >= STEADY {
                            wait = RETRY_FIRST;
                        }
                        ended
                    }
                }
            }
        };
        debug!(
            name = %registration.name,
            endpoint = %registration.endpoint,
            why = ?lost,
            "discovery handler lost"
        );
        set(lost);
        // A handler that registers meanwhile (restarted, it registers again at the same
        // endpoint) is asked at once.
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = again.changed() => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// A handler's error: a refusal of the details (`InvalidArgument`), or the endpoint lost.
fn failed(what: &str, status: &tonic::Status) -> Part {
    let text = status_text(status);
    if status.code() == tonic::Code::InvalidArgument {
        Part::Refused(text)
    } else {
        Part::Lost(format!("{what}: {text}"))
    }
}

/// A status with its code first, so that it survives a message cut short.
fn status_text(status: &tonic::Status) -> String {
    let message = status.message();
    if message.is_empty() {
        format!("({:?})", status.code())
    } else {
        format!("({:?}) {message}", status.code())
    }
}

/// A connection error with its cause (tonic's own text is "transport error").
fn describe(e: &tonic::transport::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> Device {
        Device {
            id: id.into(),
            ..Device::default()
        }
    }

    #[test]
    fn endpoints_under_one_name_are_merged_once_all_have_answered() {
        let mut parts = BTreeMap::new();
        parts.insert(
            "/a.sock".to_string(),
            Part::Devices(vec![device("x")], vec![]),
        );
        parts.insert("/b.sock".to_string(), Part::Waiting);
        assert!(
            merge(&parts).is_none(),
            "waits for every endpoint's first word"
        );
        parts.insert(
            "/b.sock".to_string(),
            Part::Devices(
                vec![device("y"), device("x")],
                vec!["1 device(s) refused".into()],
            ),
        );
        let s = merge(&parts).unwrap().unwrap();
        let ids: Vec<&str> = s.devices().iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["x", "y"]);
        assert_eq!(s.problems(), ["handler at /b.sock: 1 device(s) refused"]);
    }

    #[test]
    fn a_lost_endpoint_drops_its_devices_and_says_why() {
        let mut parts = BTreeMap::new();
        parts.insert(
            "/a.sock".to_string(),
            Part::Devices(vec![device("x")], vec![]),
        );
        parts.insert(
            "/b.sock".to_string(),
            Part::Lost("closed its discovery stream".into()),
        );
        let s = merge(&parts).unwrap().unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.problems(),
            ["handler at /b.sock: closed its discovery stream"]
        );
    }
}
