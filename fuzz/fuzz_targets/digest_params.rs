//! Fuzz the Digest challenge/credentials grammar (`sip::digest`): no input
//! may panic it, and what parses survives being written back.
//!
//! Properties, for any UTF-8 header value:
//! - `DigestParams::parse` returns (never panics), and refuses anything
//!   longer than `MAX_VALUE_LEN` whatever it contains;
//! - a successful parse gives lowercase `tchar` names and values free of
//!   control characters other than HTAB;
//! - writing the pairs back as `Digest name="quoted", ...` with
//!   `digest::quote` re-parses to the same pairs, in order (so the quoting
//!   the UA and the challenge use is the parser's exact inverse);
//! - the accessors answer the first pair of that name, case-insensitively.
//!
//! Seed corpus: `fuzz/corpus/digest_params/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipmesh_actors::sip::digest::{quote, DigestParams, DigestSyntaxError, MAX_VALUE_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = std::str::from_utf8(data) {
        check(value);
    }
});

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check(value: &str) {
    let parsed = DigestParams::parse(value);
    if value.len() > MAX_VALUE_LEN {
        assert_eq!(parsed, Err(DigestSyntaxError::TooLong));
        return;
    }
    let Ok(params) = parsed else {
        return;
    };
    let pairs: Vec<(&str, &str)> = params.iter().collect();
    assert!(!pairs.is_empty(), "a parse without parameters succeeded");
    for (name, v) in &pairs {
        assert!(!name.is_empty() && name.bytes().all(is_tchar), "name {name:?}");
        assert_eq!(*name, name.to_ascii_lowercase());
        assert!(
            v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)),
            "control character in {v:?}"
        );
        let first = pairs.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(params.get(&name.to_ascii_uppercase()), first);
    }
    assert_eq!(params.username(), params.get("username"));
    assert_eq!(params.algorithm(), params.get("algorithm"));

    // Write it back with every value quoted: the same pairs come back.
    let written: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}={}", quote(v))).collect();
    let written = format!("Digest {}", written.join(", "));
    // Quoting may only lengthen the value past the limit; below it, it must parse.
    if written.len() <= MAX_VALUE_LEN {
        let again = DigestParams::parse(&written).unwrap_or_else(|e| panic!("{written:?}: {e}"));
        assert_eq!(again, params, "{written:?}");
    }
}
