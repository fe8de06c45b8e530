//! Node configuration (`node.toml`).
//!
//! Every key is checked: an unknown key is an error that names it, so a typo
//! never silently falls back to a default. Relative paths are resolved against
//! the directory of the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// The federation side of an Edge node (`[federation]`), if any.
    pub federation: Option<FederationConfig>,
    /// The opt-in admin listeners (`[admin]`).
    pub admin: AdminConfig,
}

/// The `[admin]` section: listeners that are off unless configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// Prometheus metrics (`metrics = "127.0.0.1:9464"`): `GET /metrics`.
    pub metrics: Option<SocketAddr>,
    /// The mesh page and its live event stream (`http = "127.0.0.1:9465"`).
    pub http: Option<SocketAddr>,
}

/// Default bound on connections from partners to the federation listener.
pub const DEFAULT_MAX_FEDERATION_CONNECTIONS: usize = 256;

/// The `[federation]` section of an Edge node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederationConfig {
    /// The external certificate (leaf first) partners see (`[federation.tls] cert`).
    pub cert: PathBuf,
    /// Its private key (`[federation.tls] key`).
    pub key: PathBuf,
    /// Listen address; defaults to the member's `federation_addr`.
    pub listen: Option<SocketAddr>,
    /// Resolver for partner names (`dns = "IP:PORT"`); the system's when `None`.
    pub dns: Option<SocketAddr>,
    /// Bound on partner connections to the federation listener.
    pub max_connections: usize,
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
    /// Append TLS session secrets here (NSS key log format, for Wireshark).
    /// Off by default; anyone who can read the file can decrypt the traffic.
    pub keylog: Option<PathBuf>,
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
    /// Resolver for members whose `mesh_addr` is a DNS name (`dns =
    /// "IP:PORT"`); the system's when `None`.
    pub dns: Option<SocketAddr>,
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
            dns: None,
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

mod parse;
mod write;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
