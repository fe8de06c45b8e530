//! Stream framing for SIP over TLS/TCP (RFC 3261 §18.3, RFC 5626 §4.4.1).
//!
//! [`SipDecoder::decode`] takes the connection's receive buffer and returns
//! the next [`Incoming`] item, or `None` when more bytes are needed. A message
//! ends after its blank line plus Content-Length bytes (no Content-Length
//! means no body). Limits are checked before anything more is buffered: the
//! header block may grow to [`MAX_HEADER_BLOCK`] before it is refused, and a
//! Content-Length over [`MAX_BODY`] is refused as soon as the header block is
//! complete, without waiting for the body. The decoder never reserves
//! buffer space from a Content-Length: the body is buffered as its bytes
//! arrive (the caller grows the buffer read by read).
//!
//! A `"\r\n\r\n"` between messages is a keep-alive ping (answer `"\r\n"`); a
//! lone `"\r\n"` (a pong, or padding) is skipped.

use bytes::{Buf, Bytes, BytesMut};

use super::parse::{find_head_end, parse_head, Framing, RawHead};
use super::{ParseError, SipMessage, MAX_HEADER_BLOCK};

/// One item decoded from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A `"\r\n\r\n"` ping: answer with a single `"\r\n"` pong.
    KeepAlive,
    /// A well-formed message that passed [`SipMessage::validate`].
    Message(SipMessage),
    /// A message that cannot be processed.
    Invalid {
        /// What is wrong; [`ParseError::status`] gives the answer to send.
        error: ParseError,
        /// The message as far as it parsed (its start line is a best guess when
        /// the start line is the problem), so that a response can be built;
        /// `None` when not even a header block was found. Answer only requests.
        partial: Option<SipMessage>,
        /// `true`: the message's bytes were consumed and the framing is still
        /// sound, keep reading. `false`: answer, then close the connection (the
        /// decoder returns `None` from now on).
        resync: bool,
    },
}

#[derive(Debug)]
enum State {
    /// Looking for the end of a header block; the search may resume at `scanned`.
    Head { scanned: usize },
    /// Header block of `head_len` bytes parsed; waiting for `total` bytes.
    Body {
        head: Box<RawHead>,
        head_len: usize,
        total: usize,
    },
    /// A framing error was reported; nothing more is decoded.
    Closed,
}

/// Incremental decoder of a SIP byte stream (sans-IO).
///
/// The caller appends received bytes to one `BytesMut` and calls
/// [`SipDecoder::decode`] until it returns `None`. Between calls the buffer may
/// only grow at its end. The result does not depend on how the stream was cut
/// into reads.
#[derive(Debug)]
pub struct SipDecoder {
    state: State,
}

impl Default for SipDecoder {
    fn default() -> Self {
        SipDecoder::new()
    }
}

const PING: &[u8] = b"\r\n\r\n";

impl SipDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        SipDecoder {
            state: State::Head { scanned: 0 },
        }
    }

    /// Whether the decoder is between messages (nothing partially received
    /// except possibly CRLFs). At end of stream, `false` means the peer closed
    /// in the middle of a message.
    pub fn is_idle(&self, buf: &[u8]) -> bool {
        matches!(self.state, State::Head { .. }) && buf.iter().all(|&b| b == b'\r' || b == b'\n')
    }

    /// Decode the next item from the front of `buf`, consuming its bytes.
    /// `None` means more bytes are needed (or the stream was closed by an
    /// earlier `Invalid { resync: false }`).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Incoming> {
        loop {
            match &self.state {
                State::Closed => return None,
                State::Head { scanned: 0 } => {
                    // Between messages: pings, pongs and stray line ends.
                    if buf.starts_with(PING) {
                        buf.advance(PING.len());
                        return Some(Incoming::KeepAlive);
                    }
                    if buf.is_empty() || (buf.len() < PING.len() && PING.starts_with(buf)) {
                        return None;
                    }
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        continue;
                    }
                    if buf[0] == b'\n' {
                        buf.advance(1);
                        continue;
                    }
                    return self.head(buf, 0);
                }
                State::Head { scanned } => {
                    let scanned = *scanned;
                    return self.head(buf, scanned);
                }
                State::Body { total, .. } => {
                    if buf.len() < *total {
                        return None;
                    }
                    let State::Body { head, head_len, total } =
                        std::mem::replace(&mut self.state, State::Head { scanned: 0 })
                    else {
                        unreachable!("matched above")
                    };
                    return Some(complete(*head, head_len, buf.split_to(total).freeze()));
                }
            }
        }
    }

    fn head(&mut self, buf: &mut BytesMut, scanned: usize) -> Option<Incoming> {
        let head_len = match find_head_end(buf, scanned) {
            Ok(end) => end,
            Err(_) if buf.len() > MAX_HEADER_BLOCK => {
                return Some(self.close(buf, ParseError::HeaderBlockTooLarge, None));
            }
            Err(resume) => {
                // Never resume at 0: that position means "between messages".
                self.state = State::Head { scanned: resume.max(1) };
                return None;
            }
        };
        let head = parse_head(&buf[..head_len]);
        if let Some(error) = head.fatal_error() {
            let bytes = buf.split_to(head_len).freeze();
            let partial = head.build(&bytes, 0, Bytes::new());
            return Some(self.close(buf, error, Some(partial)));
        }
        let body_len = match head.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let total = head_len + body_len;
        if buf.len() < total {
            // Nothing is reserved for the announced body: a stranger's
            // Content-Length costs memory only as its bytes arrive.
            self.state = State::Body {
                head: Box::new(head),
                head_len,
                total,
            };
            return None;
        }
        self.state = State::Head { scanned: 0 };
        Some(complete(head, head_len, buf.split_to(total).freeze()))
    }

    fn close(&mut self, buf: &mut BytesMut, error: ParseError, partial: Option<SipMessage>) -> Incoming {
        self.state = State::Closed;
        buf.clear();
        Incoming::Invalid {
            error,
            partial,
            resync: false,
        }
    }
}

/// Build and check a message whose bytes (head and body) are all in `bytes`.
fn complete(head: RawHead, head_len: usize, bytes: Bytes) -> Incoming {
    let body = bytes.slice(head_len..);
    let content_error = head.content_error();
    let msg = head.build(&bytes, 0, body);
    let error = match content_error {
        Some(e) => Some(e),
        None => msg.validate().err(),
    };
    match error {
        None => Incoming::Message(msg),
        Some(error) => Incoming::Invalid {
            error,
            partial: Some(msg),
            resync: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::MAX_BODY;
    use super::*;

    const OPTIONS: &str = "OPTIONS sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/TLS client.example.com:5061;branch=z9hG4bK74bf9\r\n\
        Max-Forwards: 70\r\n\
        To: <sip:bob@example.com>\r\n\
        From: <sip:alice@example.com>;tag=9fxced76sl\r\n\
        Call-ID: 3848276298220188511@example.com\r\n\
        CSeq: 63104 OPTIONS\r\n\
        Content-Length: 5\r\n\
        \r\n\
        hello";

    fn decode_all(dec: &mut SipDecoder, buf: &mut BytesMut) -> Vec<Incoming> {
        let mut out = Vec::new();
        while let Some(item) = dec.decode(buf) {
            out.push(item);
        }
        out
    }

    /// Decode `input` fed in pieces of `step` bytes.
    fn decode_in_steps(input: &[u8], step: usize) -> Vec<Incoming> {
        let mut dec = SipDecoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            buf.extend_from_slice(chunk);
            out.extend(decode_all(&mut dec, &mut buf));
        }
        out
    }

    fn status_of(item: &Incoming) -> (u16, bool) {
        match item {
            Incoming::Invalid { error, resync, .. } => (error.status().0, *resync),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn message_ping_and_pong_in_one_read() {
        let input = format!("\r\n\r\n{OPTIONS}\r\n{OPTIONS}\r\n\r\n\r\n");
        let items = decode_in_steps(input.as_bytes(), input.len());
        assert_eq!(items.len(), 4, "{items:?}");
        assert_eq!(items[0], Incoming::KeepAlive);
        let Incoming::Message(m) = &items[1] else {
            panic!("{:?}", items[1])
        };
        assert_eq!(&m.body[..], b"hello");
        assert_eq!(m.call_id().unwrap(), "3848276298220188511@example.com");
        assert_eq!(items[1], items[2]);
        assert_eq!(items[3], Incoming::KeepAlive);
    }

    #[test]
    fn split_invariance_on_a_sample_stream() {
        let input = format!("\r\n{OPTIONS}\r\n\r\nGARBAGE\r\n\r\n{OPTIONS}INVITE sip:x SIP/2.0\r\nl: -1\r\n\r\n");
        let whole = decode_in_steps(input.as_bytes(), input.len());
        assert_eq!(whole.len(), 5, "{whole:?}");
        assert_eq!(status_of(&whole[2]), (400, true));
        assert_eq!(status_of(&whole[4]), (400, false));
        for step in 1..input.len() {
            assert_eq!(decode_in_steps(input.as_bytes(), step), whole, "step {step}");
        }
    }

    #[test]
    fn incomplete_is_not_an_error_and_nothing_is_lost() {
        for cut in 0..OPTIONS.len() {
            let mut dec = SipDecoder::new();
            let mut buf = BytesMut::from(&OPTIONS.as_bytes()[..cut]);
            assert_eq!(dec.decode(&mut buf), None, "cut {cut}");
            assert!(!dec.is_idle(&buf) || cut == 0, "cut {cut}");
            buf.extend_from_slice(&OPTIONS.as_bytes()[cut..]);
            assert!(matches!(dec.decode(&mut buf), Some(Incoming::Message(_))), "cut {cut}");
            assert!(buf.is_empty() && dec.is_idle(&buf));
        }
    }

    #[test]
    fn missing_content_length_means_no_body() {
        let msg = OPTIONS.replace("Content-Length: 5\r\n", "");
        let mut buf = BytesMut::from(msg.as_bytes());
        let mut dec = SipDecoder::new();
        let Some(Incoming::Message(m)) = dec.decode(&mut buf) else {
            panic!()
        };
        assert!(m.body.is_empty());
        // "hello" is now the start of the next message, still incomplete.
        assert_eq!(&buf[..], b"hello");
        assert_eq!(dec.decode(&mut buf), None);
    }

    #[test]
    fn semantic_errors_resync() {
        let bad = OPTIONS.replace("CSeq: 63104 OPTIONS", "CSeq: 63104 INVITE");
        let input = format!("{bad}{OPTIONS}");
        let mut buf = BytesMut::from(input.as_bytes());
        let mut dec = SipDecoder::new();
        let items = decode_all(&mut dec, &mut buf);
        assert_eq!(items.len(), 2);
        let Incoming::Invalid {
            error,
            partial: Some(p),
            resync: true,
        } = &items[0]
        else {
            panic!("{:?}", items[0])
        };
        assert_eq!(error.status(), (400, "CSeq Method Mismatch".into()));
        assert_eq!(&p.body[..], b"hello");
        assert!(matches!(items[1], Incoming::Message(_)));
        // A bad version keeps its start line so that 505 can be answered.
        let input = OPTIONS.replace("SIP/2.0\r\n", "SIP/3.0\r\n");
        let mut buf = BytesMut::from(input.as_bytes());
        let item = SipDecoder::new().decode(&mut buf).unwrap();
        assert_eq!(status_of(&item), (505, true));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_body_is_refused_from_the_header() {
        let input = OPTIONS.replace("Content-Length: 5", &format!("Content-Length: {}", 10 * 1024 * 1024));
        let head_only = &input[..input.len() - 5];
        let mut buf = BytesMut::from(head_only.as_bytes());
        let mut dec = SipDecoder::new();
        let item = dec.decode(&mut buf).unwrap();
        assert_eq!(status_of(&item), (413, false));
        let Incoming::Invalid { partial: Some(p), .. } = item else {
            panic!()
        };
        assert!(p.top_via().is_ok(), "enough of the message to answer");
        assert!(buf.capacity() < 64 * 1024);
        // Closed: nothing more is decoded.
        buf.extend_from_slice(OPTIONS.as_bytes());
        assert_eq!(dec.decode(&mut buf), None);
        // The limit itself is allowed.
        let input = OPTIONS.replace("Content-Length: 5", &format!("Content-Length: {MAX_BODY}"));
        let mut buf = BytesMut::from(&input.as_bytes()[..input.len() - 5]);
        assert_eq!(SipDecoder::new().decode(&mut buf), None);
    }

    #[test]
    fn an_announced_body_reserves_nothing() {
        let input = OPTIONS.replace("Content-Length: 5", &format!("Content-Length: {MAX_BODY}"));
        let head_only = &input.as_bytes()[..input.len() - 5];
        let mut buf = BytesMut::with_capacity(head_only.len() + 100);
        buf.extend_from_slice(head_only);
        buf.extend_from_slice(b"12345");
        let before = buf.capacity();
        let mut dec = SipDecoder::new();
        assert_eq!(dec.decode(&mut buf), None);
        assert_eq!(
            buf.capacity(),
            before,
            "no room reserved for the {MAX_BODY} announced bytes"
        );
        // The rest of the body still completes the message.
        buf.extend_from_slice(&vec![b'x'; MAX_BODY - 5]);
        let Some(Incoming::Message(m)) = dec.decode(&mut buf) else {
            panic!("the whole message")
        };
        assert_eq!(m.body.len(), MAX_BODY);
    }

    #[test]
    fn endless_header_block_is_refused_at_the_limit() {
        let mut dec = SipDecoder::new();
        let mut buf = BytesMut::from(&b"OPTIONS sip:a@b SIP/2.0\r\n"[..]);
        let line = b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        let mut fed = buf.len();
        loop {
            match dec.decode(&mut buf) {
                None => {
                    buf.extend_from_slice(line);
                    fed += line.len();
                    assert!(fed < MAX_HEADER_BLOCK + 2 * line.len());
                }
                Some(item) => {
                    // The header count limit is hit first only with short lines.
                    assert_eq!(status_of(&item), (513, false));
                    break;
                }
            }
        }
    }

    #[test]
    fn keepalive_edge_cases() {
        let mut dec = SipDecoder::new();
        let mut buf = BytesMut::from(&b"\r\n"[..]);
        assert_eq!(dec.decode(&mut buf), None);
        assert_eq!(&buf[..], b"\r\n", "a lone CRLF might be the start of a ping");
        buf.extend_from_slice(b"\r\n");
        assert_eq!(dec.decode(&mut buf), Some(Incoming::KeepAlive));
        assert!(buf.is_empty());
        buf.extend_from_slice(b"\r\nOPT");
        assert_eq!(dec.decode(&mut buf), None);
        assert_eq!(&buf[..], b"OPT", "a lone CRLF before a message is skipped");
    }

    #[test]
    fn content_length_and_bad_lines() {
        let input = OPTIONS.replace("Content-Length: 5", "Content-Length: 5\r\nContent-Length: 6");
        let mut buf = BytesMut::from(input.as_bytes());
        assert_eq!(status_of(&SipDecoder::new().decode(&mut buf).unwrap()), (400, false));
        let input = OPTIONS.replace("Content-Length: 5", "Content-Length: 5\r\nl: 5");
        let mut buf = BytesMut::from(input.as_bytes());
        assert_eq!(status_of(&SipDecoder::new().decode(&mut buf).unwrap()), (400, true));
        assert!(buf.is_empty());
        let input = OPTIONS.replace("Max-Forwards: 70", "Max-Forwards 70");
        let mut buf = BytesMut::from(input.as_bytes());
        let item = SipDecoder::new().decode(&mut buf).unwrap();
        assert_eq!(status_of(&item), (400, true));
        assert!(buf.is_empty());
    }
}
