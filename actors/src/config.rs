//! Node configuration (`node.toml`).
//!
//! Every key is checked: an unknown key is an error that names it, so a typo
//! never silently falls back to a default. Relative paths are resolved against
//! the directory of the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sipmesh_state::Fqdn;

/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT_MS: u64 = 1_000;
/// Default redial backoff cap (the issue asks for at most 10 s).
pub const DEFAULT_BACKOFF_CAP_MS: u64 = 10_000;
/// Default TLS handshake (plus hello) deadline.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Default bound on simultaneous mesh connections (handshaking or up).
pub const DEFAULT_MAX_MESH_CONNECTIONS: usize = 1_024;
/// Default bound on simultaneous mesh connections from one non-member IP: a
/// stranger has no business with more than a few (members are exempt).
pub const DEFAULT_MESH_MAX_CONNECTIONS_PER_IP: usize = 8;
/// Default share of `max_connections` kept for members (1/N): strangers
/// cannot take the last quarter, so a member's link can always come back.
pub const DEFAULT_MEMBER_RESERVED_SHARE: usize = 4;

/// A node's whole configuration, paths already resolved.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's name; must be a member of the topology.
    pub fqdn: Fqdn,
    /// Topology file imported into the store when it is newer than the stored one.
    pub topology: Option<PathBuf>,
    /// The admin's public key (`sipmesh topology keygen`): when set, only
    /// documents signed by it are accepted, and topology changes can be
    /// published and replicated at run time. Without it the topology is static.
    pub topology_public_key: Option<PathBuf>,
    /// Directory for the store.
    pub data_dir: PathBuf,
    /// Unix socket for `sipmesh ctl`.
    pub debug_socket: PathBuf,
    /// Mesh listen address; defaults to the member's `mesh_addr` in the topology.
    pub mesh_listen: Option<SocketAddr>,
    /// Client listen address; defaults to the member's `client_addr`.
    pub client_listen: Option<SocketAddr>,
    /// TLS material.
    pub tls: TlsPaths,
    /// Link timing.
    pub mesh: MeshTiming,
    /// SIP service settings.
    pub sip: SipConfig,
}

/// Default transaction timer base (RFC 3261 T1).
pub const DEFAULT_T1_MS: u64 = 500;
/// Default INVITE timeout after a provisional response (Timer C, > 3 min per RFC 3261).
pub const DEFAULT_INVITE_TIMEOUT_MS: u64 = 181_000;
/// Default shortest registration accepted (Min-Expires).
pub const DEFAULT_MIN_EXPIRES: u32 = 60;
/// Default longest registration granted.
pub const DEFAULT_MAX_EXPIRES: u32 = 3_600;
/// Default failed digest attempts before 403.
pub const DEFAULT_AUTH_RETRY_LIMIT: u32 = 3;
/// Default first lockout of a source (or user) after `auth_retry_limit`
/// failures; each further lockout doubles it. 10 s keeps a mistyping user's
/// wait short while cutting a guesser to 3 tries per 10 s at first.
pub const DEFAULT_LOCKOUT_BASE_MS: u64 = 10_000;
/// Default longest lockout (the doubling stops here): 15 min, about 300
/// guesses a day per source at worst.
pub const DEFAULT_LOCKOUT_CAP_MS: u64 = 900_000;
/// Default bound on client TLS connections.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 10_000;
/// Default idle timeout of a client connection (RFC 5626 keep-alives reset it).
pub const DEFAULT_CLIENT_IDLE_TIMEOUT_MS: u64 = 300_000;
/// Default bound on client connections from one IP (one host must not fill
/// the port; raise it for large NATs in front of the node).
pub const DEFAULT_MAX_CLIENT_CONNECTIONS_PER_IP: usize = 100;
/// Default deadline for one whole client message, first byte to end of body
/// (a slow sender cannot hold a buffer by trickling bytes).
pub const DEFAULT_CLIENT_MESSAGE_TIMEOUT_MS: u64 = 10_000;
/// Default lifetime of a client connection that has not authenticated (CRLF
/// keep-alives do not extend it).
pub const DEFAULT_UNAUTHENTICATED_LIFETIME_MS: u64 = 30_000;
/// Default bound on the request bytes held by live server transactions, all
/// users together (memory bound; 503 beyond).
pub const DEFAULT_MAX_TRANSACTION_BYTES: usize = 256 * 1024 * 1024;
/// Default bound on the request bytes held by the live server transactions
/// of one user (or one unauthenticated flow): one user cannot take the rest.
pub const DEFAULT_MAX_TRANSACTION_BYTES_PER_USER: usize = 8 * 1024 * 1024;

/// Default of `sip.assert_identity_to_clients`: clients are not trusted with assertions.
pub const DEFAULT_ASSERT_IDENTITY_TO_CLIENTS: bool = false;

/// The `[sip]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipConfig {
    /// The SIP domain served (AORs `sip:user@domain`).
    pub domain: Option<String>,
    /// Digest users file (realm, users with HA1 hashes).
    pub users: Option<PathBuf>,
    /// Transaction timer base; non-INVITE and unanswered INVITE time out after 64*T1.
    pub t1: Duration,
    /// Timer C: INVITE timeout once a provisional response arrived.
    pub invite_timeout: Duration,
    /// Shortest registration accepted (shorter: 423).
    pub min_expires: u32,
    /// Longest registration granted (longer is shortened).
    pub max_expires: u32,
    /// Failed digest attempts before 403.
    pub auth_retry_limit: u32,
    /// Lockout durations: first lockout, and the cap of its doubling.
    pub lockout: crate::auth::Backoff,
    /// Bound on client connections.
    pub max_client_connections: usize,
    /// Idle timeout of a client connection.
    pub client_idle_timeout: Duration,
    /// Bound on client connections from one IP.
    pub max_client_connections_per_ip: usize,
    /// Deadline for one whole message (first byte to end of body).
    pub client_message_timeout: Duration,
    /// Lifetime of a connection that has not authenticated.
    pub unauthenticated_lifetime: Duration,
    /// Bound on request bytes held by live server transactions, in total.
    pub max_transaction_bytes: usize,
    /// Bound on request bytes held by live server transactions per user (or flow).
    pub max_transaction_bytes_per_user: usize,
    /// Extra (certificate, key) pairs the client port serves by SNI, e.g. a
    /// pool FQDN's certificate; the node certificate is the default.
    pub certs: Vec<(PathBuf, PathBuf)>,
    /// Digest algorithms offered and accepted, in challenge order.
    pub digest_algorithms: Vec<crate::auth::Algorithm>,
    /// `HOST:PORT` clients reach this node's client port at, put in its
    /// Record-Route (`<sip:HOST:PORT;transport=tls;lr;...>`): an FQDN:port
    /// where DNS names the node or its pool, or an IP:port. `None`: the
    /// client listener's own address (what `cluster up` uses, so nothing
    /// needs DNS).
    pub advertise: Option<String>,
    /// Add `P-Asserted-Identity: <AOR>` (the identity the ingress node
    /// authenticated) to requests delivered to clients. Off by default:
    /// clients are outside the trust domain (RFC 3325 §5), so nothing
    /// asserted leaves towards them unless the operator trusts them.
    pub assert_identity_to_clients: bool,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            domain: None,
            users: None,
            t1: Duration::from_millis(DEFAULT_T1_MS),
            invite_timeout: Duration::from_millis(DEFAULT_INVITE_TIMEOUT_MS),
            min_expires: DEFAULT_MIN_EXPIRES,
            max_expires: DEFAULT_MAX_EXPIRES,
            auth_retry_limit: DEFAULT_AUTH_RETRY_LIMIT,
            lockout: crate::auth::Backoff {
                base: Duration::from_millis(DEFAULT_LOCKOUT_BASE_MS),
                cap: Duration::from_millis(DEFAULT_LOCKOUT_CAP_MS),
            },
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
            client_idle_timeout: Duration::from_millis(DEFAULT_CLIENT_IDLE_TIMEOUT_MS),
            max_client_connections_per_ip: DEFAULT_MAX_CLIENT_CONNECTIONS_PER_IP,
            client_message_timeout: Duration::from_millis(DEFAULT_CLIENT_MESSAGE_TIMEOUT_MS),
            unauthenticated_lifetime: Duration::from_millis(DEFAULT_UNAUTHENTICATED_LIFETIME_MS),
            max_transaction_bytes: DEFAULT_MAX_TRANSACTION_BYTES,
            max_transaction_bytes_per_user: DEFAULT_MAX_TRANSACTION_BYTES_PER_USER,
            certs: Vec::new(),
            // MD5 first: many deployed clients (sipsak, baresip 1.0, older
            // phones) answer only the first challenge and know only MD5;
            // SHA-256 (RFC 8760) is offered next for those that can.
            digest_algorithms: vec![crate::auth::Algorithm::Md5, crate::auth::Algorithm::Sha256],
            advertise: None,
            assert_identity_to_clients: DEFAULT_ASSERT_IDENTITY_TO_CLIENTS,
        }
    }
}

/// What a node does with a peer whose CRL is past its nextUpdate
/// (`[tls] crl_expired`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CrlExpired {
    /// Refuse the peer (`crl-expired`): a stale CRL may miss a revocation.
    #[default]
    Refuse,
    /// Accept the peer on the stale CRL; `ctl check` still reports it.
    Warn,
}

impl CrlExpired {
    /// The node.toml spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CrlExpired::Refuse => "refuse",
            CrlExpired::Warn => "warn",
        }
    }

    /// Parse the node.toml spelling.
    pub fn parse(s: &str) -> Option<CrlExpired> {
        match s {
            "refuse" => Some(CrlExpired::Refuse),
            "warn" => Some(CrlExpired::Warn),
            _ => None,
        }
    }
}

/// Paths of the PEM files a node reads, and the `[tls]` policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The node certificate (leaf first, then any intermediates).
    pub cert: PathBuf,
    /// The node's private key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key: PathBuf,
    /// Trust anchors (enterprise CA certificates) for peers.
    pub ca: PathBuf,
    /// Certificate revocation lists (PEM), any number.
    pub crls: Vec<PathBuf>,
    /// What to do with a peer whose CRL has expired.
    pub crl_expired: CrlExpired,
}

/// Link timers and limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshTiming {
    /// How often a ping is sent on an up link.
    pub heartbeat_interval: Duration,
    /// A link with no frame from the peer for this long is down.
    pub heartbeat_timeout: Duration,
    /// Cap of the exponential redial backoff.
    pub backoff_cap: Duration,
    /// Deadline for TCP connect + TLS handshake + hello.
    pub handshake_timeout: Duration,
    /// Bound on simultaneous mesh connections.
    pub max_connections: usize,
    /// Bound on simultaneous mesh connections from one non-member IP.
    pub max_connections_per_ip: usize,
    /// Of `max_connections`, how many only members' IPs may use.
    pub member_reserved_connections: usize,
}

impl Default for MeshTiming {
    fn default() -> Self {
        MeshTiming {
            heartbeat_interval: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            heartbeat_timeout: Duration::from_millis(3 * DEFAULT_HEARTBEAT_MS),
            backoff_cap: Duration::from_millis(DEFAULT_BACKOFF_CAP_MS),
            handshake_timeout: Duration::from_millis(DEFAULT_HANDSHAKE_TIMEOUT_MS),
            max_connections: DEFAULT_MAX_MESH_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MESH_MAX_CONNECTIONS_PER_IP,
            member_reserved_connections: DEFAULT_MAX_MESH_CONNECTIONS / DEFAULT_MEMBER_RESERVED_SHARE,
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// TOML syntax, unknown key, wrong type; toml's message names the key and line.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// A value is syntactically fine but not acceptable.
    #[error("config {path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: &'static str,
        /// What is wrong, with the value.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    fqdn: String,
    topology: Option<PathBuf>,
    topology_public_key: Option<PathBuf>,
    data_dir: PathBuf,
    debug_socket: PathBuf,
    #[serde(default)]
    listen: RawListen,
    tls: RawTls,
    #[serde(default)]
    mesh: RawMesh,
    #[serde(default)]
    sip: RawSip,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSip {
    domain: Option<String>,
    users: Option<PathBuf>,
    t1_ms: Option<u64>,
    invite_timeout_ms: Option<u64>,
    min_expires: Option<u32>,
    max_expires: Option<u32>,
    auth_retry_limit: Option<u32>,
    lockout_base_ms: Option<u64>,
    lockout_cap_ms: Option<u64>,
    max_client_connections: Option<usize>,
    client_idle_timeout_ms: Option<u64>,
    max_client_connections_per_ip: Option<usize>,
    client_message_timeout_ms: Option<u64>,
    unauthenticated_lifetime_ms: Option<u64>,
    max_transaction_bytes: Option<usize>,
    max_transaction_bytes_per_user: Option<usize>,
    #[serde(default)]
    certs: Vec<RawCert>,
    digest_algorithms: Option<Vec<String>>,
    advertise: Option<String>,
    assert_identity_to_clients: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCert {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListen {
    mesh: Option<SocketAddr>,
    client: Option<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    #[serde(default)]
    crls: Vec<PathBuf>,
    crl_expired: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMesh {
    heartbeat_interval_ms: Option<u64>,
    heartbeat_timeout_ms: Option<u64>,
    backoff_cap_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    member_reserved_connections: Option<usize>,
}

impl NodeConfig {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
            path: path.to_owned(),
            cause,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parse config text; `path` is only for messages, `base` resolves relative paths.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<NodeConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let fqdn = Fqdn::new(&raw.fqdn).map_err(|e| invalid("fqdn", e.to_string()))?;
        let d = MeshTiming::default();
        let ms = |v: Option<u64>, default: Duration, key: &'static str| match v {
            Some(0) => Err(invalid(key, "must be greater than 0".into())),
            Some(v) => Ok(Duration::from_millis(v)),
            None => Ok(default),
        };
        let heartbeat_interval = ms(
            raw.mesh.heartbeat_interval_ms,
            d.heartbeat_interval,
            "mesh.heartbeat_interval_ms",
        )?;
        let heartbeat_timeout = ms(
            raw.mesh.heartbeat_timeout_ms,
            3 * heartbeat_interval,
            "mesh.heartbeat_timeout_ms",
        )?;
        if heartbeat_timeout <= heartbeat_interval {
            return Err(invalid(
                "mesh.heartbeat_timeout_ms",
                format!(
                    "{} must be larger than heartbeat_interval_ms ({})",
                    heartbeat_timeout.as_millis(),
                    heartbeat_interval.as_millis()
                ),
            ));
        }
        let backoff_cap = ms(raw.mesh.backoff_cap_ms, d.backoff_cap, "mesh.backoff_cap_ms")?;
        let handshake_timeout = ms(
            raw.mesh.handshake_timeout_ms,
            d.handshake_timeout,
            "mesh.handshake_timeout_ms",
        )?;
        let positive = |v: Option<usize>, default: usize, key: &'static str| match v {
            Some(0) => Err(invalid(key, "must be greater than 0".into())),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let max_connections = positive(raw.mesh.max_connections, d.max_connections, "mesh.max_connections")?;
        let max_connections_per_ip = positive(
            raw.mesh.max_connections_per_ip,
            d.max_connections_per_ip,
            "mesh.max_connections_per_ip",
        )?;
        let member_reserved_connections = match raw.mesh.member_reserved_connections {
            Some(n) if n > max_connections => {
                return Err(invalid(
                    "mesh.member_reserved_connections",
                    format!("{n} is larger than max_connections ({max_connections})"),
                ))
            }
            Some(n) => n,
            None => max_connections / DEFAULT_MEMBER_RESERVED_SHARE,
        };
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let sd = SipConfig::default();
        let rs = raw.sip;
        let sip = SipConfig {
            domain: match rs.domain {
                Some(d) => Some(
                    Fqdn::new(&d)
                        .map_err(|e| invalid("sip.domain", e.to_string()))?
                        .to_string(),
                ),
                None => None,
            },
            users: rs.users.map(abs),
            t1: ms(rs.t1_ms, sd.t1, "sip.t1_ms")?,
            invite_timeout: ms(rs.invite_timeout_ms, sd.invite_timeout, "sip.invite_timeout_ms")?,
            min_expires: rs.min_expires.unwrap_or(sd.min_expires),
            max_expires: rs.max_expires.unwrap_or(sd.max_expires),
            auth_retry_limit: rs.auth_retry_limit.unwrap_or(sd.auth_retry_limit),
            lockout: crate::auth::Backoff {
                base: ms(rs.lockout_base_ms, sd.lockout.base, "sip.lockout_base_ms")?,
                cap: ms(rs.lockout_cap_ms, sd.lockout.cap, "sip.lockout_cap_ms")?,
            },
            max_client_connections: positive(
                rs.max_client_connections,
                sd.max_client_connections,
                "sip.max_client_connections",
            )?,
            client_idle_timeout: ms(
                rs.client_idle_timeout_ms,
                sd.client_idle_timeout,
                "sip.client_idle_timeout_ms",
            )?,
            max_client_connections_per_ip: positive(
                rs.max_client_connections_per_ip,
                sd.max_client_connections_per_ip,
                "sip.max_client_connections_per_ip",
            )?,
            client_message_timeout: ms(
                rs.client_message_timeout_ms,
                sd.client_message_timeout,
                "sip.client_message_timeout_ms",
            )?,
            unauthenticated_lifetime: ms(
                rs.unauthenticated_lifetime_ms,
                sd.unauthenticated_lifetime,
                "sip.unauthenticated_lifetime_ms",
            )?,
            max_transaction_bytes: positive(
                rs.max_transaction_bytes,
                sd.max_transaction_bytes,
                "sip.max_transaction_bytes",
            )?,
            max_transaction_bytes_per_user: positive(
                rs.max_transaction_bytes_per_user,
                sd.max_transaction_bytes_per_user,
                "sip.max_transaction_bytes_per_user",
            )?,
            certs: rs.certs.into_iter().map(|c| (abs(c.cert), abs(c.key))).collect(),
            digest_algorithms: match rs.digest_algorithms {
                None => sd.digest_algorithms.clone(),
                Some(list) if list.is_empty() => {
                    return Err(invalid(
                        "sip.digest_algorithms",
                        "must name at least one algorithm".into(),
                    ))
                }
                Some(list) => list
                    .iter()
                    .map(|a| {
                        crate::auth::Algorithm::parse(a).ok_or_else(|| {
                            invalid(
                                "sip.digest_algorithms",
                                format!("unknown algorithm {a:?} (expected \"MD5\" or \"SHA-256\")"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
            advertise: match rs.advertise {
                Some(a) => Some(check_advertise(&a).map_err(|m| invalid("sip.advertise", m))?),
                None => None,
            },
            assert_identity_to_clients: rs.assert_identity_to_clients.unwrap_or(sd.assert_identity_to_clients),
        };
        if sip.lockout.cap < sip.lockout.base {
            return Err(invalid(
                "sip.lockout_cap_ms",
                format!(
                    "{} is smaller than lockout_base_ms ({})",
                    sip.lockout.cap.as_millis(),
                    sip.lockout.base.as_millis()
                ),
            ));
        }
        if sip.min_expires > sip.max_expires {
            return Err(invalid(
                "sip.min_expires",
                format!("{} is larger than max_expires ({})", sip.min_expires, sip.max_expires),
            ));
        }
        Ok(NodeConfig {
            fqdn,
            topology: raw.topology.map(abs),
            topology_public_key: raw.topology_public_key.map(abs),
            data_dir: abs(raw.data_dir),
            debug_socket: abs(raw.debug_socket),
            mesh_listen: raw.listen.mesh,
            client_listen: raw.listen.client,
            tls: TlsPaths {
                cert: abs(raw.tls.cert),
                key: abs(raw.tls.key),
                ca: abs(raw.tls.ca),
                crls: raw.tls.crls.into_iter().map(abs).collect(),
                crl_expired: match raw.tls.crl_expired.as_deref() {
                    None => CrlExpired::default(),
                    Some(v) => CrlExpired::parse(v).ok_or_else(|| {
                        invalid("tls.crl_expired", format!("{v:?} is neither \"refuse\" nor \"warn\""))
                    })?,
                },
            },
            mesh: MeshTiming {
                heartbeat_interval,
                heartbeat_timeout,
                backoff_cap,
                handshake_timeout,
                max_connections,
                max_connections_per_ip,
                member_reserved_connections,
            },
            sip,
        })
    }

    /// Render as TOML (used by `cluster up` to write each node's file).
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let q = |p: &Path| toml_str(&p.display().to_string());
        s += &format!("fqdn = {}\n", toml_str(self.fqdn.as_str()));
        if let Some(t) = &self.topology {
            s += &format!("topology = {}\n", q(t));
        }
        if let Some(k) = &self.topology_public_key {
            s += &format!("topology_public_key = {}\n", q(k));
        }
        s += &format!("data_dir = {}\n", q(&self.data_dir));
        s += &format!("debug_socket = {}\n", q(&self.debug_socket));
        s += "\n[listen]\n";
        if let Some(a) = self.mesh_listen {
            s += &format!("mesh = \"{a}\"\n");
        }
        if let Some(a) = self.client_listen {
            s += &format!("client = \"{a}\"\n");
        }
        s += "\n[tls]\n";
        s += &format!(
            "cert = {}\nkey = {}\nca = {}\n",
            q(&self.tls.cert),
            q(&self.tls.key),
            q(&self.tls.ca)
        );
        let crls: Vec<String> = self.tls.crls.iter().map(|p| q(p)).collect();
        s += &format!("crls = [{}]\n", crls.join(", "));
        s += &format!("crl_expired = \"{}\"\n", self.tls.crl_expired.as_str());
        let m = &self.mesh;
        s += "\n[mesh]\n";
        s += &format!(
            "heartbeat_interval_ms = {}\nheartbeat_timeout_ms = {}\nbackoff_cap_ms = {}\nhandshake_timeout_ms = {}\nmax_connections = {}\nmax_connections_per_ip = {}\nmember_reserved_connections = {}\n",
            m.heartbeat_interval.as_millis(),
            m.heartbeat_timeout.as_millis(),
            m.backoff_cap.as_millis(),
            m.handshake_timeout.as_millis(),
            m.max_connections,
            m.max_connections_per_ip,
            m.member_reserved_connections
        );
        let p = &self.sip;
        s += "\n[sip]\n";
        if let Some(d) = &p.domain {
            s += &format!("domain = {}\n", toml_str(d));
        }
        if let Some(u) = &p.users {
            s += &format!("users = {}\n", q(u));
        }
        s += &format!(
            "t1_ms = {}\ninvite_timeout_ms = {}\nmin_expires = {}\nmax_expires = {}\nauth_retry_limit = {}\nmax_client_connections = {}\nclient_idle_timeout_ms = {}\n\
             max_client_connections_per_ip = {}\nclient_message_timeout_ms = {}\nunauthenticated_lifetime_ms = {}\n\
             max_transaction_bytes = {}\nmax_transaction_bytes_per_user = {}\n",
            p.t1.as_millis(),
            p.invite_timeout.as_millis(),
            p.min_expires,
            p.max_expires,
            p.auth_retry_limit,
            p.max_client_connections,
            p.client_idle_timeout.as_millis(),
            p.max_client_connections_per_ip,
            p.client_message_timeout.as_millis(),
            p.unauthenticated_lifetime.as_millis(),
            p.max_transaction_bytes,
            p.max_transaction_bytes_per_user
        );
        s += &format!(
            "lockout_base_ms = {}\nlockout_cap_ms = {}\n",
            p.lockout.base.as_millis(),
            p.lockout.cap.as_millis()
        );
        let algs: Vec<String> = p
            .digest_algorithms
            .iter()
            .map(|a| format!("\"{}\"", a.as_str()))
            .collect();
        s += &format!("digest_algorithms = [{}]\n", algs.join(", "));
        if let Some(a) = &p.advertise {
            s += &format!("advertise = {}\n", toml_str(a));
        }
        s += &format!("assert_identity_to_clients = {}\n", p.assert_identity_to_clients);
        for (cert, key) in &p.certs {
            s += &format!("\n[[sip.certs]]\ncert = {}\nkey = {}\n", q(cert), q(key));
        }
        s
    }
}

/// `sip.advertise`: `FQDN:PORT`, `IPv4:PORT` or `[IPv6]:PORT`, returned as given.
fn check_advertise(value: &str) -> Result<String, String> {
    let bad = |why: &str| format!("{value:?} {why} (expected HOST:PORT, e.g. \"sip.contoso.test:5061\")");
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err(bad("has port 0"))
        } else {
            Ok(value.to_owned())
        };
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad("has a bad port")),
    }
    Fqdn::new(host).map_err(|e| bad(&format!("has a bad host ({e})")))?;
    Ok(value.to_owned())
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
fqdn = "FE1.contoso.test"
topology = "topology.toml"
topology_public_key = "admin.pub"
data_dir = "data"
debug_socket = "/run/fe1.sock"
[listen]
mesh = "127.0.0.1:5061"
[tls]
cert = "fe1.pem"
key = "fe1.key"
ca = "ca.pem"
crls = ["ca.crl"]
[mesh]
heartbeat_interval_ms = 200
"#;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, Path::new("/etc/sipmesh/node.toml"), Path::new("/etc/sipmesh"))
    }

    #[test]
    fn good_config_resolves_paths_and_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.fqdn.as_str(), "fe1.contoso.test");
        assert_eq!(c.data_dir, PathBuf::from("/etc/sipmesh/data"));
        assert_eq!(c.debug_socket, PathBuf::from("/run/fe1.sock"));
        assert_eq!(c.tls.crls, vec![PathBuf::from("/etc/sipmesh/ca.crl")]);
        assert_eq!(c.mesh.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(c.mesh.heartbeat_timeout, Duration::from_millis(600));
        assert_eq!(c.mesh.backoff_cap, Duration::from_secs(10));
        assert_eq!(c.mesh_listen, Some("127.0.0.1:5061".parse().unwrap()));
        assert_eq!(c.client_listen, None);
        assert_eq!(c.sip.lockout.base, Duration::from_secs(10));
        assert_eq!(c.sip.lockout.cap, Duration::from_secs(900));
        let c = parse(&format!("{GOOD}[sip]\nlockout_base_ms = 250\nlockout_cap_ms = 2000\n")).unwrap();
        assert_eq!(c.sip.lockout.base, Duration::from_millis(250));
        assert_eq!(c.sip.lockout.cap, Duration::from_secs(2));
        assert_eq!(parse(&c.to_toml()).unwrap().sip.lockout, c.sip.lockout);
        assert!(
            !c.sip.assert_identity_to_clients,
            "nothing asserted to clients by default"
        );
    }

    #[test]
    fn assert_identity_to_clients_is_read_and_written() {
        let c = parse(&format!("{GOOD}[sip]\nassert_identity_to_clients = true\n")).unwrap();
        assert!(c.sip.assert_identity_to_clients);
        assert!(c.to_toml().contains("\nassert_identity_to_clients = true\n"));
        assert!(parse(&c.to_toml()).unwrap().sip.assert_identity_to_clients);
        let err = parse(&format!("{GOOD}[sip]\nassert_identity_to_clients = \"yes\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("assert_identity_to_clients"), "{err}");
        assert_eq!(c.tls.crl_expired, CrlExpired::Refuse);
    }

    #[test]
    fn crl_expired_is_refuse_or_warn() {
        let warn = parse(&GOOD.replace("crls = [\"ca.crl\"]", "crls = [\"ca.crl\"]\ncrl_expired = \"warn\"")).unwrap();
        assert_eq!(warn.tls.crl_expired, CrlExpired::Warn);
        assert_eq!(parse(&warn.to_toml()).unwrap().tls.crl_expired, CrlExpired::Warn);
        let err = parse(&GOOD.replace("crls = [\"ca.crl\"]", "crl_expired = \"ignore\""))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config /etc/sipmesh/node.toml: tls.crl_expired: \"ignore\" is neither \"refuse\" nor \"warn\""
        );
    }

    #[test]
    fn round_trips_through_to_toml() {
        let c = parse(GOOD).unwrap();
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(again.to_toml(), c.to_toml());
        assert_eq!(again.tls, c.tls);
        assert_eq!(again.mesh, c.mesh);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = GOOD.replace("[mesh]", "[mesh]\nheartbeat_intervall_ms = 5");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `heartbeat_intervall_ms`"), "{err}");
        assert!(err.starts_with("config /etc/sipmesh/node.toml:"), "{err}");
        let text = GOOD.replace("data_dir", "datadir");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `datadir`"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = parse(&GOOD.replace("FE1.contoso.test", "fe1")).unwrap_err().to_string();
        assert!(err.contains("fqdn:"), "{err}");
        let err = parse(&GOOD.replace("heartbeat_interval_ms = 200", "heartbeat_interval_ms = 0"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config /etc/sipmesh/node.toml: mesh.heartbeat_interval_ms: must be greater than 0"
        );
        let err = parse(&GOOD.replace("200", "200\nheartbeat_timeout_ms = 100"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config /etc/sipmesh/node.toml: mesh.heartbeat_timeout_ms: 100 must be larger than heartbeat_interval_ms (200)"
        );
        let err = parse(&format!("{GOOD}[sip]\nlockout_base_ms = 5000\nlockout_cap_ms = 1000\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config /etc/sipmesh/node.toml: sip.lockout_cap_ms: 1000 is smaller than lockout_base_ms (5000)"
        );
        let err = parse(&GOOD.replace("127.0.0.1:5061", "localhost"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mesh"), "{err}");
    }

    #[test]
    fn fairness_and_budget_keys() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.mesh.max_connections_per_ip, DEFAULT_MESH_MAX_CONNECTIONS_PER_IP);
        assert_eq!(c.mesh.member_reserved_connections, DEFAULT_MAX_MESH_CONNECTIONS / 4);
        assert_eq!(
            c.sip.max_client_connections_per_ip,
            DEFAULT_MAX_CLIENT_CONNECTIONS_PER_IP
        );
        assert_eq!(c.sip.client_message_timeout, Duration::from_secs(10));
        assert_eq!(c.sip.unauthenticated_lifetime, Duration::from_secs(30));
        let text = GOOD.replace("[mesh]", "[mesh]\nmax_connections = 40\nmax_connections_per_ip = 3")
            + "[sip]\nmax_transaction_bytes_per_user = 1000\nclient_message_timeout_ms = 1500\n";
        let c = parse(&text).unwrap();
        assert_eq!(c.mesh.member_reserved_connections, 10, "a quarter of max_connections");
        assert_eq!(c.mesh.max_connections_per_ip, 3);
        assert_eq!(c.sip.max_transaction_bytes_per_user, 1000);
        assert_eq!(c.sip.client_message_timeout, Duration::from_millis(1500));
        assert_eq!(parse(&c.to_toml()).unwrap().to_toml(), c.to_toml());
        let err = parse(&GOOD.replace("[mesh]", "[mesh]\nmax_connections = 4\nmember_reserved_connections = 5"))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("mesh.member_reserved_connections: 5 is larger than max_connections (4)"),
            "{err}"
        );
        let err = parse(&(GOOD.to_owned() + "[sip]\nmax_client_connections_per_ip = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("sip.max_client_connections_per_ip: must be greater than 0"),
            "{err}"
        );
    }
}
