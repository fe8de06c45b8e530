//! Mesh link frame codec (sans-IO).
//!
//! Every frame on a mesh link is a 4-byte big-endian length followed by that
//! many bytes of a postcard-encoded [`Frame`]. The length is checked against
//! [`MAX_FRAME_LEN`] before anything is allocated, so a peer cannot make us
//! reserve memory by announcing a huge frame.
//!
//! [`decode`] returns `Ok(None)` while a frame is incomplete and `Err` only
//! for a malformed one, after which the connection must be closed; the link's
//! `tokio_util` codec (`handshake::LinkCodec`) wraps it.

use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};

/// Largest frame payload accepted or sent (DoS bound: one SIP message with
/// headroom; a frame is buffered whole before it is decoded).
pub const MAX_FRAME_LEN: usize = 256 * 1024;

/// Size of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Protocol version carried in hello; a peer with another major is refused.
pub const PROTOCOL_VERSION: u16 = 1;

/// Longest reason text carried in a goaway (bounded so a goaway fits any log line).
pub const MAX_GOAWAY_REASON: usize = 256;

/// One message on a mesh link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame in each direction: who I am and what I hold.
    Hello(Hello),
    /// Heartbeat request; the nonce is echoed in the pong.
    Ping {
        /// Opaque value echoed back.
        nonce: u64,
    },
    /// Heartbeat answer.
    Pong {
        /// The nonce of the ping being answered.
        nonce: u64,
    },
    /// The sender is closing the link on purpose, and why.
    Goaway {
        /// Short machine-readable reason (e.g. "shutdown", "replaced").
        reason: String,
    },
    /// A signed topology document (sent by the side holding the newer one).
    Topology {
        /// The signed document text.
        document: String,
    },
    /// `ctl mesh`: asks the peer for its view of its links.
    LinksQuery {
        /// Echoed in the answer.
        id: u64,
    },
    /// The answer: the peer's `links` rows, as JSON.
    LinksReply {
        /// The query answered.
        id: u64,
        /// `ctl links` of the peer, JSON (bounded by the frame size).
        rows: String,
    },
    /// A SIP message relayed between nodes.
    Sip {
        /// The message bytes, exactly as they will be parsed by the receiver.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
        /// How the receiving node should treat it.
        meta: SipMeta,
    },
}

/// Routing facts that travel with a SIP message over the mesh. Identity is
/// asserted by the sending node, which authenticated the client: the mesh
/// link itself is the trust boundary, as in Lync's MTLS model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SipMeta {
    /// The AOR the ingress node authenticated, if any.
    pub identity: Option<String>,
    /// The node where the message entered the mesh.
    pub ingress: String,
    /// What the receiver should do with it.
    pub route: MeshRoute,
}

/// What a receiving node does with a relayed SIP message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshRoute {
    /// A response: route it by its top Via.
    Response,
    /// A request for an AOR whose home is the receiver (registrar and location lookup).
    Home {
        /// For REGISTER: the client's flow id at the sending node.
        flow: Option<u64>,
    },
    /// Deliver to this flow (a client connection) at the receiver.
    Flow(u64),
    /// A request following its Route set (in-dialog).
    Dialog,
}

/// The hello exchanged once per link before it counts as up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Mesh protocol version of the sender.
    pub protocol: u16,
    /// The sender's FQDN; must equal the name in its certificate.
    pub fqdn: String,
    /// Version of the topology the sender holds.
    pub topology_version: u64,
    /// Feature bits (none defined yet; unknown bits are ignored).
    pub features: u64,
}

/// Why a byte stream is not a valid frame sequence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A zero length prefix.
    #[error("empty frame")]
    Empty,
    /// The payload is not a postcard-encoded frame.
    #[error("malformed frame: {0}")]
    Malformed(postcard::Error),
    /// The payload decoded but left bytes unread.
    #[error("malformed frame: {0} trailing bytes")]
    Trailing(usize),
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    /// Transport error underneath.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Decode one frame from the front of `buf`, consuming it.
///
/// `Ok(None)` means more bytes are needed; nothing is consumed then.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if buf.len() < LEN_PREFIX + len {
        // Reserve only up to the (already bounded) announced size.
        buf.reserve(LEN_PREFIX + len - buf.len());
        return Ok(None);
    }
    buf.advance(LEN_PREFIX);
    let payload = buf.split_to(len);
    let (frame, rest) = postcard::take_from_bytes::<Frame>(&payload).map_err(FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing(rest.len()));
    }
    Ok(Some(frame))
}

/// Append one encoded frame to `out`.
pub fn encode(frame: &Frame, out: &mut BytesMut) -> Result<(), FrameError> {
    let start = out.len();
    out.put_u32(0);
    let mut writer = BytesMutWriter(out);
    postcard::to_io(frame, &mut writer).map_err(FrameError::Malformed)?;
    let len = out.len() - start - LEN_PREFIX;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    out[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Encode a frame into a fresh buffer (convenience for tests and one-offs).
pub fn encode_to_vec(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let mut out = BytesMut::new();
    encode(frame, &mut out)?;
    Ok(out.to_vec())
}

struct BytesMutWriter<'a>(&'a mut BytesMut);

impl std::io::Write for BytesMutWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// [`decode`] at the end of the stream: bytes left over that do not make a
/// whole frame are an error, not "need more".
pub fn decode_eof(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    match decode(buf)? {
        Some(frame) => Ok(Some(frame)),
        None if buf.is_empty() => Ok(None),
        None => Err(FrameError::Truncated(buf.len())),
    }
}

/// `reason` cut to [`MAX_GOAWAY_REASON`] bytes (at a character boundary):
/// applied to goaways we send and to those we receive before keeping them.
pub fn bounded_reason(reason: &str) -> &str {
    if reason.len() <= MAX_GOAWAY_REASON {
        return reason;
    }
    let mut end = MAX_GOAWAY_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl Frame {
    /// A goaway with its reason bounded.
    pub fn goaway(reason: &str) -> Frame {
        Frame::Goaway {
            reason: bounded_reason(reason).to_owned(),
        }
    }

    /// Short name of the frame kind, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Ping { .. } => "ping",
            Frame::Pong { .. } => "pong",
            Frame::Goaway { .. } => "goaway",
            Frame::Topology { .. } => "topology",
            Frame::Sip { .. } => "sip",
            Frame::LinksQuery { .. } => "links-query",
            Frame::LinksReply { .. } => "links-reply",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Frame {
        Frame::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            fqdn: "fe1.contoso.test".into(),
            topology_version: 7,
            features: 0,
        })
    }

    #[test]
    fn round_trip_every_frame() {
        let frames = [
            hello(),
            Frame::Ping { nonce: 42 },
            Frame::Pong { nonce: u64::MAX },
            Frame::Goaway {
                reason: "shutdown".into(),
            },
            Frame::Topology {
                document: "version = 1\n".into(),
            },
            Frame::Sip {
                message: b"OPTIONS sip:fe1.contoso.test SIP/2.0\r\n\r\n".to_vec(),
                meta: SipMeta {
                    identity: Some("sip:alice@contoso.test".into()),
                    ingress: "fe1.contoso.test".into(),
                    route: MeshRoute::Flow(7),
                },
            },
        ];
        let mut buf = BytesMut::new();
        for f in &frames {
            encode(f, &mut buf).unwrap();
        }
        for f in &frames {
            assert_eq!(decode(&mut buf).unwrap().as_ref(), Some(f));
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn exact_bytes_of_a_ping() {
        // Variant index 1 (varint), nonce 300 as varint 0xAC 0x02.
        assert_eq!(
            encode_to_vec(&Frame::Ping { nonce: 300 }).unwrap(),
            vec![0, 0, 0, 3, 1, 0xAC, 0x02]
        );
    }

    #[test]
    fn incomplete_is_not_an_error() {
        let bytes = encode_to_vec(&hello()).unwrap();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert!(decode(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocation() {
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0xFF, 1][..]);
        let err = decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge {
                len: 0xFFFF_FFFF,
                max: MAX_FRAME_LEN
            }
        ));
        assert!(buf.capacity() < 1024, "capacity {}", buf.capacity());
    }

    #[test]
    fn limit_is_inclusive() {
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_FRAME_LEN as u32);
        assert!(decode(&mut buf).unwrap().is_none());
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_FRAME_LEN as u32 + 1);
        assert!(matches!(decode(&mut buf), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn empty_and_garbage_frames() {
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(matches!(decode(&mut buf), Err(FrameError::Empty)));
        // Variant index 99 does not exist.
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 99, 0][..]);
        assert!(matches!(decode(&mut buf), Err(FrameError::Malformed(_))));
        // A valid ping followed by junk inside the same frame.
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 1, 5, 9][..]);
        assert!(matches!(decode(&mut buf), Err(FrameError::Trailing(1))));
    }

    #[test]
    fn truncated_at_eof() {
        let bytes = encode_to_vec(&hello()).unwrap();
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
        assert!(matches!(
            decode_eof(&mut buf),
            Err(FrameError::Truncated(n)) if n == bytes.len() - 1
        ));
        let mut empty = BytesMut::new();
        assert!(decode_eof(&mut empty).unwrap().is_none());
    }

    #[test]
    fn oversized_goaway_is_not_sent() {
        let frame = Frame::Goaway {
            reason: "x".repeat(MAX_FRAME_LEN),
        };
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert!(matches!(encode(&frame, &mut buf), Err(FrameError::TooLarge { .. })));
        assert_eq!(&buf[..], b"keep");
    }

    #[test]
    fn goaway_reasons_are_bounded_at_a_char_boundary() {
        assert_eq!(bounded_reason("shutdown"), "shutdown");
        let long = "é".repeat(MAX_GOAWAY_REASON);
        let cut = bounded_reason(&long);
        assert_eq!(cut.len(), MAX_GOAWAY_REASON);
        assert!(cut.chars().all(|c| c == 'é'));
        let odd = format!("x{}", "é".repeat(MAX_GOAWAY_REASON));
        assert_eq!(bounded_reason(&odd).len(), MAX_GOAWAY_REASON - 1);
        match Frame::goaway(&"r".repeat(10_000)) {
            Frame::Goaway { reason } => assert_eq!(reason.len(), MAX_GOAWAY_REASON),
            other => panic!("{other:?}"),
        }
    }
}
