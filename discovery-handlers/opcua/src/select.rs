//! What becomes a device, decided from what servers reported: which servers are kept, which
//! endpoint a broker is given, and how URLs with host names the node cannot resolve are mended.
//! No I/O here.

use std::collections::BTreeMap;

use dowser_discovery_api::{
    CompiledFilter, Device,
    details::opcua::{
        EndpointPreference, OpcuaSession, SecurityMode, SecurityPolicy, UserIdentity,
    },
    env::printable_value,
};

/// `ApplicationType` of an ApplicationDescription (Part 4, 7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplicationKind {
    Server,
    Client,
    ClientAndServer,
    DiscoveryServer,
}

impl ApplicationKind {
    /// Only servers become devices: clients have nothing to connect to, and a discovery
    /// server is the directory, not a device.
    pub fn is_device(self) -> bool {
        matches!(self, Self::Server | Self::ClientAndServer)
    }
}

/// A server as FindServers described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Application {
    pub uri: String,
    pub name: String,
    pub product_uri: String,
    pub kind: ApplicationKind,
    pub discovery_urls: Vec<String>,
}

/// An endpoint as GetEndpoints described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    /// Full security policy URI (`http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256`).
    pub policy_uri: String,
    pub mode: SecurityMode,
    /// The server's own ranking of its endpoints (higher is more secure).
    pub level: u8,
}

/// Longest value handed to a broker (names and URLs from the wire are bounded).
const MAX_VALUE_BYTES: usize = 1024;

const POLICY_PREFIX: &str = "http://opcfoundation.org/UA/SecurityPolicy#";

/// The policy name of a URI (`Basic256Sha256`), or the URI itself when it is not a standard one.
pub fn policy_name(uri: &str) -> &str {
    uri.strip_prefix(POLICY_PREFIX).unwrap_or(uri)
}

pub fn policy_name_of(policy: SecurityPolicy) -> &'static str {
    match policy {
        SecurityPolicy::None => "None",
        SecurityPolicy::Basic128Rsa15 => "Basic128Rsa15",
        SecurityPolicy::Basic256 => "Basic256",
        SecurityPolicy::Basic256Sha256 => "Basic256Sha256",
        SecurityPolicy::Aes128Sha256RsaOaep => "Aes128_Sha256_RsaOaep",
        SecurityPolicy::Aes256Sha256RsaPss => "Aes256_Sha256_RsaPss",
    }
}

pub fn mode_name(mode: SecurityMode) -> &'static str {
    match mode {
        SecurityMode::None => "None",
        SecurityMode::Sign => "Sign",
        SecurityMode::SignAndEncrypt => "SignAndEncrypt",
    }
}

fn mode_rank(mode: SecurityMode) -> u8 {
    match mode {
        SecurityMode::None => 0,
        SecurityMode::Sign => 1,
        SecurityMode::SignAndEncrypt => 2,
    }
}

/// Whether an application is a server a device can be (not a client, not a discovery server
/// that lists others), with the URI a device is named by.
pub fn is_server(app: &Application) -> bool {
    app.kind.is_device() && !app.uri.is_empty()
}

/// The filters of a Configuration, compiled once.
#[derive(Debug, Default)]
pub struct Selection {
    pub names: CompiledFilter,
    pub uris: CompiledFilter,
    pub product_uris: CompiledFilter,
    pub policy: Option<SecurityPolicy>,
    pub mode: Option<SecurityMode>,
    pub preference: EndpointPreference,
    pub manufacturers: CompiledFilter,
    pub products: CompiledFilter,
}

impl Selection {
    /// Whether a server passes the filters that FindServers alone can decide.
    pub fn keeps_application(&self, app: &Application) -> bool {
        is_server(app) && self.application_dropped_by(app).is_none()
    }

    /// The details' field of the first filter on FindServers' description that leaves a
    /// server out; `None` when every one keeps it.
    pub fn application_dropped_by(&self, app: &Application) -> Option<&'static str> {
        if !self.names.accepts(Some(&app.name)) {
            Some("applicationNames")
        } else if !self.uris.accepts(Some(&app.uri)) {
            Some("applicationUris")
        } else if !self.product_uris.accepts(Some(&app.product_uri)) {
            Some("productUris")
        } else {
            None
        }
    }

    /// Whether a server's nameplate passes the filters on it.
    pub fn keeps_nameplate(&self, nameplate: &Nameplate) -> bool {
        self.nameplate_dropped_by(nameplate).is_none()
    }

    /// The details' field of the first filter on the nameplate that leaves a server out.
    pub fn nameplate_dropped_by(&self, nameplate: &Nameplate) -> Option<&'static str> {
        if !self.manufacturers.accepts(Some(&nameplate.manufacturer)) {
            Some("manufacturerNames")
        } else if !self.products.accepts(Some(&nameplate.product)) {
            Some("productNames")
        } else {
            None
        }
    }

    /// Why no endpoint of a server is acceptable ([`Selection::best`] found none): the
    /// details' field that none offers, or `None` when the server offers no `opc.tcp`
    /// endpoint at all.
    pub fn endpoints_dropped_by(&self, endpoints: &[Endpoint]) -> Option<&'static str> {
        let tcp: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| e.url.starts_with("opc.tcp://"))
            .collect();
        if tcp.is_empty() {
            return None;
        }
        let policy_ok = |e: &&&Endpoint| {
            self.policy
                .is_none_or(|p| policy_name(&e.policy_uri) == policy_name_of(p))
        };
        if !tcp.iter().any(|e| policy_ok(&e)) {
            Some("securityPolicy")
        } else {
            Some("securityMode")
        }
    }

    /// Whether an endpoint offers the required security policy and mode.
    pub fn accepts(&self, endpoint: &Endpoint) -> bool {
        self.policy
            .is_none_or(|p| policy_name(&endpoint.policy_uri) == policy_name_of(p))
            && self.mode.is_none_or(|m| endpoint.mode == m)
            && endpoint.url.starts_with("opc.tcp://")
    }

    /// The endpoint handed to brokers: among the acceptable ones, the most (or least) secure
    /// by the server's security level, then by mode; ties are broken by URL and policy so that
    /// the choice is the same every round. None when no endpoint is acceptable (the server is
    /// not kept).
    pub fn best<'a>(&self, endpoints: &'a [Endpoint]) -> Option<&'a Endpoint> {
        let key = |e: &&Endpoint| (e.level, mode_rank(e.mode));
        let acceptable = endpoints.iter().filter(|e| self.accepts(e));
        let tie =
            |a: &&Endpoint, b: &&Endpoint| (&b.url, &b.policy_uri).cmp(&(&a.url, &a.policy_uri));
        match self.preference {
            EndpointPreference::MostSecure => {
                acceptable.max_by(|a, b| key(a).cmp(&key(b)).then_with(|| tie(a, b)))
            }
            EndpointPreference::LeastSecure => {
                acceptable.min_by(|a, b| key(a).cmp(&key(b)).then_with(|| tie(b, a)))
            }
        }
    }
}

/// What a server says of itself in `Server.ServerStatus.BuildInfo` (Part 5, 12.4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nameplate {
    pub manufacturer: String,
    pub product: String,
    pub software_version: String,
    pub build_number: String,
}

/// The endpoint a session is opened on: the one with the session's policy and mode that
/// takes the session's kind of user token (the first such, in the server's order). The error
/// says what the server offers instead, for the Configuration's status.
pub fn session_endpoint(
    endpoints: &[(Endpoint, Vec<UserIdentity>)],
    session: &OpcuaSession,
) -> Result<usize, String> {
    let policy = policy_name_of(session.security_policy);
    let secured: Vec<usize> = (0..endpoints.len())
        .filter(|&i| {
            let (e, _) = &endpoints[i];
            policy_name(&e.policy_uri) == policy
                && e.mode == session.security_mode
                && e.url.starts_with("opc.tcp://")
        })
        .collect();
    if secured.is_empty() {
        let mut offered: Vec<String> = endpoints
            .iter()
            .map(|(e, _)| format!("{}/{}", policy_name(&e.policy_uri), mode_name(e.mode)))
            .collect();
        offered.sort();
        offered.dedup();
        return Err(format!(
            "offers no endpoint with security {policy}/{} (it offers {})",
            mode_name(session.security_mode),
            if offered.is_empty() {
                "none".to_string()
            } else {
                offered.join(", ")
            }
        ));
    }
    secured
        .iter()
        .copied()
        .find(|&i| endpoints[i].1.contains(&session.user_identity))
        .ok_or_else(|| {
            format!(
                "takes no {} user token on its {policy}/{} endpoint",
                identity_name(session.user_identity),
                mode_name(session.security_mode)
            )
        })
}

pub fn identity_name(identity: UserIdentity) -> &'static str {
    match identity {
        UserIdentity::Anonymous => "Anonymous",
        UserIdentity::UserName => "UserName",
        UserIdentity::Certificate => "Certificate",
    }
}

/// Adds a server's nameplate to its device's environment.
pub fn with_nameplate(mut device: Device, nameplate: &Nameplate) -> Device {
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            device
                .properties
                .insert(k.to_string(), printable_value(v, MAX_VALUE_BYTES));
        }
    };
    put("OPCUA_MANUFACTURER_NAME", &nameplate.manufacturer);
    put("OPCUA_PRODUCT_NAME", &nameplate.product);
    put("OPCUA_SOFTWARE_VERSION", &nameplate.software_version);
    put("OPCUA_BUILD_NUMBER", &nameplate.build_number);
    device
}

/// Splits `opc.tcp://host:port/path` into (host, port, rest-with-leading-slash). The host of
/// an IPv6 literal keeps its brackets. None for what is not an opc.tcp URL.
pub fn split_url(url: &str) -> Option<(&str, u16, &str)> {
    let rest = url.strip_prefix("opc.tcp://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let port = match &authority[end + 1..] {
            "" => 4840,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (&authority[..=end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, 4840),
        }
    };
    (!host.is_empty()).then_some((host, port, path))
}

/// Whether a URL host is an IP address literal (resolution is then not needed).
pub fn is_ip_literal(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok()
}

/// `url` with its host replaced by `host` (the port and path are kept).
pub fn with_host(url: &str, host: &str) -> String {
    match split_url(url) {
        Some((_, port, path)) => format!("opc.tcp://{host}:{port}{path}"),
        None => url.to_string(),
    }
}

/// Builds the device of a kept server.
pub fn device(
    app: &Application,
    discovery_url: &str,
    endpoints: &[Endpoint],
    best: &Endpoint,
) -> Device {
    let mut policies: Vec<&str> = endpoints
        .iter()
        .map(|e| policy_name(&e.policy_uri))
        .collect();
    policies.sort_unstable();
    policies.dedup();
    let mut properties = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        properties.insert(k.to_string(), printable_value(v, MAX_VALUE_BYTES));
    };
    put("OPCUA_APPLICATION_URI", &app.uri);
    put("OPCUA_APPLICATION_NAME", &app.name);
    put("OPCUA_PRODUCT_URI", &app.product_uri);
    put("OPCUA_DISCOVERY_URL", discovery_url);
    put("OPCUA_ENDPOINT_URL", &best.url);
    put("OPCUA_SECURITY_POLICY", policy_name(&best.policy_uri));
    put("OPCUA_SECURITY_MODE", mode_name(best.mode));
    put("OPCUA_SECURITY_POLICIES", &policies.join(","));
    Device {
        id: app.uri.clone(),
        properties,
        device_specs: Vec::new(),
        mounts: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dowser_discovery_api::Filter;

    fn ep(url: &str, policy: &str, mode: SecurityMode, level: u8) -> Endpoint {
        Endpoint {
            url: url.into(),
            policy_uri: format!("{POLICY_PREFIX}{policy}"),
            mode,
            level,
        }
    }

    fn app(uri: &str, kind: ApplicationKind) -> Application {
        Application {
            uri: uri.into(),
            name: "Press 1".into(),
            product_uri: "urn:acme:press".into(),
            kind,
            discovery_urls: vec!["opc.tcp://press-1:4840/".into()],
        }
    }

    fn endpoints() -> Vec<Endpoint> {
        vec![
            ep("opc.tcp://p:4840/", "None", SecurityMode::None, 0),
            ep("opc.tcp://p:4840/", "Basic256Sha256", SecurityMode::Sign, 4),
            ep(
                "opc.tcp://p:4840/",
                "Basic256Sha256",
                SecurityMode::SignAndEncrypt,
                14,
            ),
            ep(
                "opc.tcp://p:4840/",
                "Aes128_Sha256_RsaOaep",
                SecurityMode::SignAndEncrypt,
                12,
            ),
        ]
    }

    #[test]
    fn a_session_goes_to_the_endpoint_with_its_security_and_token() {
        let session = |policy, mode, user_identity| OpcuaSession {
            security_policy: policy,
            security_mode: mode,
            user_identity,
        };
        let offered: Vec<_> = endpoints()
            .into_iter()
            .map(|e| {
                let tokens = if e.mode == SecurityMode::None {
                    vec![UserIdentity::Anonymous]
                } else {
                    vec![UserIdentity::UserName, UserIdentity::Certificate]
                };
                (e, tokens)
            })
            .collect();
        let secure = session(
            SecurityPolicy::Basic256Sha256,
            SecurityMode::SignAndEncrypt,
            UserIdentity::UserName,
        );
        assert_eq!(session_endpoint(&offered, &secure), Ok(2));
        let open = session(
            SecurityPolicy::None,
            SecurityMode::None,
            UserIdentity::UserName,
        );
        assert_eq!(
            session_endpoint(&offered, &open).unwrap_err(),
            "takes no UserName user token on its None/None endpoint"
        );
        let absent = session(
            SecurityPolicy::Aes256Sha256RsaPss,
            SecurityMode::Sign,
            UserIdentity::Anonymous,
        );
        assert_eq!(
            session_endpoint(&offered, &absent).unwrap_err(),
            "offers no endpoint with security Aes256_Sha256_RsaPss/Sign (it offers \
             Aes128_Sha256_RsaOaep/SignAndEncrypt, Basic256Sha256/Sign, \
             Basic256Sha256/SignAndEncrypt, None/None)"
        );
    }

    #[test]
    fn the_nameplate_is_added_and_filtered() {
        let plate = Nameplate {
            manufacturer: "ACME Automation".into(),
            product: "Filler PLC".into(),
            software_version: "4.2.1".into(),
            build_number: String::new(),
        };
        let e = endpoints();
        let d = with_nameplate(
            device(
                &app("urn:a", ApplicationKind::Server),
                "opc.tcp://p:4840/",
                &e,
                &e[0],
            ),
            &plate,
        );
        assert_eq!(d.properties["OPCUA_MANUFACTURER_NAME"], "ACME Automation");
        assert!(!d.properties.contains_key("OPCUA_BUILD_NUMBER"));
        let only = |f: serde_json::Value| Selection {
            manufacturers: serde_json::from_value::<Filter>(f)
                .unwrap()
                .compile()
                .unwrap(),
            ..Selection::default()
        };
        assert!(only(serde_json::json!({"include": ["ACME.*"]})).keeps_nameplate(&plate));
        assert!(!only(serde_json::json!({"exclude": ["ACME.*"]})).keeps_nameplate(&plate));
    }

    #[test]
    fn the_most_secure_endpoint_is_chosen_by_the_servers_level() {
        let s = Selection::default();
        let e = endpoints();
        let best = s.best(&e).unwrap();
        assert_eq!(policy_name(&best.policy_uri), "Basic256Sha256");
        assert_eq!(best.mode, SecurityMode::SignAndEncrypt);
    }

    #[test]
    fn least_secure_gives_brokers_without_certificates_the_open_endpoint() {
        let s = Selection {
            preference: EndpointPreference::LeastSecure,
            ..Selection::default()
        };
        assert_eq!(s.best(&endpoints()).unwrap().mode, SecurityMode::None);
    }

    #[test]
    fn a_required_policy_and_mode_limit_the_choice_and_drop_servers_without_them() {
        let s = Selection {
            policy: Some(SecurityPolicy::Aes128Sha256RsaOaep),
            mode: Some(SecurityMode::SignAndEncrypt),
            ..Selection::default()
        };
        assert_eq!(
            policy_name(&s.best(&endpoints()).unwrap().policy_uri),
            "Aes128_Sha256_RsaOaep"
        );
        let only_open = vec![ep("opc.tcp://p:4840/", "None", SecurityMode::None, 0)];
        assert!(s.best(&only_open).is_none());
        let sign_only = Selection {
            mode: Some(SecurityMode::Sign),
            ..Selection::default()
        };
        assert_eq!(sign_only.best(&endpoints()).unwrap().level, 4);
    }

    #[test]
    fn the_choice_does_not_depend_on_the_order_endpoints_arrive_in() {
        let s = Selection::default();
        let mut e = endpoints();
        e.push(ep(
            "opc.tcp://q:4840/",
            "Basic256Sha256",
            SecurityMode::SignAndEncrypt,
            14,
        ));
        let forward = s.best(&e).unwrap().clone();
        e.reverse();
        assert_eq!(s.best(&e).unwrap(), &forward);
    }

    #[test]
    fn endpoints_that_are_not_opc_tcp_are_never_handed_out() {
        let s = Selection::default();
        let e = vec![ep(
            "https://p:443/",
            "Basic256Sha256",
            SecurityMode::SignAndEncrypt,
            20,
        )];
        assert!(s.best(&e).is_none());
    }

    #[test]
    fn only_servers_become_devices() {
        let s = Selection::default();
        assert!(s.keeps_application(&app("urn:a", ApplicationKind::Server)));
        assert!(s.keeps_application(&app("urn:a", ApplicationKind::ClientAndServer)));
        assert!(!s.keeps_application(&app("urn:a", ApplicationKind::Client)));
        assert!(!s.keeps_application(&app("urn:a", ApplicationKind::DiscoveryServer)));
        assert!(!s.keeps_application(&app("", ApplicationKind::Server)));
    }

    #[test]
    fn name_uri_and_product_filters_apply() {
        let f = |inc: &[&str], exc: &[&str]| {
            Filter {
                include: inc.iter().map(|s| s.to_string()).collect(),
                exclude: exc.iter().map(|s| s.to_string()).collect(),
            }
            .compile()
            .unwrap()
        };
        let a = app("urn:plant:press-1", ApplicationKind::Server);
        let by_name = Selection {
            names: f(&["Press .*"], &[]),
            ..Selection::default()
        };
        assert!(by_name.keeps_application(&a));
        let excluded = Selection {
            uris: f(&[], &["urn:plant:press-.*"]),
            ..Selection::default()
        };
        assert!(!excluded.keeps_application(&a));
        let product = Selection {
            product_uris: f(&["urn:other:.*"], &[]),
            ..Selection::default()
        };
        assert!(!product.keeps_application(&a));
    }

    #[test]
    fn urls_are_split_and_their_host_replaced() {
        assert_eq!(
            split_url("opc.tcp://press-1:4841/UA/Server"),
            Some(("press-1", 4841, "/UA/Server"))
        );
        assert_eq!(split_url("opc.tcp://press-1"), Some(("press-1", 4840, "")));
        assert_eq!(
            split_url("opc.tcp://[fd00::7]:4840/"),
            Some(("[fd00::7]", 4840, "/"))
        );
        assert_eq!(split_url("http://x/"), None);
        assert_eq!(split_url("opc.tcp://:4840/"), None);
        assert_eq!(
            with_host("opc.tcp://press-1.local:4841/UA", "10.0.7.3"),
            "opc.tcp://10.0.7.3:4841/UA"
        );
        assert!(
            is_ip_literal("10.0.7.3") && is_ip_literal("[fd00::7]") && !is_ip_literal("press-1")
        );
    }

    #[test]
    fn the_device_is_named_by_application_uri_and_carries_what_a_broker_needs() {
        let a = app("urn:plant:press-1", ApplicationKind::Server);
        let e = endpoints();
        let s = Selection::default();
        let d = device(&a, "opc.tcp://10.0.7.3:4840/", &e, s.best(&e).unwrap());
        assert_eq!(d.id, "urn:plant:press-1");
        let p = &d.properties;
        assert_eq!(p["OPCUA_ENDPOINT_URL"], "opc.tcp://p:4840/");
        assert_eq!(p["OPCUA_SECURITY_POLICY"], "Basic256Sha256");
        assert_eq!(p["OPCUA_SECURITY_MODE"], "SignAndEncrypt");
        assert_eq!(
            p["OPCUA_SECURITY_POLICIES"],
            "Aes128_Sha256_RsaOaep,Basic256Sha256,None"
        );
        assert_eq!(p["OPCUA_DISCOVERY_URL"], "opc.tcp://10.0.7.3:4840/");
        assert_eq!(p["OPCUA_APPLICATION_NAME"], "Press 1");
    }

    #[test]
    fn values_from_the_wire_are_bounded_and_printable() {
        let mut a = app("urn:x", ApplicationKind::Server);
        a.name = format!("bad\nname{}", "é".repeat(2000));
        let e = endpoints();
        let d = device(&a, "opc.tcp://x/", &e, &e[0]);
        let name = &d.properties["OPCUA_APPLICATION_NAME"];
        assert!(name.len() <= 1024 && !name.contains('\n'));
    }
}
