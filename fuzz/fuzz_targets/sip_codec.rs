//! Fuzz the SIP codec: no input may panic either entry point, stream decoding
//! must not depend on how the input was cut into reads, and a message that
//! parses must survive re-serialization.
//!
//! Work per input is linear in its length (four decodes of it), so libFuzzer
//! keeps thousands of executions a second: an earlier version re-decoded the
//! whole input once per cut position (quadratic: ~100 exec/s).
//! Seed corpus: `fuzz/corpus/sip_codec/` (the RFC 4475 torture messages).
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sipmesh_actors::sip::digest::DigestParams;
use sipmesh_actors::sip::{HeaderName, Incoming, SipDecoder, SipMessage};

fuzz_target!(|data: &[u8]| check(data));

/// Decode `data` fed to one decoder in the pieces `cuts` ends (positions,
/// increasing), then the rest.
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

/// FNV-1a of the input: picks a read size and a cut below, so that they move
/// when the input does, without spending input bytes on them.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
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
        // Credentials and challenges go through the one Digest grammar.
        for name in [
            HeaderName::Authorization,
            HeaderName::ProxyAuthorization,
            HeaderName::WwwAuthenticate,
            HeaderName::ProxyAuthenticate,
        ] {
            for value in m.values(name) {
                let _ = DigestParams::parse(value);
            }
        }
        let mut edited = m.clone();
        let _ = edited.remove_first(HeaderName::Via);
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

    // Stream decoding: all at once, byte by byte (every position is a read
    // boundary once), in reads of 2 to 64 bytes (resuming with several lines
    // at once), and cut once; the last two depend on the input.
    let whole = decode_with_cuts(data, std::iter::empty());
    assert_eq!(decode_with_cuts(data, 1..data.len()), whole, "byte by byte");
    let h = fnv(data);
    let step = 2 + (h % 63) as usize;
    let cuts = (step..data.len()).step_by(step);
    assert_eq!(decode_with_cuts(data, cuts), whole, "reads of {step} bytes");
    if data.len() > 1 {
        let cut = 1 + ((h >> 8) % (data.len() as u64 - 1)) as usize;
        assert_eq!(decode_with_cuts(data, std::iter::once(cut)), whole, "cut at {cut}");
    }
}
