//! `spec.discovery.opcua`: OPC UA servers found through FindServers and GetEndpoints.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::defaults::u32_of;
use crate::{FieldError, Filter, validation::Rule, validation::add_rules};

const OPCUA_RULES: &[Rule] = &[Rule::new(
    "self.discoveryUrls.all(u, u.startsWith('opc.tcp://') && size(u) > 10)",
    "every discovery URL must be an opc.tcp:// URL with a host, such as opc.tcp://10.0.7.3:4840/",
)
.at(".discoveryUrls")];

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
            ],
        )
    }
}
