//! Sessions in which a server's nameplate is read: the credentials from the Configuration's
//! properties, the client's private certificate store, and one short session per server and
//! round. Decisions (which endpoint, what is kept) are in [`crate::select`].

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use dowser_discovery_api::{
    DiscoveryError, Properties,
    details::opcua::{OpcuaSession, SecurityPolicy, UserIdentity},
};
use opcua::{
    client::{Client, IdentityToken},
    crypto::{PrivateKey, X509},
    types::{
        AttributeId, DataValue, EndpointDescription, ReadValueId, StatusCode, TimestampsToReturn,
        UserTokenType, VariableId, Variant,
    },
};

use crate::select::Nameplate;

/// The application instance certificate (PEM) that signs and encrypts a secure channel.
pub const CLIENT_CERTIFICATE: &str = "OPCUA_CLIENT_CERTIFICATE";
/// Its private key (PEM).
pub const CLIENT_PRIVATE_KEY: &str = "OPCUA_CLIENT_PRIVATE_KEY";
/// A user certificate (PEM) for `userIdentity: Certificate`.
pub const USER_CERTIFICATE: &str = "OPCUA_USER_CERTIFICATE";
/// Its private key (PEM).
pub const USER_PRIVATE_KEY: &str = "OPCUA_USER_PRIVATE_KEY";
/// The server certificates trusted (PEM, one or more); without it any is accepted.
pub const TRUSTED_SERVER_CERTIFICATES: &str = "OPCUA_TRUSTED_SERVER_CERTIFICATES";

/// What a Configuration's session needs, read from its properties once per handler start
/// (a changed Secret starts the handler again).
pub struct Credentials {
    pub session: OpcuaSession,
    identity: IdentityToken,
    /// Whether a trust list was given (else any server certificate is accepted).
    pub trust_list: bool,
    /// The client's own certificate store, removed when the handler stops.
    pki: Option<PkiDir>,
}

impl Credentials {
    /// Reads and checks the credentials; the error names the property to fix and never shows
    /// a value.
    pub fn new(session: &OpcuaSession, properties: &Properties) -> Result<Self, DiscoveryError> {
        let identity = match session.user_identity {
            UserIdentity::Anonymous => IdentityToken::Anonymous,
            UserIdentity::UserName => {
                let login = properties.user_password()?.ok_or_else(|| {
                    DiscoveryError::Unavailable(
                        "userIdentity UserName needs the properties USERNAME and PASSWORD: add \
                         them to the Configuration's spec.properties"
                            .into(),
                    )
                })?;
                IdentityToken::new_user_name(login.username, login.password)
            }
            UserIdentity::Certificate => IdentityToken::new_x509(
                certificate(properties, USER_CERTIFICATE)?,
                private_key(properties, USER_PRIVATE_KEY)?,
            ),
        };
        let trusted = match properties.get(TRUSTED_SERVER_CERTIFICATES) {
            Some(pem) => certificates(pem, TRUSTED_SERVER_CERTIFICATES)?,
            None => Vec::new(),
        };
        let secure = session.security_policy != SecurityPolicy::None;
        let own = if secure {
            Some((
                certificate(properties, CLIENT_CERTIFICATE)?,
                properties.require(CLIENT_PRIVATE_KEY)?.to_string(),
            ))
        } else {
            None
        };
        if let Some((_, key)) = &own {
            // Checked here so that the error names the property.
            parse_key(key, CLIENT_PRIVATE_KEY)?;
        }
        let pki = if secure || !trusted.is_empty() {
            Some(PkiDir::create(own.as_ref(), &trusted).map_err(|e| {
                DiscoveryError::Failed(format!("cannot write the OPC UA certificate store: {e}"))
            })?)
        } else {
            None
        };
        Ok(Self {
            session: session.clone(),
            identity,
            trust_list: !trusted.is_empty(),
            pki,
        })
    }

    /// The certificate store directory the client must use, when there is one.
    pub fn pki_dir(&self) -> Option<&Path> {
        self.pki.as_ref().map(|p| p.0.as_path())
    }
}

/// The kinds of user token an endpoint takes.
pub fn user_tokens(endpoint: &EndpointDescription) -> Vec<UserIdentity> {
    endpoint
        .user_identity_tokens
        .iter()
        .flatten()
        .filter_map(|t| match t.token_type {
            UserTokenType::Anonymous => Some(UserIdentity::Anonymous),
            UserTokenType::UserName => Some(UserIdentity::UserName),
            UserTokenType::Certificate => Some(UserIdentity::Certificate),
            UserTokenType::IssuedToken => None,
        })
        .collect()
}

/// Opens a session on `endpoint`, reads the nameplate and closes the session, all within
/// `timeout`. The error is what the Configuration's status shows for the server.
pub async fn read_nameplate(
    client: &Client,
    credentials: &Credentials,
    endpoint: EndpointDescription,
    timeout: Duration,
) -> Result<Nameplate, String> {
    let (session, event_loop) = client
        .session_builder()
        .connect_to_endpoint_directly(endpoint)
        .map_err(|e| format!("cannot open a session: {e}"))?
        .user_identity_token(credentials.identity.clone())
        .build(client.certificate_store().clone())
        .map_err(|e| format!("cannot open a session: {e}"))?;
    // The event loop ends when the connection fails (no retries are configured); waiting for
    // the connection alone would then never end.
    let mut running = event_loop.spawn();
    let result = tokio::select! {
        connected = session.wait_for_connection() => {
            if connected {
                read(&session, timeout).await
            } else {
                Err("the session was closed while opening".to_string())
            }
        }
        ended = &mut running => {
            return Err(refused(ended.unwrap_or(StatusCode::BadUnexpectedError)));
        }
        () = tokio::time::sleep(timeout) => {
            running.abort();
            return Err(format!("no session within {timeout:?}"));
        }
    };
    let _ = tokio::time::timeout(timeout, session.disconnect()).await;
    running.abort();
    result
}

async fn read(session: &opcua::client::Session, timeout: Duration) -> Result<Nameplate, String> {
    let ids = [
        VariableId::Server_ServerStatus_BuildInfo_ManufacturerName,
        VariableId::Server_ServerStatus_BuildInfo_ProductName,
        VariableId::Server_ServerStatus_BuildInfo_SoftwareVersion,
        VariableId::Server_ServerStatus_BuildInfo_BuildNumber,
    ];
    let nodes: Vec<ReadValueId> = ids
        .iter()
        .map(|&id| ReadValueId {
            node_id: id.into(),
            attribute_id: AttributeId::Value as u32,
            ..Default::default()
        })
        .collect();
    let values = tokio::time::timeout(
        timeout,
        session.read(&nodes, TimestampsToReturn::Neither, 0.0),
    )
    .await
    .map_err(|_| format!("reading BuildInfo took longer than {timeout:?}"))?
    .map_err(|e| format!("cannot read BuildInfo: {e}"))?;
    let text = |i: usize| values.get(i).map(string).unwrap_or_default();
    Ok(Nameplate {
        manufacturer: text(0),
        product: text(1),
        software_version: text(2),
        build_number: text(3),
    })
}

fn string(value: &DataValue) -> String {
    match &value.value {
        Some(Variant::String(s)) => s.value().clone().unwrap_or_default(),
        Some(Variant::LocalizedText(t)) => t.text.value().clone().unwrap_or_default(),
        _ => String::new(),
    }
}

/// Why a server refused a session, in words a user can act on.
fn refused(code: StatusCode) -> String {
    let hint = if code == StatusCode::BadUserAccessDenied
        || code == StatusCode::BadIdentityTokenRejected
        || code == StatusCode::BadIdentityTokenInvalid
    {
        "the server rejected the user identity: check USERNAME and PASSWORD or the user certificate"
    } else if code == StatusCode::BadCertificateUntrusted
        || code == StatusCode::BadSecurityChecksFailed
        || code == StatusCode::BadCertificateInvalid
    {
        "the certificates were not accepted: the server must trust OPCUA_CLIENT_CERTIFICATE, and \
         OPCUA_TRUSTED_SERVER_CERTIFICATES (when set) must hold the server's certificate"
    } else {
        "the session could not be opened"
    };
    format!("{hint} ({code})")
}

fn certificate(properties: &Properties, name: &str) -> Result<X509, DiscoveryError> {
    let pem = properties.require(name)?;
    let mut all = certificates(pem, name)?;
    if all.len() != 1 {
        return Err(DiscoveryError::Unavailable(format!(
            "property {name} must hold one PEM certificate, not {}",
            all.len()
        )));
    }
    Ok(all.remove(0))
}

/// Every `CERTIFICATE` block of a PEM text.
fn certificates(pem: &str, name: &str) -> Result<Vec<X509>, DiscoveryError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let block = &rest[start..start + len + END.len()];
        let cert = X509::from_pem(block.as_bytes()).map_err(|e| {
            DiscoveryError::Unavailable(format!(
                "property {name}: certificate {} is not valid: {e}",
                out.len() + 1
            ))
        })?;
        out.push(cert);
        rest = &rest[start + len + END.len()..];
    }
    if out.is_empty() {
        return Err(DiscoveryError::Unavailable(format!(
            "property {name} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(out)
}

fn private_key(properties: &Properties, name: &str) -> Result<PrivateKey, DiscoveryError> {
    parse_key(properties.require(name)?, name)
}

fn parse_key(pem: &str, name: &str) -> Result<PrivateKey, DiscoveryError> {
    PrivateKey::from_pem(pem.as_bytes()).map_err(|_| {
        DiscoveryError::Unavailable(format!(
            "property {name} is not a PEM RSA private key (PKCS#1 or PKCS#8)"
        ))
    })
}

/// A certificate store of the client's own, readable by this process only, removed on drop:
/// `own/cert.der`, `private/private.pem`, `trusted/*.der` and the `rejected/` directory the
/// store expects.
struct PkiDir(PathBuf);

impl PkiDir {
    fn create(own: Option<&(X509, String)>, trusted: &[X509]) -> std::io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "dowser-opcua-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let dir = Self(root);
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o700).recursive(true);
        for sub in ["own", "private", "trusted", "rejected"] {
            builder.create(dir.0.join(sub))?;
        }
        let write = |path: PathBuf, data: &[u8]| -> std::io::Result<()> {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?
                .write_all(data)
        };
        let der = |c: &X509| c.to_der().map_err(|e| std::io::Error::other(e.to_string()));
        if let Some((cert, key)) = own {
            write(dir.0.join("own/cert.der"), &der(cert)?)?;
            write(dir.0.join("private/private.pem"), key.as_bytes())?;
        }
        for cert in trusted {
            let name = opcua::crypto::CertificateStore::cert_file_name(cert);
            write(dir.0.join("trusted").join(name), &der(cert)?)?;
        }
        Ok(dir)
    }
}

impl Drop for PkiDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
