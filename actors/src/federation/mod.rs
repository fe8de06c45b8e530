//! Federation through the Edge: partner organisations over mutual TLS.
//!
//! - [`trust`]: partner anchors and the RFC 5922 name checks (dial and accept).
//! - [`Federation`]: the node's view of federation: the edge side (external
//!   certificate and listener, on an edge node), one [`PartnerState`] per
//!   partner (its outbound connection, counters, rate bucket), and the seal
//!   that hides internal Record-Route entries from partners.
//! - [`serve`]: the federation listener (a client certificate of a partner's
//!   edge is required); [`dialer`]: the task that opens outbound connections.
//!
//! Partner connections are flows of the proxy (labelled with the verified
//! partner domain), so responses and dialogs use the same machinery as
//! client connections; what differs is the door (`Proxy::from_partner`) and
//! what leaves (`Proxy::towards_partner`).

pub mod trust;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use sipmesh_state::{Partner, PartnerMode, Topology};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::config::FederationConfig;
use crate::net::accept::{accept_loop, AcceptStats, ConnPermit, Door, Limits, CLIENT_HELLO_TIMEOUT};
use crate::proxy::answer::SipReject;
use crate::proxy::Proxy;
use crate::trust::material::{certified_key, provider};
use crate::trust::{rejection_of, CertInfo, Direction, RejectReason, Rejection, TlsError};
use trust::{expected_name, FederationClientVerifier, LivePartners, PartnerServerVerifier};

/// The header an edge adds to requests from a partner: the verified partner
/// domain. Removed from whatever a client or partner sends, and from what
/// leaves to a partner, so only our edge can have written it.
pub const FEDERATION_MARK: &str = "P-Sipmesh-Partner";
/// Most connections one partner may hold to our federation listener.
pub const MAX_CONNECTIONS_PER_PARTNER: usize = 16;
/// Messages queued towards one partner (503 beyond).
pub const PARTNER_QUEUE: usize = 1024;
/// Deadline for TCP connect plus TLS handshake when dialing a partner.
pub const PARTNER_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed dial, requests to that partner get 503 for this long.
pub const PARTNER_RETRY: Duration = Duration::from_secs(5);
/// Deadline for a partner's TLS handshake on the federation listener.
pub const FEDERATION_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest sealed Record-Route token accepted (DoS bound on what we decrypt).
pub const MAX_SEALED: usize = 4096;
/// Dial requests queued for the dialer task.
pub const DIAL_QUEUE: usize = 64;

/// Why a request was refused at the federation boundary; the text form is an
/// interface (ctl, logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FedRefusal {
    /// A domain in `federation.blocked_domains`.
    BlockedDomain,
    /// From names another domain than the partner's.
    FromDomainMismatch,
    /// From a partner, for a domain that is not ours.
    NotOurDomain,
    /// A domain that is no partner.
    NotAPartner,
    /// Over the partner's `max_rate`.
    RateLimited,
    /// REGISTER from a partner.
    Register,
    /// A partner's Route naming an internal node.
    RouteNotAllowed,
    /// No edge is up to carry it.
    NoEdge,
    /// The partner's edge cannot be located (allowed-domain needs SRV).
    Unresolvable,
}

impl FedRefusal {
    /// The stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            FedRefusal::BlockedDomain => "blocked-domain",
            FedRefusal::FromDomainMismatch => "from-domain-mismatch",
            FedRefusal::NotOurDomain => "not-our-domain",
            FedRefusal::NotAPartner => "not-a-partner",
            FedRefusal::RateLimited => "rate-limited",
            FedRefusal::Register => "register",
            FedRefusal::RouteNotAllowed => "route-not-allowed",
            FedRefusal::NoEdge => "no-edge",
            FedRefusal::Unresolvable => "unresolvable",
        }
    }

    /// `CODE REASON`, as the answer's status line reads.
    pub fn answer(self) -> String {
        let (code, reason) = self.status();
        format!("{code} {reason}")
    }

    /// Status and a reason phrase that names the rule.
    pub fn status(self) -> (u16, String) {
        match self {
            FedRefusal::BlockedDomain => (403, "Forbidden (federation: blocked-domain)".into()),
            FedRefusal::FromDomainMismatch => (403, "Forbidden (federation: from-domain-mismatch)".into()),
            FedRefusal::NotOurDomain => (403, "Forbidden (federation: not-our-domain)".into()),
            FedRefusal::NotAPartner => (403, "Domain Not Allowed".into()),
            FedRefusal::RateLimited => (503, "Service Unavailable (federation: rate-limited)".into()),
            FedRefusal::Register => (403, "Forbidden (federation: register)".into()),
            FedRefusal::RouteNotAllowed => (403, "Forbidden (federation: route-not-allowed)".into()),
            FedRefusal::NoEdge => (503, "Service Unavailable (federation: no-edge)".into()),
            FedRefusal::Unresolvable => (503, "Service Unavailable (federation: unresolvable)".into()),
        }
    }
}

/// The outbound connection to one partner.
#[derive(Default)]
struct Outbound {
    /// Queue to the connection's writer (also while it is being dialled).
    tx: Option<mpsc::Sender<Bytes>>,
    up: bool,
    /// Dialing failed: 503 until then.
    retry_after: Option<Instant>,
}

/// Requests per second accepted from a partner, as a token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What this node knows about one partner.
pub struct PartnerState {
    /// Its domain.
    pub domain: String,
    requests_in: AtomicU64,
    requests_out: AtomicU64,
    inbound: AtomicUsize,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    out: Mutex<Outbound>,
    cert_not_after: Mutex<Option<time::OffsetDateTime>>,
    last_error: Mutex<Option<String>>,
    bucket: Mutex<Bucket>,
}

impl PartnerState {
    fn new(domain: &str) -> PartnerState {
        PartnerState {
            domain: domain.to_owned(),
            requests_in: AtomicU64::new(0),
            requests_out: AtomicU64::new(0),
            inbound: AtomicUsize::new(0),
            refusals: Mutex::default(),
            out: Mutex::default(),
            cert_not_after: Mutex::default(),
            last_error: Mutex::default(),
            bucket: Mutex::new(Bucket {
                tokens: f64::MAX,
                at: Instant::now(),
            }),
        }
    }
}

/// A dial the dialer task should make.
pub struct Dial {
    domain: String,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
}

/// The external side of an edge node.
pub struct EdgeSide {
    /// The public name on the external certificate (in our Record-Route and Via towards partners).
    pub fqdn: String,
    /// The federation listener's address.
    pub addr: SocketAddr,
    /// For the listener (partner client certificate required).
    server: Arc<rustls::ServerConfig>,
    /// Our external certificate, presented when dialing partners.
    key: Arc<rustls::sign::CertifiedKey>,
    /// Its notAfter.
    not_after: Option<time::OffsetDateTime>,
    /// The listener's limits.
    max_connections: usize,
}

impl EdgeSide {
    /// `HOST:PORT` put in our entries towards partners.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.fqdn, self.addr.port())
    }
}

/// One row of `ctl federation`.
#[derive(Debug, Serialize)]
pub struct PartnerRow {
    /// Partner domain.
    pub domain: String,
    /// allowed-server or allowed-domain.
    pub mode: &'static str,
    /// The name its edge must carry.
    pub edge: String,
    /// Where it is dialled.
    pub address: Option<String>,
    /// up, connecting, down or idle (outbound), from this node.
    pub state: &'static str,
    /// Open connections with it (outbound plus inbound).
    pub connections: usize,
    /// Its edge certificate's notAfter, when seen.
    pub cert_not_after: Option<String>,
    /// Requests received from it.
    pub requests_in: u64,
    /// Requests sent to it.
    pub requests_out: u64,
    /// Refusals by reason.
    pub refusals: BTreeMap<&'static str, u64>,
    /// The last dial or handshake error.
    pub last_error: Option<String>,
    /// Its rate limit, requests/s.
    pub max_rate: Option<u32>,
}

/// The federation view of one node.
pub struct Federation {
    /// The live partners (anchors and names).
    pub partners: LivePartners,
    topology: Arc<ArcSwap<Topology>>,
    /// Set on an edge with a `[federation]` section.
    pub edge: Option<EdgeSide>,
    states: Mutex<BTreeMap<String, Arc<PartnerState>>>,
    /// Refusals of connections no partner owns, by reason.
    strangers: Mutex<BTreeMap<&'static str, u64>>,
    dial_tx: Option<mpsc::Sender<Dial>>,
    seal: LessSafeKey,
    /// Counters of the federation listener's door.
    pub accept: Arc<AcceptStats>,
    /// When each refusal reason was last logged.
    logged: Mutex<BTreeMap<&'static str, Instant>>,
    /// Finds partner edges (on an edge).
    resolver: Option<crate::net::dns::Resolver>,
    /// Where refusals are announced (`ctl watch`).
    events: Arc<crate::events::EventBus>,
}

impl Federation {
    /// A node that is no federation edge: it knows the policy (to route
    /// towards the edge) but dials nobody.
    pub fn inert(topology: Arc<ArcSwap<Topology>>, events: Arc<crate::events::EventBus>) -> Federation {
        Federation {
            partners: LivePartners::new(topology.clone()),
            topology,
            edge: None,
            states: Mutex::default(),
            strangers: Mutex::default(),
            dial_tx: None,
            seal: new_seal(),
            accept: Arc::default(),
            logged: Mutex::default(),
            resolver: None,
            events,
        }
    }

    /// An edge: loads the external certificate; the receiver goes to [`dialer`].
    pub fn edge(
        topology: Arc<ArcSwap<Topology>>,
        config: &FederationConfig,
        addr: SocketAddr,
        fqdn: &str,
        events: Arc<crate::events::EventBus>,
    ) -> Result<(Federation, mpsc::Receiver<Dial>), TlsError> {
        let chain = crate::trust::material::load_chain(&config.cert)?;
        let key = crate::trust::material::load_private_key(&config.key)?;
        let not_after = chain.first().and_then(|c| CertInfo::parse(c).ok()).map(|i| i.not_after);
        let key = certified_key(chain, &key)?;
        let partners = LivePartners::new(topology.clone());
        let verifier = Arc::new(FederationClientVerifier {
            partners: partners.clone(),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key.clone())));
        server.alpn_protocols.clear();
        server.ignore_client_order = true;
        let resolver = crate::net::dns::Resolver::new(config.dns).map_err(TlsError::Verifier)?;
        let (dial_tx, dial_rx) = mpsc::channel(DIAL_QUEUE);
        Ok((
            Federation {
                partners,
                topology,
                edge: Some(EdgeSide {
                    fqdn: fqdn.to_ascii_lowercase(),
                    addr,
                    server: Arc::new(server),
                    key,
                    not_after,
                    max_connections: config.max_connections,
                }),
                states: Mutex::default(),
                strangers: Mutex::default(),
                dial_tx: Some(dial_tx),
                seal: new_seal(),
                accept: Arc::default(),
                logged: Mutex::default(),
                resolver: Some(resolver),
                events,
            },
            dial_rx,
        ))
    }

    fn state(&self, domain: &str) -> Arc<PartnerState> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .entry(domain.to_owned())
            .or_insert_with(|| Arc::new(PartnerState::new(domain)))
            .clone()
    }

    /// The partner of `domain` in the live topology (unless blocked).
    pub fn partner(&self, domain: &str) -> Option<Partner> {
        self.topology.load().federation.partner(domain).cloned()
    }

    /// Count a refusal of a request or connection of `domain` (a partner or
    /// not), and log it at most once per [`crate::proxy::REFUSAL_LOG_INTERVAL`]
    /// per reason (strangers can cause them at will).
    pub fn refused(&self, domain: Option<&str>, reason: &'static str, detail: &str) {
        let bump = |r: &mut BTreeMap<&'static str, u64>| {
            let n = r.entry(reason).or_default();
            *n += 1;
            *n
        };
        let total = match domain.filter(|d| self.partner(d).is_some()) {
            Some(d) => bump(&mut self.state(d).refusals.lock().unwrap_or_else(|p| p.into_inner())),
            None => bump(&mut self.strangers.lock().unwrap_or_else(|p| p.into_inner())),
        };
        let now = Instant::now();
        let due = {
            let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            let due = logged
                .get(reason)
                .is_none_or(|t| now.duration_since(*t) >= crate::proxy::REFUSAL_LOG_INTERVAL);
            if due {
                logged.insert(reason, now);
            }
            due
        };
        if due {
            tracing::warn!(
                partner = domain.unwrap_or("-"),
                reason,
                total,
                detail,
                "federation refusal"
            );
        }
        self.events.publish(
            "federation",
            || serde_json::json!({"partner": domain, "reason": reason, "detail": detail, "total": total}),
        );
    }

    /// A request came in from `domain`: counted, and judged against its rate.
    pub fn admit(&self, domain: &str) -> bool {
        let state = self.state(domain);
        state.requests_in.fetch_add(1, Ordering::Relaxed);
        let Some(rate) = self.partner(domain).and_then(|p| p.max_rate) else {
            return true;
        };
        let rate = f64::from(rate);
        let mut b = state.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // One second's worth of burst.
        b.tokens = (b.tokens.min(rate) + now.duration_since(b.at).as_secs_f64() * rate).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Queue `bytes` to `domain`'s edge, dialing it when no connection is up.
    pub fn send(&self, domain: &str, bytes: Bytes) -> Result<(), SipReject> {
        let Some(dial_tx) = &self.dial_tx else {
            return Err(SipReject::Federation(FedRefusal::NoEdge));
        };
        let state = self.state(domain);
        let mut out = state.out.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = out.tx.as_ref().filter(|tx| !tx.is_closed()) {
            tx.try_send(bytes).map_err(|_| SipReject::Busy)?;
            state.requests_out.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if out.retry_after.is_some_and(|t| Instant::now() < t) {
            return Err(SipReject::PathDown(domain.to_owned()));
        }
        let (tx, rx) = mpsc::channel(PARTNER_QUEUE);
        let _ = tx.try_send(bytes);
        dial_tx
            .try_send(Dial {
                domain: domain.to_owned(),
                tx: tx.clone(),
                rx,
            })
            .map_err(|_| SipReject::Busy)?;
        out.tx = Some(tx);
        out.up = false;
        state.requests_out.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Hide internal Record-Route entries: `entries` (in the order a
    /// partner's in-dialog request must cross them) as an opaque token.
    pub fn seal(&self, entries: &[String]) -> String {
        let mut data = entries.join("\n").into_bytes();
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        // Sealing with a fresh random nonce cannot fail for these sizes.
        let _ = self.seal.seal_in_place_append_tag(nonce, Aad::empty(), &mut data);
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&data);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
    }

    /// The entries a [`Federation::seal`] token of this node hides; `None`
    /// for anything we did not seal (forged, altered, or from another run).
    pub fn unseal(&self, token: &str) -> Option<Vec<String>> {
        if token.len() > MAX_SEALED {
            return None;
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let plain = self.seal.open_in_place(nonce, Aad::empty(), &mut sealed).ok()?;
        let text = std::str::from_utf8(plain).ok()?;
        Some(text.split('\n').filter(|s| !s.is_empty()).map(str::to_owned).collect())
    }

    /// One row per partner of the live topology.
    pub fn rows(&self) -> Vec<PartnerRow> {
        let topology = self.topology.load();
        topology
            .federation
            .partners
            .iter()
            .map(|p| {
                let s = self.state(&p.domain);
                let out = s.out.lock().unwrap_or_else(|e| e.into_inner());
                let outbound_open = out.tx.as_ref().is_some_and(|t| !t.is_closed());
                let state = match (self.edge.is_some(), out.up, outbound_open, out.retry_after) {
                    (false, ..) => "remote-edge",
                    (true, true, true, _) => "up",
                    (true, false, true, _) => "connecting",
                    (true, _, false, Some(t)) if Instant::now() < t => "down",
                    _ => "idle",
                };
                let cert_not_after = s
                    .cert_not_after
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .map(crate::rfc3339);
                let refusals = s.refusals.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let last_error = s.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let connections = s.inbound.load(Ordering::Relaxed) + usize::from(out.up && outbound_open);
                drop(out);
                PartnerRow {
                    domain: p.domain.clone(),
                    mode: p.mode.as_str(),
                    edge: expected_name(p),
                    address: p.address.clone(),
                    state,
                    connections,
                    cert_not_after,
                    requests_in: s.requests_in.load(Ordering::Relaxed),
                    requests_out: s.requests_out.load(Ordering::Relaxed),
                    refusals,
                    last_error,
                    max_rate: p.max_rate,
                }
            })
            .collect()
    }

    /// `ctl federation`: the partners and the refusals of strangers.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "edge": self.edge.as_ref().map(|e| serde_json::json!({
                "federation_fqdn": e.fqdn,
                "federation_addr": e.addr.to_string(),
                "cert_not_after": e.not_after.map(crate::rfc3339),
            })),
            "partners": self.rows(),
            "strangers": *self.strangers.lock().unwrap_or_else(|e| e.into_inner()),
            "blocked_domains": self.topology.load().federation.blocked_domains,
        })
    }

    /// `ctl federation explain`: which rule matches `domain`, where a
    /// request to it goes (which edge, which partner edge and address, which
    /// anchors and which name are checked), and the verdict; with `from`,
    /// also the verdict on an inbound request from that AOR. Works on any
    /// node: it reads the replicated policy.
    pub fn explain(
        &self,
        domain: &str,
        from: Option<&str>,
        our_domain: &str,
        shared: &crate::mesh::status::Shared,
    ) -> serde_json::Value {
        use sipmesh_state::DomainVerdict;
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let topology = self.topology.load();
        let edges: Vec<serde_json::Value> = topology
            .federation_edges()
            .map(|m| {
                let state = if m.fqdn == shared.fqdn {
                    "this node".to_owned()
                } else {
                    shared
                        .link(m.fqdn.as_str())
                        .map_or_else(|| "no link".to_owned(), |l| serde_json::to_value(l.state()).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default())
                };
                serde_json::json!({"fqdn": m.fqdn.as_str(), "federation_fqdn": m.federation_fqdn.as_ref().map(|f| f.as_str()), "link": state})
            })
            .collect();
        let mut out = serde_json::json!({
            "domain": domain,
            "topology_version": topology.version,
            "edges": edges,
        });
        let (rule, verdict) = if domain == our_domain {
            (
                "our own domain".to_owned(),
                "local: routed to the user's home, never federated".to_owned(),
            )
        } else {
            match topology.federation.verdict(&domain) {
                DomainVerdict::Blocked => (
                    "federation.blocked_domains".to_owned(),
                    format!("refused both ways: {}", FedRefusal::BlockedDomain.answer()),
                ),
                DomainVerdict::NotPartner => (
                    "no partner entry".to_owned(),
                    "refused: 403 Domain Not Allowed (outbound); handshake refused (inbound)".to_owned(),
                ),
                DomainVerdict::Partner(p) => {
                    out["mode"] = p.mode.as_str().into();
                    out["partner_edge"] = expected_name(p).into();
                    out["name_checked"] = serde_json::json!(format!(
                        "{} (RFC 5922: sip: URI SANs, else DNS SANs, CN only without SANs; no wildcards)",
                        expected_name(p)
                    ));
                    out["address"] = p.address.clone().into();
                    out["anchors"] = anchors(&p.ca_pem).into();
                    out["crl"] = p.crl_pem.is_some().into();
                    out["max_rate"] = p.max_rate.into();
                    let verdict = match topology.federation_edges().next() {
                        None => format!("refused: {}", FedRefusal::NoEdge.answer()),
                        Some(_) if p.mode == PartnerMode::AllowedDomain && p.address.is_none() => {
                            "allowed: front-end -> mesh -> edge -> partner edge found by SRV (_sipfederationtls._tcp, then _sips._tcp) over MTLS".to_owned()
                        }
                        Some(_) => "allowed: front-end -> mesh -> edge -> partner edge over MTLS".to_owned(),
                    };
                    (format!("partner {} ({})", p.domain, p.mode), verdict)
                }
            }
        };
        out["rule"] = rule.into();
        out["verdict"] = verdict.into();
        if let Some(from) = from {
            let from_domain = crate::sip::SipUri::parse(from)
                .ok()
                .map(|u| u.host.to_string().to_ascii_lowercase());
            let inbound = match from_domain.as_deref() {
                None => format!("refused: From {from:?} is no SIP URI"),
                Some(d) if matches!(topology.federation.verdict(d), DomainVerdict::Blocked) => {
                    format!("refused: {}", FedRefusal::BlockedDomain.answer())
                }
                Some(_) if topology.federation.partner(&domain).is_none() => {
                    "refused in the handshake: not a partner".to_owned()
                }
                Some(d) if d != domain => format!("refused: {}", FedRefusal::FromDomainMismatch.answer()),
                Some(_) => format!("allowed: into the mesh, marked {FEDERATION_MARK}: {domain}"),
            };
            out["from"] = from.into();
            out["inbound"] = inbound.into();
        }
        out
    }

    /// Where this edge would dial `domain` now: each target in order with
    /// its addresses (`None` off an edge: the edge resolves).
    pub async fn locate(&self, domain: &str) -> Option<serde_json::Value> {
        let resolver = self.resolver.as_ref()?;
        let partner = self.partner(domain)?;
        let targets = match resolver.targets(&partner).await {
            Ok(t) => t,
            Err(e) => return Some(serde_json::json!(e)),
        };
        let mut out = Vec::new();
        for t in targets {
            let addrs = match resolver.addrs(&t.host, t.port).await {
                Ok(a) => serde_json::json!(a.iter().map(|a| a.to_string()).collect::<Vec<_>>()),
                Err(e) => serde_json::json!(e),
            };
            out.push(serde_json::json!({"target": format!("{}:{}", t.host, t.port), "priority": t.priority, "weight": t.weight, "addrs": addrs}));
        }
        Some(serde_json::Value::Array(out))
    }

    /// For `ctl check`: federation certificates that expire by `horizon`:
    /// our external certificate, each partner's anchors, and each partner
    /// edge certificate seen on a connection.
    pub fn expiring(&self, horizon: time::OffsetDateTime, days: u64) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(t) = self.edge.as_ref().and_then(|e| e.not_after).filter(|t| *t <= horizon) {
            problems.push(format!(
                "this edge's external certificate expires {} (within {days} days)",
                crate::rfc3339(t)
            ));
        }
        for p in &self.topology.load().federation.partners {
            let mut pem = p.ca_pem.as_bytes();
            for der in rustls_pemfile::certs(&mut pem).flatten() {
                if let Ok(info) = CertInfo::parse(&der) {
                    if info.not_after <= horizon {
                        problems.push(format!(
                            "partner {}'s trust anchor {} expires {} (within {days} days)",
                            p.domain,
                            info.presented_name().unwrap_or_else(|| info.serial.clone()),
                            crate::rfc3339(info.not_after)
                        ));
                    }
                }
            }
            let seen = *self
                .state(&p.domain)
                .cert_not_after
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(t) = seen.filter(|t| *t <= horizon) {
                problems.push(format!(
                    "partner {}'s edge certificate expires {} (within {days} days)",
                    p.domain,
                    crate::rfc3339(t)
                ));
            }
        }
        problems
    }

    fn dial_failed(&self, domain: &str, error: String) {
        let state = self.state(domain);
        let mut out = state.out.lock().unwrap_or_else(|p| p.into_inner());
        out.tx = None;
        out.up = false;
        out.retry_after = Some(Instant::now() + PARTNER_RETRY);
        *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }
}

/// The subject of each anchor in a PEM bundle.
fn anchors(pem: &str) -> Vec<String> {
    let mut bytes = pem.as_bytes();
    rustls_pemfile::certs(&mut bytes)
        .flatten()
        .filter_map(|der| {
            x509_parser::parse_x509_certificate(&der)
                .ok()
                .map(|(_, c)| c.subject().to_string())
        })
        .collect()
}

fn new_seal() -> LessSafeKey {
    let key: [u8; 32] = rand::random();
    // A 32-byte key is what AES-256-GCM takes: this cannot fail.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("AES-256-GCM key"))
}

fn rejection_text(r: &Rejection) -> String {
    format!("{}: {}", r.reason, r.detail)
}

/// Open the connections the proxy asks for, until the proxy goes.
pub async fn dialer(proxy: Arc<Proxy>, mut rx: mpsc::Receiver<Dial>) {
    while let Some(dial) = rx.recv().await {
        actix_rt::spawn(dial_partner(proxy.clone(), dial));
    }
}

async fn dial_partner(proxy: Arc<Proxy>, dial: Dial) {
    let fed = proxy.federation().clone();
    let Some(edge) = &fed.edge else { return };
    let domain = dial.domain.clone();
    let Some(partner) = fed.partner(&domain) else {
        return fed.dial_failed(&domain, "no longer a partner".into());
    };
    let Some(resolver) = &fed.resolver else { return };
    let targets = match resolver.targets(&partner).await {
        Ok(t) => t,
        Err(e) => {
            fed.refused(Some(&domain), FedRefusal::Unresolvable.as_str(), &e);
            return fed.dial_failed(&domain, format!("unresolvable: {e}"));
        }
    };
    // RFC 3263: the next target when one cannot be reached or fails its checks.
    let mut outcome = Err(DialError::Io("no target".into()));
    for target in &targets {
        let attempt = tokio::time::timeout(PARTNER_DIAL_TIMEOUT, connect(edge, resolver, &partner, target)).await;
        outcome = match attempt {
            Ok(r) => r,
            Err(_) => Err(DialError::Io(format!(
                "dial of {}:{} timed out",
                target.host, target.port
            ))),
        };
        match &outcome {
            Ok(_) => break,
            Err(DialError::Rejected(remote, r)) => {
                proxy.shared().rejections.record(*remote, Direction::Outbound, r);
                fed.refused(Some(&domain), r.reason.as_str(), &r.detail);
            }
            Err(DialError::Io(e)) => tracing::debug!(partner = %domain, error = %e, "partner target failed"),
        }
    }
    let (tls, remote) = match outcome {
        Ok(ok) => ok,
        Err(DialError::Rejected(_, r)) => return fed.dial_failed(&domain, rejection_text(&r)),
        Err(DialError::Io(e)) => return fed.dial_failed(&domain, e),
    };
    let state = fed.state(&domain);
    *state.cert_not_after.lock().unwrap_or_else(|p| p.into_inner()) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| CertInfo::parse(c).ok())
        .map(|i| i.not_after);
    {
        let mut out = state.out.lock().unwrap_or_else(|p| p.into_inner());
        out.up = true;
        out.retry_after = None;
    }
    tracing::info!(partner = %domain, remote = %remote, "federation connection up (outbound)");
    let (rd, wr) = tokio::io::split(tls);
    let flow = proxy.flows.open_partner(dial.tx.clone(), remote, &domain);
    drop(dial.tx);
    let writer = actix_rt::spawn(crate::proxy::client::write_loop(wr, dial.rx));
    crate::proxy::client::serve_flow(rd, flow.clone(), proxy.clone(), None).await;
    proxy.flows.close(flow.id);
    {
        let mut out = state.out.lock().unwrap_or_else(|p| p.into_inner());
        if out.tx.as_ref().is_some_and(|t| t.same_channel(&flow.tx)) {
            out.tx = None;
        }
        out.up = false;
    }
    drop(flow);
    writer.abort();
    tracing::info!(partner = %domain, "federation connection closed (outbound)");
}

enum DialError {
    Rejected(SocketAddr, Rejection),
    Io(String),
}

async fn connect(
    edge: &EdgeSide,
    resolver: &crate::net::dns::Resolver,
    partner: &Partner,
    target: &crate::net::dns::Target,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, SocketAddr), DialError> {
    // The names the edge may carry: the pinned edge (allowed-server), or the
    // domain and the SRV target we were sent to (allowed-domain).
    let names = match partner.mode {
        PartnerMode::AllowedServer => vec![expected_name(partner)],
        PartnerMode::AllowedDomain => vec![target.host.clone(), partner.domain.clone()],
    };
    let sni = names[0].clone();
    let verifier = PartnerServerVerifier::new(partner, names)
        .ok_or_else(|| DialError::Io("the partner has no usable trust anchor".into()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| DialError::Io(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(edge.key.clone())));
    config.alpn_protocols.clear();
    let name = rustls::pki_types::ServerName::try_from(sni)
        .map_err(|e| DialError::Io(format!("bad partner edge name: {e}")))?;
    let addrs = resolver.addrs(&target.host, target.port).await.map_err(DialError::Io)?;
    let mut last = format!("{}:{} resolves to no address", target.host, target.port);
    let config = Arc::new(config);
    for addr in addrs {
        let tcp = match TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(e) => {
                last = format!("connect to {addr}: {e}");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        return match connector.connect(name.clone(), tcp).await {
            Ok(tls) => Ok((tls, addr)),
            Err(e) => match rejection_of(&e) {
                Some(r) => Err(DialError::Rejected(addr, r)),
                None => Err(DialError::Io(format!("TLS with {addr}: {e}"))),
            },
        };
    }
    Err(DialError::Io(last))
}

/// Accept partner connections on the federation listener until dropped.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    let fed = proxy.federation().clone();
    let Some(edge) = &fed.edge else { return };
    let door = Door {
        name: "federation",
        limits: Limits {
            total: edge.max_connections,
            reserved: 0,
            per_ip: MAX_CONNECTIONS_PER_PARTNER,
            hello_wait: CLIENT_HELLO_TIMEOUT.min(FEDERATION_HANDSHAKE_TIMEOUT),
        },
        stats: fed.accept.clone(),
        trusted: |_| false,
        refused: |_, _| {},
    };
    let handle = move |tcp, remote, permit| partner_connection(tcp, remote, proxy.clone(), permit);
    accept_loop(listener, door, handle).await
}

async fn partner_connection(tcp: TcpStream, remote: SocketAddr, proxy: Arc<Proxy>, _permit: ConnPermit) {
    let fed = proxy.federation().clone();
    let Some(edge) = &fed.edge else { return };
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(edge.server.clone());
    let tls = match tokio::time::timeout(FEDERATION_HANDSHAKE_TIMEOUT, crate::net::offload::accept(acceptor, tcp)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let r = rejection_of(&e).unwrap_or_else(|| Rejection {
                reason: RejectReason::Handshake,
                presented_name: None,
                detail: e.to_string(),
            });
            proxy.shared().rejections.record(remote, Direction::Inbound, &r);
            return fed.refused(None, r.reason.as_str(), &rejection_text(&r));
        }
        Err(_) => return fed.refused(None, RejectReason::Handshake.as_str(), "handshake timed out"),
    };
    let chain = crate::trust::peer_chain(tls.get_ref().1);
    let Some((leaf, intermediates)) = chain.split_first() else {
        return;
    };
    let domain = match fed
        .partners
        .current()
        .identify(leaf, intermediates, rustls::pki_types::UnixTime::now())
    {
        Ok(d) => d,
        Err(r) => {
            proxy.shared().rejections.record(remote, Direction::Inbound, &r);
            return fed.refused(None, r.reason.as_str(), &rejection_text(&r));
        }
    };
    let state = fed.state(&domain);
    if state.inbound.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS_PER_PARTNER {
        state.inbound.fetch_sub(1, Ordering::AcqRel);
        return fed.refused(
            Some(&domain),
            RejectReason::ConnectionLimit.as_str(),
            "too many connections",
        );
    }
    *state.cert_not_after.lock().unwrap_or_else(|p| p.into_inner()) = CertInfo::parse(leaf).ok().map(|i| i.not_after);
    tracing::info!(partner = %domain, remote = %remote, "federation connection up (inbound)");
    let (rd, wr) = tokio::io::split(tls);
    let (tx, rx) = mpsc::channel::<Bytes>(crate::proxy::flows::FLOW_QUEUE);
    let flow = proxy.flows.open_partner(tx, remote, &domain);
    let writer = actix_rt::spawn(crate::proxy::client::write_loop(wr, rx));
    crate::proxy::client::serve_flow(rd, flow.clone(), proxy.clone(), None).await;
    proxy.flows.close(flow.id);
    drop(flow);
    state.inbound.fetch_sub(1, Ordering::AcqRel);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_entries_round_trip_and_forgeries_are_refused() {
        let topology = Arc::new(ArcSwap::from_pointee(Topology {
            version: 1,
            members: Vec::new(),
            federation: Default::default(),
        }));
        let fed = Federation::inert(topology.clone(), Arc::default());
        let entries = vec![
            "<sip:127.0.0.1:5001;lr>".to_owned(),
            "<sip:10.0.0.1:5061;transport=tls;lr;ob=x>".to_owned(),
        ];
        let token = fed.seal(&entries);
        assert!(!token.contains("127.0.0.1"));
        assert_eq!(fed.unseal(&token), Some(entries));
        let mut altered = token.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(fed.unseal(std::str::from_utf8(&altered).unwrap()), None);
        assert_eq!(
            Federation::inert(topology, Arc::default()).unseal(&token),
            None,
            "another run's key"
        );
        assert_eq!(fed.unseal(&"A".repeat(MAX_SEALED + 1)), None);
    }
}
