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
//! Layout: [`flows`] (client connections), [`client`] (the TLS listener),
//! [`registrar`], [`home`] (rendezvous hashing), [`reject`] (errors → status
//! codes), this module (authentication, routing, transactions).

pub mod client;
pub mod flows;
pub mod home;
pub mod registrar;
pub mod reject;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use sipmesh_state::{Fqdn, Role, Store};

use crate::auth::{Algorithm, AuthFailure, DigestAuth, FailureTracker};
use crate::clock::now_secs;
use crate::config::SipConfig;
use crate::sip::digest::DigestParams;
use crate::sip::{Header, HeaderName, Host, Method, ParseError, SipMessage, SipUri, StartLine};
use crate::status::{LinkState, Shared};
use crate::wire::{Frame, MeshRoute, SipMeta};
use flows::{Flow, FlowId, Flows};
use registrar::Registrar;
use reject::SipReject;

/// Largest number of live transactions (DoS bound; each holds a message).
pub const MAX_TRANSACTIONS: usize = 100_000;
/// Default Max-Forwards when a request carries none.
pub const DEFAULT_MAX_FORWARDS: u32 = 70;
/// How long a server transaction that sent a non-2xx final to an INVITE
/// waits for the ACK (Timer H = 64*T1 is for unreliable transports; on TLS the
/// ACK follows at once).
pub const ACK_WAIT: Duration = Duration::from_secs(5);
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

/// Where a request goes next.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NextHop {
    Flow(FlowId),
    Mesh(Fqdn, MeshRoute),
}

struct ServerTxn {
    source: Source,
    request: SipMessage,
    client_branch: Option<String>,
    final_status: Option<u16>,
}

/// Who a request is from, as established at the ingress node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The AOR the ingress node authenticated.
    pub identity: Option<String>,
    /// The node the request entered the mesh at.
    pub ingress: String,
}

struct ClientTxn {
    server_key: String,
    forwarded: SipMessage,
    next: NextHop,
    origin: Origin,
    provisional: bool,
    timer: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct Transactions {
    server: HashMap<String, ServerTxn>,
    client: HashMap<String, ClientTxn>,
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
    config: SipConfig,
    domain: String,
    auth: Option<DigestAuth>,
    failures: Mutex<FailureTracker>,
    txns: Mutex<Transactions>,
    counters: Mutex<SipCounters>,
    /// The client listener's address (requests to it are addressed to this node).
    pub client_addr: Mutex<Option<SocketAddr>>,
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

/// Hash for loop detection over what identifies the request at this hop.
fn loop_hash(msg: &SipMessage) -> String {
    let uri = match &msg.start {
        StartLine::Request { uri, .. } => uri.as_str(),
        StartLine::Response { .. } => "",
    };
    let from_tag = msg
        .from_hdr()
        .ok()
        .and_then(|f| f.tag().map(str::to_owned))
        .unwrap_or_default();
    let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
    let call_id = msg.call_id().unwrap_or("");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uri
        .bytes()
        .chain(call_id.bytes())
        .chain(from_tag.bytes())
        .chain(cseq.to_be_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Proxy {
    /// A proxy for the node; `store` keeps registrations.
    pub fn new(shared: Arc<Shared>, config: SipConfig, store: Arc<Store>) -> Result<Proxy, String> {
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
            shared,
            flows: Flows::default(),
            config,
            domain,
            auth,
            txns: Mutex::default(),
            counters: Mutex::default(),
            client_addr: Mutex::new(None),
        })
    }

    /// The SIP domain served.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Counters and sizes for `status`.
    pub fn stats(&self) -> serde_json::Value {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let t = self.txns.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "domain": self.domain,
            "flows": self.flows.len(),
            "server_transactions": t.server.len(),
            "client_transactions": t.client.len(),
            "requests": c.requests,
            "transactions": c.transactions,
        })
    }

    fn is_local_user(&self, user: &str) -> bool {
        match &self.auth {
            Some(a) => a.users().user(user).is_some(),
            None => true,
        }
    }

    fn aor_of(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.domain)
    }

    // ---- sending -------------------------------------------------------

    fn send_to_source(&self, source: &Source, msg: &SipMessage) {
        match source {
            Source::Flow(id) => {
                if let Some(flow) = self.flows.get(*id) {
                    if !flow.send(msg.to_bytes()) {
                        tracing::debug!(flow = id, "client queue full; response dropped");
                    }
                }
            }
            Source::Mesh(peer) => {
                let _ = self.send_mesh(peer, msg, None, MeshRoute::Response);
            }
        }
    }

    fn send_mesh(
        &self,
        peer: &Fqdn,
        msg: &SipMessage,
        origin: Option<&Origin>,
        route: MeshRoute,
    ) -> Result<(), SipReject> {
        let link = self
            .shared
            .link(peer.as_str())
            .ok_or_else(|| SipReject::PathDown(peer.to_string()))?;
        let frame = Frame::Sip {
            // Reuses the serialized buffer: no second copy.
            message: Vec::from(msg.to_bytes()),
            meta: SipMeta {
                identity: origin.and_then(|o| o.identity.clone()),
                ingress: origin.map_or_else(|| self.shared.fqdn.to_string(), |o| o.ingress.clone()),
                route,
            },
        };
        link.send_frame(frame).map_err(|e| match e {
            crate::status::SendError::Down => SipReject::PathDown(peer.to_string()),
            crate::status::SendError::Full => SipReject::Busy,
        })
    }

    fn send_next(&self, next: &NextHop, msg: &SipMessage, origin: &Origin) -> Result<(), SipReject> {
        match next {
            NextHop::Flow(id) => {
                let flow = self.flows.get(*id).ok_or(SipReject::Unavailable)?;
                if flow.send(msg.to_bytes()) {
                    Ok(())
                } else {
                    Err(SipReject::Busy)
                }
            }
            NextHop::Mesh(peer, route) => self.send_mesh(peer, msg, Some(origin), route.clone()),
        }
    }

    /// Answer a request ourselves (and count it).
    fn respond(&self, source: &Source, req: &SipMessage, code: u16, reason: &str, extra: Vec<Header>) {
        if req.method() == Some(&Method::Ack) {
            return; // ACK is never answered
        }
        let tag = (code > 100 && req.to_hdr().ok().and_then(|t| t.tag().map(str::to_owned)).is_none()).then(to_tag);
        let mut resp = SipMessage::response_to(req, code, reason, tag.as_deref());
        for h in extra {
            resp.headers.push(h);
        }
        resp.headers.push(Header::new(HeaderName::Server, SERVER));
        if code >= 200 {
            self.count_final(req, code);
            // A CANCEL shares the INVITE's key; its answer does not answer the INVITE.
            if let Some(key) = server_key(req).filter(|_| req.method() != Some(&Method::Cancel)) {
                let mut t = self.txns.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(st) = t.server.get_mut(&key) {
                    st.final_status = Some(code);
                }
            }
        }
        self.send_to_source(source, &resp);
    }

    fn reject(self: &Arc<Self>, source: &Source, req: &SipMessage, why: SipReject) {
        let (code, reason) = why.status();
        tracing::debug!(code, reason = %reason, cause = %why, "answering request with an error");
        self.respond(source, req, code, &reason, why.headers());
        // A rejected INVITE's server transaction still absorbs the ACK.
        self.finish_server_txn(req, code);
    }

    fn count_final(&self, req: &SipMessage, code: u16) {
        let method = req.method().map_or_else(|| "?".to_owned(), |m| m.to_string());
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *c.transactions.entry(method).or_default().entry(code).or_default() += 1;
    }

    // ---- entry points --------------------------------------------------

    /// A message from a client connection.
    pub fn from_client(self: &Arc<Self>, flow: &Arc<Flow>, msg: SipMessage) {
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
        if let Err(why) = self.check_request(&msg) {
            return self.reject(&source, &msg, why);
        }
        let identity = match self.authenticate(flow, &msg) {
            Ok(id) => id,
            Err(answer) => {
                let (code, reason, headers) = answer;
                self.respond(&source, &msg, code, &reason, headers);
                return;
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
            self.reject(
                &source,
                &msg,
                SipReject::Forbidden(format!("{what} does not match the authenticated identity {identity}")),
            );
            return;
        }
        let origin = self.local_origin(Some(identity));
        self.route(msg, source, origin, None);
    }

    /// A message relayed by a peer.
    pub fn from_mesh(self: &Arc<Self>, peer: &Fqdn, bytes: Vec<u8>, meta: SipMeta) {
        let msg = match SipMessage::parse(Bytes::from(bytes)) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "unparsable SIP message from a peer; dropped");
                return;
            }
        };
        if !msg.is_request() {
            self.on_response(msg);
            return;
        }
        let source = Source::Mesh(peer.clone());
        match msg.method() {
            Some(Method::Ack) => {
                let origin = Origin {
                    identity: meta.identity,
                    ingress: meta.ingress,
                };
                return self.on_ack(msg, source, origin);
            }
            Some(Method::Cancel) => return self.on_cancel(msg, source),
            _ => {}
        }
        let origin = Origin {
            identity: meta.identity,
            ingress: meta.ingress,
        };
        self.route(msg, source, origin, Some(meta.route));
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

    /// RFC 3261 §16.3 request validation that comes before authentication:
    /// URI scheme, Max-Forwards, Proxy-Require.
    fn check_request(&self, msg: &SipMessage) -> Result<(), SipReject> {
        if let StartLine::Request { uri, .. } = &msg.start {
            let scheme = uri.split(':').next().unwrap_or("").to_ascii_lowercase();
            if scheme != "sip" && scheme != "sips" {
                return Err(SipReject::UnsupportedScheme);
            }
        }
        if msg.max_forwards().map_err(SipReject::Malformed)? == Some(0) {
            // Only an OPTIONS addressed to this node itself may still be answered.
            let to_me = match &msg.start {
                StartLine::Request { uri, .. } => SipUri::parse(uri).is_ok_and(|u| {
                    u.user.is_none() && (self.is_me(&u.host, u.port) || u.host == Host::Domain(self.domain.clone()))
                }),
                StartLine::Response { .. } => false,
            };
            if !(to_me && msg.method() == Some(&Method::Options)) {
                return Err(SipReject::TooManyHops);
            }
        }
        let required: Vec<String> = msg
            .values(HeaderName::ProxyRequire)
            .into_iter()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        if !required.is_empty() {
            return Err(SipReject::BadExtension(required));
        }
        Ok(())
    }

    fn local_origin(&self, identity: Option<String>) -> Origin {
        Origin {
            identity,
            ingress: self.shared.fqdn.to_string(),
        }
    }

    // ---- authentication ------------------------------------------------

    #[allow(clippy::type_complexity)]
    fn authenticate(&self, flow: &Arc<Flow>, msg: &SipMessage) -> Result<String, (u16, String, Vec<Header>)> {
        if let Some(id) = flow.identity() {
            return Ok(id);
        }
        let register = msg.method() == Some(&Method::Register);
        let Some(auth) = &self.auth else {
            return Err((
                403,
                "Forbidden (no digest users configured; use a client certificate)".into(),
                vec![],
            ));
        };
        let challenge = |stale: bool| {
            let (code, reason, name) = if register {
                (401, "Unauthorized", HeaderName::WwwAuthenticate)
            } else {
                (407, "Proxy Authentication Required", HeaderName::ProxyAuthenticate)
            };
            let headers = auth
                .challenges_for(stale, &self.config.digest_algorithms)
                .iter()
                .map(|c| Header::new(name, c))
                .collect();
            Err((code, reason.to_owned(), headers))
        };
        let creds = msg
            .header(HeaderName::Authorization)
            .or_else(|| msg.header(HeaderName::ProxyAuthorization))
            .map(|h| h.value_str().to_owned());
        let Some(creds) = creds else {
            return challenge(false);
        };
        // One parse serves the algorithm policy, the verification and the
        // failure key, so they cannot read the header differently.
        let parsed = DigestParams::parse(&creds);
        let verdict = match &parsed {
            Err(e) => Err(AuthFailure::from(e.clone())),
            Ok(params) => {
                let used = params.algorithm().and_then(Algorithm::parse).unwrap_or(Algorithm::Md5);
                if !self.config.digest_algorithms.contains(&used) {
                    return challenge(false);
                }
                let method = msg.method().map(|m| m.to_string()).unwrap_or_default();
                auth.verify(&method, params)
            }
        };
        match verdict {
            Ok(user) => {
                let identity = self.aor_of(&user);
                *flow.digest_identity.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity.clone());
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .succeed(&format!("{}|{user}", flow.remote.ip()));
                Ok(identity)
            }
            Err(AuthFailure::Malformed(why)) => Err((400, format!("Bad Authorization ({why})"), vec![])),
            Err(e) if e.is_stale() => challenge(true),
            Err(e) if e.is_credential_failure() => {
                let user = match &e {
                    AuthFailure::UnknownUser(u) => u.clone(),
                    _ => parsed
                        .as_ref()
                        .ok()
                        .and_then(DigestParams::username)
                        .unwrap_or_default()
                        .to_owned(),
                };
                let key = format!("{}|{user}", flow.remote.ip());
                let blocked = self
                    .failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .fail(&key, Instant::now());
                tracing::warn!(remote = %flow.remote, user = %user, blocked, "digest authentication failed");
                if blocked {
                    Err((
                        403,
                        "Forbidden (too many failed authentication attempts)".into(),
                        vec![],
                    ))
                } else {
                    challenge(false)
                }
            }
            Err(_) => challenge(false),
        }
    }

    // ---- routing -------------------------------------------------------

    fn is_me(&self, host: &Host, port: Option<u16>) -> bool {
        match host {
            Host::Domain(d) => d == self.shared.fqdn.as_str(),
            Host::V4(ip) => {
                let ip = std::net::IpAddr::V4(*ip);
                let client = *self.client_addr.lock().unwrap_or_else(|p| p.into_inner());
                client.is_some_and(|a| a.ip() == ip && port.is_none_or(|p| p == a.port()))
            }
            Host::V6(ip) => {
                let ip = std::net::IpAddr::V6(*ip);
                let client = *self.client_addr.lock().unwrap_or_else(|p| p.into_inner());
                client.is_some_and(|a| a.ip() == ip && port.is_none_or(|p| p == a.port()))
            }
        }
    }

    fn member_of(&self, host: &Host) -> Option<Fqdn> {
        match host {
            Host::Domain(d) => self.shared.topology.load().member(d).map(|m| m.fqdn.clone()),
            _ => None,
        }
    }

    /// Up front-end members (this node included when it is one).
    fn home_candidates(&self) -> Vec<Fqdn> {
        let topo = self.shared.topology.load();
        topo.members
            .iter()
            .filter(|m| m.role == Role::FrontEnd)
            .filter(|m| {
                m.fqdn == self.shared.fqdn
                    || self
                        .shared
                        .link(m.fqdn.as_str())
                        .is_some_and(|l| l.state() == LinkState::Up)
            })
            .map(|m| m.fqdn.clone())
            .collect()
    }

    /// The home node of an AOR.
    pub fn home_of(&self, aor: &str) -> Option<Fqdn> {
        let candidates = self.home_candidates();
        let h = home::home(aor, candidates.iter().map(|f| f.as_str()))?;
        candidates.iter().find(|f| f.as_str() == h).cloned()
    }

    fn route(self: &Arc<Self>, mut msg: SipMessage, source: Source, origin: Origin, via: Option<MeshRoute>) {
        let identity = origin.identity.clone();
        // The server transaction key, computed once: routing below never
        // touches the top Via or the method.
        let Some(key) = server_key(&msg) else {
            return self.reject(&source, &msg, SipReject::Malformed(ParseError::MissingHeader("Via")));
        };
        // A retransmission of a request we are already handling.
        if self
            .txns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .server
            .contains_key(&key)
        {
            return;
        }
        // Max-Forwards.
        let mf = match msg.max_forwards() {
            Ok(v) => v.unwrap_or(DEFAULT_MAX_FORWARDS),
            Err(e) => return self.reject(&source, &msg, SipReject::Malformed(e)),
        };
        let hash = loop_hash(&msg);
        if let Ok(vias) = msg.vias() {
            if vias
                .iter()
                .any(|v| v.host == self.shared.fqdn.as_str() && v.param("sm") == Some(Some(hash.as_str())))
            {
                return self.reject(&source, &msg, SipReject::Loop);
            }
        }
        let method = msg.method().cloned().unwrap_or(Method::Other("?".into()));
        // Requests addressed to this node itself are answered here, whatever Max-Forwards says.
        let next = match via {
            Some(MeshRoute::Flow(id)) => Ok(NextHop::Flow(id)),
            Some(MeshRoute::Home { flow }) => self.route_home(&mut msg, &source, identity.as_deref(), flow),
            _ => self.route_by_request(&mut msg, &source, identity.as_deref()),
        };
        let next = match next {
            Ok(n) => n,
            Err(Some(why)) => return self.reject(&source, &msg, why),
            Err(None) => return, // answered locally
        };
        if mf == 0 {
            return self.reject(&source, &msg, SipReject::TooManyHops);
        }
        msg.set_header(Header::new(HeaderName::MaxForwards, &(mf - 1).to_string()));
        // Dialog-creating requests are record-routed by the nodes holding the flows.
        let dialog_creating = matches!(method, Method::Invite | Method::Subscribe)
            && msg.to_hdr().ok().is_some_and(|t| t.tag().is_none());
        if dialog_creating {
            let rr_flow = match (&source, &next) {
                (Source::Flow(f), _) => Some(*f),
                (_, NextHop::Flow(f)) => Some(*f),
                _ => None,
            };
            if let Some(f) = rr_flow {
                msg.push_header_front(Header::new(
                    HeaderName::RecordRoute,
                    &format!("<sip:{};lr;ob={f}>", self.shared.fqdn),
                ));
            }
            // When both ends are on this node, record both flows.
            if let (Source::Flow(a), NextHop::Flow(b)) = (&source, &next) {
                if a != b {
                    msg.push_header_front(Header::new(
                        HeaderName::RecordRoute,
                        &format!("<sip:{};lr;ob={b}>", self.shared.fqdn),
                    ));
                }
            }
        }
        self.forward(msg, key, source, next, origin, hash);
    }

    /// Decide the next hop of a request from its Route set and Request-URI.
    /// `Err(None)`: answered locally.
    fn route_by_request(
        self: &Arc<Self>,
        msg: &mut SipMessage,
        source: &Source,
        identity: Option<&str>,
    ) -> Result<NextHop, Option<SipReject>> {
        // Loose routing: pop our own entries, remembering the flow of the last one.
        let mut popped_flow = None;
        loop {
            let routes = msg.routes().map_err(|e| Some(SipReject::Malformed(e)))?;
            let Some(top) = routes.first() else { break };
            let Some(uri) = &top.uri else {
                return Err(Some(SipReject::BadRequest("Bad Route".into())));
            };
            if self.is_me(&uri.host, uri.port) {
                popped_flow = uri.param("ob").flatten().and_then(|v| v.parse::<u64>().ok());
                msg.remove_first(HeaderName::Route);
                continue;
            }
            if let Some(member) = self.member_of(&uri.host) {
                return Ok(NextHop::Mesh(member, MeshRoute::Dialog));
            }
            return Err(Some(SipReject::DomainNotAllowed(uri.host.to_string())));
        }
        if let Some(flow) = popped_flow {
            // The last entry we popped names the flow on our side of the dialog.
            if *source != Source::Flow(flow) {
                return Ok(NextHop::Flow(flow));
            }
        }
        let ruri = match &msg.start {
            StartLine::Request { uri, .. } => SipUri::parse(uri).map_err(|e| Some(SipReject::Malformed(e)))?,
            StartLine::Response { .. } => return Err(Some(SipReject::BadRequest("Not A Request".into()))),
        };
        if msg.method() == Some(&Method::Register) {
            // Bindings live at the home of the AOR being registered (To).
            let aor = msg
                .to_hdr()
                .ok()
                .and_then(|t| t.uri.map(|u| u.aor()))
                .ok_or(Some(SipReject::BadRequest("Bad To".into())))?;
            let home = self.home_of(&aor).ok_or(Some(SipReject::Unavailable))?;
            if home == self.shared.fqdn {
                return self.route_home(msg, source, identity, None);
            }
            let flow = match source {
                Source::Flow(f) => Some(*f),
                Source::Mesh(_) => None,
            };
            return Ok(NextHop::Mesh(home, MeshRoute::Home { flow }));
        }
        if ruri.user.is_none() && (self.is_me(&ruri.host, ruri.port) || ruri.host == Host::Domain(self.domain.clone()))
        {
            return self.route_home(msg, source, identity, None);
        }
        if ruri.user.is_none() {
            if let Some(member) = self.member_of(&ruri.host) {
                return Ok(NextHop::Mesh(member, MeshRoute::Home { flow: None }));
            }
        }
        if ruri.host != Host::Domain(self.domain.clone()) {
            return Err(Some(SipReject::DomainNotAllowed(ruri.host.to_string())));
        }
        let user = ruri.user.clone().unwrap_or_default();
        if !self.is_local_user(&user) {
            return Err(Some(SipReject::NotFound));
        }
        let aor = ruri.aor();
        let home = self.home_of(&aor).ok_or(Some(SipReject::Unavailable))?;
        if home == self.shared.fqdn {
            return self.route_home(msg, source, identity, None);
        }
        Ok(NextHop::Mesh(home, MeshRoute::Home { flow: None }))
    }

    /// This node is the home of the request's target (or the request is for
    /// the node / domain itself).
    fn route_home(
        self: &Arc<Self>,
        msg: &mut SipMessage,
        source: &Source,
        identity: Option<&str>,
        register_flow: Option<u64>,
    ) -> Result<NextHop, Option<SipReject>> {
        let method = msg.method().cloned().unwrap_or(Method::Other("?".into()));
        let ruri = match &msg.start {
            StartLine::Request { uri, .. } => SipUri::parse(uri).map_err(|e| Some(SipReject::Malformed(e)))?,
            StartLine::Response { .. } => return Err(Some(SipReject::BadRequest("Not A Request".into()))),
        };
        if method == Method::Register {
            let (flow_node, flow_id) = match (source, register_flow) {
                (Source::Flow(f), _) => (self.shared.fqdn.to_string(), *f),
                (Source::Mesh(peer), Some(f)) => (peer.to_string(), f),
                (Source::Mesh(_), None) => {
                    return Err(Some(SipReject::BadRequest("REGISTER Without A Flow".into())));
                }
            };
            let identity = identity.ok_or(Some(SipReject::Forbidden("unauthenticated REGISTER".into())))?;
            match self.registrar.register(msg, identity, &flow_node, flow_id) {
                Ok(resp_headers) => {
                    self.respond(source, msg, 200, "OK", resp_headers);
                    self.finish_server_txn(msg, 200);
                    return Err(None);
                }
                Err(why) => return Err(Some(why)),
            }
        }
        if ruri.user.is_none() {
            if method == Method::Options {
                self.respond(
                    source,
                    msg,
                    200,
                    "OK",
                    vec![
                        Header::new(HeaderName::Allow, ALLOW),
                        Header::other("Accept", "application/sdp, text/plain"),
                    ],
                );
                return Err(None);
            }
            return Err(Some(SipReject::NotFound));
        }
        let user = ruri.user.clone().unwrap_or_default();
        if ruri.host != Host::Domain(self.domain.clone()) {
            return Err(Some(SipReject::DomainNotAllowed(ruri.host.to_string())));
        }
        if !self.is_local_user(&user) {
            return Err(Some(SipReject::NotFound));
        }
        let aor = ruri.aor();
        let binding = self
            .registrar
            .lookup(&aor, now_secs())
            .map_err(|e| {
                tracing::error!(error = %e, "registrar lookup failed");
                Some(SipReject::Unavailable)
            })?
            .ok_or(Some(SipReject::Unavailable))?;
        // Retarget to the registered contact.
        if let StartLine::Request { uri, .. } = &mut msg.start {
            *uri = binding.contact.clone();
        }
        if binding.flow_node == self.shared.fqdn.as_str() {
            Ok(NextHop::Flow(binding.flow_id))
        } else {
            let node = Fqdn::new(&binding.flow_node).map_err(|_| Some(SipReject::Unavailable))?;
            Ok(NextHop::Mesh(node, MeshRoute::Flow(binding.flow_id)))
        }
    }

    // ---- transactions --------------------------------------------------

    fn forward(
        self: &Arc<Self>,
        mut msg: SipMessage,
        key: String,
        source: Source,
        next: NextHop,
        origin: Origin,
        hash: String,
    ) {
        let method = msg.method().cloned().unwrap_or(Method::Other("?".into()));
        let b = branch();
        {
            let mut t = self.txns.lock().unwrap_or_else(|p| p.into_inner());
            if t.server.len() >= MAX_TRANSACTIONS {
                drop(t);
                return self.reject(&source, &msg, SipReject::Busy);
            }
            t.server.insert(
                key.clone(),
                ServerTxn {
                    source: source.clone(),
                    request: msg.clone(),
                    client_branch: Some(b.clone()),
                    final_status: None,
                },
            );
        }
        if method == Method::Invite {
            self.respond(&source, &msg, 100, "Trying", vec![]);
        }
        msg.push_header_front(Header::new(
            HeaderName::Via,
            &format!("SIP/2.0/TLS {};branch={b};sm={hash}", self.shared.fqdn),
        ));
        if let Err(why) = self.send_next(&next, &msg, &origin) {
            self.txns.lock().unwrap_or_else(|p| p.into_inner()).server.remove(&key);
            let original = {
                let mut m = msg.clone();
                m.remove_first(HeaderName::Via);
                m
            };
            return self.reject(&source, &original, why);
        }
        let timeout = 64 * self.config.t1;
        let timer = self.start_timer(b.clone(), timeout);
        self.txns.lock().unwrap_or_else(|p| p.into_inner()).client.insert(
            b,
            ClientTxn {
                server_key: key,
                forwarded: msg,
                next,
                origin,
                provisional: false,
                timer: Some(timer),
            },
        );
    }

    fn start_timer(self: &Arc<Self>, branch: String, after: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        actix_rt::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(me) = me.upgrade() {
                me.on_timeout(&branch);
            }
        })
    }

    fn on_timeout(self: &Arc<Self>, branch: &str) {
        let (ctx, server) = {
            let mut t = self.txns.lock().unwrap_or_else(|p| p.into_inner());
            let Some(ct) = t.client.remove(branch) else { return };
            let server = t.server.remove(&ct.server_key);
            (ct, server)
        };
        tracing::info!(branch, "transaction timed out");
        if ctx.forwarded.method() == Some(&Method::Invite) {
            self.send_cancel(&ctx);
        }
        if let Some(st) = server {
            if st.final_status.is_none() {
                let (code, reason) = SipReject::Timeout.status();
                self.respond(&st.source, &st.request, code, &reason, vec![]);
            }
        }
    }

    fn send_cancel(&self, ct: &ClientTxn) {
        // CANCEL keeps the INVITE's To (RFC 3261 §9.1).
        let to = ct.forwarded.header(HeaderName::To).cloned();
        self.send_hop_request(ct, Method::Cancel, to);
    }

    /// A hop-by-hop request (CANCEL, or ACK for a non-2xx) for the INVITE of
    /// `ct`: same Request-URI, Call-ID, From, Route and CSeq number, the
    /// INVITE's top Via (ours) only, no body.
    fn send_hop_request(&self, ct: &ClientTxn, method: Method, to: Option<Header>) {
        let mut req = ct.forwarded.clone();
        let seq = ct.forwarded.cseq().map(|c| c.seq).unwrap_or(1);
        if let StartLine::Request { uri, .. } = &ct.forwarded.start {
            req.start = StartLine::Request {
                method: method.clone(),
                uri: uri.clone(),
            };
        }
        let top = ct.forwarded.headers_named(HeaderName::Via).next().cloned();
        req.headers.retain(|h| {
            matches!(
                h.name,
                HeaderName::From | HeaderName::CallId | HeaderName::Route | HeaderName::MaxForwards
            )
        });
        if let Some(v) = top {
            // Keep only the first value of a possibly comma-joined Via.
            let first = v.value_str().split(',').next().unwrap_or("").trim().to_owned();
            req.headers.insert(0, Header::new(HeaderName::Via, &first));
        }
        req.headers.extend(to);
        req.headers
            .push(Header::new(HeaderName::CSeq, &format!("{seq} {method}")));
        req.body = Bytes::new();
        let _ = self.send_next(&ct.next, &req, &ct.origin);
    }

    fn finish_server_txn(self: &Arc<Self>, req: &SipMessage, code: u16) {
        if matches!(req.method(), Some(Method::Cancel | Method::Ack)) {
            return; // they share the INVITE's key but are not the INVITE
        }
        let Some(key) = server_key(req) else { return };
        let invite_failed = req.method() == Some(&Method::Invite) && code >= 300;
        let mut t = self.txns.lock().unwrap_or_else(|p| p.into_inner());
        if invite_failed {
            // Keep it to absorb the ACK; drop it after ACK_WAIT at the latest.
            if let Some(st) = t.server.get_mut(&key) {
                st.final_status = Some(code);
            } else {
                t.server.insert(
                    key.clone(),
                    ServerTxn {
                        source: Source::Mesh(self.shared.fqdn.clone()),
                        request: req.clone(),
                        client_branch: None,
                        final_status: Some(code),
                    },
                );
            }
            drop(t);
            self.expire_server_txn(key);
        } else if code >= 200 {
            t.server.remove(&key);
        }
    }

    fn expire_server_txn(self: &Arc<Self>, key: String) {
        let proxy = Arc::downgrade(self);
        actix_rt::spawn(async move {
            tokio::time::sleep(ACK_WAIT).await;
            if let Some(p) = proxy.upgrade() {
                p.txns.lock().unwrap_or_else(|p| p.into_inner()).server.remove(&key);
            }
        });
    }

    fn on_response(self: &Arc<Self>, mut resp: SipMessage) {
        let Ok(via) = resp.top_via() else { return };
        if via.host != self.shared.fqdn.as_str() {
            tracing::debug!(via = %via, "response not for us; dropped");
            return;
        }
        let Some(b) = via.branch().map(str::to_owned) else {
            return;
        };
        if resp.cseq().is_ok_and(|c| c.method == Method::Cancel) {
            // We answered the CANCEL upstream ourselves; its downstream answer
            // shares the INVITE's branch and must not be taken for the INVITE's.
            return;
        }
        let code = resp.status().unwrap_or(0);
        resp.remove_first(HeaderName::Via);
        let (source, request, ack_for_failure) = {
            let mut t = self.txns.lock().unwrap_or_else(|p| p.into_inner());
            let Some(ct) = t.client.get_mut(&b) else {
                tracing::debug!(branch = %b, code, "stray response; dropped");
                return;
            };
            if code < 200 {
                if !ct.provisional && ct.forwarded.method() == Some(&Method::Invite) {
                    ct.provisional = true;
                    // Timer C replaces Timer B once the INVITE is ringing.
                    if let Some(h) = ct.timer.take() {
                        h.abort();
                    }
                    ct.timer = Some(self.start_timer(b.clone(), self.config.invite_timeout));
                }
                if code == 100 {
                    return; // hop by hop
                }
                let key = ct.server_key.clone();
                let Some(st) = t.server.get(&key) else { return };
                (st.source.clone(), st.request.clone(), None)
            } else {
                let ct = t.client.remove(&b).expect("present above");
                if let Some(h) = &ct.timer {
                    h.abort();
                }
                let Some(st) = t.server.get_mut(&ct.server_key) else {
                    return;
                };
                if st.final_status.is_some() {
                    return; // already answered (e.g. 408)
                }
                st.final_status = Some(code);
                let invite = ct.forwarded.method() == Some(&Method::Invite);
                let ack = (invite && code >= 300).then_some(ct);
                (st.source.clone(), st.request.clone(), ack)
            }
        };
        if let Some(ct) = ack_for_failure {
            self.send_failure_ack(&ct, &resp);
        }
        self.send_to_source(&source, &resp);
        if code >= 200 {
            self.count_final(&request, code);
            self.finish_server_txn(&request, code);
        }
    }

    /// ACK a non-2xx final response downstream (hop by hop, RFC 3261 §17.1.1.3).
    fn send_failure_ack(&self, ct: &ClientTxn, resp: &SipMessage) {
        // The ACK carries the To of the response (with the callee's tag).
        self.send_hop_request(ct, Method::Ack, resp.header(HeaderName::To).cloned());
    }

    fn on_ack(self: &Arc<Self>, msg: SipMessage, source: Source, origin: Origin) {
        // ACK for a non-2xx we sent: absorbed by the INVITE server transaction.
        if let Some(key) = server_key(&msg) {
            let mut t = self.txns.lock().unwrap_or_else(|p| p.into_inner());
            if t.server
                .get(&key)
                .is_some_and(|st| st.final_status.is_some_and(|c| c >= 300))
            {
                t.server.remove(&key);
                return;
            }
        }
        // ACK for a 2xx: end to end, routed statelessly like any in-dialog request.
        let mut msg = msg;
        let mf = msg.max_forwards().ok().flatten().unwrap_or(DEFAULT_MAX_FORWARDS);
        if mf == 0 {
            return;
        }
        let next = match self.route_by_request(&mut msg, &source, origin.identity.as_deref()) {
            Ok(n) => n,
            Err(_) => return,
        };
        msg.set_header(Header::new(HeaderName::MaxForwards, &(mf - 1).to_string()));
        msg.push_header_front(Header::new(
            HeaderName::Via,
            &format!("SIP/2.0/TLS {};branch={}", self.shared.fqdn, branch()),
        ));
        if let Err(e) = self.send_next(&next, &msg, &origin) {
            tracing::debug!(error = %e, "ACK not forwarded");
        }
    }

    fn on_cancel(self: &Arc<Self>, msg: SipMessage, source: Source) {
        let Some(key) = server_key(&msg) else { return };
        let client = {
            let t = self.txns.lock().unwrap_or_else(|p| p.into_inner());
            t.server.get(&key).map(|st| (st.final_status, st.client_branch.clone()))
        };
        let Some((final_status, client_branch)) = client else {
            return self.reject(&source, &msg, SipReject::NoTransaction);
        };
        self.respond(&source, &msg, 200, "OK", vec![]);
        if final_status.is_some() {
            return;
        }
        if let Some(b) = client_branch {
            let t = self.txns.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(ct) = t.client.get(&b) {
                let fake = ClientTxn {
                    server_key: ct.server_key.clone(),
                    forwarded: ct.forwarded.clone(),
                    next: ct.next.clone(),
                    origin: ct.origin.clone(),
                    provisional: ct.provisional,
                    timer: None,
                };
                drop(t);
                self.send_cancel(&fake);
            }
        }
    }
}
