//! The client listener: SIP over TLS (server authentication; a client
//! certificate is optional and, when presented, must verify and names the
//! AOR in a `sip:` URI SAN).
//!
//! Bounded by the door's rules (per-IP and total connection bounds, no
//! permit before the ClientHello: [`accept_loop`]), a handshake timeout, an
//! idle timeout (RFC 5626 CRLF keep-alives count as traffic and are
//! answered), a whole-message deadline (first byte to end of body; not reset
//! by each byte) and a lifetime for connections that never authenticated
//! (keep-alives do not extend it). The read buffer grows only by the bytes
//! that arrived and shrinks back after a large message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::flows::FLOW_QUEUE;
use super::Proxy;
use crate::config::SipConfig;
use crate::mesh::status::Shared;
use crate::net::accept::{accept_loop, ConnPermit, Door, Limits, Refusal, CLIENT_HELLO_TIMEOUT};
use crate::sip::{Incoming, SipDecoder, SipUri, MAX_BODY, MAX_HEADER_BLOCK};

/// Deadline for a client's TLS handshake.
pub const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest read buffer of a client connection (one message at the limits
/// plus one read's worth of the next).
pub const MAX_CLIENT_BUFFER: usize = MAX_HEADER_BLOCK + MAX_BODY + 16 * 1024;
/// Bytes written per batch before a flush.
pub const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Read buffer of a fresh connection (most messages fit).
pub const INITIAL_CLIENT_BUFFER: usize = 8 * 1024;
/// Free room made before each read: the buffer grows by what arrives, never
/// by what a Content-Length announces.
pub const READ_ROOM: usize = 8 * 1024;
/// After a message larger than this, an empty read buffer is replaced by a
/// fresh [`INITIAL_CLIENT_BUFFER`] one: what is left of a split buffer
/// still pins the large allocation, so buffers would never shrink.
pub const SHRINK_ABOVE: usize = 32 * 1024;

/// The deadlines of one client connection.
#[derive(Clone, Copy, Debug)]
struct Deadlines {
    /// No bytes at all for this long: closed.
    idle: Duration,
    /// First byte to end of body of one message.
    message: Duration,
    /// From accept, for a connection that has not authenticated.
    unauthenticated: Duration,
}

/// Accept client connections until the task is dropped (the door's rules
/// are [`accept_loop`]'s: per-IP and total bounds, no permit before the
/// ClientHello; refusals counted in `Shared::client_accept`).
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shared: Arc<Shared>, config: SipConfig) {
    let door = Door {
        name: "sip clients",
        limits: Limits {
            total: config.max_client_connections,
            reserved: 0,
            per_ip: config.max_client_connections_per_ip,
            hello_wait: CLIENT_HELLO_TIMEOUT.min(CLIENT_HANDSHAKE_TIMEOUT),
        },
        stats: shared.client_accept.clone(),
        trusted: |_| false,
        refused: |_, _| {},
    };
    let deadlines = Deadlines {
        idle: config.client_idle_timeout,
        message: config.client_message_timeout,
        unauthenticated: config.unauthenticated_lifetime,
    };
    let handle = move |tcp, remote, permit| connection(tcp, remote, proxy.clone(), shared.clone(), deadlines, permit);
    accept_loop(listener, door, handle).await
}

/// The AOR named by a client certificate's `sip:` URI SAN.
pub fn cert_aor(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("sip:") || u.starts_with("sips:") => {
            SipUri::parse(u).ok().map(|u| u.aor())
        }
        _ => None,
    })
}

async fn connection(
    tcp: TcpStream,
    remote: SocketAddr,
    proxy: Arc<Proxy>,
    shared: Arc<Shared>,
    deadlines: Deadlines,
    _permit: ConnPermit,
) {
    let accepted = Instant::now();
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.load().client_port.clone());
    let tls = match tokio::time::timeout(CLIENT_HANDSHAKE_TIMEOUT, crate::net::offload::accept(acceptor, tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(remote = %remote, error = %e, "client TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(remote = %remote, "client TLS handshake timed out");
            return;
        }
    };
    let cert_identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| cert_aor(c));
    let (rd, wr) = tokio::io::split(tls);
    let (tx, rx) = mpsc::channel::<Bytes>(FLOW_QUEUE);
    let flow = proxy.flows.open(tx, remote, cert_identity.clone());
    tracing::debug!(remote = %remote, flow = flow.id, identity = ?cert_identity, "client connected");
    let writer = actix_rt::spawn(write_loop(wr, rx));
    let door = ClientDoor {
        shared,
        deadlines,
        accepted,
    };
    serve_flow(rd, flow.clone(), proxy.clone(), Some(door)).await;
    proxy.flows.close(flow.id);
    drop(flow);
    // The writer drains what is queued (e.g. the answer to a malformed
    // message), then closes the TLS session.
    let _ = writer.await;
}

/// What the client door adds to a connection's reading: the deadlines of
/// not-yet-authenticated connections and the counters of refusals.
pub(crate) struct ClientDoor {
    shared: Arc<Shared>,
    deadlines: Deadlines,
    accepted: Instant,
}

/// Read SIP from one flow until it closes or a deadline passes, handing each
/// message to the proxy: a client's through `from_client`, a partner's
/// (`door` is `None`: it proved who it is in the handshake) through
/// `from_partner`.
pub(crate) async fn serve_flow<R: tokio::io::AsyncRead + Unpin>(
    mut rd: R,
    flow: Arc<super::flows::Flow>,
    proxy: Arc<Proxy>,
    door: Option<ClientDoor>,
) {
    let remote = flow.remote;
    let deadlines = door.as_ref().map_or_else(
        || {
            let c = proxy.sip_config();
            Deadlines {
                idle: c.client_idle_timeout,
                message: c.client_message_timeout,
                unauthenticated: Duration::MAX,
            }
        },
        |d| d.deadlines,
    );
    let partner = flow.partner.is_some();
    let mut buf = BytesMut::with_capacity(INITIAL_CLIENT_BUFFER);
    let mut decoder = SipDecoder::new();
    let unauthenticated_until = door.as_ref().map(|d| d.accepted + d.deadlines.unauthenticated);
    let mut authenticated = flow.cert_identity.is_some() || partner;
    let mut last_read = Instant::now();
    // When the first byte of the message now being received arrived.
    let mut message_since: Option<Instant> = None;
    // Whether a message larger than SHRINK_ABOVE came out of `buf`.
    let mut large = false;
    'conn: loop {
        while let Some(incoming) = decoder.decode(&mut buf) {
            match incoming {
                Incoming::KeepAlive => {
                    let _ = flow.send(Bytes::from_static(b"\r\n"));
                }
                Incoming::Message(msg) => {
                    large |= msg.body.len() > SHRINK_ABOVE;
                    if partner {
                        proxy.from_partner(&flow, msg)
                    } else {
                        proxy.from_client(&flow, msg)
                    }
                }
                Incoming::Invalid { error, partial, resync } => {
                    tracing::debug!(remote = %remote, error = %error, resync, partner, "malformed SIP");
                    proxy.malformed(&flow, &error, partial.as_ref());
                    if !resync {
                        break 'conn;
                    }
                }
            }
        }
        if buf.len() >= MAX_CLIENT_BUFFER {
            break;
        }
        if decoder.is_idle(&buf) {
            message_since = None;
        } else if message_since.is_none() {
            message_since = Some(last_read);
        }
        if buf.is_empty() && (large || buf.capacity() > SHRINK_ABOVE) {
            buf = BytesMut::with_capacity(INITIAL_CLIENT_BUFFER);
            large = false;
        }
        make_room(&mut buf);
        // Read the flow's identity without cloning it (this runs per read).
        authenticated = authenticated || flow.digest_identity.lock().is_ok_and(|id| id.is_some());
        let mut deadline = last_read + deadlines.idle;
        if let Some(since) = message_since {
            deadline = deadline.min(since + deadlines.message);
        }
        if let (false, Some(until)) = (authenticated, unauthenticated_until) {
            deadline = deadline.min(until);
        }
        match tokio::time::timeout_at(deadline, rd.read_buf(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => last_read = Instant::now(),
            Ok(Err(e)) => {
                tracing::debug!(remote = %remote, error = %e, "read failed");
                break;
            }
            Err(_) => {
                let now = Instant::now();
                let refuse = |why| {
                    if let Some(d) = &door {
                        d.shared.client_accept.refuse("sip clients", remote, why);
                    }
                };
                if message_since.is_some_and(|since| now >= since + deadlines.message) {
                    refuse(Refusal::MessageDeadline);
                } else if !authenticated && unauthenticated_until.is_some_and(|u| now >= u) {
                    refuse(Refusal::UnauthenticatedLifetime);
                } else {
                    tracing::debug!(remote = %remote, idle_s = deadlines.idle.as_secs(), "connection idle; closing");
                }
                break;
            }
        }
    }
}

/// Make [`READ_ROOM`] free for the next read, growing by a quarter of what
/// is buffered (not doubling): the capacity follows the bytes that arrived.
/// A fresh buffer also lets go of one a split message still pins.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() >= READ_ROOM {
        return;
    }
    let mut grown = BytesMut::with_capacity(buf.len() + buf.len() / 4 + READ_ROOM);
    grown.extend_from_slice(buf);
    *buf = grown;
}

/// Write what is queued for a flow, in batches, until its senders are gone.
pub(crate) async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Bytes>) {
    let mut batch = Vec::with_capacity(16 * 1024);
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(b) => batch.extend_from_slice(&b),
                Err(_) => break,
            }
        }
        if wr.write_all(&batch).await.is_err() || wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}
