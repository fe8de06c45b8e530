//! An in-project SIP user agent for the end-to-end tests: one TLS connection
//! to a node's client port (the node verified against the cluster CA as
//! `127.0.0.1`), messages framed and parsed with the project's codec. The
//! connection, the framing and the Digest answer are `sipmesh::ua`'s, shared
//! with `sipmesh bench`; this module adds the step-by-step test API on top.
//!
//! The UA is driven step by step by the test: it never answers anything by
//! itself. Messages read while waiting for something else are queued, so
//! `recv_request` / `recv_response` can be called in any order.
//!
//! Also here: [`sip_cluster`] (a `cluster up` with a short T1, which the
//! shared harness does not pass) and [`Dialog`] (RFC 3261 §12 route sets).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use sipmesh::pki::Issued;
use sipmesh::ua::{self, Connection, Credentials};
use sipmesh_actors::auth::Algorithm;
use sipmesh_actors::sip::{Header, HeaderName, Incoming, SipMessage, StartLine};

// Part of this module's test API (tests/sip.rs reads challenges with it); like
// the `dead_code` allowance above, not every test crate uses it.
#[allow(unused_imports)]
pub use sipmesh::ua::challenge_param;

use crate::common::{self, Cluster};

/// The SIP domain of `cluster up`.
pub const DOMAIN: &str = common::DOMAIN;
/// T1 given to the test clusters: non-INVITE transactions time out after 64*T1.
pub const T1_MS: u64 = 50;
/// Default wait for a message that should arrive.
pub const WAIT: Duration = Duration::from_secs(5);
/// Digest algorithms the UA answers, most preferred first.
pub const ALGORITHMS: &[Algorithm] = &[Algorithm::Sha256, Algorithm::Md5];

// ---------------------------------------------------------------- cluster

/// `sipmesh cluster up --nodes n --heartbeat-ms 200 --backoff-cap-ms 1000
/// --t1-ms 50` in a tempdir, waited for until fully meshed. Built like
/// `common::Cluster::up`, which has no way to pass `--t1-ms`.
pub fn sip_cluster(n: usize) -> Cluster {
    let t1 = T1_MS.to_string();
    Cluster::up_with_args(n, 200, 1000, &["--t1-ms", &t1], &[])
}

/// The demo password of `user` (e.g. "alice") from `cluster.json`.
/// `sip:USER@DOMAIN`.
pub fn aor(user: &str) -> String {
    format!("sip:{user}@{DOMAIN}")
}

/// `user` connected to node `n` of `cluster` and registered (200).
pub async fn registered(cluster: &Cluster, user: &str, n: usize) -> Ua {
    let mut ua = Ua::connect(
        client_addr(cluster, &common::fe(n)),
        &ca_path(cluster),
        user,
        &password(cluster, user),
    )
    .await;
    let ok = ua.register(600).await;
    assert_eq!(ok.status(), Some(200), "{user} REGISTER at fe{n}: {}", text(&ok));
    ua
}

pub fn password(cluster: &Cluster, user: &str) -> String {
    let aor = format!("sip:{user}@{DOMAIN}");
    cluster
        .info
        .users
        .iter()
        .find(|u| u["aor"] == aor.as_str())
        .and_then(|u| u["password"].as_str())
        .unwrap_or_else(|| panic!("no user {aor} in cluster.json: {:?}", cluster.info.users))
        .to_owned()
}

/// The client (TLS) address of node `fqdn`.
pub fn client_addr(cluster: &Cluster, fqdn: &str) -> SocketAddr {
    let n = cluster.node(fqdn);
    n.client_addr
        .parse()
        .unwrap_or_else(|e| panic!("{fqdn}: client_addr {:?}: {e}", n.client_addr))
}

/// The `registrations` row of `aor` on node `fqdn`, if that node lists it.
pub fn registration(cluster: &Cluster, fqdn: &str, aor: &str) -> Option<Value> {
    match cluster.debug(fqdn, "registrations") {
        Value::Array(rows) => rows.into_iter().find(|r| r["aor"] == aor),
        other => panic!("registrations on {fqdn}: not an array: {other}"),
    }
}

/// The node whose `registrations` lists `aor` (its home) and that row.
pub fn find_registration(cluster: &Cluster, aor: &str) -> (String, Value) {
    for n in &cluster.info.nodes {
        if let Some(row) = registration(cluster, &n.fqdn, aor) {
            return (n.fqdn.clone(), row);
        }
    }
    panic!("no node lists a registration for {aor}");
}

/// Where `cluster.json` says the CA certificate is.
pub fn ca_path(cluster: &Cluster) -> PathBuf {
    cluster.info.ca.clone()
}

// ---------------------------------------------------------------- helpers

fn rand_hex() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// `sip:DOMAIN`: the registrar's URI, and the Digest `uri` the UA answers for.
fn registrar() -> String {
    format!("sip:{DOMAIN}")
}

/// An error with its causes, for panic messages.
fn chain(e: ua::UaError) -> String {
    format!("{:#}", anyhow::Error::from(e))
}

/// A fresh RFC 3261 branch.
pub fn new_branch() -> String {
    format!("z9hG4bK-ua{}", rand_hex())
}

/// A header's value as text (first of that name); panics naming the header when absent.
pub fn hdr(msg: &SipMessage, name: HeaderName) -> String {
    msg.header(name)
        .unwrap_or_else(|| panic!("no {name:?} header in:\n{}", text(msg)))
        .value_str()
        .to_owned()
}

/// The message as text, for failure messages.
pub fn text(msg: &SipMessage) -> String {
    String::from_utf8_lossy(&msg.to_bytes()).into_owned()
}

/// `code reason` of a response, or `METHOD uri` of a request.
pub fn first_line(msg: &SipMessage) -> String {
    match &msg.start {
        StartLine::Request { method, uri } => format!("{method} {uri}"),
        StartLine::Response { code, reason } => format!("{code} {reason}"),
    }
}

/// The reason phrase of a response.
pub fn reason(msg: &SipMessage) -> String {
    match &msg.start {
        StartLine::Response { reason, .. } => reason.clone(),
        StartLine::Request { .. } => panic!("not a response: {}", text(msg)),
    }
}

/// The Request-URI of a request.
pub fn request_uri(msg: &SipMessage) -> String {
    match &msg.start {
        StartLine::Request { uri, .. } => uri.clone(),
        StartLine::Response { .. } => panic!("not a request: {}", text(msg)),
    }
}

/// The CSeq as `(seq, method)`.
pub fn cseq(msg: &SipMessage) -> (u32, String) {
    let c = msg
        .cseq()
        .unwrap_or_else(|e| panic!("bad CSeq ({e}) in:\n{}", text(msg)));
    (c.seq, c.method.to_string())
}

// ---------------------------------------------------------------- the UA

/// A request as sent, with what is needed to CANCEL it or build a dialog.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The message as it went on the wire.
    pub msg: SipMessage,
    /// Branch of our Via.
    pub branch: String,
    /// Call-ID.
    pub call_id: String,
    /// Our From tag.
    pub from_tag: String,
    /// CSeq number.
    pub cseq: u32,
}

/// One SIP user agent on one TLS connection.
pub struct Ua {
    /// `user` of the AOR (`alice`).
    pub user: String,
    /// `sip:alice@contoso.test`.
    pub aor: String,
    /// The domain registered in (`contoso.test` unless [`Ua::in_domain`]).
    pub domain: String,
    password: String,
    conn: Connection,
    queue: VecDeque<SipMessage>,
    /// Our side of the TCP connection.
    pub local: SocketAddr,
    /// The node's client address we are connected to.
    pub remote: SocketAddr,
    cseq: u32,
    reg_call_id: String,
    /// Bytes read that were CRLF keep-alive answers (counted, not queued).
    pub pongs: usize,
    /// Validation errors of responses that were returned anyway (see `read_one`).
    pub invalid: Vec<String>,
    closed: bool,
}

impl Ua {
    /// TLS to `addr` (verifying the node certificate against `ca`), as
    /// `user` with Digest password `password`; nothing sent yet.
    pub async fn connect(addr: SocketAddr, ca: &Path, user: &str, password: &str) -> Ua {
        Ua::open(addr, ca, user, password, None).await
    }

    /// Like [`Ua::connect`], presenting the client certificate `identity`.
    pub async fn connect_with_cert(addr: SocketAddr, ca: &Path, user: &str, identity: &Issued) -> Ua {
        Ua::open(addr, ca, user, "", Some(identity)).await
    }

    /// Like [`Ua::connect`], from the local address `from` (another source IP).
    pub async fn connect_from(from: std::net::IpAddr, addr: SocketAddr, ca: &Path, user: &str, password: &str) -> Ua {
        Ua::open_from(Some(from), addr, ca, user, password, None).await
    }

    async fn open(addr: SocketAddr, ca: &Path, user: &str, password: &str, identity: Option<&Issued>) -> Ua {
        Ua::open_from(None, addr, ca, user, password, identity).await
    }

    async fn open_from(
        from: Option<std::net::IpAddr>,
        addr: SocketAddr,
        ca: &Path,
        user: &str,
        password: &str,
        identity: Option<&Issued>,
    ) -> Ua {
        let config = ua::client_config(ca, identity).unwrap_or_else(|e| panic!("{user}: {}", chain(e)));
        // The node certificates carry SAN DNS feN.contoso.test and IP 127.0.0.1:
        // verify by IP, which is what a client dialling the address knows.
        let conn = Connection::open_from(from, addr, &addr.ip().to_string(), config)
            .await
            .unwrap_or_else(|e| panic!("{user}: TLS to {addr}: {}", chain(e)));
        Ua {
            user: user.to_owned(),
            aor: format!("sip:{user}@{DOMAIN}"),
            domain: DOMAIN.to_owned(),
            password: password.to_owned(),
            local: conn.local,
            conn,
            queue: VecDeque::new(),
            remote: addr,
            cseq: 0,
            reg_call_id: format!("reg-{}@127.0.0.1", rand_hex()),
            pongs: 0,
            invalid: Vec::new(),
            closed: false,
        }
    }

    /// The same UA as a user of `domain` (another organisation's cluster).
    pub fn in_domain(mut self, domain: &str) -> Ua {
        self.aor = format!("sip:{}@{domain}", self.user);
        self.domain = domain.to_owned();
        self
    }

    /// Our Contact URI (no brackets): `sip:alice@127.0.0.1:PORT;transport=tls`.
    pub fn contact_uri(&self) -> String {
        format!("sip:{}@{};transport=tls", self.user, self.local)
    }

    /// Our Via header value with `branch`.
    pub fn via(&self, branch: &str) -> String {
        format!("SIP/2.0/TLS {};branch={branch};rport", self.local)
    }

    /// The next CSeq number of this UA.
    pub fn next_cseq(&mut self) -> u32 {
        self.cseq += 1;
        self.cseq
    }

    // ---- raw I/O

    /// Write bytes as they are (and flush them).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.conn
            .send_raw(bytes)
            .await
            .unwrap_or_else(|e| panic!("{}: write: {e}", self.user));
    }

    /// Serialize and send a message.
    pub async fn send(&mut self, msg: &SipMessage) {
        let bytes = msg.to_bytes();
        self.send_raw(&bytes).await;
    }

    /// The next message (queued first), or `None` after `timeout` or at EOF.
    pub async fn recv(&mut self, timeout: Duration) -> Option<SipMessage> {
        if let Some(m) = self.queue.pop_front() {
            return Some(m);
        }
        self.read_one(Instant::now() + timeout).await
    }

    /// Read from the socket until one message is decoded or `deadline`.
    async fn read_one(&mut self, deadline: Instant) -> Option<SipMessage> {
        loop {
            while let Some(item) = self.conn.reader.buffered() {
                match item {
                    Incoming::Message(m) => return Some(m),
                    Incoming::KeepAlive => self.pongs += 1,
                    // A response may legitimately fail validation (a 400
                    // answering a request without Call-ID has none): keep it,
                    // and the error, when the stream is still in sync.
                    Incoming::Invalid {
                        error,
                        partial: Some(p),
                        resync: true,
                    } if !p.is_request() => {
                        self.invalid.push(error.to_string());
                        return Some(p);
                    }
                    Incoming::Invalid { error, partial, .. } => {
                        panic!(
                            "{}: the node sent an invalid SIP message ({error}): {:?}",
                            self.user,
                            partial.map(|p| text(&p))
                        )
                    }
                }
            }
            if self.closed {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            // `fill` is cancel safe: a read cut short by the deadline loses nothing.
            match tokio::time::timeout(left, self.conn.reader.fill()).await {
                Err(_) => return None,
                Ok(Ok(0)) => {
                    self.closed = true;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("{}: read error: {e}", self.user);
                    self.closed = true;
                }
            }
        }
    }

    /// Whether the node closed the connection (seen by a read).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The next message matching `pred`; others are kept in order for later.
    pub async fn recv_matching(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&SipMessage) -> bool,
    ) -> SipMessage {
        if let Some(i) = self.queue.iter().position(&pred) {
            return self.queue.remove(i).expect("index in range");
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_one(deadline).await {
                Some(m) if pred(&m) => return m,
                Some(m) => self.queue.push_back(m),
                None => panic!(
                    "{}: no {what} within {timeout:?} (closed: {}); other messages read: {:#?}",
                    self.user,
                    self.closed,
                    self.queue.iter().map(first_line).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// The next response (any transaction).
    pub async fn recv_response(&mut self, timeout: Duration) -> SipMessage {
        self.recv_matching(timeout, "response", |m| !m.is_request()).await
    }

    /// The next response whose top Via has `branch` and whose CSeq method is `method`.
    pub async fn recv_response_to(&mut self, branch: &str, method: &str, timeout: Duration) -> SipMessage {
        let what = format!("response to {method} (branch {branch})");
        self.recv_matching(timeout, &what, |m| {
            !m.is_request()
                && m.top_via().ok().is_some_and(|v| v.branch() == Some(branch))
                && m.cseq().ok().is_some_and(|c| c.method.as_str() == method)
        })
        .await
    }

    /// The next final (>= 200) response to `sent`, returning the provisional
    /// ones seen before it too.
    pub async fn final_response(&mut self, sent: &Sent, timeout: Duration) -> (Vec<SipMessage>, SipMessage) {
        let method = cseq(&sent.msg).1;
        let deadline = Instant::now() + timeout;
        let mut provisional = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = self.recv_response_to(&sent.branch, &method, left).await;
            if r.status().unwrap_or(0) >= 200 {
                return (provisional, r);
            }
            provisional.push(r);
        }
    }

    /// The next request (any method).
    pub async fn recv_request(&mut self, timeout: Duration) -> SipMessage {
        self.recv_matching(timeout, "request", SipMessage::is_request).await
    }

    /// The next request with `method`.
    pub async fn recv_request_method(&mut self, method: &str, timeout: Duration) -> SipMessage {
        let what = format!("{method} request");
        self.recv_matching(timeout, &what, |m| m.method().is_some_and(|x| x.as_str() == method))
            .await
    }

    /// Assert that nothing arrives within `dur` (queued messages count).
    pub async fn expect_silence(&mut self, dur: Duration) {
        if let Some(m) = self.recv(dur).await {
            panic!("{}: expected nothing, got:\n{}", self.user, text(&m));
        }
    }

    // ---- requests

    /// Build a request out of dialog: Request-URI `ruri`, From = our AOR with
    /// a fresh tag, To = `to` (an AOR or URI), fresh Call-ID, our Contact,
    /// `extra` headers (`"Name: value"`), body.
    pub fn build_request(&mut self, method: &str, ruri: &str, to: &str, extra: &[String], body: &[u8]) -> Sent {
        let branch = new_branch();
        let call_id = format!("{}@127.0.0.1", rand_hex());
        let from_tag = rand_hex();
        let seq = self.next_cseq();
        let mut head = format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: {via}\r\n\
             Max-Forwards: 70\r\n\
             From: <{aor}>;tag={from_tag}\r\n\
             To: <{to}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {seq} {method}\r\n\
             Contact: <{contact}>\r\n\
             User-Agent: sipmesh-test-ua\r\n",
            via = self.via(&branch),
            aor = self.aor,
            contact = self.contact_uri(),
        );
        for h in extra {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        let msg = SipMessage::parse(Bytes::from(bytes))
            .unwrap_or_else(|e| panic!("the UA built an unparsable {method}: {e}"));
        Sent {
            msg,
            branch,
            call_id,
            from_tag,
            cseq: seq,
        }
    }

    /// Build and send a request to `target` (Request-URI and To); the sent request.
    pub async fn request(&mut self, method: &str, target: &str, extra: &[String], body: &[u8]) -> Sent {
        let sent = self.build_request(method, target, target, extra, body);
        self.send(&sent.msg).await;
        sent
    }

    /// CANCEL for a sent INVITE: same Request-URI, Call-ID, From, To, Via
    /// (branch) and CSeq number (RFC 3261 §9.1).
    pub async fn cancel(&mut self, invite: &Sent) -> SipMessage {
        let msg = hop_request(invite, "CANCEL", &hdr(&invite.msg, HeaderName::To));
        self.send(&msg).await;
        msg
    }

    // ---- registration

    /// REGISTER our contact for `expires` seconds; answers one 401 with
    /// SHA-256 Digest credentials. Returns the final response.
    pub async fn register(&mut self, expires: u32) -> SipMessage {
        let (user, password, uri, cnonce) = (
            self.user.clone(),
            self.password.clone(),
            format!("sip:{}", self.domain),
            rand_hex(),
        );
        let creds = Credentials {
            user: &user,
            password: &password,
            uri: &uri,
            algorithms: ALGORITHMS,
            cnonce: &cnonce,
        };
        ua::register(&creds, async |auth: Option<&str>| {
            Ok(self.send_register(expires, auth.map(str::to_owned)).await)
        })
        .await
        .unwrap_or_else(|e| panic!("{user}: REGISTER: {}", chain(e)))
    }

    /// REGISTER on an already authenticated connection with a raw Contact
    /// header value (none: a fetch) and a raw Expires header value; the final response.
    pub async fn register_with(&mut self, contact: Option<&str>, expires: Option<&str>) -> SipMessage {
        let branch = new_branch();
        let seq = self.next_cseq();
        let mut text = format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: <{aor}>;tag={tag}\r\n\
             To: <{aor}>\r\nCall-ID: {cid}\r\nCSeq: {seq} REGISTER\r\n",
            domain = self.domain,
            via = self.via(&branch),
            aor = self.aor,
            tag = rand_hex(),
            cid = self.reg_call_id,
        );
        if let Some(c) = contact {
            text.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = expires {
            text.push_str(&format!("Expires: {e}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        self.send_raw(text.as_bytes()).await;
        loop {
            let r = self.recv_response_to(&branch, "REGISTER", WAIT).await;
            if r.status().unwrap_or(0) >= 200 {
                return r;
            }
        }
    }

    /// REGISTER (with Authorization `creds` when given); the final response.
    pub async fn send_register(&mut self, expires: u32, creds: Option<String>) -> SipMessage {
        let branch = new_branch();
        let seq = self.next_cseq();
        let mut text = format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: {via}\r\n\
             Max-Forwards: 70\r\n\
             From: <{aor}>;tag={tag}\r\n\
             To: <{aor}>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {seq} REGISTER\r\n\
             Contact: <{contact}>\r\n\
             Expires: {expires}\r\n\
             User-Agent: sipmesh-test-ua\r\n",
            domain = self.domain,
            via = self.via(&branch),
            aor = self.aor,
            tag = rand_hex(),
            cid = self.reg_call_id,
            contact = self.contact_uri(),
        );
        if let Some(c) = creds {
            text.push_str(&format!("Authorization: {c}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        self.send_raw(text.as_bytes()).await;
        loop {
            let r = self.recv_response_to(&branch, "REGISTER", WAIT).await;
            if r.status().unwrap_or(0) >= 200 {
                return r;
            }
        }
    }

    /// Digest credentials for `method` on `uri` (the Request-URI of the
    /// challenged request, RFC 3261 §22.4), answering `challenge_resp`.
    pub fn credentials_for_uri(&self, challenge_resp: &SipMessage, method: &str, uri: &str) -> String {
        Credentials {
            user: &self.user,
            password: &self.password,
            uri,
            algorithms: ALGORITHMS,
            cnonce: &rand_hex(),
        }
        .authorization(challenge_resp, method)
        .unwrap_or_else(|e| panic!("{e} in:\n{}", text(challenge_resp)))
    }

    /// Digest credentials answering the challenge of `challenge_resp` (a 401
    /// or 407) for `method` on `uri` sip:DOMAIN, with `password`: SHA-256 when
    /// offered, MD5 otherwise.
    pub fn credentials_for(&self, challenge_resp: &SipMessage, method: &str, password: &str) -> String {
        Credentials {
            user: &self.user,
            password,
            uri: &registrar(),
            algorithms: ALGORITHMS,
            cnonce: &rand_hex(),
        }
        .authorization(challenge_resp, method)
        .unwrap_or_else(|e| panic!("{e} in:\n{}", text(challenge_resp)))
    }

    // ---- responses

    /// Answer `req` with `code reason`: Via/From/To/Call-ID/CSeq copied, a To
    /// tag added for codes > 100 (ours, stable per request), Record-Route
    /// copied on responses to INVITE, then `extra` and `body`.
    pub async fn respond(&mut self, req: &SipMessage, code: u16, reason: &str, extra: &[String], body: &[u8]) {
        let resp = self.build_response(req, code, reason, extra, body);
        self.send(&resp).await;
    }

    /// The response [`Ua::respond`] sends.
    pub fn build_response(
        &self,
        req: &SipMessage,
        code: u16,
        reason: &str,
        extra: &[String],
        body: &[u8],
    ) -> SipMessage {
        let tag = local_tag_for(req);
        let mut resp = SipMessage::response_to(req, code, reason, (code > 100).then_some(tag.as_str()));
        if req.method().is_some_and(|m| m.as_str() == "INVITE") && (101..300).contains(&code) {
            for rr in req.headers_named(HeaderName::RecordRoute) {
                resp.headers.push(rr.clone());
            }
        }
        for h in extra {
            let (name, value) = h.split_once(':').unwrap_or_else(|| panic!("bad header {h:?}"));
            resp.headers.push(Header::other(name.trim(), value.trim()));
        }
        resp.body = Bytes::copy_from_slice(body);
        resp
    }
}

/// The To tag a UAS uses for the dialog of `req` (stable: derived from the
/// Call-ID and From tag, so 180 and 200 carry the same one).
pub fn local_tag_for(req: &SipMessage) -> String {
    let call_id = req.call_id().unwrap_or("");
    let from_tag = req
        .from_hdr()
        .ok()
        .and_then(|f| f.tag().map(str::to_owned))
        .unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in call_id.bytes().chain(from_tag.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("uas{h:016x}")
}

// ---------------------------------------------------------------- dialogs

/// One side of a dialog (RFC 3261 §12).
#[derive(Clone, Debug)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our From/To header value (with our tag).
    pub local: String,
    /// The peer's header value (with its tag).
    pub remote: String,
    /// The peer's Contact URI: the Request-URI of in-dialog requests.
    pub remote_target: String,
    /// Route header values (`<uri>`), in the order they go in a request.
    pub route_set: Vec<String>,
    /// Our CSeq of the last request sent in the dialog.
    pub local_cseq: u32,
}

fn contact_uri_of(msg: &SipMessage) -> String {
    let c = hdr(msg, HeaderName::Contact);
    let c = c.trim();
    match (c.find('<'), c.find('>')) {
        (Some(a), Some(b)) if a < b => c[a + 1..b].to_owned(),
        _ => c.split(';').next().unwrap_or(c).to_owned(),
    }
}

fn rr_values(msg: &SipMessage) -> Vec<String> {
    msg.record_routes()
        .unwrap_or_else(|e| panic!("bad Record-Route ({e}) in:\n{}", text(msg)))
        .into_iter()
        .map(|na| format!("<{}>", na.raw_uri))
        .collect()
}

impl Dialog {
    /// The UAC's dialog from the INVITE it sent and the 2xx it got: route set
    /// = the 2xx's Record-Route reversed.
    pub fn uac(invite: &Sent, ok: &SipMessage) -> Dialog {
        let mut route_set = rr_values(ok);
        route_set.reverse();
        Dialog {
            call_id: invite.call_id.clone(),
            local: hdr(&invite.msg, HeaderName::From),
            remote: hdr(ok, HeaderName::To),
            remote_target: contact_uri_of(ok),
            route_set,
            local_cseq: invite.cseq,
        }
    }

    /// The UAS's dialog from the INVITE it received and the tag it answers
    /// with: route set = the INVITE's Record-Route in order.
    pub fn uas(invite: &SipMessage) -> Dialog {
        let to = hdr(invite, HeaderName::To);
        Dialog {
            call_id: invite.call_id().expect("Call-ID").to_owned(),
            local: format!("{};tag={}", to.trim(), local_tag_for(invite)),
            remote: hdr(invite, HeaderName::From),
            remote_target: contact_uri_of(invite),
            route_set: rr_values(invite),
            local_cseq: 0,
        }
    }

    /// An in-dialog request from `ua`: Request-URI = remote target, Route =
    /// the route set, CSeq = `seq` (ACK reuses the INVITE's).
    pub fn request(&self, ua: &Ua, method: &str, seq: u32, body: &[u8]) -> Sent {
        let branch = new_branch();
        let mut head = format!(
            "{method} {target} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n",
            target = self.remote_target,
            via = ua.via(&branch),
        );
        for r in &self.route_set {
            head.push_str(&format!("Route: {r}\r\n"));
        }
        head.push_str(&format!(
            "From: {local}\r\nTo: {remote}\r\nCall-ID: {cid}\r\nCSeq: {seq} {method}\r\nContact: <{contact}>\r\nContent-Length: {len}\r\n\r\n",
            local = self.local,
            remote = self.remote,
            cid = self.call_id,
            contact = ua.contact_uri(),
            len = body.len(),
        ));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        let msg = SipMessage::parse(Bytes::from(bytes)).unwrap_or_else(|e| panic!("in-dialog {method}: {e}"));
        let from_tag = msg
            .from_hdr()
            .ok()
            .and_then(|f| f.tag().map(str::to_owned))
            .unwrap_or_default();
        Sent {
            msg,
            branch,
            call_id: self.call_id.clone(),
            from_tag,
            cseq: seq,
        }
    }

    /// Where in-dialog requests go (RFC 3261 §12.2.1.1, loose routing): the
    /// address of the first Route entry, or of the remote target without one.
    pub fn first_hop(&self) -> SocketAddr {
        let uri = match self.route_set.first() {
            Some(r) => r.trim_start_matches('<').trim_end_matches('>').to_owned(),
            None => self.remote_target.clone(),
        };
        let parsed = sipmesh_actors::sip::SipUri::parse(&uri).unwrap_or_else(|e| panic!("route {uri}: {e}"));
        let ip = parsed
            .host
            .ip()
            .unwrap_or_else(|| panic!("the first hop {uri} names no address: a phone would have to resolve it"));
        SocketAddr::new(ip, parsed.port.unwrap_or(5061))
    }

    /// Send the ACK for the 2xx (CSeq number of the INVITE).
    pub async fn ack(&self, ua: &mut Ua) -> Sent {
        let sent = self.request(ua, "ACK", self.local_cseq, b"");
        ua.send(&sent.msg).await;
        sent
    }

    /// Send a new in-dialog request (next CSeq).
    pub async fn send_request(&mut self, ua: &mut Ua, method: &str) -> Sent {
        self.local_cseq += 1;
        let sent = self.request(ua, method, self.local_cseq, b"");
        ua.send(&sent.msg).await;
        sent
    }
}

impl Ua {
    /// ACK a non-2xx final response to `invite` (RFC 3261 §17.1.1.3: same
    /// branch and Request-URI, To from the response, CSeq n ACK).
    pub async fn ack_failure(&mut self, invite: &Sent, resp: &SipMessage) {
        let msg = hop_request(invite, "ACK", &hdr(resp, HeaderName::To));
        self.send(&msg).await;
    }
}

/// A request sharing `invite`'s transaction (CANCEL, or ACK for a non-2xx):
/// its Request-URI, Via (branch), From, Call-ID and CSeq number, with `to`.
fn hop_request(invite: &Sent, method: &str, to: &str) -> SipMessage {
    let m = &invite.msg;
    let text = format!(
        "{method} {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: {cid}\r\nCSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n",
        ruri = request_uri(m),
        via = hdr(m, HeaderName::Via),
        from = hdr(m, HeaderName::From),
        cid = invite.call_id,
        seq = invite.cseq,
    );
    SipMessage::parse(Bytes::from(text)).unwrap_or_else(|e| panic!("{method}: {e}"))
}
