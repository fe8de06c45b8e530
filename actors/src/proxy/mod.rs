//! The message actors: a stateful SIP proxy and registrar spread over the mesh.
//!
//! Requests enter from a client flow (TLS) or from a peer (a `Sip` frame on
//! an MTLS link) and are routed on the task that received them, against the
//! shared read-mostly view (flows, links, topology): no extra mailbox hop on
//! the hot path. Routing:
//!
//! - in-dialog requests follow their Route set: each node pops the entries it
//!   recorded (`<sip:FQDN;lr;ob=FLOW>`) and either forwards to the next node or
//!   delivers to the flow named by its own last entry;
//! - requests for `user@domain` go to the AOR's home node (rendezvous hash over
//!   the up front-end members), which looks up the bindings and forwards to the
//!   node holding the target's flow;
//! - REGISTER is authenticated at the ingress node (which remembers the flow)
//!   and stored at the home node;
//! - responses go back by Via, through the client transactions.
//!
//! Layout: this module (the [`Proxy`] and its entry points), [`route`] (the
//! routing decision, a pure function), [`txn`] (transactions and their
//! timers, responses, ACK, CANCEL), [`authn`] (who a request is from),
//! [`send`] (to flows and peers), [`answer`] (errors → status codes),
//! [`client`] (the TLS listener), [`flows`] (client connections),
//! [`registrar`] (bindings; its writer thread commits them in batches),
//! [`refusals`] (client-door refusal reasons, counted), [`home`] (rendezvous hashing).

pub mod answer;
mod authn;
pub mod client;
pub mod flows;
pub mod home;
pub mod refusals;
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

use crate::auth::{DigestAuth, FailureTracker};
use crate::config::SipConfig;
use crate::mesh::status::{LinkState, Shared};
use crate::mesh::wire::{MeshRoute, SipMeta};
use crate::mesh::SipSink;
use crate::sip::{Header, HeaderName, Host, Method, ParseError, SipMessage};
use answer::SipReject;
use flows::{Flow, FlowId, Flows};
use registrar::Registrar;
use route::{Local, Routed, RoutingView};
use txn::Transactions;

pub use txn::{ACK_WAIT, MAX_TRANSACTIONS};

/// Default Max-Forwards when a request carries none.
pub const DEFAULT_MAX_FORWARDS: u32 = 70;
/// Window in which failed digest attempts are counted.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(300);
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

/// Per-method counters of final responses, for `status`.
#[derive(Default, Serialize)]
pub struct SipCounters {
    /// Final responses sent upstream, by method then status code.
    pub transactions: BTreeMap<String, BTreeMap<u16, u64>>,
    /// Requests received, by method.
    pub requests: BTreeMap<String, u64>,
}

/// The proxy/registrar of one node.
pub struct Proxy {
    shared: Arc<Shared>,
    /// Client connections of this node.
    pub flows: Flows,
    /// The registrar (bindings stored at this node as home).
    pub registrar: Registrar,
    /// Refusals at the client door, by reason (`status` `sip.refusals`).
    pub refusals: refusals::ClientRefusals,
    config: SipConfig,
    domain: String,
    auth: Option<DigestAuth>,
    failures: Mutex<FailureTracker>,
    txns: Mutex<Transactions>,
    counters: Mutex<SipCounters>,
    /// The client listener's address (requests to it are addressed to this node).
    client_addr: SocketAddr,
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
    /// A proxy for the node whose client listener is bound at `client_addr`;
    /// `store` keeps registrations.
    pub fn new(
        shared: Arc<Shared>,
        config: SipConfig,
        store: Arc<Store>,
        client_addr: SocketAddr,
    ) -> Result<Proxy, String> {
        let auth = match &config.users {
            Some(path) => {
                let users = crate::auth::UsersFile::load(path).map_err(|e| e.to_string())?;
                Some(DigestAuth::new(
                    users,
                    crate::auth::generate_secret(),
                    crate::auth::DEFAULT_NONCE_TTL,
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
        Ok(Proxy {
            failures: Mutex::new(FailureTracker::new(config.auth_retry_limit, AUTH_FAILURE_WINDOW)),
            registrar: Registrar::new(store, config.min_expires, config.max_expires),
            refusals: Default::default(),
            shared,
            flows: Flows::default(),
            config,
            domain,
            auth,
            txns: Mutex::default(),
            counters: Mutex::default(),
            client_addr,
        })
    }

    /// The SIP domain served.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The client listener's address.
    pub fn client_addr(&self) -> SocketAddr {
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
            "requests": c.requests,
            "transactions": c.transactions,
            "refusals": self.refusals.totals(),
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
    pub fn from_client(&self, flow: &Arc<Flow>, msg: SipMessage) {
        let source = Source::Flow(flow.id);
        if !msg.is_request() {
            self.on_response(msg);
            return;
        }
        self.count_request(&msg);
        let method = msg.method().cloned().unwrap_or(Method::Other("?".into()));
        if method == Method::Ack {
            let origin = self.local_origin(flow.identity());
            self.on_ack(msg, source, origin);
            return;
        }
        if method == Method::Cancel {
            self.on_cancel(msg, source);
            return;
        }
        if let Err(why) = route::check_request(&msg, self) {
            return self.reject(&source, &msg, why);
        }
        let identity = match self.authenticate(flow, &msg) {
            Ok(id) => id,
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
            let what = if method == Method::Register { "To" } else { "From" };
            let why = SipReject::Forbidden(format!("{what} does not match the authenticated identity {identity}"));
            return self.reject(&source, &msg, why);
        }
        let origin = self.local_origin(Some(identity));
        self.route(msg, source, origin, None);
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
        if self.has_server_txn(&key) {
            return; // a retransmission of a request we are already handling
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
        let next = match routed {
            Ok(Routed::Next(n)) => n,
            Ok(Routed::Local(local)) => return self.answer_local(local, &source, &msg, identity),
            Err(why) => return self.reject(&source, &msg, why),
        };
        if mf == 0 {
            return self.reject(&source, &msg, SipReject::TooManyHops);
        }
        msg.set_header(Header::new(HeaderName::MaxForwards, &(mf - 1).to_string()));
        route::record_route(&mut msg, &source, &next, self.me());
        self.forward(msg, key, source, next, origin, hash);
    }

    /// A request this node answers itself (REGISTER at the home, OPTIONS).
    fn answer_local(&self, local: Local, source: &Source, msg: &SipMessage, identity: Option<&str>) {
        match local {
            Local::Register { flow_node, flow_id } => {
                let identity = identity.unwrap_or_default();
                match self.registrar.register(msg, identity, &flow_node, flow_id) {
                    Ok(contacts) => {
                        self.respond(source, msg, 200, "OK", contacts);
                        self.finish_server_txn(msg, 200);
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
            Host::Domain(d) => return d == self.shared.fqdn.as_str(),
            Host::V4(ip) => std::net::IpAddr::V4(*ip),
            Host::V6(ip) => std::net::IpAddr::V6(*ip),
        };
        self.client_addr.ip() == ip && port.is_none_or(|p| p == self.client_addr.port())
    }

    fn member(&self, host: &Host) -> Option<Fqdn> {
        match host {
            Host::Domain(d) => self.shared.topology.load().member(d).map(|m| m.fqdn.clone()),
            _ => None,
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
            Some(a) => a.users().user(user).is_some(),
            None => true,
        }
    }

    fn binding(&self, aor: &str) -> Result<Option<Binding>, SipReject> {
        self.registrar.lookup(aor, crate::clock::now_secs()).map_err(|e| {
            tracing::error!(error = %e, "registrar lookup failed");
            SipReject::Unavailable
        })
    }
}
