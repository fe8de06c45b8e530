//! Reading `node.toml`: the raw TOML shapes (unknown keys refused) and
//! their checks into a [`NodeConfig`], every error naming its key and value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sipmesh_state::Fqdn;

use super::*;

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
    federation: Option<RawFederation>,
    #[serde(default)]
    admin: RawAdmin,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    metrics: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFederation {
    tls: RawCert,
    listen: Option<SocketAddr>,
    dns: Option<SocketAddr>,
    max_connections: Option<usize>,
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
    keylog: Option<PathBuf>,
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
    dns: Option<SocketAddr>,
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
                keylog: raw.tls.keylog.map(abs),
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
                dns: raw.mesh.dns,
            },
            sip,
            admin: AdminConfig {
                metrics: raw.admin.metrics,
                http: raw.admin.http,
            },
            federation: match raw.federation {
                None => None,
                Some(f) => Some(FederationConfig {
                    cert: abs(f.tls.cert),
                    key: abs(f.tls.key),
                    listen: f.listen,
                    dns: f.dns,
                    max_connections: match f.max_connections {
                        Some(0) => return Err(invalid("federation.max_connections", "must be greater than 0".into())),
                        Some(n) => n,
                        None => DEFAULT_MAX_FEDERATION_CONNECTIONS,
                    },
                }),
            },
        })
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
