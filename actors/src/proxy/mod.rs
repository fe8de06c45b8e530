//! The message actors: a stateful SIP proxy and registrar spread over the mesh.
//!
//! Requests enter from a client flow (TLS) or from a peer (a `Sip` frame on
//! an MTLS link) and are routed on the task that received them, against the
//! shared read-mostly view (flows, links, topology): no extra mailbox hop on
//! the hot path. Routing:
//!
//! - in-dialog requests follow their Route set: each node pops the entries it
//!   recorded (`<sip:FQDN;lr;ob=TOKEN>`, a MACed flow token, see [`flows`])
//!   and either forwards to the next node or delivers to the flow named by
//!   its own last entry;
//! - requests for `user@domain` go to the AOR's home node (rendezvous hash over
//!   the up front-end members), which looks up the bindings and forwards to the
//!   node holding the target's flow;
//! - REGISTER is authenticated at the ingress node (which remembers the flow)
//!   and stored at the home node;
//! - responses go back by Via, through the client transactions.
//!
//! Layout: this module (the [`Proxy`] and its entry points), [`route`] (the
//! routing decision, a pure function), [`txn`] (transactions and their
//! timers, ACK, CANCEL), `fork` (responses of forked requests), [`authn`] (who a request is from),
//! [`send`] (to flows and peers), [`answer`] (errors → status codes),
//! [`client`] (the TLS listener), [`flows`] (client connections),
//! [`registrar`] (bindings; its writer thread commits them in batches),
//! [`home`] (rendezvous hashing).

pub mod answer;
mod authn;
mod budget;
pub mod client;
pub mod flows;
mod fork;
pub mod home;
mod partner;
pub mod registrar;
pub mod route;
mod send;
pub mod txn;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use sipmesh_state::{Binding, Fqdn, Role, Store};

use crate::auth::DigestAuth;
use crate::config::SipConfig;
use crate::mesh::status::{LinkState, Shared};
use crate::mesh::wire::{MeshRoute, SipMeta};
use crate::mesh::SipSink;
use crate::sip::{Header, HeaderName, Host, Method, ParseError, SipMessage};
use answer::SipReject;
use flows::{Flow, FlowId, Flows, TokenCheck};
use registrar::Registrar;
use route::{Local, Routed, RoutingView};
use txn::Transactions;

pub use fork::COMPLETED_ELSEWHERE;

pub use txn::{ACK_WAIT, MAX_TRANSACTIONS};

/// Default Max-Forwards when a request carries none.
pub const DEFAULT_MAX_FORWARDS: u32 = 70;
/// Window in which failed digest attempts are counted.
pub const AUTH_FAILURE_WINDOW: Duration = crate::auth::FAILURE_WINDOW;
/// Methods listed in Allow.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, MESSAGE, REGISTER, SUBSCRIBE, NOTIFY";
/// Product token in Server / User-Agent.
pub const SERVER: &str = concat!("sipmesh/", env!("CARGO_PKG_VERSION"));

/// Where a message came from (and where its responses go).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A client connection on this node.
    Flow(FlowId),
    /// A peer node over the mesh.
    Mesh(Fqdn),
}

/// Who a request is from, as established at the ingress node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The AOR the ingress node authenticated.
    pub identity: Option<String>,
    /// The node the request entered the mesh at.
    pub ingress: String,
}

/// A message's method for log fields (`response` for a response).
struct MethodOf<'a>(&'a SipMessage);

impl std::fmt::Display for MethodOf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.method() {
            Some(m) => write!(f, "{m}"),
            None => f.write_str("response"),
        }
    }
}

/// Per-method counters of final responses, for `status`.
#[derive(Default, Serialize)]
pub struct SipCounters {
    /// Final responses sent upstream, by method then status code.
    pub transactions: BTreeMap<String, BTreeMap<u16, u64>>,
    /// Requests received, by method.
    pub requests: BTreeMap<String, u64>,
    /// Requests refused without an answer of their own, by [`Refusal`].
    pub refusals: BTreeMap<&'static str, u64>,
    /// P-Asserted-Identity / P-Preferred-Identity headers removed from
    /// client messages, or from messages towards clients.
    pub identity_headers_removed: u64,
    /// When each refusal reason was last logged.
    #[serde(skip)]
    refusal_logged: BTreeMap<&'static str, std::time::Instant>,
}

/// Refusals the proxy counts (the `refusals` object of `status`), besides
/// the answers counted by status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// An ACK matching no transaction or dialog of this flow, on a
    /// connection that proved no identity: dropped (an ACK is never answered).
    AckUnauthenticated,
    /// The same, authenticated, but its From is not the proven identity.
    AckForbidden,
    /// A Route token that is not ours, or that names another client's flow.
    BadFlowToken,
}

impl Refusal {
    /// The key in `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::AckUnauthenticated => "ack_unauthenticated",
            Refusal::AckForbidden => "ack_forbidden",
            Refusal::BadFlowToken => "bad_flow_token",
        }
    }
}

/// A refusal reason is logged at most this often (strangers can trigger them).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Identity assertions (RFC 3325) that only this trust domain may make.
pub const IDENTITY_HEADERS: [&str; 2] = ["P-Asserted-Identity", "P-Preferred-Identity"];

/// Whether `h` is one of [`IDENTITY_HEADERS`] (neither has a compact form).
fn is_identity_header(h: &Header) -> bool {
    h.name == HeaderName::Other
        && IDENTITY_HEADERS
            .iter()
            .any(|n| h.raw_name.eq_ignore_ascii_case(n.as_bytes()))
}

/// The proxy/registrar of one node.
pub struct Proxy {
    shared: Arc<Shared>,
    /// Client connections of this node.
    pub flows: Flows,
    /// The registrar (bindings stored at this node as home).
    pub registrar: Registrar,
    config: SipConfig,
    domain: String,
    auth: Option<DigestAuth>,
    /// Lockouts and counters of the client door (authn.rs).
    auth_guard: Mutex<authn::AuthGuard>,
    txns: Mutex<Transactions>,
    counters: Mutex<SipCounters>,
    /// The client listener's address (requests to it are addressed to this node).
    client_addr: Option<SocketAddr>,
    /// `HOST:PORT` clients reach us at (`sip.advertise`, else `client_addr`).
    advertise: String,
    /// Partners, and the external side when this node is the federation edge.
    federation: Arc<crate::federation::Federation>,
    /// `FEDERATION_FQDN:PORT` on the federation edge (our entry towards partners).
    federation_host: Option<String>,
    /// `HOST:PORT` of our mesh-facing Record-Route entry: the mesh listener's
    /// address, or `FQDN:PORT` when the topology names us by DNS.
    mesh_host: String,
    /// Seconds from a forwarded request's arrival to its final response, by method.
    pub txn_duration: TxnDuration,
}

/// The transaction duration histograms, one per method (`other` for
/// methods without a name of their own, so a stranger cannot add labels).
pub type TxnDuration = prometheus_client::metrics::family::Family<
    Vec<(String, String)>,
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;

/// Buckets of [`TxnDuration`], seconds: 0.5 ms to 32 s (Timer B/F is 32 s).
const TXN_DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 4.0, 16.0, 32.0,
];

fn txn_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(TXN_DURATION_BUCKETS.iter().copied())
}

fn branch() -> String {
    format!("z9hG4bK-sm{:016x}", rand::random::<u64>())
}

fn to_tag() -> String {
    format!("sm{:08x}", rand::random::<u32>())
}

/// Server transaction key: branch, sent-by and method (ACK and CANCEL match the INVITE).
fn server_key(msg: &SipMessage) -> Option<String> {
    let via = msg.top_via().ok()?;
    let method = match msg.method()? {
        Method::Ack | Method::Cancel => "INVITE".to_owned(),
        m => m.to_string(),
    };
    Some(format!(
        "{}|{}:{}|{method}",
        via.branch().unwrap_or(""),
        via.host,
        via.port.unwrap_or(0)
    ))
}

impl Proxy {
    /// A proxy for the node whose client listener is bound at `client_addr`
    /// (`None`: an edge without a client port);
    /// `store` keeps registrations.
    pub fn new(
        shared: Arc<Shared>,
        config: SipConfig,
        store: Arc<Store>,
        client_addr: Option<SocketAddr>,
        federation: Arc<crate::federation::Federation>,
    ) -> Result<Proxy, String> {
        let auth = match &config.users {
            Some(path) => {
                let users = crate::auth::UsersFile::load(path).map_err(|e| e.to_string())?;
                Some(DigestAuth::new(
                    users,
                    crate::auth::generate_secret(),
                    crate::auth::DEFAULT_NONCE_TTL,
                    shared.fqdn.as_str(),
                ))
            }
            None => None,
        };
        let domain = config
            .domain
            .clone()
            .or_else(|| auth.as_ref().map(|a| a.realm().to_owned()))
            .unwrap_or_else(|| {
                let f = shared.fqdn.as_str();
                f.split_once('.').map_or(f, |(_, rest)| rest).to_owned()
            });
        // No client port (an edge without client_addr): nothing to advertise.
        let advertise = config
            .advertise
            .clone()
            .or_else(|| client_addr.map(|a| a.to_string()))
            .unwrap_or_default();
        let mesh_host = match shared
            .topology
            .load()
            .member(shared.fqdn.as_str())
            .map(|m| &m.mesh_addr)
        {
            Some(sipmesh_state::MeshAddr::Name(_, port)) => format!("{}:{port}", shared.fqdn),
            _ => shared.mesh_addr.to_string(),
        };
        Ok(Proxy {
            txn_duration: TxnDuration::new_with_constructor(txn_histogram as fn() -> _),
            auth_guard: Mutex::new(authn::AuthGuard::new(&config)),
            registrar: Registrar::new(store, config.min_expires, config.max_expires),
            shared,
            flows: Flows::default(),
            config,
            domain,
            auth,
            txns: Mutex::default(),
            counters: Mutex::default(),
            advertise,
            client_addr,
            federation_host: federation.edge.as_ref().map(|e| e.host_port()),
            mesh_host,
            federation,
        })
    }

    /// The federation view of this node.
    pub fn federation(&self) -> &Arc<crate::federation::Federation> {
        &self.federation
    }

    /// The node's shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The `[sip]` settings.
    pub(crate) fn sip_config(&self) -> &SipConfig {
        &self.config
    }

    /// The SIP domain served.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The client listener's address.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client_addr
    }

    fn me(&self) -> &Fqdn {
        &self.shared.fqdn
    }

    fn txns(&self) -> MutexGuard<'_, Transactions> {
        self.txns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counters and sizes for `status`.
    pub fn stats(&self) -> serde_json::Value {
        let (server, client) = self.txn_counts();
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "domain": self.domain,
            "flows": self.flows.len(),
            "server_transactions": server,
            "client_transactions": client,
            "transaction_budget": self.txns().budget.stats(),
            "requests": c.requests,
            "transactions": c.transactions,
            "auth": self.auth_stats(),
            "refusals": c.refusals,
            "identity_headers_removed": c.identity_headers_removed,
            "registrar": self.registrar.stats(),
        })
    }

    fn aor_of(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.domain)
    }

    /// The home node of an AOR.
    pub fn home_of(&self, aor: &str) -> Option<Fqdn> {
        RoutingView::home_of(self, aor)
    }

    // ---- entry points --------------------------------------------------

    /// A message from a client connection.
    pub fn from_client(&self, flow: &Arc<Flow>, mut msg: SipMessage) {
        // Request-scoped fields on every line logged while handling it
        // (a disabled span costs a callsite check).
        let _span = tracing::debug_span!("sip", call_id = msg.call_id().unwrap_or(""), method = %MethodOf(&msg), peer = %flow.remote).entered();
        tracing::debug!(flow = flow.id, "from a client");
        let source = Source::Flow(flow.id);
        // Claims from outside the trust domain are removed (RFC 3325); inside
        // the mesh the identity travels in `SipMeta`, asserted by this node.
        self.strip_claims(&mut msg);
        if !msg.is_request() {
            self.on_response(msg);
            return;
        }
        // Credentials are for this proxy alone: out of the message before any
        // path (ACK and CANCEL included) can forward it.
        let credentials = authn::take_credentials(&mut msg);
        self.count_request(&msg);
        let method = msg.method().cloned().unwrap_or(Method::Other("?".into()));
        // Only what matches state skips authentication: an ACK or CANCEL of a
        // transaction this flow started, or an ACK within a dialog we
        // record-routed for this flow. Anything else is a request like any.
        let matched = match method {
            Method::Ack => self.ack_matches(&msg, &source) || route::in_dialog_of(&msg, flow.id, self),
            Method::Cancel => self.has_server_txn_from(&msg, &source),
            _ => false,
        };
        if matched {
            if method == Method::Ack {
                let origin = self.local_origin(flow.identity());
                self.on_ack(msg, source, origin);
            } else {
                self.on_cancel(msg, source);
            }
            return;
        }
        if let Err(why) = route::check_request(&msg, self) {
            return self.reject(&source, &msg, why);
        }
        let identity = match self.authenticate(flow, &msg, &credentials) {
            Ok(id) => id,
            // An ACK is never answered (RFC 3261 §17.2.3): dropped, counted.
            Err(_) if method == Method::Ack => return self.refused(Refusal::AckUnauthenticated),
            Err(why) => {
                let (code, reason) = why.status();
                return self.respond(&source, &msg, code, &reason, why.headers());
            }
        };
        // The identity a client proved must be the one it claims.
        let claimed = match method {
            Method::Register => msg.to_hdr().ok(),
            _ => msg.from_hdr().ok(),
        }
        .and_then(|a| a.uri.map(|u| u.aor()));
        if claimed.as_deref() != Some(identity.as_str()) {
            if method == Method::Ack {
                return self.refused(Refusal::AckForbidden);
            }
            let what = if method == Method::Register { "To" } else { "From" };
            let why = SipReject::Forbidden(format!("{what} does not match the authenticated identity {identity}"));
            return self.reject(&source, &msg, why);
        }
        let origin = self.local_origin(Some(identity));
        match method {
            Method::Ack => self.on_ack(msg, source, origin),
            // Authenticated, but no transaction of this flow: 481 (RFC 3261 §9.2).
            Method::Cancel => self.on_cancel(msg, source),
            _ => self.route(msg, source, origin, None),
        }
    }

    /// At a door (client or partner): remove identity assertions (counted)
    /// and our federation mark, in one pass over the headers.
    fn strip_claims(&self, msg: &mut SipMessage) {
        let mut identity = 0u64;
        msg.headers.retain(|h| {
            if is_identity_header(h) {
                identity += 1;
                return false;
            }
            !partner::is_mark(h)
        });
        if identity > 0 {
            let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            c.identity_headers_removed += identity;
        }
    }

    /// Remove P-Asserted-Identity / P-Preferred-Identity (counted).
    fn strip_identity(&self, msg: &mut SipMessage) {
        let before = msg.headers.len();
        msg.headers.retain(|h| !is_identity_header(h));
        let removed = before - msg.headers.len();
        if removed > 0 {
            let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            c.identity_headers_removed += removed as u64;
        }
    }

    /// Count a refusal and log it, at most once per [`REFUSAL_LOG_INTERVAL`] per reason.
    fn refused(&self, why: Refusal) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.refusals.entry(why.as_str()).or_default();
        *n += 1;
        let total = *n;
        let now = std::time::Instant::now();
        let last = c.refusal_logged.get(why.as_str()).copied();
        if last.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL) {
            c.refusal_logged.insert(why.as_str(), now);
            drop(c);
            tracing::warn!(reason = why.as_str(), total, "SIP request refused at the client door");
        }
    }

    fn count_request(&self, msg: &SipMessage) {
        if let Some(m) = msg.method() {
            let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            *c.requests.entry(m.to_string()).or_default() += 1;
        }
    }

    /// Answer a malformed message read from a client.
    pub fn malformed(&self, flow: &Arc<Flow>, error: &ParseError, partial: Option<&SipMessage>) {
        let (code, reason) = error.status();
        let resp = match partial {
            Some(req) if req.is_request() => {
                if req.method() == Some(&Method::Ack) {
                    return;
                }
                let mut r = SipMessage::response_to(req, code, &reason, None);
                r.headers.push(Header::new(HeaderName::Server, SERVER));
                r.to_bytes()
            }
            Some(_) => return, // never answer a response
            None => Bytes::from(format!(
                "SIP/2.0 {code} {reason}\r\nServer: {SERVER}\r\nContent-Length: 0\r\n\r\n"
            )),
        };
        let _ = flow.send(resp);
    }

    fn local_origin(&self, identity: Option<String>) -> Origin {
        Origin {
            identity,
            ingress: self.me().to_string(),
        }
    }

    /// Route a request that passed the door's checks: retransmissions
    /// absorbed, Max-Forwards and loops checked, then forwarded or answered.
    fn route(&self, mut msg: SipMessage, source: Source, origin: Origin, via: Option<MeshRoute>) {
        // The server transaction key, computed once: routing below never
        // touches the top Via or the method.
        let Some(key) = server_key(&msg) else {
            return self.reject(&source, &msg, SipReject::Malformed(ParseError::MissingHeader("Via")));
        };
        match self.server_txn_from(&key, &source) {
            Some(true) => return, // a retransmission of a request we are already handling
            // Another hop's request with the key of a live transaction (same
            // branch and sent-by): a merged request (RFC 3261 §8.2.2.2), not
            // a retransmission. Answered without touching that transaction,
            // so no connection can absorb or end another one's request.
            Some(false) => {
                return self.respond_outside_txn(&source, &msg, 482, "Loop Detected (merged request)", Vec::new())
            }
            None => {}
        }
        let mf = match msg.max_forwards() {
            Ok(v) => v.unwrap_or(DEFAULT_MAX_FORWARDS),
            Err(e) => return self.reject(&source, &msg, SipReject::Malformed(e)),
        };
        let hash = route::loop_hash(&msg);
        if route::is_loop(&msg, self.me(), &hash) {
            return self.reject(&source, &msg, SipReject::Loop);
        }
        let identity = origin.identity.as_deref();
        // Requests addressed to this node itself are answered here, whatever Max-Forwards says.
        let routed = match via {
            Some(MeshRoute::Flow(id)) => Ok(Routed::Next(route::NextHop::Flow(id))),
            Some(MeshRoute::Home { flow }) => route::at_home(&mut msg, &source, identity, flow, self),
            _ => route::by_request(&mut msg, &source, identity, self),
        };
        let routed = match routed {
            Ok(Routed::Local(local)) => return self.answer_local(local, &source, &msg, identity),
            Ok(r) => r,
            Err(why) => return self.reject(&source, &msg, why),
        };
        if mf == 0 {
            return self.reject(&source, &msg, SipReject::TooManyHops);
        }
        msg.set_header(Header::new(HeaderName::MaxForwards, &(mf - 1).to_string()));
        self.forward(msg, key, source, routed, origin, hash);
    }

    /// A request this node answers itself (REGISTER at the home, OPTIONS).
    fn answer_local(&self, local: Local, source: &Source, msg: &SipMessage, identity: Option<&str>) {
        match local {
            Local::Register { flow_node, flow_id } => {
                let identity = identity.unwrap_or_default();
                match self.registrar.register(msg, identity, &flow_node, flow_id) {
                    Ok(contacts) => {
                        self.shared.events.publish("registration", || {
                            let expires: Vec<String> = contacts.iter().map(|c| c.value_str().to_owned()).collect();
                            serde_json::json!({"aor": identity, "flow_node": flow_node, "contacts": expires})
                        });
                        self.respond(source, msg, 200, "OK", contacts);
                        self.finish_server_txn(msg, 200, source);
                    }
                    Err(why) => self.reject(source, msg, why),
                }
            }
            Local::Options => self.respond(
                source,
                msg,
                200,
                "OK",
                vec![
                    Header::new(HeaderName::Allow, ALLOW),
                    Header::other("Accept", "application/sdp, text/plain"),
                ],
            ),
        }
    }
}

impl SipSink for Proxy {
    fn relayed(&self, peer: &Fqdn, bytes: Vec<u8>, meta: SipMeta) {
        let msg = match SipMessage::parse(Bytes::from(bytes)) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "unparsable SIP message from a peer; dropped");
                return;
            }
        };
        let _span =
            tracing::debug_span!("sip", call_id = msg.call_id().unwrap_or(""), method = %MethodOf(&msg), peer = %peer)
                .entered();
        if !msg.is_request() {
            return self.on_response(msg);
        }
        let source = Source::Mesh(peer.clone());
        let origin = Origin {
            identity: meta.identity,
            ingress: meta.ingress,
        };
        match msg.method() {
            Some(Method::Ack) => self.on_ack(msg, source, origin),
            Some(Method::Cancel) => self.on_cancel(msg, source),
            _ => self.route(msg, source, origin, Some(meta.route)),
        }
    }
}

impl RoutingView for Proxy {
    fn me(&self) -> &Fqdn {
        &self.shared.fqdn
    }

    fn domain(&self) -> &str {
        &self.domain
    }

    fn is_me(&self, host: &Host, port: Option<u16>) -> bool {
        let ip = match host {
            Host::Domain(d) => {
                let federation = self
                    .federation
                    .edge
                    .as_ref()
                    .is_some_and(|e| e.fqdn.eq_ignore_ascii_case(d) && port.is_none_or(|p| p == e.addr.port()));
                return d == self.shared.fqdn.as_str()
                    || federation
                    || self.advertise.rsplit_once(':').is_some_and(|(h, p)| {
                        h.eq_ignore_ascii_case(d) && port.is_none_or(|port| p == port.to_string())
                    });
            }
            Host::V4(ip) => std::net::IpAddr::V4(*ip),
            Host::V6(ip) => std::net::IpAddr::V6(*ip),
        };
        let at = |a: SocketAddr| a.ip() == ip && port.is_none_or(|p| p == a.port());
        self.client_addr.is_some_and(at)
            || self.advertise.parse().is_ok_and(at)
            || port.is_some() && at(self.shared.mesh_addr)
            || port.is_some() && self.federation.edge.as_ref().is_some_and(|e| at(e.addr))
    }

    fn member(&self, host: &Host, port: Option<u16>) -> Option<Fqdn> {
        let topology = self.shared.topology.load();
        match host {
            Host::Domain(d) => topology.member(d).map(|m| m.fqdn.clone()),
            Host::V4(_) | Host::V6(_) => {
                let addr = SocketAddr::new(host.ip()?, port?);
                topology
                    .members
                    .iter()
                    .find(|m| m.mesh_addr == addr)
                    .map(|m| m.fqdn.clone())
                    .or_else(|| {
                        (SocketAddr::new(host.ip()?, port?) == self.shared.mesh_addr).then(|| self.shared.fqdn.clone())
                    })
            }
        }
    }

    fn home_of(&self, aor: &str) -> Option<Fqdn> {
        // Up front-end members, this node included when it is one.
        let topo = self.shared.topology.load();
        let candidates = topo.members.iter().filter(|m| m.role == Role::FrontEnd).filter(|m| {
            m.fqdn == self.shared.fqdn
                || self
                    .shared
                    .link(m.fqdn.as_str())
                    .is_some_and(|l| l.state() == LinkState::Up)
        });
        let h = home::home(aor, candidates.clone().map(|m| m.fqdn.as_str()))?;
        candidates.map(|m| &m.fqdn).find(|f| f.as_str() == h).cloned()
    }

    fn is_local_user(&self, user: &str) -> bool {
        match &self.auth {
            Some(a) => a.user(user).is_some(),
            None => true,
        }
    }

    fn flow_token(&self, flow: FlowId) -> Option<String> {
        self.flows.get(flow).map(|f| self.flows.token(&f))
    }

    fn flow_for_token(&self, token: &str) -> Result<FlowId, SipReject> {
        match self.flows.check_token(token) {
            TokenCheck::Flow(id) => Ok(id),
            TokenCheck::Gone => Err(SipReject::Unavailable),
            TokenCheck::Forged => Err(SipReject::BadFlowToken),
        }
    }

    fn record_route_as(&self) -> route::RecordRouteAs<'_> {
        route::RecordRouteAs {
            client: &self.advertise,
            mesh: &self.mesh_host,
            federation: self.federation_host.as_deref(),
        }
    }

    fn flow_identity(&self, flow: FlowId) -> Option<String> {
        let f = self.flows.get(flow)?;
        // A partner connection proves a domain, not a user.
        f.partner
            .as_ref()
            .map_or_else(|| f.identity(), |d| Some(format!("partner:{d}")))
    }

    fn flow_partner(&self, flow: FlowId) -> Option<String> {
        self.flows.get(flow).and_then(|f| f.partner.clone())
    }

    fn federation_route(&self, domain: &str) -> Result<route::NextHop, SipReject> {
        use crate::federation::FedRefusal;
        use sipmesh_state::DomainVerdict;
        let topology = self.shared.topology.load();
        match topology.federation.verdict(domain) {
            DomainVerdict::Blocked => Err(SipReject::Federation(FedRefusal::BlockedDomain)),
            DomainVerdict::NotPartner => Err(SipReject::DomainNotAllowed(domain.to_owned())),
            DomainVerdict::Partner(p) => {
                if self.federation.edge.is_some() {
                    return Ok(route::NextHop::Partner(p.domain.clone()));
                }
                topology
                    .federation_edges()
                    .find(|m| {
                        self.shared
                            .link(m.fqdn.as_str())
                            .is_some_and(|l| l.state() == LinkState::Up)
                    })
                    .map(|m| route::NextHop::Mesh(m.fqdn.clone(), MeshRoute::Dialog))
                    .ok_or(SipReject::Federation(FedRefusal::NoEdge))
            }
        }
    }

    fn unseal(&self, token: &str) -> Option<Vec<String>> {
        self.federation.unseal(token)
    }

    fn bindings(&self, aor: &str) -> Result<Vec<Binding>, SipReject> {
        self.registrar.lookup(aor, crate::clock::now_secs()).map_err(|e| {
            tracing::error!(error = %e, "registrar lookup failed");
            SipReject::Unavailable
        })
    }
}
