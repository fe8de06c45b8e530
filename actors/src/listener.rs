//! The mesh accept loop: bound connection count, TLS with a required client
//! certificate, the hello, identity checks, then hand-off to the peer's link.
//!
//! Every refusal is recorded with its reason; a bad connection only ever
//! affects itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sipmesh_state::Fqdn;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsStream;
use tokio_util::codec::Framed;

use crate::config::MeshTiming;
use crate::link::{frame_name, Directory, Established, Inbound, LinkCodec};
use crate::reject::{Direction, RejectReason, Rejection};
use crate::status::Shared;
use crate::tls::{rejection_of, CertInfo};
use crate::wire::{Frame, PROTOCOL_VERSION};

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// does not spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accept mesh connections until the task is dropped.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, directory: Arc<Directory>, timing: MeshTiming) {
    let limit = Arc::new(Semaphore::new(timing.max_connections));
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "mesh accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared.rejections.record(
                remote,
                Direction::Inbound,
                &Rejection {
                    reason: RejectReason::ConnectionLimit,
                    presented_name: None,
                    detail: format!("{} mesh connections already open", timing.max_connections),
                },
            );
            continue;
        };
        let shared = shared.clone();
        let directory = directory.clone();
        actix_rt::spawn(async move {
            match tokio::time::timeout(timing.handshake_timeout, authenticate(tcp, remote, &shared, permit)).await {
                Ok(Ok(est)) => deliver(est, &shared, &directory).await,
                Ok(Err(rej)) => shared.rejections.record(remote, Direction::Inbound, &rej),
                Err(_) => shared.rejections.record(
                    remote,
                    Direction::Inbound,
                    &Rejection {
                        reason: RejectReason::Handshake,
                        presented_name: None,
                        detail: format!(
                            "tls handshake and hello not finished within {} ms",
                            timing.handshake_timeout.as_millis()
                        ),
                    },
                ),
            }
        });
    }
}

async fn deliver(est: Established, shared: &Shared, directory: &Directory) {
    let peer = match Fqdn::new(&est.hello.fqdn) {
        Ok(p) => p,
        Err(_) => return,
    };
    match directory.get(&peer) {
        Some(addr) => {
            if addr.send(Inbound(est)).await.is_err() {
                tracing::warn!(peer = %peer, "link actor gone; dropping inbound connection");
            }
        }
        None => tracing::warn!(peer = %peer, local = %shared.fqdn, "no link for an authenticated member"),
    }
}

fn protocol(presented: Option<String>, detail: String) -> Rejection {
    Rejection {
        reason: RejectReason::Protocol,
        presented_name: presented,
        detail,
    }
}

/// TLS, hello, and the identity rules; `Err` is the exact refusal.
async fn authenticate(
    tcp: TcpStream,
    remote: SocketAddr,
    shared: &Shared,
    permit: OwnedSemaphorePermit,
) -> Result<Established, Rejection> {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.load().server.clone());
    let tls = acceptor.accept(tcp).await.map_err(|e| {
        rejection_of(&e).unwrap_or(Rejection {
            reason: RejectReason::Handshake,
            presented_name: None,
            detail: e.to_string(),
        })
    })?;
    let peer_chain: Vec<_> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default();
    let cert = peer_chain
        .first()
        .map(|c| CertInfo::parse(c))
        .ok_or_else(|| Rejection {
            reason: RejectReason::NoClientCert,
            presented_name: None,
            detail: "no client certificate after handshake".into(),
        })?
        .map_err(|e| Rejection {
            reason: RejectReason::BadCert,
            presented_name: None,
            detail: e,
        })?;
    let presented = cert.presented_name();
    let mut framed = Framed::new(TlsStream::Server(tls), LinkCodec::default());
    let hello = match framed.next().await {
        Some(Ok(Frame::Hello(h))) => h,
        Some(Ok(other)) => {
            return Err(protocol(
                presented,
                format!("expected hello, got {}", frame_name(&other)),
            ));
        }
        Some(Err(e)) => return Err(protocol(presented, e.to_string())),
        None => return Err(protocol(presented, "closed before hello".into())),
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(protocol(
            presented,
            format!("mesh protocol {} (we speak {PROTOCOL_VERSION})", hello.protocol),
        ));
    }
    let name = Fqdn::new(&hello.fqdn).map_err(|e| protocol(presented.clone(), format!("hello fqdn: {e}")))?;
    if !cert.dns_names.iter().any(|n| n == name.as_str()) {
        return Err(Rejection {
            reason: RejectReason::NameMismatch,
            presented_name: presented,
            detail: format!("hello names {name} but the certificate names {:?}", cert.dns_names),
        });
    }
    if name == shared.fqdn {
        return Err(Rejection {
            reason: RejectReason::NameMismatch,
            presented_name: presented,
            detail: "peer claims to be this node".into(),
        });
    }
    let topology = shared.topology.load();
    if !topology.contains(name.as_str()) {
        return Err(Rejection {
            reason: RejectReason::NotInTopology,
            presented_name: Some(name.to_string()),
            detail: format!("{name} is not in topology v{}", topology.version),
        });
    }
    if name > shared.fqdn {
        // Tie-break: the lower FQDN dials. Tell the peer so it stops dialing
        // this way, and keep the pair at one connection.
        let _ = framed
            .send(Frame::Goaway {
                reason: "wrong-direction".into(),
            })
            .await;
        return Err(protocol(
            Some(name.to_string()),
            format!("{name} dialled, but {} dials {name} (lower fqdn dials)", shared.fqdn),
        ));
    }
    Ok(Established {
        framed,
        hello,
        peer_cert: cert,
        peer_chain,
        local,
        remote,
        permit: Some(permit),
    })
}
