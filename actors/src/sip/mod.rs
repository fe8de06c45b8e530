//! Sans-IO SIP (RFC 3261) codec: framing, parsing, typed access, serialization.
//!
//! Nothing here touches a socket: bytes in, values or typed errors out, so
//! every case is unit-tested byte for byte and fuzzed (`fuzz/`).
//!
//! A parsed [`SipMessage`] keeps its headers in order as slices of the received
//! bytes (zero-copy); the typed views a proxy needs ([`SipMessage::top_via`],
//! [`SipMessage::cseq`], ...) are parsed on demand, and every other header is
//! forwarded byte for byte by [`SipMessage::to_bytes`]. Malformed input is
//! answered, not dropped: [`ParseError::status`] maps each error to its SIP
//! status (400 with a reason naming the problem, 413, 513, 505), and the
//! stream decoder says whether the connection can carry on.
//!
//! # Layout
//! - `mod.rs`: the size limits and re-exports.
//! - [`error`]: [`ParseError`] and its mapping to SIP answers.
//! - `header`: [`Method`], [`HeaderName`] (compact forms), [`Header`].
//! - `lex`: character classes, quoted strings, parameters, comma lists.
//! - `uri`: [`SipUri`], [`Host`], [`Scheme`].
//! - `addr`: [`NameAddr`], [`Via`], [`CSeq`], [`Contacts`].
//! - `parse`: the header-block scanner shared by both entry points.
//! - `message`: [`SipMessage`], [`StartLine`]: parse, access, validate, edit, serialize.
//! - [`framing`]: [`SipDecoder`] and [`Incoming`], stream framing with keep-alives.
//! - [`digest`]: the Digest challenge/credentials grammar, [`digest::DigestParams`].

mod addr;
pub mod digest;
pub mod error;
pub mod framing;
mod header;
mod lex;
mod message;
mod parse;
mod uri;

#[cfg(test)]
mod tests;

pub use addr::{CSeq, Contacts, NameAddr, Via};
pub use error::ParseError;
pub use framing::{Incoming, SipDecoder};
pub use header::{Header, HeaderName, Method};
pub use lex::Params;
pub use message::{SipMessage, StartLine};
pub use uri::{Host, Scheme, SipUri};

/// Longest start line or (unfolded) header line: DoS bound, 8x the longest
/// line seen in RFC 4475's torture messages.
pub const MAX_LINE: usize = 8 * 1024;

/// Most header lines in one message: DoS bound on per-message work and memory.
pub const MAX_HEADERS: usize = 128;

/// Largest header block (start line + headers + blank line): buffered whole
/// before it is parsed, so this bounds the memory an unfinished message costs.
pub const MAX_HEADER_BLOCK: usize = 32 * 1024;

/// Largest body: the proxy buffers a body whole before forwarding it.
pub const MAX_BODY: usize = 128 * 1024;
