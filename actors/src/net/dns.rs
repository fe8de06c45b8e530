//! Name resolution for the doors that dial out: mesh members named by DNS
//! (`[mesh] dns`) and partner edges (`[federation] dns`), with
//! hickory-resolver (its cache keeps answers for their TTLs). For partners
//! (RFC 3263 over TLS):
//!
//! - `allowed-server`: the partner's `address` (`HOST:PORT`, an IP or a name).
//! - `allowed-domain`: SRV `_sipfederationtls._tcp.DOMAIN` (what Lync and
//!   Skype for Business publish), then `_sips._tcp.DOMAIN`; targets tried in
//!   priority order, higher weight first within a priority.
//!
//! DNS is trusted to say where, never who: every connection is then checked
//! by name (RFC 5922), so an answer pointing elsewhere fails the handshake.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use sipmesh_state::{Partner, PartnerMode};

/// Deadline of one DNS lookup.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(3);
/// Most SRV targets tried for one partner (DoS bound on a hostile zone).
pub const MAX_SRV_TARGETS: usize = 8;

/// One place to try, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Host name (or IP literal) to connect to.
    pub host: String,
    /// Port.
    pub port: u16,
    /// SRV priority (0 for a pinned address).
    pub priority: u16,
    /// SRV weight.
    pub weight: u16,
}

/// A resolver: a configured DNS server, or the system's.
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// Ask `dns` (an `IP:PORT`, UDP and TCP) or the system's resolvers.
    pub fn new(dns: Option<SocketAddr>) -> Result<Resolver, String> {
        let mut builder = match dns {
            Some(addr) => {
                let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], group),
                    TokioConnectionProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| format!("system resolver: {e}"))?,
        };
        builder.options_mut().timeout = DNS_TIMEOUT;
        builder.options_mut().attempts = 1;
        Ok(Resolver { inner: builder.build() })
    }

    /// Where to dial `partner`, in the order to try.
    pub async fn targets(&self, partner: &Partner) -> Result<Vec<Target>, String> {
        if partner.mode == PartnerMode::AllowedServer || partner.address.is_some() {
            let address = partner.address.as_deref().ok_or("no address")?;
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| format!("address {address} is not HOST:PORT"))?;
            let port = port.parse().map_err(|_| format!("address {address}: bad port"))?;
            return Ok(vec![Target {
                host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
                port,
                priority: 0,
                weight: 0,
            }]);
        }
        let mut last = String::new();
        for service in ["_sipfederationtls._tcp", "_sips._tcp"] {
            let name = format!("{service}.{}.", partner.domain);
            match self.inner.srv_lookup(name.as_str()).await {
                Ok(answer) => {
                    let mut targets: Vec<Target> = answer
                        .iter()
                        .map(|srv| Target {
                            host: srv.target().to_utf8().trim_end_matches('.').to_ascii_lowercase(),
                            port: srv.port(),
                            priority: srv.priority(),
                            weight: srv.weight(),
                        })
                        .filter(|t| !t.host.is_empty() && t.port != 0)
                        .collect();
                    targets.sort_by_key(|t| (t.priority, std::cmp::Reverse(t.weight)));
                    targets.truncate(MAX_SRV_TARGETS);
                    if !targets.is_empty() {
                        return Ok(targets);
                    }
                }
                Err(e) => last = format!("SRV {name}: {e}"),
            }
        }
        Err(last)
    }

    /// The addresses of `host:port` (an IP literal is its own answer).
    pub async fn addrs(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let answer = self
            .inner
            .lookup_ip(format!("{host}."))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        Ok(answer.iter().map(|ip| SocketAddr::new(ip, port)).collect())
    }
}
