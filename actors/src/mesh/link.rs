//! PeerLink: the supervised actor that owns one MTLS link to one peer.
//!
//! Exactly one link per pair: the member with the lower FQDN dials, the other
//! accepts (the accept loop refuses a dial in the wrong direction). A session
//! is a TLS stream that passed the trust checks and the hello exchange; the
//! actor reads frames as an actix stream and writes through a bounded queue
//! drained by a writer task that batches frames per flush.
//!
//! When a session ends (peer closed, bad frame, goaway, heartbeat timeout) or
//! a dial fails, the actor stops; its `Supervisor` restarts it, which counts a
//! restart and (on the dialing side) dials again after an exponential backoff
//! with jitter. A panic closes the mailbox instead of stopping the actor, which
//! actix's supervisor cannot see: the node's watchdog replaces such a link.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use std::net::SocketAddr;

use sipmesh_state::{Fqdn, MeshAddr, TrustedServer};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
// tokio's clock (std's in production) so link timers run on a paused clock in tests.
use tokio::time::Instant;
use tokio_rustls::TlsStream;
use tokio_util::codec::Framed;

use super::handshake::{check_protocol, our_hello, read_hello, Established, HelloError, LinkCodec, MeshFramed};
use super::membership::{OfferTopology, TopologyOutcome};
use super::status::{LinkState, LinkStatus, Shared};
use super::wire::{self, Frame, FrameError};
use super::SipSink;
use crate::config::MeshTiming;
use crate::trust::{peer_chain, rejection_of, CertInfo, Direction, RejectReason, Rejection};

/// Frames queued for one link's writer (backpressure bound: a stuck peer
/// makes senders fail fast instead of growing memory).
pub const LINK_QUEUE: usize = 1_024;

/// Mailbox bound of a PeerLink actor.
pub const LINK_MAILBOX: usize = 64;

/// First redial delay after a failure; doubles up to the configured cap.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// Frames batched into one write before a flush.
pub const WRITE_BATCH: usize = 64;

/// Where the accept loop finds the actor for an authenticated peer.
#[derive(Default)]
pub struct Directory {
    links: RwLock<HashMap<Fqdn, Addr<PeerLink>>>,
}

impl Directory {
    /// The link actor for `peer`.
    pub fn get(&self, peer: &Fqdn) -> Option<Addr<PeerLink>> {
        self.links.read().unwrap_or_else(|p| p.into_inner()).get(peer).cloned()
    }

    /// Register (or replace) the actor for `peer`.
    pub fn insert(&self, peer: Fqdn, addr: Addr<PeerLink>) {
        self.links.write().unwrap_or_else(|p| p.into_inner()).insert(peer, addr);
    }

    /// Forget `peer` (its mailbox closes when the node drops its address too).
    pub fn remove(&self, peer: &Fqdn) -> Option<Addr<PeerLink>> {
        self.links.write().unwrap_or_else(|p| p.into_inner()).remove(peer)
    }
}

/// Hand an accepted, authenticated connection to its link.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound(pub Established);

/// Close the link for good: send goaway, do not redial.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// The reason sent in the goaway.
    pub reason: &'static str,
}

/// Send the signed topology document to the peer unless it already holds `version`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendTopology {
    /// The document.
    pub document: Arc<String>,
    /// Its version.
    pub version: u64,
}

/// Re-check the live session's peer certificate against the current TLS
/// material (after a reload); close the link if it no longer passes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Recheck;

/// Fault injection for tests of supervision (only honoured when the node
/// runs with fault injection enabled).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Panic;

struct Session {
    tx: mpsc::Sender<Frame>,
    last_rx: Instant,
    up_at: Instant,
    ping: Option<(u64, Instant)>,
    nonce: u64,
    _permit: Option<crate::net::accept::ConnPermit>,
}

/// The actor owning one peer's link.
pub struct PeerLink {
    peer: TrustedServer,
    shared: Arc<Shared>,
    status: Arc<LinkStatus>,
    timing: MeshTiming,
    /// Consecutive failed attempts, for the backoff.
    failures: u32,
    was_up: bool,
    session: Option<Session>,
    pending: Option<Established>,
    closing: bool,
    /// Set when the peer's certificate failed a re-check; sticky until a
    /// valid link comes up.
    distrust: Option<LinkState>,
    node: Recipient<OfferTopology>,
    sip: Arc<dyn SipSink>,
}

impl PeerLink {
    /// A link actor for `peer`; `status` is shared with readers.
    pub fn new(
        peer: TrustedServer,
        shared: Arc<Shared>,
        status: Arc<LinkStatus>,
        timing: MeshTiming,
        node: Recipient<OfferTopology>,
        sip: Arc<dyn SipSink>,
    ) -> PeerLink {
        PeerLink {
            peer,
            shared,
            status,
            timing,
            failures: 0,
            was_up: false,
            session: None,
            pending: None,
            closing: false,
            distrust: None,
            node,
            sip,
        }
    }

    fn idle_state(&self) -> LinkState {
        if let Some(state) = self.distrust {
            state
        } else if self.was_up {
            LinkState::Down
        } else if self.status.dialer && self.failures > 0 {
            LinkState::Backoff
        } else {
            LinkState::Connecting
        }
    }

    fn schedule_dial(&mut self, ctx: &mut Context<Self>) {
        let delay = backoff_delay(self.failures, self.timing.backoff_cap);
        self.status.set_state(self.idle_state());
        self.status
            .update(|i| i.next_dial = (!delay.is_zero()).then(|| Instant::now() + delay));
        let shared = self.shared.clone();
        let peer = self.peer.clone();
        let timeout = self.timing.handshake_timeout;
        let status = self.status.clone();
        let was_up = self.was_up;
        let fut = async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            status.update(|i| i.next_dial = None);
            if !was_up {
                status.set_state(LinkState::Connecting);
            }
            dial(shared, peer, timeout).await
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(est) => act.run_session(est, ctx),
            Err(why) => {
                tracing::debug!(peer = %act.peer.fqdn, error = %why, "dial failed");
                act.failures = act.failures.saturating_add(1);
                act.status.update(|i| i.last_error = Some(why));
                ctx.stop();
            }
        }));
    }

    fn run_session(&mut self, mut est: Established, ctx: &mut Context<Self>) {
        let (tls_version, cipher) = est.tls_facts();
        est.framed.codec_mut().stats = Some(self.status.clone());
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        if !self.status.dialer {
            // The dialer spoke first; the accepting side answers with its hello.
            let _ = tx.try_send(our_hello(&self.shared));
        }
        let (sink, stream) = est.framed.split();
        *self.status.sender.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        actix_rt::spawn(writer(sink, rx, self.timing.heartbeat_timeout));
        ctx.add_stream(stream);
        let now = Instant::now();
        self.session = Some(Session {
            tx,
            last_rx: now,
            up_at: now,
            ping: None,
            nonce: 0,
            _permit: est.permit.take(),
        });
        self.was_up = true;
        self.distrust = None;
        let peer_version = est.hello.topology_version;
        self.status.update(|i| {
            i.peer_chain = std::mem::take(&mut est.peer_chain);
            i.last_error = None;
            i.rtt = None;
            i.cert_not_after = Some(est.peer_cert.not_after);
            i.cert_serial = Some(est.peer_cert.serial.clone());
            i.tls_version = tls_version;
            i.cipher = cipher;
            i.local_addr = est.local.map(|a| a.to_string());
            i.remote_addr = Some(est.remote.to_string());
            i.peer_topology_version = Some(est.hello.topology_version);
            i.next_dial = None;
        });
        self.status.set_state(LinkState::Up);
        tracing::info!(peer = %self.peer.fqdn, remote = %est.remote, "mesh link up");
        // First heartbeat right away so RTT is known within one round trip.
        self.heartbeat(ctx);
        // The side holding the newer signed topology sends it.
        if let Some(doc) = self.shared.topology_doc.load_full() {
            if self.shared.topology.load().version > peer_version {
                self.send(
                    ctx,
                    Frame::Topology {
                        document: (*doc).clone(),
                    },
                );
            }
        }
    }

    fn offer_topology(&mut self, ctx: &mut Context<Self>, document: String) {
        let msg = OfferTopology {
            document,
            from: Some(self.peer.fqdn.clone()),
        };
        ctx.spawn(self.node.send(msg).into_actor(self).map(|res, act, ctx| match res {
            Ok(Ok(TopologyOutcome { offered, current, .. })) => {
                act.status.update(|i| i.peer_topology_version = Some(offered));
                if offered < current {
                    // The peer lags: answer with ours.
                    if let Some(doc) = act.shared.topology_doc.load_full() {
                        act.send(ctx, Frame::Topology { document: (*doc).clone() });
                    }
                }
            }
            Ok(Err(refused)) => {
                tracing::warn!(peer = %act.peer.fqdn, reason = refused.reason, detail = %refused.detail, "peer offered a topology we refuse");
            }
            Err(e) => tracing::warn!(peer = %act.peer.fqdn, error = %e, "node actor unavailable"),
        }));
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let timeout = self.timing.heartbeat_timeout;
        let Some(s) = self.session.as_mut() else { return };
        let silent = s.last_rx.elapsed();
        if silent > timeout {
            let why = format!("no frame from peer for {} ms (heartbeat timeout)", silent.as_millis());
            self.end_session(ctx, why);
            return;
        }
        s.nonce = s.nonce.wrapping_add(1);
        if s.tx.try_send(Frame::Ping { nonce: s.nonce }).is_ok() {
            s.ping = Some((s.nonce, Instant::now()));
        }
    }

    fn end_session(&mut self, ctx: &mut Context<Self>, why: String) {
        self.end_session_as(ctx, why, LinkState::Down)
    }

    fn end_session_as(&mut self, ctx: &mut Context<Self>, why: String, state: LinkState) {
        self.status.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(s) = self.session.take() {
            if s.up_at.elapsed() < self.timing.heartbeat_timeout {
                // A link that dies right after coming up must not redial in a tight loop.
                self.failures = self.failures.saturating_add(1);
            } else {
                self.failures = 0;
            }
            tracing::warn!(peer = %self.peer.fqdn, reason = %why, "mesh link down");
        }
        self.status.update(|i| i.last_error = Some(why));
        if !self.closing {
            self.status.set_state(state);
        }
        ctx.stop();
    }

    fn send(&mut self, ctx: &mut Context<Self>, frame: Frame) {
        let Some(s) = self.session.as_ref() else { return };
        if let Err(mpsc::error::TrySendError::Full(_)) = s.tx.try_send(frame) {
            self.end_session(ctx, format!("outbound queue full ({LINK_QUEUE} frames)"));
        }
    }
}

/// Exponential backoff with jitter: 0 for the first attempt, then
/// `BACKOFF_BASE * 2^(n-1)` capped, scaled by a random factor in [0.5, 1].
pub fn backoff_delay(failures: u32, cap: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = BACKOFF_BASE.saturating_mul(1u32 << (failures - 1).min(20));
    let ceiling = exp.min(cap);
    ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
}

async fn writer(mut sink: SplitSink<MeshFramed, Frame>, mut rx: mpsc::Receiver<Frame>, stall: Duration) {
    while let Some(first) = rx.recv().await {
        let batch = async {
            sink.feed(first).await?;
            let mut n = 1;
            while n < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(f) => sink.feed(f).await?,
                    Err(_) => break,
                }
                n += 1;
            }
            sink.flush().await
        };
        match tokio::time::timeout(stall, batch).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "link write failed");
                break;
            }
            Err(_) => {
                tracing::debug!("link write stalled; closing");
                break;
            }
        }
    }
    let _ = tokio::time::timeout(stall, sink.close()).await;
}

/// Dial a peer: TCP, TLS with our certificate, hello both ways.
async fn dial(shared: Arc<Shared>, peer: TrustedServer, timeout: Duration) -> Result<Established, String> {
    let attempt = async {
        // A name is resolved now (the resolver caches by TTL); the
        // certificate check below is what makes a wrong answer harmless.
        let addrs = match &peer.mesh_addr {
            MeshAddr::Ip(a) => vec![*a],
            MeshAddr::Name(name, port) => {
                let resolver = shared
                    .resolver
                    .as_ref()
                    .ok_or("no resolver for a member named by DNS")?;
                resolver.addrs(name.as_str(), *port).await?
            }
        };
        let addr = *addrs
            .first()
            .ok_or_else(|| format!("{} resolves to no address", peer.mesh_addr))?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr} ({}): {e}", peer.mesh_addr))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        let name = rustls::pki_types::ServerName::try_from(peer.fqdn.to_string()).map_err(|e| e.to_string())?;
        let config = shared.tls.load().client.clone();
        let tls = match tokio_rustls::TlsConnector::from(config)
            .connect(name, crate::net::offload::PoolStream::from(tcp))
            .await
        {
            Ok(tls) => tls,
            Err(e) => {
                return Err(match rejection_of(&e) {
                    Some(rej) => {
                        shared.rejections.record(addr, Direction::Outbound, &rej);
                        format!("refused {addr}: {rej}")
                    }
                    None => format!("tls handshake with {addr}: {e}"),
                })
            }
        };
        let peer_chain = peer_chain(tls.get_ref().1);
        let peer_cert = peer_chain
            .first()
            .ok_or("peer presented no certificate")
            .and_then(|c| CertInfo::parse(c).map_err(|_| "unparsable peer certificate"))?;
        let mut framed = Framed::new(TlsStream::Client(tls), LinkCodec::default());
        framed
            .send(our_hello(&shared))
            .await
            .map_err(|e| format!("sending hello: {e}"))?;
        let hello = read_hello(&mut framed).await.map_err(|e| match e {
            HelloError::Goaway(reason) => format!("peer refused the link: {reason}"),
            HelloError::Unexpected(kind) => format!("peer sent {kind} before hello"),
            // With TLS 1.3 a refusal of our certificate surfaces here, as an alert.
            HelloError::Frame(e) => format!("peer closed during hello: {e}"),
            HelloError::Closed => "peer closed the connection during hello".to_owned(),
        })?;
        if hello.fqdn != peer.fqdn.as_str() {
            let rej = Rejection {
                reason: RejectReason::NameMismatch,
                presented_name: Some(hello.fqdn.clone()),
                detail: format!("dialled {} but its hello names {}", peer.fqdn, hello.fqdn),
            };
            shared.rejections.record(addr, Direction::Outbound, &rej);
            return Err(rej.to_string());
        }
        check_protocol(&hello).map_err(|e| format!("peer speaks {e}"))?;
        Ok(Established {
            framed,
            hello,
            peer_cert,
            peer_chain,
            local,
            remote: addr,
            permit: None,
        })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "handshake with {} not finished within {} ms",
            peer.mesh_addr,
            timeout.as_millis()
        )),
    }
}

impl Actor for PeerLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(LINK_MAILBOX);
        if self.closing {
            return;
        }
        ctx.run_interval(self.timing.heartbeat_interval, |act, ctx| act.heartbeat(ctx));
        if let Some(est) = self.pending.take() {
            self.run_session(est, ctx);
        } else if self.status.dialer {
            self.schedule_dial(ctx);
        } else {
            self.status.set_state(self.idle_state());
        }
    }
}

impl Supervised for PeerLink {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.session = None;
        self.status.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if !self.closing {
            self.status.restarts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl StreamHandler<Result<Frame, FrameError>> for PeerLink {
    fn handle(&mut self, item: Result<Frame, FrameError>, ctx: &mut Context<Self>) {
        let frame = match item {
            Ok(f) => f,
            Err(e) => return self.end_session(ctx, format!("bad frame from peer: {e}")),
        };
        let Some(s) = self.session.as_mut() else { return };
        s.last_rx = Instant::now();
        match frame {
            Frame::Ping { nonce } => self.send(ctx, Frame::Pong { nonce }),
            Frame::Pong { nonce } => {
                if let Some((sent, at)) = s.ping {
                    if sent == nonce {
                        let rtt = at.elapsed();
                        s.ping = None;
                        self.status.update(|i| i.rtt = Some(rtt));
                        self.status.rtt_histogram.observe(rtt.as_secs_f64());
                    }
                }
            }
            Frame::Goaway { reason } => {
                self.end_session(ctx, format!("peer sent goaway: {}", wire::bounded_reason(&reason)))
            }
            Frame::Hello(_) => self.end_session(ctx, "peer sent a second hello".to_owned()),
            Frame::Topology { document } => self.offer_topology(ctx, document),
            Frame::Sip { message, meta } => self.sip.relayed(&self.peer.fqdn, message, meta),
            Frame::LinksQuery { id } => {
                let rows = serde_json::to_string(&self.shared.link_rows()).unwrap_or_default();
                self.send(ctx, Frame::LinksReply { id, rows })
            }
            Frame::LinksReply { id, rows } => self.shared.answer_links_query(id, rows),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if self.session.is_some() {
            self.end_session(ctx, "connection closed by peer".to_owned());
        }
    }
}

impl Handler<Inbound> for PeerLink {
    type Result = ();

    fn handle(&mut self, msg: Inbound, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        if self.session.is_some() {
            // The peer started over (restart, network change): the new
            // connection wins, the old session ends.
            self.pending = Some(msg.0);
            self.end_session(ctx, "replaced by a new connection from the peer".to_owned());
        } else {
            self.run_session(msg.0, ctx);
        }
    }
}

impl Handler<Shutdown> for PeerLink {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self>) {
        self.closing = true;
        self.status.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(s) = self.session.as_ref() {
            let _ = s.tx.try_send(Frame::goaway(msg.reason));
        }
        self.session = None;
        ctx.stop();
    }
}

impl Handler<SendTopology> for PeerLink {
    type Result = ();

    fn handle(&mut self, msg: SendTopology, ctx: &mut Context<Self>) {
        if self.session.is_some() && self.status.update(|i| i.peer_topology_version) != Some(msg.version) {
            self.send(
                ctx,
                Frame::Topology {
                    document: (*msg.document).clone(),
                },
            );
        }
    }
}

impl Handler<Recheck> for PeerLink {
    type Result = ();

    fn handle(&mut self, _msg: Recheck, ctx: &mut Context<Self>) {
        if self.session.is_none() {
            return;
        }
        let (chain, remote) = self.status.update(|i| (i.peer_chain.clone(), i.remote_addr.clone()));
        let Err(rej) = self.shared.tls.load().verifier.recheck(&chain) else {
            return;
        };
        let remote = remote
            .and_then(|r| r.parse().ok())
            .or(self.peer.mesh_addr.socket_addr())
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], self.peer.mesh_addr.port())));
        self.shared.rejections.record(remote, Direction::Recheck, &rej);
        let state = if rej.reason == RejectReason::Revoked {
            LinkState::Revoked
        } else {
            LinkState::Untrusted
        };
        self.distrust = Some(state);
        self.send(ctx, Frame::goaway(rej.reason.as_str()));
        self.end_session_as(ctx, format!("peer certificate no longer trusted: {rej}"), state);
    }
}

impl Handler<Panic> for PeerLink {
    type Result = ();

    fn handle(&mut self, _msg: Panic, _ctx: &mut Context<Self>) {
        panic!("fault injection: link to {} panicked on request", self.peer.fqdn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_respects_the_cap() {
        let cap = Duration::from_secs(2);
        assert_eq!(backoff_delay(0, cap), Duration::ZERO);
        for _ in 0..200 {
            let d1 = backoff_delay(1, cap);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d3 = backoff_delay(3, cap);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            let d30 = backoff_delay(30, cap);
            assert!(d30 >= Duration::from_secs(1) && d30 <= cap, "{d30:?}");
        }
    }
}
