//! [`SipReader`]: the project's sans-IO [`SipDecoder`] over the read half of a
//! connection, for clients.

use std::io;

use bytes::BytesMut;
use sipmesh_actors::sip::{Incoming, SipDecoder, SipMessage};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::UaError;

/// Initial read buffer: one read can take many pipelined messages (the
/// bench's answers arrive thousands per second) without the buffer growing.
/// The decoder bounds what one message may make it grow to
/// ([`MAX_HEADER_BLOCK`](sipmesh_actors::sip::MAX_HEADER_BLOCK) plus
/// [`MAX_BODY`](sipmesh_actors::sip::MAX_BODY)).
pub const READ_BUFFER: usize = 64 * 1024;

/// SIP messages framed out of a byte stream.
///
/// Cancel safe: bytes read stay in the buffer and the decoder keeps its
/// place, so [`SipReader::fill`] and [`SipReader::next_message`] may be raced
/// against a timeout without losing anything.
pub struct SipReader<R> {
    rd: R,
    buf: BytesMut,
    decoder: SipDecoder,
}

impl<R: AsyncRead + Unpin> SipReader<R> {
    /// A reader over `rd` with an empty [`READ_BUFFER`].
    pub fn new(rd: R) -> SipReader<R> {
        SipReader {
            rd,
            buf: BytesMut::with_capacity(READ_BUFFER),
            decoder: SipDecoder::new(),
        }
    }

    /// The next item already buffered, without reading; `None` when more
    /// bytes are needed (or after an invalid message that closed the framing).
    pub fn buffered(&mut self) -> Option<Incoming> {
        self.decoder.decode(&mut self.buf)
    }

    /// One read from the stream into the buffer: the bytes read, 0 at EOF.
    pub async fn fill(&mut self) -> io::Result<usize> {
        self.rd.read_buf(&mut self.buf).await
    }

    /// The next message, reading as needed and skipping keep-alives. A
    /// malformed message or EOF is an error: a node never sends the first,
    /// and a client waiting for an answer cannot use the second.
    pub async fn next_message(&mut self) -> Result<SipMessage, UaError> {
        loop {
            match self.buffered() {
                Some(Incoming::Message(m)) => return Ok(m),
                Some(Incoming::KeepAlive) => continue,
                Some(Incoming::Invalid { error, .. }) => return Err(UaError::Malformed(error)),
                None => {}
            }
            if self.fill().await? == 0 {
                return Err(UaError::Closed);
            }
        }
    }
}
