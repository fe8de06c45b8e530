//! Fuzz the SIP codec: no input may panic either entry point, stream decoding
//! must not depend on how the input was cut into reads, and a message that
//! parses must survive re-serialization.
//!
//! Seed corpus: `cp ../tests/data/torture/*.sip corpus/sip_codec/`.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sipmesh_actors::sip::{Incoming, SipDecoder, SipMessage};

fuzz_target!(|data: &[u8]| check(data));

fn decode_with_cuts(data: &[u8], cuts: impl Iterator<Item = usize>) -> Vec<Incoming> {
    let mut dec = SipDecoder::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut from = 0;
    for cut in cuts.chain(std::iter::once(data.len())) {
        buf.extend_from_slice(&data[from..cut]);
        from = cut;
        while let Some(item) = dec.decode(&mut buf) {
            out.push(item);
        }
    }
    out
}

fn check(data: &[u8]) {
    // Whole-message parse, typed access and re-serialization.
    if let Ok(m) = SipMessage::parse(Bytes::copy_from_slice(data)) {
        let _ = m.validate();
        let _ = (
            m.vias(),
            m.contacts(),
            m.routes(),
            m.record_routes(),
            m.from_hdr(),
            m.to_hdr(),
        );
        let _ = (m.cseq(), m.call_id(), m.max_forwards(), m.expires());
        let mut edited = m.clone();
        let _ = edited.remove_first(sipmesh_actors::sip::HeaderName::Via);
        // Re-serialization normalises spacing ("X:a" becomes "X: a"), so a
        // message right at a size limit may go over it; nothing else may fail.
        match SipMessage::parse(m.to_bytes()) {
            Ok(again) => {
                assert_eq!(again.start, m.start);
                assert_eq!(again.body, m.body);
            }
            Err(e) => assert_eq!(e.status().0, 513, "{e}"),
        }
        if m.is_request() {
            let _ = SipMessage::response_to(&m, 400, "Bad Request", Some("x")).to_bytes();
        }
    }

    // Stream decoding: all at once, byte by byte, and cut at every position.
    let whole = decode_with_cuts(data, std::iter::empty());
    assert_eq!(decode_with_cuts(data, 1..data.len()), whole, "byte by byte");
    for cut in 1..data.len() {
        assert_eq!(decode_with_cuts(data, std::iter::once(cut)), whole, "cut at {cut}");
    }
}
