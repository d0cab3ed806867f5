//! Simulated OPC UA servers.
//!
//! Normal servers are real async-opcua servers (binary transport, the endpoints and security
//! policies configured). A discovery server, and the servers that misbehave on purpose, are
//! framed by hand: an OPC UA local discovery server (LDS) answers FindServers with the other
//! servers of the fleet, and hostile servers reproduce exactly what breaks clients on the wire.

use std::{fmt, io::Cursor, net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context as _;
use opcua::types::{
    ApplicationDescription, ApplicationType, BinaryDecodable, BinaryEncodable, ByteString,
    ChannelSecurityToken, ContextOwned, DateTime, EndpointDescription, FindServersRequest,
    FindServersResponse, GetEndpointsRequest, GetEndpointsResponse, LocalizedText,
    MessageSecurityMode, NodeId, ObjectId, OpenSecureChannelRequest, OpenSecureChannelResponse,
    ResponseHeader, ServiceFault, StatusCode, UAString, UserTokenPolicy, VariableId,
};
use opcua_server::{
    ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerEndpoint, ServerUserToken,
    address_space::Variable,
    node_manager::memory::{
        InMemoryNodeManagerBuilder, SimpleNodeManager, SimpleNodeManagerBuilder,
    },
};
use serde::Deserialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// What a simulated OPC UA server is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    /// A server with endpoints (an async-opcua server).
    #[default]
    Server,
    /// A local discovery server whose FindServers lists every other server of the fleet.
    Discovery,
}

/// How a simulated OPC UA server behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// Answers as the specification says.
    #[default]
    Normal,
    /// Accepts connections and never answers.
    Silent,
    /// Answers Hello with bytes that are not OPC UA.
    Garbage,
    /// Answers GetEndpoints with an absurd list: 50,000 endpoints with long URLs.
    Absurd,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Normal => "normal",
            Mode::Silent => "silent",
            Mode::Garbage => "garbage",
            Mode::Absurd => "absurd",
        })
    }
}

/// One simulated OPC UA server (or `count` of them on consecutive ports).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How many servers, on consecutive ports (`{n}` in names and URIs is replaced by 1, 2...).
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub kind: Kind,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default = "default_name")]
    pub application_name: String,
    #[serde(default = "default_uri")]
    pub application_uri: String,
    #[serde(default = "default_product")]
    pub product_uri: String,
    /// Host name written into the server's URLs (default: the listen address). A name that
    /// does not resolve shows what a server behind NAT or with a bad hostname config reports.
    #[serde(default)]
    pub advertised_host: Option<String>,
    /// Endpoints as `Policy` or `Policy/Mode`: `None`, `Basic256Sha256/SignAndEncrypt`,
    /// `Aes256_Sha256_RsaPss/Sign`... (default: `None` only).
    #[serde(default = "default_endpoints")]
    pub endpoints: Vec<String>,
    /// Users as `name:password`: when set, the server takes only these (user-name tokens on
    /// every endpoint), no anonymous sessions.
    #[serde(default)]
    pub users: Vec<String>,
    /// What the server tells of itself in `ServerStatus.BuildInfo`.
    #[serde(default)]
    pub build_info: Option<Nameplate>,
}

/// `ServerStatus.BuildInfo` of a simulated server.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Nameplate {
    pub manufacturer_name: String,
    pub product_name: String,
    #[serde(default)]
    pub software_version: String,
    #[serde(default)]
    pub build_number: String,
}

fn one() -> u32 {
    1
}
fn default_name() -> String {
    "dowser-sim OPC UA server {n}".into()
}
fn default_uri() -> String {
    "urn:dowser-sim:opcua:{n}".into()
}
fn default_product() -> String {
    "urn:dowser-sim:opcua".into()
}
fn default_endpoints() -> Vec<String> {
    vec!["None".into()]
}

impl ServerConfig {
    /// A normal server with the given name and URI.
    pub fn server(listen: SocketAddr, name: &str, uri: &str) -> Self {
        Self {
            listen,
            count: 1,
            kind: Kind::Server,
            mode: Mode::Normal,
            application_name: name.into(),
            application_uri: uri.into(),
            product_uri: default_product(),
            advertised_host: None,
            endpoints: default_endpoints(),
            users: Vec::new(),
            build_info: None,
        }
    }

    /// Takes only these users (`name:password`), no anonymous sessions.
    pub fn with_users(mut self, users: &[&str]) -> Self {
        self.users = users.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn with_build_info(mut self, nameplate: Nameplate) -> Self {
        self.build_info = Some(nameplate);
        self
    }

    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    pub fn with_endpoints(mut self, endpoints: &[&str]) -> Self {
        self.endpoints = endpoints.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// A server that is running; dropping it stops it.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The URL clients use (with the advertised host).
    pub url: String,
    pub application_name: String,
    pub application_uri: String,
    pub product_uri: String,
    pub kind: Kind,
    pub mode: Mode,
    task: JoinHandle<()>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the discovery server lists about a server.
#[derive(Clone, Debug)]
struct Listed {
    name: String,
    uri: String,
    product: String,
    url: String,
}

/// Starts every OPC UA server of a fleet; discovery servers list all the others.
pub async fn serve_all(configs: &[ServerConfig], pki: &Path) -> anyhow::Result<Vec<RunningServer>> {
    // Bind everything first, so that a discovery server knows the others' ports.
    let mut bound = Vec::new();
    for config in configs {
        for i in 0..config.count {
            let addr = if config.listen.port() == 0 {
                config.listen
            } else {
                let port = config
                    .listen
                    .port()
                    .checked_add(u16::try_from(i)?)
                    .context("port range overflows")?;
                SocketAddr::new(config.listen.ip(), port)
            };
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let n = (i + 1).to_string();
            let mut one = config.clone();
            one.count = 1;
            one.listen = listener.local_addr()?;
            one.application_name = config.application_name.replace("{n}", &n);
            one.application_uri = config.application_uri.replace("{n}", &n);
            one.product_uri = config.product_uri.replace("{n}", &n);
            bound.push((listener, one));
        }
    }
    let listed: Vec<Listed> = bound
        .iter()
        .filter(|(_, c)| c.kind == Kind::Server)
        .map(|(_, c)| Listed {
            name: c.application_name.clone(),
            uri: c.application_uri.clone(),
            product: c.product_uri.clone(),
            url: url_of(c),
        })
        .collect();
    let listed = Arc::new(listed);
    let mut running = Vec::new();
    for (listener, config) in bound {
        let url = url_of(&config);
        let task = match (config.kind, config.mode) {
            (_, Mode::Silent) => tokio::spawn(silent(listener)),
            (_, Mode::Garbage) => tokio::spawn(garbage(listener)),
            (Kind::Discovery, _) | (Kind::Server, Mode::Absurd) => {
                let me = Listed {
                    name: config.application_name.clone(),
                    uri: config.application_uri.clone(),
                    product: config.product_uri.clone(),
                    url: url.clone(),
                };
                let role = if config.kind == Kind::Discovery {
                    WireRole::Discovery(listed.clone())
                } else {
                    WireRole::Absurd
                };
                tokio::spawn(wire_server(listener, Arc::new(me), role))
            }
            (Kind::Server, Mode::Normal) => {
                let server = real_server(&config, pki)?;
                tokio::spawn(async move {
                    if let Err(e) = server.run_with(listener).await {
                        tracing::warn!("OPC UA server stopped: {e}");
                    }
                })
            }
        };
        running.push(RunningServer {
            addr: config.listen,
            url,
            application_name: config.application_name,
            application_uri: config.application_uri,
            product_uri: config.product_uri,
            kind: config.kind,
            mode: config.mode,
            task,
        });
    }
    Ok(running)
}

fn host_of(config: &ServerConfig) -> String {
    match &config.advertised_host {
        Some(h) => h.clone(),
        None => match config.listen.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        },
    }
}

fn url_of(config: &ServerConfig) -> String {
    format!("opc.tcp://{}:{}/", host_of(config), config.listen.port())
}

fn parse_endpoint(
    text: &str,
) -> anyhow::Result<(opcua::crypto::SecurityPolicy, MessageSecurityMode)> {
    use opcua::crypto::SecurityPolicy as P;
    let (policy, mode) = text.split_once('/').unwrap_or((text, ""));
    let policy = match policy {
        "None" => P::None,
        "Basic128Rsa15" => P::Basic128Rsa15,
        "Basic256" => P::Basic256,
        "Basic256Sha256" => P::Basic256Sha256,
        "Aes128_Sha256_RsaOaep" => P::Aes128Sha256RsaOaep,
        "Aes256_Sha256_RsaPss" => P::Aes256Sha256RsaPss,
        other => anyhow::bail!("unknown security policy {other:?}"),
    };
    let mode = match (policy, mode) {
        (P::None, "" | "None") => MessageSecurityMode::None,
        (P::None, m) => anyhow::bail!("security policy None has no mode {m:?}"),
        (_, "" | "SignAndEncrypt") => MessageSecurityMode::SignAndEncrypt,
        (_, "Sign") => MessageSecurityMode::Sign,
        (_, m) => anyhow::bail!("unknown security mode {m:?} in {text:?}"),
    };
    Ok((policy, mode))
}

fn real_server(config: &ServerConfig, pki: &Path) -> anyhow::Result<opcua_server::Server> {
    let users: Vec<String> = if config.users.is_empty() {
        vec![ANONYMOUS_USER_TOKEN_ID.to_string()]
    } else {
        (0..config.users.len())
            .map(|i| format!("user{i}"))
            .collect()
    };
    // Discovery services need no address space; an empty namespace satisfies the server.
    let namespace = opcua_server::diagnostics::NamespaceMetadata {
        namespace_uri: format!("urn:dowser-sim:{}", config.application_uri),
        ..Default::default()
    };
    let mut builder = ServerBuilder::new()
        .with_node_manager(InMemoryNodeManagerBuilder::new(
            SimpleNodeManagerBuilder::new(namespace, "sim"),
        ))
        .application_name(config.application_name.clone())
        .application_uri(config.application_uri.clone())
        .product_uri(config.product_uri.clone())
        .host(host_of(config).trim_matches(['[', ']']).to_string())
        .port(config.listen.port())
        .pki_dir(pki)
        .create_sample_keypair(true)
        .certificate_path("own/cert.der")
        .private_key_path("private/private.pem")
        .trust_client_certs(true)
        .discovery_urls(vec![url_of(config)]);
    for (i, user) in config.users.iter().enumerate() {
        let (name, password) = user
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("user {user:?} is not name:password"))?;
        builder = builder.add_user_token(
            format!("user{i}"),
            ServerUserToken::user_pass(name, password),
        );
    }
    if config.build_info.is_some() {
        // The server is built without the generated core address space (it would cost every
        // simulated server thousands of nodes); the nameplate variables of namespace 0 are
        // served by a node manager of their own instead.
        let core = opcua_server::diagnostics::NamespaceMetadata {
            namespace_uri: "http://opcfoundation.org/UA/".into(),
            ..Default::default()
        };
        builder = builder.with_node_manager(InMemoryNodeManagerBuilder::new(
            SimpleNodeManagerBuilder::new(core, NAMEPLATE_MANAGER),
        ));
    }
    for (i, text) in config.endpoints.iter().enumerate() {
        let (policy, mode) = parse_endpoint(text)?;
        builder = builder.add_endpoint(
            format!("e{i}"),
            ServerEndpoint::new("/", policy, mode, &users),
        );
    }
    let (server, handle) = builder
        .build()
        .map_err(|e| anyhow::anyhow!("OPC UA server {}: {e}", config.application_uri))?;
    if let Some(plate) = &config.build_info {
        let manager = handle
            .node_managers()
            .get_by_name::<SimpleNodeManager>(NAMEPLATE_MANAGER)
            .ok_or_else(|| anyhow::anyhow!("the nameplate node manager is missing"))?;
        let mut space = manager.address_space().write();
        for (id, name, value) in [
            (
                VariableId::Server_ServerStatus_BuildInfo_ManufacturerName,
                "ManufacturerName",
                &plate.manufacturer_name,
            ),
            (
                VariableId::Server_ServerStatus_BuildInfo_ProductName,
                "ProductName",
                &plate.product_name,
            ),
            (
                VariableId::Server_ServerStatus_BuildInfo_SoftwareVersion,
                "SoftwareVersion",
                &plate.software_version,
            ),
            (
                VariableId::Server_ServerStatus_BuildInfo_BuildNumber,
                "BuildNumber",
                &plate.build_number,
            ),
        ] {
            let node_id: NodeId = id.into();
            let variable = Variable::new(&node_id, name, name, UAString::from(value.as_str()));
            space.insert::<_, NodeId>(variable, None);
        }
    }
    Ok(server)
}

/// The node manager that serves a simulated server's nameplate.
const NAMEPLATE_MANAGER: &str = "nameplate";

async fn silent(listener: TcpListener) {
    let mut held = Vec::new();
    while let Ok((socket, _)) = listener.accept().await {
        held.push(socket);
    }
}

async fn garbage(listener: TcpListener) {
    while let Ok((mut socket, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let noise: Vec<u8> = (0..64u8).map(|b| b.wrapping_mul(37) ^ 0x5a).collect();
                if socket.write_all(&noise).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[derive(Clone)]
enum WireRole {
    Discovery(Arc<Vec<Listed>>),
    Absurd,
}

async fn wire_server(listener: TcpListener, me: Arc<Listed>, role: WireRole) {
    while let Ok((socket, _)) = listener.accept().await {
        let (me, role) = (me.clone(), role.clone());
        tokio::spawn(async move {
            if let Err(e) = wire_session(socket, &me, &role).await {
                tracing::debug!("OPC UA wire session ended: {e}");
            }
        });
    }
}

const NONE_POLICY: &str = "http://opcfoundation.org/UA/SecurityPolicy#None";
const BINARY_PROFILE: &str = "http://opcfoundation.org/UA-Profile/Transport/uatcp-uasc-uabinary";

struct Chunk {
    kind: [u8; 3],
    body: Vec<u8>,
}

async fn read_chunk(socket: &mut TcpStream) -> anyhow::Result<Chunk> {
    let mut header = [0u8; 8];
    socket.read_exact(&mut header).await?;
    let size = u32::from_le_bytes(header[4..8].try_into()?) as usize;
    anyhow::ensure!((8..=1 << 20).contains(&size), "chunk size {size}");
    anyhow::ensure!(
        header[3] == b'F',
        "only final chunks are expected from clients"
    );
    let mut body = vec![0u8; size - 8];
    socket.read_exact(&mut body).await?;
    Ok(Chunk {
        kind: [header[0], header[1], header[2]],
        body,
    })
}

fn frame(kind: &[u8; 3], chunk_type: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(kind);
    out.push(chunk_type);
    out.extend_from_slice(&((body.len() + 8) as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn u32_at(body: &[u8], at: usize) -> anyhow::Result<u32> {
    Ok(u32::from_le_bytes(
        body.get(at..at + 4).context("short chunk")?.try_into()?,
    ))
}

async fn wire_session(mut socket: TcpStream, me: &Listed, role: &WireRole) -> anyhow::Result<()> {
    let owned = ContextOwned::default();
    let ctx = owned.context();
    // Hello: protocol version, receive buffer size, ...; the client's receive buffer size
    // bounds the chunks sent to it.
    let hello = read_chunk(&mut socket).await?;
    anyhow::ensure!(&hello.kind == b"HEL", "expected Hello");
    let client_receive = u32_at(&hello.body, 4)?.max(8192) as usize;
    let mut ack = Vec::new();
    for v in [0u32, 65535, 65535, 0, 0] {
        ack.extend_from_slice(&v.to_le_bytes());
    }
    socket.write_all(&frame(b"ACK", b'F', &ack)).await?;

    // OpenSecureChannel with security policy None.
    let open = read_chunk(&mut socket).await?;
    anyhow::ensure!(&open.kind == b"OPN", "expected OpenSecureChannel");
    let mut stream = Cursor::new(&open.body[4..]);
    let policy = UAString::decode(&mut stream, &ctx)?;
    anyhow::ensure!(policy.as_ref() == NONE_POLICY, "only security policy None");
    let _certificate = ByteString::decode(&mut stream, &ctx)?;
    let _thumbprint = ByteString::decode(&mut stream, &ctx)?;
    let mut sequence = 1u32;
    let _client_sequence = u32::decode(&mut stream, &ctx)?;
    let request_id = u32::decode(&mut stream, &ctx)?;
    let _type_id = NodeId::decode(&mut stream, &ctx)?;
    let request = OpenSecureChannelRequest::decode(&mut stream, &ctx)?;
    let response = OpenSecureChannelResponse {
        response_header: ResponseHeader::new_good(&request.request_header),
        server_protocol_version: 0,
        security_token: ChannelSecurityToken {
            channel_id: 1,
            token_id: 1,
            created_at: DateTime::now(),
            revised_lifetime: request.requested_lifetime,
        },
        server_nonce: ByteString::null(),
    };
    let mut body = Vec::new();
    1u32.encode(&mut body, &ctx)?;
    UAString::from(NONE_POLICY).encode(&mut body, &ctx)?;
    ByteString::null().encode(&mut body, &ctx)?;
    ByteString::null().encode(&mut body, &ctx)?;
    sequence.encode(&mut body, &ctx)?;
    request_id.encode(&mut body, &ctx)?;
    NodeId::from(ObjectId::OpenSecureChannelResponse_Encoding_DefaultBinary)
        .encode(&mut body, &ctx)?;
    response.encode(&mut body, &ctx)?;
    socket.write_all(&frame(b"OPN", b'F', &body)).await?;

    loop {
        let chunk = read_chunk(&mut socket).await?;
        match &chunk.kind {
            b"CLO" => return Ok(()),
            b"MSG" => {}
            other => anyhow::bail!("unexpected {:?}", String::from_utf8_lossy(other)),
        }
        let mut stream = Cursor::new(&chunk.body[8..]);
        let _client_sequence = u32::decode(&mut stream, &ctx)?;
        let request_id = u32::decode(&mut stream, &ctx)?;
        let type_id = NodeId::decode(&mut stream, &ctx)?;
        let mut payload = Vec::new();
        if type_id == ObjectId::FindServersRequest_Encoding_DefaultBinary {
            let request = FindServersRequest::decode(&mut stream, &ctx)?;
            let mut servers = vec![describe(me, ApplicationType::DiscoveryServer)];
            if let WireRole::Discovery(listed) = role {
                servers.extend(listed.iter().map(|s| describe(s, ApplicationType::Server)));
            } else {
                servers[0].application_type = ApplicationType::Server;
            }
            NodeId::from(ObjectId::FindServersResponse_Encoding_DefaultBinary)
                .encode(&mut payload, &ctx)?;
            FindServersResponse {
                response_header: ResponseHeader::new_good(&request.request_header),
                servers: Some(servers),
            }
            .encode(&mut payload, &ctx)?;
        } else if type_id == ObjectId::GetEndpointsRequest_Encoding_DefaultBinary {
            let request = GetEndpointsRequest::decode(&mut stream, &ctx)?;
            let endpoints = match role {
                WireRole::Discovery(_) => {
                    vec![endpoint(me, &me.url, ApplicationType::DiscoveryServer)]
                }
                WireRole::Absurd => (0..50_000)
                    .map(|i| {
                        let url = format!("{}{}", me.url, "x".repeat(200 + i % 7));
                        endpoint(me, &url, ApplicationType::Server)
                    })
                    .collect(),
            };
            NodeId::from(ObjectId::GetEndpointsResponse_Encoding_DefaultBinary)
                .encode(&mut payload, &ctx)?;
            GetEndpointsResponse {
                response_header: ResponseHeader::new_good(&request.request_header),
                endpoints: Some(endpoints),
            }
            .encode(&mut payload, &ctx)?;
        } else {
            let header = opcua::types::RequestHeader::decode(&mut stream, &ctx)?;
            NodeId::from(ObjectId::ServiceFault_Encoding_DefaultBinary)
                .encode(&mut payload, &ctx)?;
            ServiceFault::new(&header, StatusCode::BadServiceUnsupported)
                .encode(&mut payload, &ctx)?;
        }
        // Symmetric chunks: channel id, token id, sequence number, request id, body slice.
        let room = client_receive.saturating_sub(24).max(1024);
        let pieces: Vec<&[u8]> = payload.chunks(room).collect();
        for (i, piece) in pieces.iter().enumerate() {
            sequence += 1;
            let mut body = Vec::with_capacity(piece.len() + 16);
            for v in [1u32, 1, sequence, request_id] {
                body.extend_from_slice(&v.to_le_bytes());
            }
            body.extend_from_slice(piece);
            let kind = if i + 1 == pieces.len() { b'F' } else { b'C' };
            socket.write_all(&frame(b"MSG", kind, &body)).await?;
        }
    }
}

fn describe(s: &Listed, kind: ApplicationType) -> ApplicationDescription {
    ApplicationDescription {
        application_uri: s.uri.as_str().into(),
        product_uri: s.product.as_str().into(),
        application_name: LocalizedText::new("en", &s.name),
        application_type: kind,
        gateway_server_uri: UAString::null(),
        discovery_profile_uri: UAString::null(),
        discovery_urls: Some(vec![s.url.as_str().into()]),
    }
}

fn endpoint(me: &Listed, url: &str, kind: ApplicationType) -> EndpointDescription {
    EndpointDescription {
        endpoint_url: url.into(),
        server: describe(me, kind),
        server_certificate: ByteString::null(),
        security_mode: MessageSecurityMode::None,
        security_policy_uri: NONE_POLICY.into(),
        user_identity_tokens: Some(vec![UserTokenPolicy::anonymous()]),
        transport_profile_uri: BINARY_PROFILE.into(),
        security_level: 0,
    }
}
