//! `spec.discovery.opcua`: OPC UA servers found through FindServers and GetEndpoints.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::defaults::u32_of;
use crate::{FieldError, Filter, validation::Rule, validation::add_rules};

const OPCUA_RULES: &[Rule] = &[
    Rule::new(
        "self.discoveryUrls.all(u, u.startsWith('opc.tcp://') && size(u) > 10)",
        "every discovery URL must be an opc.tcp:// URL with a host, such as opc.tcp://10.0.7.3:4840/",
    )
    .at(".discoveryUrls"),
    Rule::new(
        "has(self.session) || (!has(self.manufacturerNames) && !has(self.productNames))",
        "manufacturerNames and productNames are read in a session: set session to filter on them",
    ),
];

const SESSION_RULES: &[Rule] = &[Rule::new(
    "(self.securityPolicy == 'None') == (self.securityMode == 'None')",
    "securityPolicy None goes with securityMode None, and a secure policy with Sign or SignAndEncrypt",
)];

fn session_rules(schema: &mut schemars::Schema) {
    add_rules(schema, SESSION_RULES);
}

fn opcua_rules(schema: &mut schemars::Schema) {
    add_rules(schema, OPCUA_RULES);
}

/// OPC UA servers. Each discovery URL may be a server or a discovery server (LDS) that lists
/// several servers; every server found is described with GetEndpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = opcua_rules)]
pub struct OpcuaDetails {
    /// URLs on which FindServers is called, such as `opc.tcp://10.0.7.3:4840/` or the URL of
    /// a local discovery server (`opc.tcp://lds.plant.local:4840`).
    #[schemars(length(min = 1, max = 64), inner(length(min = 11, max = 512)))]
    pub discovery_urls: Vec<String>,
    /// Keeps servers by ApplicationName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_names: Option<Filter>,
    /// Keeps servers by ApplicationUri.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_uris: Option<Filter>,
    /// Keeps servers by ProductUri.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_uris: Option<Filter>,
    /// Keeps only servers that offer an endpoint with this security policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_policy: Option<SecurityPolicy>,
    /// Keeps only servers that offer an endpoint with this message security mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_mode: Option<SecurityMode>,
    /// Opens a session to every server found, with the security and user identity given
    /// here, and reads its nameplate (`ServerStatus.BuildInfo`: manufacturer, product,
    /// software version, build number) into the broker's environment and the filters below.
    /// A server that refuses the session (wrong credentials, an untrusted certificate) is not
    /// a device and is named in the Configuration's `status.nodes[].problems`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<OpcuaSession>,
    /// Keeps servers by `BuildInfo.ManufacturerName` (needs `session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer_names: Option<Filter>,
    /// Keeps servers by `BuildInfo.ProductName` (needs `session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_names: Option<Filter>,
    /// Which endpoint becomes `OPCUA_ENDPOINT_URL` when a server offers several.
    #[serde(default)]
    pub endpoint_preference: EndpointPreference,
    /// How long a connection and each service call may take, in milliseconds.
    #[serde(default = "u32_of::<2000>")]
    #[schemars(range(min = 100, max = 60000))]
    pub timeout_ms: u32,
    /// How many servers are queried at the same time.
    #[serde(default = "u32_of::<8>")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: u32,
    /// Seconds between two discovery rounds.
    #[serde(default = "u32_of::<30>")]
    #[schemars(range(min = 1, max = 86400))]
    pub interval_seconds: u32,
}

/// The session in which a server's nameplate is read.
///
/// Credentials and certificates come from the Configuration's `properties` (literals, or
/// keys of Secrets in its namespace; a changed Secret takes effect on the next round):
/// `USERNAME` and `PASSWORD` for `userIdentity: UserName`; `OPCUA_USER_CERTIFICATE` and
/// `OPCUA_USER_PRIVATE_KEY` (PEM) for `userIdentity: Certificate`; `OPCUA_CLIENT_CERTIFICATE`
/// and `OPCUA_CLIENT_PRIVATE_KEY` (PEM: the application instance certificate that signs and
/// encrypts the channel) for any policy but None; and optionally
/// `OPCUA_TRUSTED_SERVER_CERTIFICATES` (PEM, one or more): the server certificates trusted.
/// Without a trust list any server certificate is accepted, so the channel is encrypted but
/// the server is not authenticated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = session_rules)]
pub struct OpcuaSession {
    /// The security policy of the channel the session runs on.
    #[serde(default = "no_policy")]
    pub security_policy: SecurityPolicy,
    /// The message security mode of that channel.
    #[serde(default = "no_mode")]
    pub security_mode: SecurityMode,
    /// Who the session is opened as.
    #[serde(default)]
    pub user_identity: UserIdentity,
}

fn no_policy() -> SecurityPolicy {
    SecurityPolicy::None
}

fn no_mode() -> SecurityMode {
    SecurityMode::None
}

/// The user identity of a session (Part 4, 7.41).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum UserIdentity {
    /// No user.
    #[default]
    Anonymous,
    /// `USERNAME` and `PASSWORD` from the properties.
    UserName,
    /// An X.509 user certificate: `OPCUA_USER_CERTIFICATE` and `OPCUA_USER_PRIVATE_KEY` from
    /// the properties.
    Certificate,
}

/// OPC UA security policies (Part 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SecurityPolicy {
    None,
    Basic128Rsa15,
    Basic256,
    Basic256Sha256,
    #[serde(rename = "Aes128_Sha256_RsaOaep")]
    Aes128Sha256RsaOaep,
    #[serde(rename = "Aes256_Sha256_RsaPss")]
    Aes256Sha256RsaPss,
}

/// OPC UA message security modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SecurityMode {
    None,
    Sign,
    SignAndEncrypt,
}

/// How the endpoint handed to brokers is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EndpointPreference {
    /// The endpoint with the highest security level the server reports.
    #[default]
    MostSecure,
    /// The endpoint with the lowest security level (for brokers without certificates).
    LeastSecure,
}

impl super::HandlerDetails for OpcuaDetails {
    fn shared(&self) -> bool {
        // A server is reachable from every node on its network.
        true
    }
}

impl OpcuaDetails {
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        crate::filter::validate_all(
            path,
            &[
                ("applicationNames", &self.application_names),
                ("applicationUris", &self.application_uris),
                ("productUris", &self.product_uris),
                ("manufacturerNames", &self.manufacturer_names),
                ("productNames", &self.product_names),
            ],
        )
    }
}
