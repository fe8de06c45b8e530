//! One bounded accept loop for the mesh and client ports: the same rules at
//! both doors ("strangers cost nothing before they prove who they are").
//!
//! For each accepted connection, in order:
//!
//! 1. **Per source IP**: an untrusted source IP may have at most
//!    [`Limits::per_ip`] connections at once (waiting or handled); trusted
//!    sources (on the mesh port: the IPs of topology members) are exempt.
//! 2. **Waiting for the ClientHello, without a permit**: the connection must
//!    send its first TLS record header within [`Limits::hello_wait`]; one
//!    that sends nothing is dropped at that deadline without ever having held
//!    a permit. Untrusted connections waiting so are bounded by
//!    [`Limits::total`] (at least [`MIN_PENDING`]) of their own (`pending-limit`).
//! 3. **The permit**: [`Limits::total`] permits per door, of which
//!    [`Limits::reserved`] only trusted sources may take, so strangers cannot
//!    lock members out. The permit ([`ConnPermit`]) moves into the
//!    connection's task and is released when it ends (mini-redis `server.rs`).
//!
//! Every refusal (and the deadline closes the doors report, see
//! [`Refusal`]) is counted by reason in [`AcceptStats`] (shown by `ctl
//! status`) and logged at most once per [`REFUSAL_LOG_INTERVAL`] per reason.
//! A failed `accept` (e.g. out of file descriptors) pauses the loop instead
//! of spinning.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Listen backlog of the node's ports (the kernel caps it at
/// `net.core.somaxconn`): a restarted server's clients all reconnect at once,
/// and a SYN dropped on a full queue costs its client a second or more.
pub const LISTEN_BACKLOG: u32 = 4096;
/// Pause after a failed `accept` so the loop does not spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// A refusal reason is logged at most this often (a stranger must not be
/// able to flood the log); the counters count every one.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// Default wait for the first TLS record (the ClientHello): a real client
/// sends it in its first packet, so a short deadline costs members nothing.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Re-check interval while a record header has only partly arrived.
const HELLO_POLL: Duration = Duration::from_millis(10);
/// Untrusted connections allowed to wait for their ClientHello: as many as
/// there are permits, but at least this many (a small door still lets a few
/// clients through while silent ones wait out their deadline).
pub const MIN_PENDING: usize = 16;
/// A TLS record header: content type, version, length.
const RECORD_HEADER_LEN: usize = 5;

/// The bounds of one door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections holding a permit at once.
    pub total: usize,
    /// Of `total`, permits only trusted sources may take.
    pub reserved: usize,
    /// Connections at once from one untrusted source IP.
    pub per_ip: usize,
    /// Deadline for the first TLS record header; no permit is held meanwhile.
    pub hello_wait: Duration,
}

/// Why a door turned a connection away (or closed it at a deadline); the
/// text form is an interface (`ctl status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The source IP already has [`Limits::per_ip`] connections.
    SourceLimit,
    /// Too many untrusted connections are waiting for their ClientHello.
    PendingLimit,
    /// Every permit this source may take is in use.
    ConnectionLimit,
    /// No TLS record arrived within [`Limits::hello_wait`].
    NoClientHello,
    /// Client port: a message did not arrive whole within its deadline.
    MessageDeadline,
    /// Client port: the connection never authenticated within its lifetime.
    UnauthenticatedLifetime,
}

impl Refusal {
    /// Every reason, in counter order.
    pub const ALL: [Refusal; 6] = [
        Refusal::SourceLimit,
        Refusal::PendingLimit,
        Refusal::ConnectionLimit,
        Refusal::NoClientHello,
        Refusal::MessageDeadline,
        Refusal::UnauthenticatedLifetime,
    ];

    /// The stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::SourceLimit => "source-limit",
            Refusal::PendingLimit => "pending-limit",
            Refusal::ConnectionLimit => "connection-limit",
            Refusal::NoClientHello => "no-client-hello",
            Refusal::MessageDeadline => "message-deadline",
            Refusal::UnauthenticatedLifetime => "unauthenticated-lifetime",
        }
    }

    fn index(self) -> usize {
        Refusal::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of one door.
#[derive(Debug)]
pub struct AcceptStats {
    /// Connections that got a permit and were handed to their task.
    pub accepted: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    /// Per reason: milliseconds since `epoch` of the last log line, plus one
    /// (0: never logged).
    logged_at: [AtomicU64; Refusal::ALL.len()],
    epoch: Instant,
}

impl Default for AcceptStats {
    fn default() -> Self {
        AcceptStats {
            accepted: AtomicU64::new(0),
            refused: Default::default(),
            logged_at: Default::default(),
            epoch: Instant::now(),
        }
    }
}

impl AcceptStats {
    /// Count one refusal; log it unless one of the same reason was logged
    /// less than [`REFUSAL_LOG_INTERVAL`] ago.
    pub fn refuse(&self, door: &'static str, remote: SocketAddr, reason: Refusal) {
        let i = reason.index();
        let total = self.refused[i].fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.logged_at[i].load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= REFUSAL_LOG_INTERVAL.as_millis() as u64;
        if due
            && self.logged_at[i]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(door, remote = %remote, reason = %reason, total, "connection refused (logged at most once a second per reason)");
        }
    }

    /// Refusals of one reason so far.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Refusals of every reason so far.
    pub fn refused_total(&self) -> u64 {
        Refusal::ALL.iter().map(|r| self.refused(*r)).sum()
    }

    /// The `ctl status` object: `{"accepted": n, "refused": {reason: n}}`.
    pub fn to_json(&self) -> Value {
        let refused: serde_json::Map<String, Value> = Refusal::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), json!(self.refused(*r))))
            .collect();
        json!({ "accepted": self.accepted.load(Ordering::Relaxed), "refused": refused })
    }
}

/// Open connections per untrusted source IP.
#[derive(Debug, Default)]
struct Sources {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl Sources {
    fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<SourceSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            ip,
        })
    }
}

/// One connection's place in its source IP's count; given back on drop.
#[derive(Debug)]
struct SourceSlot {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.sources.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip); // the map holds live sources only
            }
        }
    }
}

/// What a handled connection holds: its permit and its place in its source
/// IP's count, released when dropped.
#[derive(Debug)]
pub struct ConnPermit {
    _permit: OwnedSemaphorePermit,
    _source: Option<SourceSlot>,
}

/// A door: its name (for logs), bounds, counters, which sources are trusted
/// and who is told about refusals.
pub struct Door<T, R> {
    /// For logs.
    pub name: &'static str,
    /// Its bounds.
    pub limits: Limits,
    /// Its counters.
    pub stats: Arc<AcceptStats>,
    /// Whether a source IP is trusted (reserved permits, no per-IP limit).
    pub trusted: T,
    /// Told about each refusal (after it was counted).
    pub refused: R,
}

/// Whether the first TLS record header arrives within `wait` (peeked, so
/// the TLS acceptor still reads it).
async fn record_header_arrives(tcp: &TcpStream, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut header = [0u8; RECORD_HEADER_LEN];
    loop {
        match tokio::time::timeout_at(deadline, tcp.peek(&mut header)).await {
            Ok(Ok(n)) if n >= RECORD_HEADER_LEN => return true,
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(_)) => {
                // Partly in: peek would return at once again, so wait a little.
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(HELLO_POLL).await;
            }
        }
    }
}

/// Accept connections from `listener` until the task is dropped; each one
/// admitted by `door`'s rules is handled by `handle` on a task of its own.
pub async fn accept_loop<T, R, H, F>(listener: TcpListener, door: Door<T, R>, handle: H)
where
    T: Fn(IpAddr) -> bool,
    R: Fn(SocketAddr, Refusal) + 'static,
    H: Fn(TcpStream, SocketAddr, ConnPermit) -> F + 'static,
    F: Future<Output = ()> + 'static,
{
    let Limits {
        total,
        reserved,
        per_ip,
        hello_wait,
    } = door.limits;
    let reserved = reserved.min(total);
    let general = Arc::new(Semaphore::new(total - reserved));
    let reserved = Arc::new(Semaphore::new(reserved));
    let pending = Arc::new(Semaphore::new(total.max(MIN_PENDING)));
    let sources = Arc::new(Sources::default());
    let (name, stats) = (door.name, door.stats);
    let refused = Arc::new(door.refused);
    let handle = Arc::new(handle);
    let refuse = {
        let (stats, refused) = (stats.clone(), refused.clone());
        move |remote: SocketAddr, why: Refusal| {
            stats.refuse(name, remote, why);
            refused(remote, why);
        }
    };
    let refuse = Arc::new(refuse);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let trusted = (door.trusted)(remote.ip());
        let (source, waiting) = if trusted {
            (None, None)
        } else {
            let Some(slot) = sources.take(remote.ip(), per_ip) else {
                refuse(remote, Refusal::SourceLimit);
                continue; // dropping the stream closes it
            };
            let Ok(waiting) = pending.clone().try_acquire_owned() else {
                refuse(remote, Refusal::PendingLimit);
                continue;
            };
            (Some(slot), Some(waiting))
        };
        let (general, reserved, stats, refuse, handle) = (
            general.clone(),
            reserved.clone(),
            stats.clone(),
            refuse.clone(),
            handle.clone(),
        );
        actix_rt::spawn(async move {
            if !record_header_arrives(&tcp, hello_wait).await {
                return refuse(remote, Refusal::NoClientHello);
            }
            drop(waiting);
            let permit = match general.try_acquire_owned() {
                Ok(p) => p,
                Err(_) if trusted => match reserved.try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => return refuse(remote, Refusal::ConnectionLimit),
                },
                Err(_) => return refuse(remote, Refusal::ConnectionLimit),
            };
            stats.accepted.fetch_add(1, Ordering::Relaxed);
            let permit = ConnPermit {
                _permit: permit,
                _source: source,
            };
            handle(tcp, remote, permit).await
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A record header as a TLS client sends it first.
    const HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00];

    type Held = Arc<Mutex<Vec<(TcpStream, ConnPermit)>>>;

    fn bound() -> (TcpListener, Arc<AcceptStats>, Held) {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(std).unwrap();
        (listener, Arc::new(AcceptStats::default()), Arc::default())
    }

    fn start(
        listener: TcpListener,
        limits: Limits,
        trusted_ip: Option<IpAddr>,
        stats: Arc<AcceptStats>,
        held: Held,
    ) -> tokio::task::JoinHandle<()> {
        actix_rt::spawn(accept_loop(
            listener,
            Door {
                name: "test",
                limits,
                stats,
                trusted: move |ip| Some(ip) == trusted_ip,
                refused: |_, _| {},
            },
            move |tcp, _remote, permit| {
                // Hold the connection and its permit until the test ends.
                held.lock().unwrap().push((tcp, permit));
                async {}
            },
        ))
    }

    async fn connect_from(local: &str, addr: SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{local}:0").parse().unwrap()).unwrap();
        s.connect(addr).await.unwrap()
    }

    async fn closed_by_server(s: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    async fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[actix_rt::test]
    async fn permits_per_ip_limits_and_reserved_capacity() {
        let limits = Limits {
            total: 3,
            reserved: 1,
            per_ip: 2,
            hello_wait: Duration::from_secs(5),
        };
        let trusted: IpAddr = "127.0.0.1".parse().unwrap();
        let (listener, stats, held) = bound();
        let addr = listener.local_addr().unwrap();
        let task = start(listener, limits, Some(trusted), stats.clone(), held.clone());
        // Two strangers from one IP take the two general permits; a third
        // from that IP is over the per-IP limit.
        let mut strangers = Vec::new();
        for _ in 0..2 {
            let mut s = connect_from("127.0.0.7", addr).await;
            s.write_all(HELLO).await.unwrap();
            strangers.push(s);
        }
        wait_for("two accepted", || stats.accepted.load(Ordering::Relaxed) == 2).await;
        let mut third = connect_from("127.0.0.7", addr).await;
        assert!(closed_by_server(&mut third).await);
        assert_eq!(stats.refused(Refusal::SourceLimit), 1);
        // Another stranger IP finds no general permit left: the last is reserved.
        let mut other = connect_from("127.0.0.8", addr).await;
        other.write_all(HELLO).await.unwrap();
        assert!(closed_by_server(&mut other).await);
        assert_eq!(stats.refused(Refusal::ConnectionLimit), 1);
        // A trusted source takes the reserved one.
        let mut member = connect_from("127.0.0.1", addr).await;
        member.write_all(HELLO).await.unwrap();
        wait_for("the member accepted", || stats.accepted.load(Ordering::Relaxed) == 3).await;
        // A released permit admits the next connection.
        held.lock().unwrap().remove(0);
        let mut again = connect_from("127.0.0.8", addr).await;
        again.write_all(HELLO).await.unwrap();
        wait_for("a fourth accepted", || stats.accepted.load(Ordering::Relaxed) == 4).await;
        assert_eq!(stats.refused_total(), 2);
        let j = stats.to_json();
        assert_eq!(j["accepted"], 4);
        assert_eq!(j["refused"]["source-limit"], 1);
        assert_eq!(j["refused"]["connection-limit"], 1);
        task.abort();
        drop((strangers, member, again));
    }

    #[actix_rt::test]
    async fn a_silent_connection_never_holds_a_permit() {
        let limits = Limits {
            total: 1,
            reserved: 0,
            per_ip: 10,
            hello_wait: Duration::from_millis(300),
        };
        let (listener, stats, held) = bound();
        let addr = listener.local_addr().unwrap();
        let task = start(listener, limits, None, stats.clone(), held.clone());
        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // A partial header is not enough either.
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(&HELLO[..3]).await.unwrap();
        // Meanwhile a real client gets the only permit.
        let mut real = TcpStream::connect(addr).await.unwrap();
        real.write_all(HELLO).await.unwrap();
        wait_for("the real client accepted", || {
            stats.accepted.load(Ordering::Relaxed) == 1
        })
        .await;
        assert!(closed_by_server(&mut silent).await);
        assert!(closed_by_server(&mut partial).await);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(stats.refused(Refusal::NoClientHello), 2);
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 1);
        task.abort();
        drop(real);
    }
}
