//! The mesh accept loop: bounded connections (per source IP, capacity
//! reserved for members, no permit before a ClientHello), TLS with a required client
//! certificate, the hello, identity checks, then hand-off to the peer's link.
//!
//! Every refusal is recorded with its reason; a bad connection only ever
//! affects itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures_util::SinkExt;
use sipmesh_state::Fqdn;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsStream;
use tokio_util::codec::Framed;

use super::handshake::{check_protocol, read_hello, Established, HelloError, LinkCodec};
use super::link::{Directory, Inbound};
use super::status::Shared;
use super::wire::Frame;
use crate::config::MeshTiming;
use crate::net::accept::{accept_loop, ConnPermit, Door, Limits, Refusal, CLIENT_HELLO_TIMEOUT};
use crate::trust::{peer_chain, rejection_of, CertInfo, Direction, RejectReason, Rejection};

/// Accept mesh connections until the task is dropped.
///
/// The door's rules are [`accept_loop`]'s: sources that are the IP of a
/// member in the live topology are trusted (reserved permits, no per-IP
/// limit), and no permit is taken before a ClientHello arrives (within
/// [`CLIENT_HELLO_TIMEOUT`], or the handshake deadline when shorter).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, directory: Arc<Directory>, timing: MeshTiming) {
    let refusing = shared.clone();
    let hello_wait = CLIENT_HELLO_TIMEOUT.min(timing.handshake_timeout);
    let refused = move |remote, why: Refusal| {
        let (reason, detail) = match why {
            Refusal::NoClientHello => (
                RejectReason::Handshake,
                format!("no TLS ClientHello within {} ms", hello_wait.as_millis()),
            ),
            Refusal::SourceLimit => (
                RejectReason::ConnectionLimit,
                format!(
                    "{} connections from this non-member IP already open",
                    timing.max_connections_per_ip
                ),
            ),
            Refusal::PendingLimit => (
                RejectReason::ConnectionLimit,
                format!(
                    "{} non-member connections already waiting for their ClientHello",
                    timing.max_connections
                ),
            ),
            _ => (
                RejectReason::ConnectionLimit,
                format!(
                    "{} mesh connections already open ({} reserved for members)",
                    timing.max_connections, timing.member_reserved_connections
                ),
            ),
        };
        refusing.rejections.record(
            remote,
            Direction::Inbound,
            &Rejection {
                reason,
                presented_name: None,
                detail,
            },
        )
    };
    let members = shared.clone();
    let trusted = move |ip: IpAddr| {
        members
            .topology
            .load()
            .members
            .iter()
            .any(|m| m.mesh_addr.ip() == Some(ip))
    };
    let door = Door {
        name: "mesh",
        limits: Limits {
            total: timing.max_connections,
            reserved: timing.member_reserved_connections,
            per_ip: timing.max_connections_per_ip,
            hello_wait,
        },
        stats: shared.mesh_accept.clone(),
        trusted,
        refused,
    };
    let handle = move |tcp, remote, permit| {
        let (shared, directory) = (shared.clone(), directory.clone());
        async move {
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
        }
    };
    accept_loop(listener, door, handle).await
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
    permit: ConnPermit,
) -> Result<Established, Rejection> {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let acceptor = tokio_rustls::TlsAcceptor::from(shared.tls.load().server.clone());
    let tls = crate::net::offload::accept(acceptor, tcp).await.map_err(|e| {
        rejection_of(&e).unwrap_or(Rejection {
            reason: RejectReason::Handshake,
            presented_name: None,
            detail: e.to_string(),
        })
    })?;
    let peer_chain = peer_chain(tls.get_ref().1);
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
    let hello = read_hello(&mut framed).await.map_err(|e| {
        protocol(
            presented.clone(),
            match e {
                HelloError::Goaway(_) => "expected hello, got goaway".into(),
                HelloError::Unexpected(kind) => format!("expected hello, got {kind}"),
                HelloError::Frame(e) => e.to_string(),
                HelloError::Closed => "closed before hello".into(),
            },
        )
    })?;
    check_protocol(&hello).map_err(|e| protocol(presented.clone(), e))?;
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
        let _ = framed.send(Frame::goaway("wrong-direction")).await;
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
