//! The RFC 4475-style torture corpus in `tests/data/torture/` through both
//! entry points of the SIP codec: `SipMessage::parse` + `validate` (a whole
//! message) and `SipDecoder` (a TLS/TCP stream). The expected verdict is in
//! each file name: `NAME.valid.sip` or `NAME.invalid-NNN.sip`.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use sipmesh_actors::sip::{HeaderName, Incoming, ParseError, SipDecoder, SipMessage};

/// Content-Length claims more than the file holds: on a stream that is an
/// incomplete message ("need more bytes"), not an error.
const STREAM_INCOMPLETE: &[&str] = &["clerr"];

struct Case {
    name: String,
    /// `None` for valid, else the expected status code.
    status: Option<u16>,
    bytes: Vec<u8>,
}

fn corpus() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/torture");
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("torture dir") {
        let path = entry.expect("entry").path();
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .expect("utf-8 name")
            .to_owned();
        let Some(stem) = file.strip_suffix(".sip") else {
            continue;
        };
        let (name, verdict) = stem.rsplit_once('.').unwrap_or_else(|| panic!("no verdict in {file}"));
        let status = match verdict {
            "valid" => None,
            v => Some(
                v.strip_prefix("invalid-")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("bad verdict in {file}")),
            ),
        };
        let bytes = std::fs::read(&path).expect("read");
        cases.push(Case {
            name: name.to_owned(),
            status,
            bytes,
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

fn decode_in_steps(input: &[u8], cuts: &[usize]) -> Vec<Incoming> {
    let mut dec = SipDecoder::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        buf.extend_from_slice(&input[from..cut]);
        from = cut;
        while let Some(item) = dec.decode(&mut buf) {
            out.push(item);
        }
    }
    out
}

#[test]
fn corpus_covers_both_verdicts() {
    let cases = corpus();
    let valid = cases.iter().filter(|c| c.status.is_none()).count();
    assert!(
        valid >= 20 && cases.len() - valid >= 20,
        "{valid} valid of {}",
        cases.len()
    );
    for c in &cases {
        assert!(c.bytes.windows(2).any(|w| w == b"\r\n"), "{} has no CRLF", c.name);
    }
}

#[test]
fn whole_message_parse_and_validate() {
    for c in corpus() {
        let result = SipMessage::parse(Bytes::from(c.bytes.clone())).and_then(|m| m.validate().map(|()| m));
        match (c.status, result) {
            (None, Ok(m)) => {
                // Everything a proxy touches is reachable on valid messages.
                m.vias().unwrap_or_else(|e| panic!("{}: {e}", c.name));
                m.record_routes().unwrap_or_else(|e| panic!("{}: {e}", c.name));
                // Forwarding re-parses to the same message.
                let again = SipMessage::parse(m.to_bytes()).unwrap_or_else(|e| panic!("{}: {e}", c.name));
                assert_eq!(again.start, m.start, "{}", c.name);
                assert_eq!(again.body, m.body, "{}", c.name);
                let names = |m: &SipMessage| m.headers.iter().map(|h| h.raw_name.clone()).collect::<Vec<_>>();
                let values = |m: &SipMessage| {
                    m.headers
                        .iter()
                        .filter(|h| h.name != HeaderName::ContentLength)
                        .map(|h| h.value.clone())
                        .collect::<Vec<_>>()
                };
                if m.header(HeaderName::ContentLength).is_some() {
                    assert_eq!(names(&again), names(&m), "{}", c.name);
                }
                assert_eq!(values(&again), values(&m), "{}", c.name);
            }
            (None, Err(e)) => panic!("{} should be valid: {e}", c.name),
            (Some(want), Ok(_)) => panic!("{} should be refused with {want}", c.name),
            (Some(want), Err(e)) => assert_eq!(e.status().0, want, "{}: {e}", c.name),
        }
    }
}

#[test]
fn stream_decoder() {
    for c in corpus() {
        let mut dec = SipDecoder::new();
        let mut buf = BytesMut::from(&c.bytes[..]);
        let mut items = Vec::new();
        while let Some(item) = dec.decode(&mut buf) {
            items.push(item);
        }
        if STREAM_INCOMPLETE.contains(&c.name.as_str()) {
            assert!(items.is_empty(), "{}: {items:?}", c.name);
            assert!(!dec.is_idle(&buf), "{}", c.name);
            continue;
        }
        match c.status {
            None => {
                assert!(!items.is_empty(), "{}", c.name);
                for item in &items {
                    assert!(matches!(item, Incoming::Message(_)), "{}: {item:?}", c.name);
                }
                assert!(
                    buf.is_empty() && dec.is_idle(&buf),
                    "{}: {} bytes left",
                    c.name,
                    buf.len()
                );
            }
            Some(want) => {
                let Some(Incoming::Invalid { error, partial, resync }) = items.first() else {
                    panic!("{}: {items:?}", c.name)
                };
                assert_eq!(error.status().0, want, "{}: {error}", c.name);
                let framing_broken = matches!(error, ParseError::BadContentLength(_)) || matches!(want, 413 | 513);
                assert_eq!(*resync, !framing_broken, "{}: {error}", c.name);
                if *resync {
                    assert_eq!(items.len(), 1, "{}", c.name);
                    assert!(buf.is_empty(), "{}: the message's bytes are consumed", c.name);
                }
                // Enough is left to answer a request.
                let partial = partial.as_ref().unwrap_or_else(|| panic!("{}: no partial", c.name));
                if partial.is_request() && partial.header(HeaderName::Via).is_some() {
                    let (code, reason) = error.status();
                    let resp = SipMessage::response_to(partial, code, &reason, Some("t0"));
                    assert_eq!(resp.status(), Some(want));
                    assert!(resp
                        .to_bytes()
                        .starts_with(format!("SIP/2.0 {code} {reason}\r\n").as_bytes()));
                }
            }
        }
    }
}

#[test]
fn stream_decoder_is_split_invariant() {
    for c in corpus() {
        let input = &c.bytes;
        let whole = decode_in_steps(input, &[]);
        let bytewise: Vec<usize> = (1..input.len()).collect();
        assert_eq!(decode_in_steps(input, &bytewise), whole, "{} byte by byte", c.name);
        let stride = if input.len() > 4096 { 13 } else { 1 };
        for cut in (1..input.len()).step_by(stride) {
            assert_eq!(decode_in_steps(input, &[cut]), whole, "{} cut at {cut}", c.name);
        }
    }
}

#[test]
fn whole_corpus_on_one_connection_with_keepalives() {
    // Every valid message back to back, a ping before each and a pong after,
    // then one invalid-but-resyncable message, then a last valid one.
    let cases = corpus();
    let valid: Vec<&Case> = cases.iter().filter(|c| c.status.is_none()).collect();
    let mut stream = Vec::new();
    let mut expected_messages = 0;
    for c in &valid {
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(&c.bytes);
        stream.extend_from_slice(b"\r\n");
        expected_messages += if c.name == "dblreq" { 2 } else { 1 };
    }
    let bad = cases.iter().find(|c| c.name == "mismatch01").expect("mismatch01");
    stream.extend_from_slice(&bad.bytes);
    stream.extend_from_slice(&valid[0].bytes);
    let items = decode_in_steps(&stream, &(1..stream.len()).step_by(97).collect::<Vec<_>>());
    let pings = items.iter().filter(|i| **i == Incoming::KeepAlive).count();
    let messages = items.iter().filter(|i| matches!(i, Incoming::Message(_))).count();
    assert_eq!(pings, valid.len());
    assert_eq!(messages, expected_messages + 1);
    assert!(matches!(
        &items[items.len() - 2],
        Incoming::Invalid {
            resync: true,
            error: ParseError::CSeqMethodMismatch { .. },
            ..
        }
    ));
}
