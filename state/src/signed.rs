//! Signed topology documents: who may change the trusted-server set.
//!
//! A signed document is the topology TOML followed by one trailer line
//! `# sipmesh-signature: ed25519:<base64>`; the Ed25519 signature covers every
//! byte before that line. The admin key pair is made by `sipmesh topology
//! keygen`; nodes hold only the public key, so a compromised member cannot
//! change who is trusted.

use std::path::Path;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::topology::{Topology, TopologyError};

/// Marks the signature trailer line.
pub const SIGNATURE_PREFIX: &str = "# sipmesh-signature: ed25519:";
/// Largest signed document accepted (DoS bound: documents travel on the mesh
/// and the debug socket; thousands of members fit).
pub const MAX_SIGNED_DOC: usize = 128 * 1024;
/// Text prefix of a public key file.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// Why a signed document was refused; `reason()` is the recorded text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignedError {
    /// No signature trailer.
    #[error("the document is not signed")]
    Unsigned,
    /// Signature does not verify with the configured key.
    #[error("not signed by the configured topology key")]
    BadSignature,
    /// Over [`MAX_SIGNED_DOC`].
    #[error("document of {0} bytes exceeds the {MAX_SIGNED_DOC}-byte limit")]
    TooLarge(usize),
    /// Signed, but not a valid topology.
    #[error("{0}")]
    Invalid(TopologyError),
}

impl SignedError {
    /// The stable reason word (`bad-signature`, `invalid`).
    pub fn reason(&self) -> &'static str {
        match self {
            SignedError::Unsigned | SignedError::BadSignature => "bad-signature",
            SignedError::TooLarge(_) | SignedError::Invalid(_) => "invalid",
        }
    }
}

/// Key file problems.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct KeyError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// A verified document and the topology inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTopology {
    /// The whole signed text, as it travels.
    pub document: String,
    /// The topology it carries.
    pub topology: Topology,
}

/// Split a document into (signed content, base64 signature).
fn split(doc: &str) -> Option<(&str, &str)> {
    let start = if doc.starts_with(SIGNATURE_PREFIX) {
        0
    } else {
        doc.rfind(&format!("\n{SIGNATURE_PREFIX}"))? + 1
    };
    let sig = doc[start + SIGNATURE_PREFIX.len()..].trim();
    Some((&doc[..start], sig))
}

/// The content of a document without any signature trailer.
pub fn unsigned_content(doc: &str) -> &str {
    split(doc).map_or(doc, |(content, _)| content)
}

/// The 32-byte public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parse `ed25519:<base64>`.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let b64 = text
            .trim()
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or_else(|| format!("expected \"{PUBLIC_KEY_PREFIX}<base64>\""))?;
        let bytes = B64.decode(b64).map_err(|e| format!("bad base64: {e}"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("{} bytes, expected 32", b.len()))?;
        Ok(PublicKey(key))
    }

    /// Read a public key file.
    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let err = |message: String| KeyError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        PublicKey::parse(&text).map_err(err)
    }

    /// The text form.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_KEY_PREFIX}{}", B64.encode(self.0))
    }

    /// Verify a document and parse its topology.
    pub fn verify(&self, doc: &str) -> Result<SignedTopology, SignedError> {
        if doc.len() > MAX_SIGNED_DOC {
            return Err(SignedError::TooLarge(doc.len()));
        }
        let (content, sig) = split(doc).ok_or(SignedError::Unsigned)?;
        let sig = B64.decode(sig).map_err(|_| SignedError::BadSignature)?;
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(content.as_bytes(), &sig)
            .map_err(|_| SignedError::BadSignature)?;
        let topology = Topology::from_toml_str(content).map_err(SignedError::Invalid)?;
        Ok(SignedTopology {
            document: doc.to_owned(),
            topology,
        })
    }
}

/// The admin's signing key.
pub struct AdminKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl AdminKey {
    /// A new random key.
    pub fn generate() -> AdminKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .expect("Ed25519 key generation")
            .as_ref()
            .to_vec();
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).expect("freshly generated key parses");
        AdminKey { pair, pkcs8 }
    }

    /// Read a key file (`-----BEGIN PRIVATE KEY-----` PKCS#8, base64 body).
    pub fn load(path: &Path) -> Result<AdminKey, KeyError> {
        let err = |message: String| KeyError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let pkcs8 = B64.decode(body.trim()).map_err(|e| err(format!("bad base64: {e}")))?;
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8))
            .map_err(|_| err("not an Ed25519 PKCS#8 private key".into()))?;
        Ok(AdminKey { pair, pkcs8 })
    }

    /// The PEM text of the private key.
    pub fn to_pem(&self) -> String {
        let b64 = B64.encode(&self.pkcs8);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(key)
    }

    /// Sign a topology text (an existing signature trailer is replaced).
    pub fn sign(&self, text: &str) -> String {
        let mut content = unsigned_content(text).to_owned();
        if !content.ends_with('\n') {
            content.push('\n');
        }
        let sig = self.pair.sign(content.as_bytes());
        format!("{content}{SIGNATURE_PREFIX}{}\n", B64.encode(sig.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version = 2\n\n[[member]]\nfqdn = \"fe1.contoso.test\"\nrole = \"front-end\"\nmesh_addr = \"127.0.0.1:5061\"\nclient_addr = \"127.0.0.1:5060\"\n";

    #[test]
    fn sign_and_verify_round_trip() {
        let key = AdminKey::generate();
        let doc = key.sign(DOC);
        assert!(doc.starts_with(DOC));
        assert_eq!(doc.lines().last().unwrap().len(), SIGNATURE_PREFIX.len() + 88);
        let verified = key.public().verify(&doc).unwrap();
        assert_eq!(verified.topology.version, 2);
        assert_eq!(verified.document, doc);
        // Re-signing replaces the trailer instead of stacking a second one.
        assert_eq!(key.sign(&doc), doc);
    }

    #[test]
    fn tampering_and_other_keys_are_refused() {
        let key = AdminKey::generate();
        let doc = key.sign(DOC);
        let tampered = doc.replace("version = 2", "version = 9");
        assert_eq!(key.public().verify(&tampered), Err(SignedError::BadSignature));
        let other = AdminKey::generate();
        assert_eq!(other.public().verify(&doc), Err(SignedError::BadSignature));
        assert_eq!(key.public().verify(DOC), Err(SignedError::Unsigned));
        assert_eq!(SignedError::Unsigned.reason(), "bad-signature");
        let invalid = key.sign("version = 0\n");
        let err = key.public().verify(&invalid).unwrap_err();
        assert_eq!(err.reason(), "invalid");
        assert!(err.to_string().starts_with("invalid topology"), "{err}");
    }

    #[test]
    fn keys_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = AdminKey::generate();
        std::fs::write(dir.path().join("k"), key.to_pem()).unwrap();
        std::fs::write(dir.path().join("p"), key.public().to_text()).unwrap();
        let loaded = AdminKey::load(&dir.path().join("k")).unwrap();
        assert_eq!(loaded.public(), key.public());
        assert_eq!(PublicKey::load(&dir.path().join("p")).unwrap(), key.public());
        assert!(PublicKey::parse("ed25519:AAAA")
            .unwrap_err()
            .contains("3 bytes, expected 32"));
    }
}
