//! The node's shared, read-mostly view ([`Shared`]): link status
//! ([`LinkStatus`], the `ctl links` rows), topology, rejections.
//!
//! Actors write it, the debug socket and the accept loop read it without
//! going through a mailbox. Counters are atomics; the rest sits behind short
//! `Mutex` sections that never span an `.await`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::time::Instant as TimerInstant;

use arc_swap::ArcSwap;
use serde::Serialize;
use sipmesh_state::{Fqdn, Role, Topology};
use time::OffsetDateTime;

use super::wire::Frame;
use crate::net::accept::AcceptStats;
use crate::trust::{RejectionLog, TlsConfigs};

/// Lifecycle state of one link; the text form is an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    /// Never up yet: dialing, or (accepting side) waiting for the peer to dial.
    Connecting,
    /// Never up yet and waiting before the next dial.
    Backoff,
    /// Hello exchanged both ways, heartbeats flowing.
    Up,
    /// Was up, is lost; redials go on underneath.
    Down,
    /// Closed because the peer's certificate is now revoked (after a reload);
    /// stays so until a link with a valid certificate comes up.
    Revoked,
    /// Closed because the peer's certificate no longer passes the trust checks
    /// for another reason (CA removed, expired, left the topology).
    Untrusted,
}

/// Mutable facts about one link (behind a mutex).
#[derive(Clone, Debug)]
pub struct LinkInfo {
    /// Current state.
    pub state: LinkState,
    /// When the state last changed.
    pub since: OffsetDateTime,
    /// Last measured heartbeat round trip.
    pub rtt: Option<Duration>,
    /// Last failure, for people.
    pub last_error: Option<String>,
    /// Peer certificate end of validity.
    pub cert_not_after: Option<OffsetDateTime>,
    /// Peer certificate serial (hex).
    pub cert_serial: Option<String>,
    /// Negotiated TLS version.
    pub tls_version: Option<String>,
    /// Negotiated cipher suite.
    pub cipher: Option<String>,
    /// Local socket address of the session.
    pub local_addr: Option<String>,
    /// Remote socket address of the session.
    pub remote_addr: Option<String>,
    /// Topology version the peer reported in its hello.
    pub peer_topology_version: Option<u64>,
    /// When the next dial is due, while waiting.
    pub next_dial: Option<TimerInstant>,
    /// The peer's certificate chain of the current session, for re-checks.
    pub peer_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// `ctl mesh` queries in flight at once (DoS bound on the waiting table).
pub const MAX_LINKS_QUERIES: usize = 256;

/// Buckets of the heartbeat RTT histogram, seconds (loopback to WAN).
pub const RTT_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Status of one link: shared between its actor and readers.
#[derive(Debug)]
pub struct LinkStatus {
    /// The peer.
    pub peer: Fqdn,
    /// True when this side dials (lower FQDN dials).
    pub dialer: bool,
    /// Mutable facts.
    pub info: Mutex<LinkInfo>,
    /// Supervisor restarts of the link (sessions ended, redials, actor deaths).
    pub restarts: AtomicU64,
    /// Frames received.
    pub frames_in: AtomicU64,
    /// Frames sent.
    pub frames_out: AtomicU64,
    /// Bytes received (frame bytes, before TLS).
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// The writer queue of the live session, for senders outside the link
    /// actor (the SIP proxy): one bounded queue, no mailbox hop.
    pub sender: Mutex<Option<tokio::sync::mpsc::Sender<Frame>>>,
    /// Frames refused because the writer queue was full (`sipmesh_link_queue_drops`).
    pub queue_full: AtomicU64,
    /// Every heartbeat RTT measured on this link (`sipmesh_link_rtt_seconds`).
    pub rtt_histogram: prometheus_client::metrics::histogram::Histogram,
    /// Where state changes are announced.
    events: Arc<crate::events::EventBus>,
}

/// Why a frame could not be queued on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No live session.
    Down,
    /// The link's queue is full.
    Full,
}

impl LinkStatus {
    /// A fresh status, `connecting`.
    pub fn new(peer: Fqdn, dialer: bool, events: Arc<crate::events::EventBus>) -> LinkStatus {
        LinkStatus {
            peer,
            dialer,
            info: Mutex::new(LinkInfo {
                state: LinkState::Connecting,
                since: OffsetDateTime::now_utc(),
                rtt: None,
                last_error: None,
                cert_not_after: None,
                cert_serial: None,
                tls_version: None,
                cipher: None,
                local_addr: None,
                remote_addr: None,
                peer_topology_version: None,
                next_dial: None,
                peer_chain: Vec::new(),
            }),
            restarts: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            sender: Mutex::new(None),
            rtt_histogram: prometheus_client::metrics::histogram::Histogram::new(RTT_BUCKETS.iter().copied()),
            events,
        }
    }

    /// Queue a frame on the live session without waiting.
    pub fn send_frame(&self, frame: Frame) -> Result<(), SendError> {
        let guard = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard.as_ref().ok_or(SendError::Down)?;
        tx.try_send(frame).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => {
                self.queue_full.fetch_add(1, Ordering::Relaxed);
                SendError::Full
            }
            tokio::sync::mpsc::error::TrySendError::Closed(_) => SendError::Down,
        })
    }

    /// Frames waiting in the live session's writer queue (0 without one).
    pub fn queue_depth(&self) -> usize {
        let guard = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    /// Run `f` on the info under the lock.
    pub fn update<R>(&self, f: impl FnOnce(&mut LinkInfo) -> R) -> R {
        f(&mut self.info.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Change state, stamping `since` only on a real change.
    pub fn set_state(&self, state: LinkState) {
        let changed = self.update(|i| {
            let old = i.state;
            if old != state {
                i.state = state;
                i.since = OffsetDateTime::now_utc();
            }
            (old != state).then(|| (old, i.last_error.clone()))
        });
        if let Some((old, last_error)) = changed {
            self.events.publish("link", || {
                serde_json::json!({"peer": self.peer.as_str(), "from": old, "state": state, "last_error": last_error})
            });
        }
    }

    /// Current state.
    pub fn state(&self) -> LinkState {
        self.update(|i| i.state)
    }

    /// The JSON row for `ctl links`.
    pub fn snapshot(&self) -> LinkRow {
        let i = self.update(|i| i.clone());
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LinkRow {
            peer: self.peer.to_string(),
            state: i.state,
            rtt_ms: i.rtt.map(|d| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0),
            since: crate::rfc3339(i.since),
            restarts: load(&self.restarts),
            last_error: i.last_error,
            cert_not_after: i.cert_not_after.map(crate::rfc3339),
            cert_serial: i.cert_serial,
            tls_version: i.tls_version,
            cipher: i.cipher,
            frames_in: load(&self.frames_in),
            frames_out: load(&self.frames_out),
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
            direction: if self.dialer { "dial" } else { "accept" },
            local_addr: i.local_addr,
            remote_addr: i.remote_addr,
            peer_topology_version: i.peer_topology_version,
            redial_in_ms: i
                .next_dial
                .map(|t| t.saturating_duration_since(TimerInstant::now()).as_millis() as u64),
        }
    }
}

/// One row of `ctl links` (field names are an interface for scripts).
#[derive(Clone, Debug, Serialize)]
pub struct LinkRow {
    /// Peer FQDN.
    pub peer: String,
    /// up | connecting | backoff | down.
    pub state: LinkState,
    /// Last heartbeat round trip in milliseconds.
    pub rtt_ms: Option<f64>,
    /// When the state last changed (RFC 3339).
    pub since: String,
    /// Supervisor restarts.
    pub restarts: u64,
    /// Last failure.
    pub last_error: Option<String>,
    /// Peer certificate end of validity (RFC 3339).
    pub cert_not_after: Option<String>,
    /// Peer certificate serial.
    pub cert_serial: Option<String>,
    /// TLS version.
    pub tls_version: Option<String>,
    /// Cipher suite.
    pub cipher: Option<String>,
    /// Frames received.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// dial | accept: which side opens the connection.
    pub direction: &'static str,
    /// Local address of the session.
    pub local_addr: Option<String>,
    /// Remote address of the session.
    pub remote_addr: Option<String>,
    /// Topology version the peer reported.
    pub peer_topology_version: Option<u64>,
    /// Milliseconds until the next dial, while waiting.
    pub redial_in_ms: Option<u64>,
}

/// A refused topology document, as shown by `ctl topology`.
#[derive(Clone, Debug, Serialize)]
pub struct TopologyRefusal {
    /// When (RFC 3339).
    pub at: String,
    /// Where it came from: `publish` or the peer's FQDN.
    pub from: String,
    /// `bad-signature`, `stale-version` or `invalid`.
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

/// How many topology refusals are kept (DoS bound).
pub const MAX_TOPOLOGY_REFUSALS: usize = 64;

/// Everything the node's tasks share.
pub struct Shared {
    /// This node.
    pub fqdn: Fqdn,
    /// This node's role in the topology.
    pub role: Role,
    /// Process start, for uptime.
    pub started: Instant,
    /// The live trusted-server set (read by the verifier on every handshake).
    pub topology: Arc<ArcSwap<Topology>>,
    /// Live TLS configs; swapped whole on reload.
    pub tls: ArcSwap<TlsConfigs>,
    /// Status of each link by peer.
    pub links: RwLock<BTreeMap<Fqdn, Arc<LinkStatus>>>,
    /// Refused connections.
    pub rejections: RejectionLog,
    /// Mesh listen address actually bound.
    pub mesh_addr: std::net::SocketAddr,
    /// The signed document of the topology in effect, when it came signed.
    pub topology_doc: arc_swap::ArcSwapOption<String>,
    /// The key topology documents must be signed with (None: static topology).
    pub topology_key: Option<sipmesh_state::PublicKey>,
    /// Recently refused topology documents.
    pub topology_refusals: Mutex<std::collections::VecDeque<TopologyRefusal>>,
    /// Where the TLS material is read from (for reloads).
    pub tls_paths: crate::config::TlsPaths,
    /// Extra client-port certificates chosen by SNI (for reloads).
    pub sni_paths: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    /// Counters of the mesh port's accept loop.
    pub mesh_accept: Arc<AcceptStats>,
    /// Counters of the client port's accept loop and connection deadlines.
    pub client_accept: Arc<AcceptStats>,
    /// Resolves members whose `mesh_addr` is a DNS name (`[mesh] dns`, or
    /// the system's resolvers); `None` when none could be built.
    pub resolver: Option<Arc<crate::net::dns::Resolver>>,
    /// What `ctl watch` shows (link states, rejections, topology, ...).
    pub events: Arc<crate::events::EventBus>,
    /// `ctl mesh` queries waiting for a peer's answer, by id.
    pub links_queries: Mutex<std::collections::HashMap<u64, tokio::sync::oneshot::Sender<String>>>,
}

impl Shared {
    /// Snapshot of every link, sorted by peer.
    pub fn link_rows(&self) -> Vec<LinkRow> {
        self.links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|l| l.snapshot())
            .collect()
    }

    /// Ask `peer` for its links; its rows as JSON text, or why not.
    pub async fn query_links(&self, peer: &str, timeout: std::time::Duration) -> Result<String, String> {
        let link = self.link(peer).ok_or("no link")?;
        if link.state() != LinkState::Up {
            return Err("link not up".into());
        }
        let id: u64 = rand::random();
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut q = self.links_queries.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= MAX_LINKS_QUERIES {
                return Err("too many queries in flight".into());
            }
            q.insert(id, tx);
        }
        let sent = link.send_frame(Frame::LinksQuery { id });
        let answer = match sent {
            Ok(()) => tokio::time::timeout(timeout, rx)
                .await
                .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))
                .and_then(|r| r.map_err(|_| "link closed".to_owned())),
            Err(e) => Err(format!("cannot send: {e:?}")),
        };
        self.links_queries.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        answer
    }

    /// A peer answered a links query (unknown ids, e.g. late answers, are dropped).
    pub fn answer_links_query(&self, id: u64, rows: String) {
        if let Some(tx) = self.links_queries.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
            let _ = tx.send(rows);
        }
    }

    /// Record a refused topology document.
    pub fn refuse_topology(&self, from: &str, reason: &'static str, detail: String) {
        tracing::warn!(from, reason, detail = %detail, "topology refused");
        self.events.publish(
            "topology",
            || serde_json::json!({"applied": false, "from": from, "reason": reason, "detail": detail}),
        );
        let mut log = self.topology_refusals.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == MAX_TOPOLOGY_REFUSALS {
            log.pop_front();
        }
        log.push_back(TopologyRefusal {
            at: crate::rfc3339(OffsetDateTime::now_utc()),
            from: from.to_owned(),
            reason,
            detail,
        });
    }

    /// Status of the link to `peer`, if it is a member.
    pub fn link(&self, peer: &str) -> Option<Arc<LinkStatus>> {
        self.links.read().unwrap_or_else(|p| p.into_inner()).get(peer).cloned()
    }
}
