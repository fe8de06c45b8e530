//! A minimal SIP-over-TLS client: the pieces `sipmesh bench` (load) and the
//! end-to-end tests (`tests/sip_ua`) share, so both speak to a node the same way.
//!
//! Inside:
//! - [`client_config`], [`connect`]: TLS to a node's client port, the node
//!   verified against the cluster CA, optionally presenting a client certificate.
//! - [`Connection`]: one such connection split into a [`SipReader`] and its
//!   write half, with [`Connection::send`] / [`Connection::send_raw`].
//! - [`SipReader`] (`reader.rs`): the project's [`SipDecoder`] over the read half.
//! - [`Credentials`], [`register`], [`challenge_param`] (`digest.rs`): answering
//!   a Digest challenge with [`authorization_header`], and REGISTER around one 401.
//! - [`UaError`]: why a step failed, split by cause.
//!
//! Nothing here words requests: the bench and the tests each build their own,
//! and the bench's hot path writes its bytes straight to [`Connection::writer`]
//! (no copy, no flush per message).
//!
//! [`SipDecoder`]: sipmesh_actors::sip::SipDecoder
//! [`authorization_header`]: sipmesh_actors::auth::authorization_header

mod digest;
mod reader;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use sipmesh_actors::auth::Algorithm;
use sipmesh_actors::sip::{ParseError, SipMessage};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub use digest::{challenge_param, register, Credentials};
pub use reader::{SipReader, READ_BUFFER};

use crate::pki::Issued;

/// Longest wait for the TCP connect, and again for the TLS handshake: a node
/// on loopback answers in milliseconds, and a stuck one must not hang a run.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A TLS client stream to a node.
pub type ClientStream = TlsStream<TcpStream>;

/// Why a user-agent step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UaError {
    /// A CA, certificate or key file is unreadable (local misconfiguration).
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        cause: io::Error,
    },
    /// A file held no usable PEM item of the kind wanted (local misconfiguration).
    #[error("{}: no {what} in it", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// rustls refused the configuration (local misconfiguration).
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    /// The name to verify the node by is not a DNS name or IP address.
    #[error("{0:?}: not a valid TLS server name")]
    ServerName(String),
    /// TCP connect failed or timed out.
    #[error("connect {addr}")]
    Connect {
        /// The node's address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        cause: io::Error,
    },
    /// The TLS handshake failed or timed out (the node was not trusted, or refused us).
    #[error("TLS handshake with {addr}")]
    Handshake {
        /// The node's address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        cause: io::Error,
    },
    /// Reading or writing an established connection failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The node closed the connection (peer).
    #[error("node closed the connection")]
    Closed,
    /// The node sent something the decoder refuses (peer misbehaved).
    #[error("node sent a malformed message: {0}")]
    Malformed(ParseError),
    /// A 401/407 offered none of the algorithms we answer (peer).
    #[error("no {} challenge", names(.algorithms))]
    NoChallenge {
        /// The algorithms looked for, most preferred first.
        algorithms: Vec<Algorithm>,
    },
    /// A Digest challenge lacks a parameter we need (peer).
    #[error("Digest challenge without {0}")]
    ChallengeParam(&'static str),
    /// An answer with another status than the exchange needs.
    #[error("{what}: expected {expected}, got {got:?}")]
    Status {
        /// The exchange (`REGISTER`).
        what: &'static str,
        /// The status wanted.
        expected: u16,
        /// The status received (`None`: a request).
        got: Option<u16>,
    },
}

/// `SHA-256 or MD5`.
fn names(algorithms: &[Algorithm]) -> String {
    algorithms.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(" or ")
}

/// A client config trusting the CA certificates in `ca` (PEM) for the node,
/// presenting `identity` when given (or no client certificate at all).
pub fn client_config(ca: &Path, identity: Option<&Issued>) -> Result<Arc<rustls::ClientConfig>, UaError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca, "CA certificate")? {
        roots.add(cert)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => {
            let chain = read_certs(&id.cert_path, "certificate")?;
            let pem = read(&id.key_path)?;
            let key = rustls_pemfile::private_key(&mut pem.as_slice())
                .map_err(|cause| UaError::Read {
                    path: id.key_path.clone(),
                    cause,
                })?
                .ok_or_else(|| UaError::Pem {
                    path: id.key_path.clone(),
                    what: "private key",
                })?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, UaError> {
    std::fs::read(path).map_err(|cause| UaError::Read {
        path: path.to_owned(),
        cause,
    })
}

/// Every certificate in a PEM file; at least one.
fn read_certs(path: &Path, what: &'static str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, UaError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| UaError::Read {
            path: path.to_owned(),
            cause,
        })?;
    if certs.is_empty() {
        return Err(UaError::Pem {
            path: path.to_owned(),
            what,
        });
    }
    Ok(certs)
}

/// TCP (no Nagle delay: SIP messages are small and answered one by one) and
/// TLS to `addr`, verifying the node as `server_name` (its FQDN, or the IP
/// address a client dialling it knows); each step bounded by [`CONNECT_TIMEOUT`].
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<ClientStream, UaError> {
    connect_from(None, addr, server_name, config).await
}

/// [`connect`] from the local address `from` (e.g. another loopback
/// address, to be a second source IP), or any when `None`.
pub async fn connect_from(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<ClientStream, UaError> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(|_| UaError::ServerName(server_name.into()))?;
    let timed_out = |step: &str| io::Error::new(io::ErrorKind::TimedOut, format!("{step} timed out"));
    let dial = async {
        match from {
            None => TcpStream::connect(addr).await,
            Some(ip) => {
                let socket = if ip.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await
            }
        }
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, dial)
        .await
        .map_err(|_| timed_out("tcp connect"))
        .and_then(|r| r)
        .map_err(|cause| UaError::Connect { addr, cause })?;
    tcp.set_nodelay(true)
        .map_err(|cause| UaError::Connect { addr, cause })?;
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| timed_out("tls handshake"))
    .and_then(|r| r)
    .map_err(|cause| UaError::Handshake { addr, cause })
}

/// One TLS connection to a node, split so that reading and writing can run
/// in different tasks (the bench's sender and collector).
pub struct Connection {
    /// The reading side: framed SIP messages.
    pub reader: SipReader<ReadHalf<ClientStream>>,
    /// The writing side, for callers that batch or write without flushing.
    pub writer: WriteHalf<ClientStream>,
    /// Our side of the TCP connection (the Via and Contact address).
    pub local: SocketAddr,
    /// The node's address, as dialled.
    pub remote: SocketAddr,
}

impl Connection {
    /// [`connect`], then split.
    pub async fn open(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Connection, UaError> {
        Connection::open_from(None, addr, server_name, config).await
    }

    /// [`connect_from`], then split.
    pub async fn open_from(
        from: Option<std::net::IpAddr>,
        addr: SocketAddr,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Connection, UaError> {
        let stream = connect_from(from, addr, server_name, config).await?;
        let local = stream.get_ref().0.local_addr()?;
        let (rd, writer) = tokio::io::split(stream);
        Ok(Connection {
            reader: SipReader::new(rd),
            writer,
            local,
            // Not `peer_addr()`: a node refusing our certificate may already
            // have reset the connection, and that is for the first read to tell.
            remote: addr,
        })
    }

    /// Write `bytes` as they are and flush them to the socket.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await
    }

    /// Serialize `msg` and [`send_raw`](Connection::send_raw) it.
    pub async fn send(&mut self, msg: &SipMessage) -> io::Result<()> {
        self.send_raw(&msg.to_bytes()).await
    }

    /// The next message from the node; see [`SipReader::next_message`].
    pub async fn next_message(&mut self) -> Result<SipMessage, UaError> {
        self.reader.next_message().await
    }
}
