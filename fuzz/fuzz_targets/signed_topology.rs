//! Fuzz the signed topology document (`sipmesh_state::signed`): what a peer
//! sends in a `Topology` frame and what `ctl topology` reads.
//!
//! Properties, for any UTF-8 document:
//! - `PublicKey::verify` returns (never panics), with a key that signed
//!   exactly one document (the seed, `SEED_CONTENT`) and with a key that
//!   signed nothing;
//! - the second key accepts nothing, and the first accepts only the seed's
//!   exact content with its one signature (Ed25519 is deterministic, and the
//!   base64 is canonical), so no edit of a signed document verifies;
//! - the topology parser behind the signature never panics on any content,
//!   and a content that parses, signed with `AdminKey::sign`, verifies to the
//!   same topology (the signer and the verifier agree on what is covered);
//! - `PublicKey::parse` never panics on any text.
//!
//! The keys are fixed (from constant seeds), so the checked-in seed
//! `fuzz/corpus/signed_topology/signed` stays valid; it is written by running
//! the target once with `SIPMESH_FUZZ_WRITE_SEED=<path>` set.
#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::signature::Ed25519KeyPair;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use sipmesh_state::signed::{unsigned_content, SIGNATURE_PREFIX};
use sipmesh_state::{AdminKey, PublicKey, SignedError, Topology};

/// The only content the test key ever signs outside this process.
const SEED_CONTENT: &str = "version = 2\n\n[[member]]\nfqdn = \"fe1.contoso.test\"\nrole = \"front-end\"\nmesh_addr = \"127.0.0.1:5061\"\nclient_addr = \"127.0.0.1:5060\"\n\n[[member]]\nfqdn = \"fe2.contoso.test\"\nrole = \"front-end\"\nmesh_addr = \"127.0.0.1:5063\"\nclient_addr = \"127.0.0.1:5062\"\npool = \"pool.contoso.test\"\n";

struct Keys {
    admin: AdminKey,
    public: PublicKey,
    stranger: PublicKey,
    seed_doc: String,
}

static KEYS: OnceLock<Keys> = OnceLock::new();

/// An `AdminKey` from a fixed seed, through the PEM file `AdminKey::load`
/// reads (the only way in: it has no constructor from bytes).
fn fixed_key(seed: u8) -> AdminKey {
    let pair = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("a 32-byte seed");
    let pkcs8 = pair.to_pkcs8().expect("PKCS#8 of a fixed key");
    let b64 = STANDARD.encode(pkcs8.as_ref());
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
    let path = std::env::temp_dir().join(format!("sipmesh-fuzz-key-{}-{seed}", std::process::id()));
    std::fs::write(&path, pem).expect("write the test key");
    let key = AdminKey::load(&path).expect("the test key loads");
    let _ = std::fs::remove_file(&path);
    key
}

fn keys() -> &'static Keys {
    KEYS.get_or_init(|| {
        let admin = fixed_key(7);
        let public = admin.public();
        let stranger = fixed_key(8).public();
        let seed_doc = admin.sign(SEED_CONTENT);
        public.verify(&seed_doc).expect("the seed document verifies");
        Keys {
            admin,
            public,
            stranger,
            seed_doc,
        }
    })
}

fuzz_target!(
    init: {
        let k = keys();
        if let Ok(path) = std::env::var("SIPMESH_FUZZ_WRITE_SEED") {
            std::fs::write(path, &k.seed_doc).expect("write the seed document");
        }
    },
    |data: &[u8]| {
        if let Ok(doc) = std::str::from_utf8(data) {
            check(doc);
        }
    }
);

fn check(doc: &str) {
    let k = keys();
    let _ = PublicKey::parse(doc);

    assert!(
        k.stranger.verify(doc).is_err(),
        "a key that signed nothing accepted {doc:?}"
    );
    match k.public.verify(doc) {
        Ok(signed) => {
            assert_eq!(
                unsigned_content(doc),
                SEED_CONTENT,
                "accepted content the key never signed"
            );
            // Only whitespace around the signature may differ from the seed.
            let sig_line = |d: &str| d[SEED_CONTENT.len() + SIGNATURE_PREFIX.len()..].trim().to_owned();
            assert_eq!(sig_line(doc), sig_line(&k.seed_doc), "a second signature verified");
            assert_eq!(signed.document, doc);
        }
        Err(SignedError::Invalid(_)) => panic!("content the key never signed was verified, then parsed"),
        Err(_) => {}
    }

    // The parser behind the signature, on any content; what parses, signed,
    // verifies to the same topology.
    // (`sign` replaces a trailer already in its input, so a content that still
    // holds one is not signed as it is.)
    let content = unsigned_content(doc);
    if let Ok(topology) = Topology::from_toml_str(content) {
        if unsigned_content(content) != content {
            return;
        }
        let signed = k.admin.sign(content);
        let verified = k.public.verify(&signed).expect("a signed valid topology verifies");
        assert_eq!(verified.topology, topology);
        assert!(k.stranger.verify(&signed).is_err());
    }
}
