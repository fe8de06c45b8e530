//! The client listener: SIP over TLS (server authentication; a client
//! certificate is optional and, when presented, must verify and names the
//! AOR in a `sip:` URI SAN).
//!
//! Bounded by a connection semaphore, a handshake timeout and an idle timeout
//! (RFC 5626 CRLF keep-alives count as traffic and are answered).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::flows::FLOW_QUEUE;
use super::Proxy;
use crate::config::SipConfig;
use crate::mesh::status::Shared;
use crate::net::accept::{accept_loop, AcceptStats};
use crate::sip::{Incoming, SipDecoder, SipUri, MAX_BODY, MAX_HEADER_BLOCK};

/// Deadline for a client's TLS handshake.
pub const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest read buffer of a client connection (one message at the limits
/// plus one read's worth of the next).
pub const MAX_CLIENT_BUFFER: usize = MAX_HEADER_BLOCK + MAX_BODY + 16 * 1024;
/// Bytes written per batch before a flush.
pub const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Accept client connections until the task is dropped.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shared: Arc<Shared>, config: SipConfig) {
    let limit = config.max_client_connections;
    let refused = {
        let p = proxy.clone();
        move |remote| crate::refused!(p.refusals, super::refusals::ClientRefusal::ClientLimit, remote = %remote, limit, "client connection limit reached")
    };
    let idle = config.client_idle_timeout;
    let handle = move |tcp, remote, permit| connection(tcp, remote, proxy.clone(), shared.clone(), idle, permit);
    accept_loop(
        listener,
        "sip clients",
        limit,
        Arc::new(AcceptStats::default()),
        refused,
        handle,
    )
    .await
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
    idle: Duration,
    _permit: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.load().client_port.clone());
    let tls = match tokio::time::timeout(CLIENT_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(remote = %remote, error = %e, "client TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(remote = %remote, "client TLS handshake timed out");
            return;
        }
    };
    let cert_identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| cert_aor(c));
    let (mut rd, wr) = tokio::io::split(tls);
    let (tx, rx) = mpsc::channel::<Bytes>(FLOW_QUEUE);
    let flow = proxy.flows.open(tx, remote, cert_identity.clone());
    tracing::debug!(remote = %remote, flow = flow.id, identity = ?cert_identity, "client connected");
    let writer = actix_rt::spawn(write_loop(wr, rx));
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut decoder = SipDecoder::new();
    'conn: loop {
        while let Some(incoming) = decoder.decode(&mut buf) {
            match incoming {
                Incoming::KeepAlive => {
                    let _ = flow.send(Bytes::from_static(b"\r\n"));
                }
                Incoming::Message(msg) => proxy.from_client(&flow, msg),
                Incoming::Invalid { error, partial, resync } => {
                    tracing::info!(remote = %remote, error = %error, resync, "malformed SIP from client");
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
        match tokio::time::timeout(idle, rd.read_buf(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(remote = %remote, error = %e, "client read failed");
                break;
            }
            Err(_) => {
                tracing::info!(remote = %remote, idle_s = idle.as_secs(), "client idle; closing");
                break;
            }
        }
    }
    proxy.flows.close(flow.id);
    drop(flow);
    // The writer drains what is queued (e.g. the answer to a malformed
    // message), then closes the TLS session.
    let _ = writer.await;
}

async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Bytes>) {
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
