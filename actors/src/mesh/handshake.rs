//! What both ends of a mesh link share before the link is up: the framed TLS
//! stream ([`LinkCodec`], [`MeshFramed`]), the hello exchange ([`our_hello`],
//! [`read_hello`], [`check_protocol`]) and the result, [`Established`].
//!
//! The accept loop (`listener`) and the dialer (`link`) both end in an
//! [`Established`]; each adds the identity rules of its side.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::net::offload::PoolStream;
use bytes::BytesMut;
use futures_util::StreamExt;
use tokio_rustls::TlsStream;
use tokio_util::codec::{Decoder, Encoder, Framed};

use super::status::{LinkStatus, Shared};
use super::wire::{self, Frame, FrameError, Hello, PROTOCOL_VERSION};
use crate::trust::CertInfo;

/// The TLS stream under a mesh link, either side.
pub type MeshStream = TlsStream<PoolStream>;

/// A framed mesh stream.
pub type MeshFramed = Framed<MeshStream, LinkCodec>;

/// Frame codec that also counts frames and bytes into the link status.
#[derive(Debug, Default)]
pub struct LinkCodec {
    /// Where to count (set when the session is handed to its link).
    pub stats: Option<Arc<LinkStatus>>,
}

impl Decoder for LinkCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let before = src.len();
        let frame = wire::decode(src)?;
        if let (Some(_), Some(s)) = (&frame, &self.stats) {
            s.frames_in.fetch_add(1, Ordering::Relaxed);
            s.bytes_in.fetch_add((before - src.len()) as u64, Ordering::Relaxed);
        }
        Ok(frame)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None => wire::decode_eof(src),
        }
    }
}

impl Encoder<Frame> for LinkCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let before = dst.len();
        wire::encode(&frame, dst)?;
        if let Some(s) = &self.stats {
            s.frames_out.fetch_add(1, Ordering::Relaxed);
            s.bytes_out.fetch_add((dst.len() - before) as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// A connection that passed TLS, the trust checks and the peer's hello.
pub struct Established {
    /// The framed stream (may hold already-buffered frames).
    pub framed: MeshFramed,
    /// The peer's hello.
    pub hello: Hello,
    /// The peer's verified certificate.
    pub peer_cert: CertInfo,
    /// The peer's chain, kept to re-check the link after a reload.
    pub peer_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Local socket address.
    pub local: Option<SocketAddr>,
    /// Remote socket address.
    pub remote: SocketAddr,
    /// Connection-limit permit, held as long as the session lives.
    pub permit: Option<crate::net::accept::ConnPermit>,
}

impl Established {
    /// Negotiated TLS version and cipher suite, for `ctl links`.
    pub fn tls_facts(&self) -> (Option<String>, Option<String>) {
        let conn: &rustls::CommonState = match self.framed.get_ref() {
            TlsStream::Client(s) => s.get_ref().1,
            TlsStream::Server(s) => s.get_ref().1,
        };
        let version = conn.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
            other => format!("{other:?}"),
        });
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|c| c.suite().as_str().unwrap_or("unknown").to_owned());
        (version, cipher)
    }
}

/// Our hello, as sent on every new link.
pub fn our_hello(shared: &Shared) -> Frame {
    Frame::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        fqdn: shared.fqdn.to_string(),
        topology_version: shared.topology.load().version,
        features: 0,
    })
}

/// Why the first frame of a link was not a hello.
#[derive(Debug)]
pub enum HelloError {
    /// The peer refused the link.
    Goaway(String),
    /// Another frame kind came first.
    Unexpected(&'static str),
    /// Undecodable bytes (with TLS 1.3, a refusal of our certificate shows here).
    Frame(FrameError),
    /// The connection closed first.
    Closed,
}

/// Read the peer's hello: the first frame of every link.
pub async fn read_hello(framed: &mut MeshFramed) -> Result<Hello, HelloError> {
    match framed.next().await {
        Some(Ok(Frame::Hello(h))) => Ok(h),
        Some(Ok(Frame::Goaway { reason })) => Err(HelloError::Goaway(wire::bounded_reason(&reason).to_owned())),
        Some(Ok(other)) => Err(HelloError::Unexpected(other.name())),
        Some(Err(e)) => Err(HelloError::Frame(e)),
        None => Err(HelloError::Closed),
    }
}

/// The rule both sides apply to a hello: the same mesh protocol version.
pub fn check_protocol(hello: &Hello) -> Result<(), String> {
    if hello.protocol == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(format!(
            "mesh protocol {} (we speak {PROTOCOL_VERSION})",
            hello.protocol
        ))
    }
}
