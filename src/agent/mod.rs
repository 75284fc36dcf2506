//! `corral agent`: what cattle-cluster-agent does. It checks `/ping`, fetches the CA without
//! verification, refuses to go on unless the CA matches the given checksum, verifies the server
//! against that CA alone, then keeps a tunnel open (`/v3/connect/register` first, `/v3/connect`
//! after a first success), dials what the server asks within `--allow`, and reconnects after a drop.
//! `--count N` runs N such agents in one process, for load tests.
//!
//! Its tunnel params are what a real Rancher accepts: a non-empty `caCert` and `token` always. For a
//! plain-HTTP target (no `--ca-cert`) it answers the server's TLS itself ([`TlsTerminator`]); without
//! `--sa-token` it sends a generated token.

mod api_tls;
mod policy;
mod protobuf;
pub mod simulated;
mod simulated_rbac;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rand::Rng;
use rustls::ClientConfig;
use sha2::{Digest, Sha256};

use crate::client::{ClientError, ConnectError, Target, tls_insecure, tls_system, tls_trusting};
use crate::clusters::{ClusterParams, CustomConfig, NodeParams};
use crate::secrets::{TOKEN_LENGTH, random_token};
use crate::tunnel::session::{Connector, Serving, SessionError};
use crate::tunnel::{Role, Session, TunnelStream};
use api_tls::{ApiTls, ApiTlsError, TlsTerminator};
pub use policy::AllowPolicy;
use simulated::{SIMULATED_ADDRESS, SimulatedCluster};

/// Pause between tunnel attempts: remotedialer waits 5 s, plus jitter so many agents spread out.
const RECONNECT_DELAY: Duration = Duration::from_secs(5);
const RECONNECT_JITTER_MS: u64 = 2_000;

/// Why the agent stopped before opening a tunnel, or why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{url} answered {status}")]
    Answered {
        url: String,
        status: hyper::StatusCode,
    },
    #[error(
        "The environment variable CATTLE_CA_CHECKSUM is set but there is no CA certificate configured at {0}/v3/settings/cacerts"
    )]
    NoCa(String),
    #[error("Configured cacerts checksum ({actual}) does not match given --ca-checksum ({given})")]
    ChecksumMismatch { actual: String, given: String },
    #[error("{0}: use the server URL whose host the certificate names (its server-url)")]
    NameMismatch(ConnectError),
    #[error("the server's certificate does not verify against its CA: {0}")]
    Unverified(ConnectError),
    #[error(transparent)]
    Allow(#[from] policy::PolicyError),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is empty: --ca-cert needs the API's CA", .0.display())]
    EmptyCa(PathBuf),
    #[error(transparent)]
    ApiTls(#[from] ApiTlsError),
    /// Refused (status and body), or not a WebSocket answer.
    #[error("{0}")]
    Handshake(#[from] crate::tunnel::websocket::HandshakeError),
    #[error("WebSocket handshake timed out")]
    HandshakeTimeout,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The corral (or Rancher) server, e.g. https://rancher.lab.test:8443 (CATTLE_SERVER).
    #[arg(long, env = "CATTLE_SERVER", value_name = "URL")]
    pub server: String,
    /// Cluster registration token(s); with --count, agent i uses token i mod their number (CATTLE_TOKEN).
    #[arg(
        long,
        env = "CATTLE_TOKEN",
        value_delimiter = ',',
        required = true,
        hide_env_values = true
    )]
    pub token: Vec<String>,
    /// Expected CA checksum: lower-case hex SHA-256 of the server's CA (CATTLE_CA_CHECKSUM). Without
    /// it (or empty), the server's certificate is verified with the system's roots
    /// (SSL_CERT_FILE, SSL_CERT_DIR), as Rancher's agent does: for a server with a public or ACME
    /// certificate.
    #[arg(long, env = "CATTLE_CA_CHECKSUM", value_name = "HEX")]
    pub ca_checksum: Option<String>,
    /// The cluster API address the server should reach through the tunnel [default: 127.0.0.1:6443,
    /// or 10.43.0.1:443 with --simulate].
    #[arg(long, value_name = "HOST:PORT")]
    pub address: Option<String>,
    /// Simulate the downstream cluster: its API (version, health, discovery, namespaces) is served
    /// in-process, over TLS with the agent's own CA and a generated token; each agent of --count is
    /// its own cluster. Nothing listens on the network.
    #[arg(long, conflicts_with_all = ["ca_cert", "sa_token"])]
    pub simulate: bool,
    /// PEM of the CA that signed that API's certificate. Without it the API is taken to speak plain
    /// HTTP: the agent answers the server's TLS itself, with a CA it makes (sent as caCert).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Bearer token the server presents to that API; without it a generated token is sent.
    #[arg(
        long,
        env = "CORRAL_AGENT_SA_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub sa_token: Option<String>,
    /// What the server may make this agent dial: `tcp:*`, `tcp:HOST:PORT`, `unix:PATH`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tcp:*",
        value_name = "PROTO:ADDR"
    )]
    pub allow: Vec<String>,
    /// Number of agents to run in this process.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub count: usize,
    /// Connect as a node agent (cattle-node-agent) for the node NAME (its requestedHostname; with
    /// --count, NAME-0, NAME-1, …), straight to /v3/connect as CATTLE_AGENT_CONNECT=true does. The
    /// server may dial any tcp address and the Docker socket through it, as Rancher's node agent
    /// allows.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["simulate", "ca_cert", "sa_token", "address"])]
    pub node: Option<String>,
}

/// What Rancher's node agent lets the server dial (its ConnectAuthorizer).
const NODE_AGENT_RULES: [&str; 3] = [
    "tcp:*",
    "unix:/var/run/docker.sock",
    "npipe://./pipe/docker_engine",
];

/// Everything checked before any tunnel is opened; each failure ends the command.
pub async fn prepare(args: &AgentArgs) -> Result<PreparedAgent, AgentError> {
    let target = Target::parse(&args.server)?;
    let insecure = tls_insecure(&[b"http/1.1"]);
    let (status, _) = target
        .request(insecure.clone(), "GET", "/ping", &[], None)
        .await?;
    if !status.is_success() {
        return Err(AgentError::Answered {
            url: format!("{}/ping", args.server),
            status,
        });
    }
    let checksum = args
        .ca_checksum
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    let tls = match checksum {
        Some(given) => tls_from_checked_cacerts(args, &target, insecure, given).await?,
        None => {
            tracing::info!(
                "no --ca-checksum: the server's certificate is verified with the system's roots, as Rancher's agent does"
            );
            tls_system(&[b"http/1.1"])?
        }
    };
    // Like the Go agent's first verified request: a server whose certificate this CA did not sign
    // is refused here, before any tunnel.
    match target.handshake(tls.clone()).await {
        Ok(_) => {}
        Err(mismatch @ ConnectError::NameMismatch { .. }) => {
            return Err(AgentError::NameMismatch(mismatch));
        }
        Err(other) => return Err(AgentError::Unverified(other)),
    }
    let policy = AllowPolicy::parse(&args.allow)?;
    let clusters = if let Some(name) = &args.node {
        let rules: Vec<String> = NODE_AGENT_RULES.iter().map(|r| r.to_string()).collect();
        ClusterApis::Nodes {
            name: name.clone(),
            numbered: args.count > 1,
            connector: Arc::new(AgentConnector {
                policy: AllowPolicy::parse(&rules)?,
                terminator: None,
            }),
        }
    } else if args.simulate {
        let address = args.address.as_deref().unwrap_or(SIMULATED_ADDRESS);
        tracing::info!(
            "simulating {} cluster(s) at {address}: each API is served in-process, nothing listens",
            args.count
        );
        ClusterApis::Simulated {
            tls: Arc::new(ApiTls::new(address)?),
            router: simulated::router(),
            policy: Arc::new(policy),
            address: address.to_string(),
        }
    } else {
        real_cluster(args, policy)?
    };
    Ok(PreparedAgent {
        target,
        tls,
        clusters,
    })
}

/// Fetches the server's `cacerts` without verification, refuses to go on unless its checksum is
/// `given` (Rancher's agent's texts), and trusts it alone from then on.
async fn tls_from_checked_cacerts(
    args: &AgentArgs,
    target: &Target,
    insecure: Arc<ClientConfig>,
    given: &str,
) -> Result<Arc<ClientConfig>, AgentError> {
    let (status, body_json) = target
        .request(
            insecure,
            "GET",
            "/v3/settings/cacerts",
            &[("accept", "application/json")],
            None,
        )
        .await?;
    if !status.is_success() {
        return Err(AgentError::Answered {
            url: format!("{}/v3/settings/cacerts", args.server),
            status,
        });
    }
    let value = serde_json::from_slice::<serde_json::Value>(&body_json)
        .ok()
        .and_then(|v| v["value"].as_str().map(str::to_string))
        .unwrap_or_default();
    if value.is_empty() {
        return Err(AgentError::NoCa(args.server.clone()));
    }
    // `jq -r .value` prints the value and a newline; that is what agents hash.
    let pem = format!("{value}\n");
    let actual = hex::encode(Sha256::digest(pem.as_bytes()));
    if actual != given.to_ascii_lowercase() {
        return Err(AgentError::ChecksumMismatch {
            actual,
            given: given.to_string(),
        });
    }
    Ok(tls_trusting(pem.as_bytes(), &[b"http/1.1"])?)
}

/// The params and connector every agent of a real (or plain-HTTP) cluster API shares.
fn real_cluster(args: &AgentArgs, policy: AllowPolicy) -> Result<ClusterApis, AgentError> {
    let address = args.address.as_deref().unwrap_or("127.0.0.1:6443");
    let (ca_pem, terminator) = match &args.ca_cert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| AgentError::Read {
                path: path.clone(),
                source,
            })?;
            if pem.trim_ascii().is_empty() {
                return Err(AgentError::EmptyCa(path.clone()));
            }
            (pem, None)
        }
        None => {
            let terminator = TlsTerminator::new(address)?;
            tracing::info!(
                "no --ca-cert: {address} is taken to speak plain HTTP; the agent answers the server's TLS for it with a CA of its own"
            );
            (
                terminator.ca_pem().as_bytes().to_vec(),
                Some(Arc::new(terminator)),
            )
        }
    };
    let token = match args.sa_token.as_deref().map(str::trim) {
        Some(given) if !given.is_empty() => given.to_string(),
        _ => {
            tracing::info!(
                "no --sa-token: the agent sends a generated token, which the API behind {address} is not asked to check"
            );
            random_token(TOKEN_LENGTH)
        }
    };
    let params = ClusterParams {
        address: address.to_string(),
        ca_cert: base64::engine::general_purpose::STANDARD.encode(ca_pem),
        token,
    };
    Ok(ClusterApis::Shared {
        params_header: params_header(&params),
        connector: Arc::new(AgentConnector { policy, terminator }),
    })
}

/// `X-API-Tunnel-Params` for a cluster agent: base64 of `{"cluster":{…}}`.
fn params_header(params: &ClusterParams) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(serde_json::json!({ "cluster": params }).to_string())
}

/// What the server may make an agent dial (`--allow`), and how: the advertised address through the
/// agent's own TLS when it has no `--ca-cert`, anything else dialed and relayed as is.
struct AgentConnector {
    policy: AllowPolicy,
    terminator: Option<Arc<TlsTerminator>>,
}

impl Connector for AgentConnector {
    fn allows(&self, proto: &str, address: &str) -> bool {
        self.policy.allows(proto, address)
    }

    fn serve(&self, proto: String, address: String, stream: TunnelStream) -> Serving {
        match &self.terminator {
            Some(terminator) if terminator.answers(&proto, &address) => {
                Box::pin(terminator.clone().serve(stream))
            }
            _ => Box::pin(crate::tunnel::dial::dial_and_relay(proto, address, stream)),
        }
    }
}

/// A simulated cluster's agent: its API on Connects to the advertised address, `--allow` otherwise.
struct SimulatedConnector {
    cluster: Arc<SimulatedCluster>,
    tls: Arc<ApiTls>,
    router: axum::Router,
    policy: Arc<AllowPolicy>,
    address: String,
}

impl Connector for SimulatedConnector {
    fn allows(&self, proto: &str, address: &str) -> bool {
        (proto == "tcp" && address == self.address) || self.policy.allows(proto, address)
    }

    fn serve(&self, proto: String, address: String, stream: TunnelStream) -> Serving {
        if proto == "tcp" && address == self.address {
            let (cluster, tls, router) =
                (self.cluster.clone(), self.tls.clone(), self.router.clone());
            return Box::pin(cluster.serve(tls, router, stream));
        }
        Box::pin(crate::tunnel::dial::dial_and_relay(proto, address, stream))
    }
}

/// What every agent of this process shares.
pub struct PreparedAgent {
    target: Target,
    tls: Arc<ClientConfig>,
    clusters: ClusterApis,
}

/// What the agents advertise, and how they serve the server's Connects.
enum ClusterApis {
    /// One real (or plain-HTTP) cluster API, the same for every agent.
    Shared {
        params_header: String,
        connector: Arc<AgentConnector>,
    },
    /// Node agents: each its own node, dialing what Rancher's node agent allows.
    Nodes {
        name: String,
        /// With --count > 1: agent i is the node `<name>-<i>`.
        numbered: bool,
        connector: Arc<AgentConnector>,
    },
    /// Each agent its own simulated cluster; the TLS identity and the routes are shared.
    Simulated {
        tls: Arc<ApiTls>,
        router: axum::Router,
        policy: Arc<AllowPolicy>,
        address: String,
    },
}

impl PreparedAgent {
    /// Agent `index`'s params header and connector (for a simulated cluster, a new cluster).
    fn agent(&self, index: usize) -> (String, Arc<dyn Connector>) {
        match &self.clusters {
            ClusterApis::Nodes {
                name,
                numbered,
                connector,
            } => {
                let hostname = match numbered {
                    true => format!("{name}-{index}"),
                    false => name.clone(),
                };
                let params = NodeParams {
                    requested_hostname: hostname,
                    custom_config: Some(CustomConfig {
                        address: "127.0.0.1".into(),
                        internal_address: "127.0.0.1".into(),
                        roles: vec!["worker".into()],
                    }),
                    worker: true,
                    ..NodeParams::default()
                };
                let header = base64::engine::general_purpose::STANDARD
                    .encode(serde_json::json!({ "node": params }).to_string());
                let connector: Arc<dyn Connector> = connector.clone();
                (header, connector)
            }
            ClusterApis::Shared {
                params_header,
                connector,
            } => (params_header.clone(), connector.clone()),
            ClusterApis::Simulated {
                tls,
                router,
                policy,
                address,
            } => {
                let cluster = Arc::new(SimulatedCluster::new());
                let params = ClusterParams {
                    address: address.clone(),
                    ca_cert: base64::engine::general_purpose::STANDARD.encode(tls.ca_pem()),
                    token: cluster.token().to_string(),
                };
                let connector = SimulatedConnector {
                    cluster,
                    tls: tls.clone(),
                    router: router.clone(),
                    policy: policy.clone(),
                    address: address.clone(),
                };
                (params_header(&params), Arc::new(connector))
            }
        }
    }
}

/// Runs `args.count` agents until the process is stopped.
pub async fn run(args: AgentArgs, prepared: PreparedAgent) {
    let prepared = Arc::new(prepared);
    let mut agents = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let token = args.token[i % args.token.len()].clone();
        agents.spawn(agent_loop(prepared.clone(), token, i));
    }
    while agents.join_next().await.is_some() {}
}

async fn agent_loop(prepared: Arc<PreparedAgent>, token: String, index: usize) {
    let (params_header, connector) = prepared.agent(index);
    // A node agent connects straight to /v3/connect (CATTLE_AGENT_CONNECT=true).
    let mut registered = matches!(prepared.clusters, ClusterApis::Nodes { .. });
    loop {
        let path = if registered {
            "/v3/connect"
        } else {
            "/v3/connect/register"
        };
        tracing::debug!(
            "agent {index}: connecting to wss://{}{path} with token starting with {}",
            prepared.target.authority(),
            token
                .chars()
                .take(token.chars().count() / 2)
                .collect::<String>()
        );
        match connect_once(&prepared, &token, &params_header, &connector, path).await {
            Ok(session_result) => {
                registered = true;
                match session_result {
                    Ok(()) => tracing::info!("agent {index}: tunnel closed"),
                    Err(e) => tracing::warn!("agent {index}: tunnel ended: {e}"),
                }
            }
            Err(e) => tracing::warn!("agent {index}: cannot open the tunnel: {e}"),
        }
        let jitter = rand::rng().random_range(0..RECONNECT_JITTER_MS);
        tokio::time::sleep(RECONNECT_DELAY + Duration::from_millis(jitter)).await;
    }
}

/// One tunnel: the WebSocket handshake (`Err` if refused), then the session until it ends.
async fn connect_once(
    prepared: &PreparedAgent,
    token: &str,
    params_header: &str,
    connector: &Arc<dyn Connector>,
    path: &str,
) -> Result<Result<(), SessionError>, AgentError> {
    let tls = prepared.target.connect(prepared.tls.clone()).await?;
    let authority = prepared.target.authority();
    let headers = [
        ("X-API-Tunnel-Token", token),
        ("X-API-Tunnel-Params", params_header),
    ];
    let handshake = crate::tunnel::websocket::connect(tls, &authority, path, &headers);
    let ws = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .map_err(|_| AgentError::HandshakeTimeout)??;
    tracing::info!("connected to {}{path}", prepared.target.authority());
    let (session, outgoing) = Session::new(Role::Client, "client", Some(connector.clone()));
    Ok(session.run(ws, outgoing).await)
}
