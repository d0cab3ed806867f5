//! One discovery round on the wire: FindServers on the configured URLs, GetEndpoints on each
//! kept server, host names mended. Decisions are in [`crate::select`].

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dowser_discovery_api::{
    DiscoveryError, Outcome, Progress, Properties, Snapshot, Verdict, details::OpcuaDetails,
    details::opcua::SecurityMode,
};
use futures::StreamExt;
use opcua::{
    client::{Client, ClientBuilder},
    types::{ApplicationDescription, ApplicationType, EndpointDescription, MessageSecurityMode},
};

use crate::{
    select::{self, Application, ApplicationKind, Endpoint, Selection},
    session::{self, Credentials},
};

/// Most data one server may send in one response. An endpoint list is a few KiB per
/// endpoint (each carries the server certificate), so this admits hundreds of endpoints and
/// refuses the absurd.
const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// Most servers one FindServers answer and endpoints one GetEndpoints answer may list.
const MAX_ARRAY_LENGTH: usize = 4096;

/// Runs discovery rounds for one Configuration.
pub struct Scanner {
    client: Client,
    selection: Selection,
    urls: Vec<String>,
    timeout: Duration,
    concurrency: usize,
    /// The session in which each server's nameplate is read, when the Configuration asks.
    credentials: Option<Credentials>,
    /// Where rounds report the URLs and servers tried.
    progress: Progress,
}

impl Scanner {
    pub fn new(details: &OpcuaDetails, properties: &Properties) -> Result<Self, DiscoveryError> {
        let compile = |f: &Option<dowser_discovery_api::Filter>| {
            dowser_discovery_api::compile_optional(f.as_ref())
                .map_err(|e| DiscoveryError::Failed(e.to_string()))
        };
        let selection = Selection {
            names: compile(&details.application_names)?,
            uris: compile(&details.application_uris)?,
            product_uris: compile(&details.product_uris)?,
            policy: details.security_policy,
            mode: details.security_mode,
            preference: details.endpoint_preference,
            manufacturers: compile(&details.manufacturer_names)?,
            products: compile(&details.product_names)?,
        };
        let timeout = Duration::from_millis(u64::from(details.timeout_ms));
        let credentials = details
            .session
            .as_ref()
            .map(|s| Credentials::new(s, properties))
            .transpose()?;
        // Discovery runs on channels with security policy None: no certificate of our own is
        // needed, and none is created or written. A session on a secure channel uses the
        // certificate from the properties, in a store of its own.
        let pki = credentials
            .as_ref()
            .and_then(|c| c.pki_dir().map(|p| p.to_path_buf()))
            .unwrap_or_else(|| std::env::temp_dir().join("dowser-opcua-pki"));
        let trust_any = credentials.as_ref().is_some_and(|c| !c.trust_list);
        let client = ClientBuilder::new()
            .application_name("dowser")
            .application_uri("urn:dowser:discovery")
            .product_uri("urn:dowser")
            .create_sample_keypair(false)
            .pki_dir(pki)
            .trust_server_certs(trust_any)
            .session_retry_limit(0)
            .request_timeout(timeout)
            .max_message_size(MAX_MESSAGE_BYTES)
            .max_chunk_count(MAX_MESSAGE_BYTES / 8192)
            .max_array_length(MAX_ARRAY_LENGTH)
            .max_string_length(64 << 10)
            .max_byte_string_length(64 << 10)
            .client()
            .map_err(|e| DiscoveryError::Failed(format!("OPC UA client: {}", e.join("; "))))?;
        Ok(Self {
            client,
            selection,
            urls: details.discovery_urls.clone(),
            timeout,
            concurrency: details.concurrency.max(1) as usize,
            credentials,
            progress: properties.progress().clone(),
        })
    }

    /// One round: every server found, described and filtered. Its targets, for progress,
    /// are the discovery URLs, then the servers they list.
    pub async fn round(self: &Arc<Self>) -> Snapshot {
        let started = Instant::now();
        let resolver = Arc::new(Resolver::new(self.timeout));
        let progress = self.progress.round(self.urls.len());

        // FindServers on every discovery URL, in the configured order (the first URL that
        // reports a server is the one its description is taken from).
        let found: Vec<(String, Vec<Application>, Verdict)> =
            futures::stream::iter(self.urls.clone())
                .map(|url| {
                    let this = self.clone();
                    async move {
                        match this.find_servers(&url).await {
                            Ok(apps) => (url, apps, Verdict::Found(0)),
                            Err((verdict, e)) => {
                                tracing::debug!(%url, "FindServers failed: {e}");
                                (url, Vec::new(), verdict)
                            }
                        }
                    }
                })
                .buffered(self.concurrency)
                .inspect(|(_, _, verdict)| progress.target(*verdict))
                .collect()
                .await;

        let mut seen = BTreeSet::new();
        let mut candidates = Vec::new();
        for (url, apps, _) in found {
            let answered = select::split_url(&url).map(|(h, _, _)| h.to_string());
            for mut app in apps {
                // Clients and discovery servers are not devices, nor targets; a server listed
                // twice is one target.
                if !select::is_server(&app) || !seen.insert(app.uri.clone()) {
                    continue;
                }
                if let Some(filter) = self.selection.application_dropped_by(&app) {
                    progress.add_targets(1);
                    progress.target(Verdict::Dropped(filter));
                    continue;
                }
                if app.discovery_urls.is_empty() {
                    app.discovery_urls.push(url.clone());
                }
                candidates.push((app, answered.clone()));
            }
        }

        progress.add_targets(candidates.len());
        let described: Vec<Outcome> = futures::stream::iter(candidates)
            .map(|(app, answered)| {
                let (this, resolver) = (self.clone(), resolver.clone());
                async move { this.describe(app, answered.as_deref(), &resolver).await }
            })
            .buffer_unordered(self.concurrency)
            .inspect(|(verdict, _)| progress.target(*verdict))
            .map(|(_, outcome)| outcome)
            .collect()
            .await;
        Snapshot::of(described).with_round(started.elapsed())
    }

    async fn find_servers(&self, url: &str) -> Result<Vec<Application>, (Verdict, String)> {
        let call = self.client.find_servers(url, None, None);
        let servers = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| {
                (
                    Verdict::Silent,
                    format!("no answer within {:?}", self.timeout),
                )
            })?
            .map_err(|e| (failure(&e), e.to_string()))?;
        Ok(servers.iter().map(application).collect())
    }

    async fn get_endpoints(
        &self,
        url: &str,
    ) -> Result<Vec<(Endpoint, EndpointDescription)>, (Verdict, String)> {
        let call = self.client.get_server_endpoints_from_url(url);
        let endpoints = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| {
                (
                    Verdict::Silent,
                    format!("no answer within {:?}", self.timeout),
                )
            })?
            .map_err(|e| (failure(&e), e.to_string()))?;
        Ok(endpoints
            .into_iter()
            .filter_map(|d| Some((endpoint(&d)?, d)))
            .collect())
    }

    /// GetEndpoints on the server's discovery URLs (the first that answers), then the
    /// device if the server offers what the Configuration requires; with the verdict on the
    /// server (the last failure's when none answers).
    async fn describe(
        &self,
        app: Application,
        answered: Option<&str>,
        resolver: &Resolver,
    ) -> (Verdict, Outcome) {
        let mut verdict = Verdict::Silent;
        for reported in app
            .discovery_urls
            .iter()
            .filter(|u| u.starts_with("opc.tcp://"))
        {
            let url = resolver.mend(reported, answered).await;
            let endpoints = match self.get_endpoints(&url).await {
                Ok(e) => e,
                Err((failed, e)) => {
                    tracing::debug!(server = %app.uri, %url, "GetEndpoints failed: {e}");
                    verdict = failed;
                    continue;
                }
            };
            let host = select::split_url(&url).map(|(h, _, _)| h.to_string());
            let mut mended = Vec::with_capacity(endpoints.len());
            let mut raw = Vec::with_capacity(endpoints.len());
            for (mut e, mut d) in endpoints {
                e.url = resolver.mend(&e.url, host.as_deref()).await;
                d.endpoint_url = e.url.clone().into();
                mended.push(e);
                raw.push(d);
            }
            let Some(best) = self.selection.best(&mended) else {
                let verdict = match self.selection.endpoints_dropped_by(&mended) {
                    Some(filter) => Verdict::Dropped(filter),
                    None => Verdict::Failed,
                };
                return (verdict, Outcome::Nothing);
            };
            let device = select::device(&app, &url, &mended, best);
            let Some(credentials) = &self.credentials else {
                return (Verdict::Found(1), Outcome::Device(device));
            };
            let offered: Vec<_> = mended
                .iter()
                .cloned()
                .zip(raw.iter().map(session::user_tokens))
                .collect();
            let chosen = match select::session_endpoint(&offered, &credentials.session) {
                Ok(i) => raw.swap_remove(i),
                Err(why) => {
                    let problem = format!("{} at {url} {why}", app.uri);
                    return (Verdict::Failed, Outcome::Problem(problem));
                }
            };
            return match session::read_nameplate(&self.client, credentials, chosen, self.timeout)
                .await
            {
                Ok(nameplate) => match self.selection.nameplate_dropped_by(&nameplate) {
                    None => (
                        Verdict::Found(1),
                        Outcome::Device(select::with_nameplate(device, &nameplate)),
                    ),
                    Some(filter) => (Verdict::Dropped(filter), Outcome::Nothing),
                },
                Err(why) => (
                    Verdict::Failed,
                    Outcome::Problem(format!("{} at {url}: {why}", app.uri)),
                ),
            };
        }
        (verdict, Outcome::Nothing)
    }
}

/// Host names in URLs that servers report are checked once per round; one that does not
/// resolve from this node is replaced by the host that answered.
struct Resolver {
    timeout: Duration,
    known: Mutex<HashMap<String, bool>>,
}

impl Resolver {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            known: Mutex::new(HashMap::new()),
        }
    }

    async fn resolves(&self, host: &str, port: u16) -> bool {
        if select::is_ip_literal(host) {
            return true;
        }
        if let Some(known) = self.known.lock().expect("resolver cache").get(host) {
            return *known;
        }
        let lookup = tokio::net::lookup_host((host, port));
        let ok = match tokio::time::timeout(self.timeout, lookup).await {
            Ok(Ok(mut addrs)) => addrs.next().is_some(),
            _ => false,
        };
        self.known
            .lock()
            .expect("resolver cache")
            .insert(host.to_string(), ok);
        ok
    }

    async fn mend(&self, url: &str, answered: Option<&str>) -> String {
        match (select::split_url(url), answered) {
            (Some((host, port, _)), Some(answered)) if host != answered => {
                if self.resolves(host, port).await {
                    url.to_string()
                } else {
                    select::with_host(url, answered)
                }
            }
            _ => url.to_string(),
        }
    }
}

/// The verdict on a target whose request failed: silent when no connection could be made
/// (the client's TCP connect error, `BadCommunicationError` "Could not connect to host" in
/// async-opcua-client's `transport/tcp.rs`); failed when something answered but not as an
/// OPC UA server does (a broken message, a rejected hello, a service fault).
fn failure(e: &opcua::types::Error) -> Verdict {
    let not_connected = e.status() == opcua::types::StatusCode::BadCommunicationError
        && e.to_string().contains("Could not connect");
    if not_connected {
        Verdict::Silent
    } else {
        Verdict::Failed
    }
}

fn text(s: &opcua::types::UAString) -> String {
    s.value().clone().unwrap_or_default()
}

fn application(d: &ApplicationDescription) -> Application {
    Application {
        uri: text(&d.application_uri),
        name: text(&d.application_name.text),
        product_uri: text(&d.product_uri),
        kind: match d.application_type {
            ApplicationType::Server => ApplicationKind::Server,
            ApplicationType::Client => ApplicationKind::Client,
            ApplicationType::ClientAndServer => ApplicationKind::ClientAndServer,
            ApplicationType::DiscoveryServer => ApplicationKind::DiscoveryServer,
        },
        discovery_urls: d
            .discovery_urls
            .iter()
            .flatten()
            .map(text)
            .filter(|u| !u.is_empty())
            .collect(),
    }
}

fn endpoint(d: &EndpointDescription) -> Option<Endpoint> {
    let mode = match d.security_mode {
        MessageSecurityMode::None => SecurityMode::None,
        MessageSecurityMode::Sign => SecurityMode::Sign,
        MessageSecurityMode::SignAndEncrypt => SecurityMode::SignAndEncrypt,
        MessageSecurityMode::Invalid => return None,
    };
    Some(Endpoint {
        url: text(&d.endpoint_url),
        policy_uri: text(&d.security_policy_uri),
        mode,
        level: d.security_level,
    })
}

/// One round with a fresh scanner (for `dowser discover` and tests).
pub async fn scan(
    details: &OpcuaDetails,
    properties: &Properties,
) -> Result<Snapshot, DiscoveryError> {
    Ok(Arc::new(Scanner::new(details, properties)?).round().await)
}
