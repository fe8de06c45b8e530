//! Digest hashing, the server side (challenges, nonces, verification) and the
//! client-side helpers (RFC 3261 §22, RFC 7616, RFC 8760 SHA-256).
//!
//! Inside: [`Algorithm`]; [`ha1`], [`digest_response`] and
//! [`authorization_header`]; [`DigestAuth`], which makes challenges and
//! verifies credentials parsed by [`crate::sip::digest`]; [`AuthFailure`],
//! why a credential was refused.
//!
//! Nonces are stateless: `base64url(timestamp || random || HMAC-SHA256(secret,
//! timestamp || random || realm)[..16])`, so any node holding the same secret
//! verifies them, across restarts. Consequence: `nc` is not tracked, so a
//! captured Authorization can be replayed within the nonce lifetime; SIP runs
//! over TLS here, which is what keeps it from being captured.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use super::users::UsersFile;
use crate::clock::now_secs;
use crate::sip::digest::{quote, DigestParams, DigestSyntaxError};

/// Default nonce lifetime.
pub const DEFAULT_NONCE_TTL: Duration = Duration::from_secs(300);

/// How far in the future a nonce's timestamp may be (clock skew between mesh
/// nodes sharing the secret) before it is treated as stale.
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;

/// Random bytes in a nonce.
const NONCE_RANDOM_LEN: usize = 16;
/// Truncated HMAC bytes in a nonce.
const NONCE_TAG_LEN: usize = 16;
/// Decoded nonce length: timestamp, random, tag.
const NONCE_LEN: usize = 8 + NONCE_RANDOM_LEN + NONCE_TAG_LEN;

type HmacSha256 = Hmac<Sha256>;

// ---------------------------------------------------------------------------
// Algorithms and hashing

/// A Digest hash algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` (RFC 2617, RFC 3261); the default when `algorithm` is absent.
    Md5,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    /// Parse an `algorithm=` token, case-insensitively. `-sess` variants are
    /// not supported and give `None`.
    pub fn parse(token: &str) -> Option<Algorithm> {
        if token.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if token.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// The token as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Length of this algorithm's hashes in lowercase hex.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        }
    }

    /// Lowercase hex hash of `parts` joined by `:`.
    fn hash_hex(self, parts: &[&str]) -> String {
        fn feed<D: sha2::Digest>(mut d: D, parts: &[&str]) -> String {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p.as_bytes());
            }
            to_hex(&d.finalize())
        }
        match self {
            Algorithm::Md5 => feed(md5::Md5::new(), parts),
            Algorithm::Sha256 => feed(Sha256::new(), parts),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0x0f)] as char);
    }
    s
}

/// Constant-time equality: the time taken depends only on the lengths, which
/// are public (fixed per algorithm).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// HA1 = H(username:realm:password), lowercase hex.
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    alg.hash_hex(&[username, realm, password])
}

/// The `response=` value for qop=auth (`qop = Some("auth")`) or, with
/// `qop = None`, the RFC 2069 form (then `nc` and `cnonce` are unused).
#[allow(clippy::too_many_arguments)] // mirrors the RFC's inputs one for one
pub fn digest_response(
    alg: Algorithm,
    ha1_hex: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
    qop: Option<&str>,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = alg.hash_hex(&[method, uri]);
    match qop {
        Some(qop) => alg.hash_hex(&[ha1_hex, nonce, nc, cnonce, qop, &ha2]),
        None => alg.hash_hex(&[ha1_hex, nonce, &ha2]),
    }
}

/// A client `Authorization` value (qop=auth) answering a challenge; `nc` is
/// the nonce count (formatted as 8 hex digits).
#[allow(clippy::too_many_arguments)] // mirrors the RFC's inputs one for one
pub fn authorization_header(
    alg: Algorithm,
    username: &str,
    realm: &str,
    password: &str,
    nonce: &str,
    uri: &str,
    method: &str,
    cnonce: &str,
    nc: u32,
) -> String {
    let nc = format!("{nc:08x}");
    let ha1 = ha1(alg, username, realm, password);
    let response = digest_response(alg, &ha1, nonce, &nc, cnonce, Some("auth"), method, uri);
    format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{response}\", \
         algorithm={alg}, cnonce={}, qop=auth, nc={nc}",
        quote(username),
        quote(realm),
        quote(nonce),
        quote(uri),
        quote(cnonce),
    )
}

// ---------------------------------------------------------------------------
// Verification

/// Why an Authorization value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// Not a parseable Digest credential (answer 400).
    #[error("malformed Authorization: {0}")]
    Malformed(String),
    /// `realm` is not ours.
    #[error("unknown realm")]
    UnknownRealm,
    /// No such user.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// The nonce is ours and the response right, but the nonce has expired:
    /// re-challenge with `stale=true`.
    #[error("stale nonce")]
    StaleNonce,
    /// The nonce was not made with our secret and realm.
    #[error("bad nonce")]
    BadNonce,
    /// The response does not match (wrong password).
    #[error("wrong response")]
    BadResponse,
    /// An `algorithm` other than MD5 or SHA-256.
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// A `qop` other than `auth`; empty when qop is absent with SHA-256.
    #[error("unsupported qop {0:?}")]
    UnsupportedQop(String),
}

impl AuthFailure {
    /// Whether the re-challenge should carry `stale=true`.
    pub fn is_stale(&self) -> bool {
        matches!(self, AuthFailure::StaleNonce)
    }

    /// Whether this is a password guess gone wrong (counts toward the retry
    /// limit); nonce and syntax problems do not.
    pub fn is_credential_failure(&self) -> bool {
        matches!(self, AuthFailure::UnknownUser(_) | AuthFailure::BadResponse)
    }
}

/// A syntax error is a malformed credential (answered 400, never re-challenged).
impl From<DigestSyntaxError> for AuthFailure {
    fn from(e: DigestSyntaxError) -> Self {
        AuthFailure::Malformed(e.to_string())
    }
}

/// Verifies Authorization headers and makes challenges.
#[derive(Clone)]
pub struct DigestAuth {
    users: Arc<UsersFile>,
    secret: [u8; 32],
    nonce_ttl: Duration,
}

impl fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestAuth")
            .field("realm", &self.users.realm)
            .field("users", &self.users.users.len())
            .field("secret", &"<redacted>")
            .field("nonce_ttl", &self.nonce_ttl)
            .finish()
    }
}

/// A fresh random nonce secret. Nodes that must accept each other's nonces
/// share one secret instead.
pub fn generate_secret() -> [u8; 32] {
    rand::random()
}

impl DigestAuth {
    /// A verifier for `users`, signing nonces with `secret`; nonces older than
    /// `nonce_ttl` (whole seconds) are stale.
    pub fn new(users: UsersFile, secret: [u8; 32], nonce_ttl: Duration) -> DigestAuth {
        DigestAuth {
            users: Arc::new(users),
            secret,
            nonce_ttl,
        }
    }

    /// Our realm.
    pub fn realm(&self) -> &str {
        &self.users.realm
    }

    /// The users file in use.
    pub fn users(&self) -> &UsersFile {
        &self.users
    }

    /// `WWW-Authenticate` / `Proxy-Authenticate` values for `algorithms`, in
    /// that order (many deployed clients answer only the first challenge they
    /// see), each with realm, nonce, qop="auth", algorithm, and stale=true
    /// when asked.
    pub fn challenges_for(&self, stale: bool, algorithms: &[Algorithm]) -> Vec<String> {
        let nonce = self.nonce_at(now_secs());
        let realm = quote(&self.users.realm);
        let stale = if stale { ", stale=true" } else { "" };
        algorithms
            .iter()
            .copied()
            .map(|alg| format!("Digest realm={realm}, nonce=\"{nonce}\", qop=\"auth\", algorithm={alg}{stale}"))
            .collect()
    }

    /// Check one Authorization (or Proxy-Authorization) value, already parsed
    /// by [`DigestParams::parse`] (the caller takes its own decisions, such as
    /// the algorithm policy, on the same parse), for `method` (e.g.
    /// "REGISTER"). The `uri=` parameter is what gets hashed, per RFC.
    /// Returns the authenticated user name.
    pub fn verify(&self, method: &str, credentials: &DigestParams) -> Result<String, AuthFailure> {
        self.verify_at(method, credentials, now_secs())
    }

    fn verify_at(&self, method: &str, credentials: &DigestParams, now: u64) -> Result<String, AuthFailure> {
        let p = Credentials::from_params(credentials)?;
        let alg = match &p.algorithm {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a).ok_or_else(|| AuthFailure::UnsupportedAlgorithm(a.clone()))?,
        };
        match &p.qop {
            Some(q) if !q.eq_ignore_ascii_case("auth") => {
                return Err(AuthFailure::UnsupportedQop(q.clone()));
            }
            Some(_) => {
                let nc = p.nc.as_deref().ok_or_else(|| missing("nc"))?;
                if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(AuthFailure::Malformed("nc is not 8 hex digits".to_owned()));
                }
                if p.cnonce.as_deref().is_none_or(str::is_empty) {
                    return Err(missing("cnonce"));
                }
            }
            // RFC 2069 style, kept for old MD5 clients only; RFC 7616 requires qop.
            None if alg == Algorithm::Md5 => {}
            None => return Err(AuthFailure::UnsupportedQop(String::new())),
        }
        if p.realm != self.users.realm {
            return Err(AuthFailure::UnknownRealm);
        }
        let issued = self.check_nonce(&p.nonce)?;

        let user = self.users.user(&p.username);
        // Hash even for an unknown user so timing does not tell which names exist.
        let ha1 = user.map_or("", |u| u.ha1(alg));
        let expected = digest_response(
            alg,
            ha1,
            &p.nonce,
            p.nc.as_deref().unwrap_or(""),
            p.cnonce.as_deref().unwrap_or(""),
            p.qop.as_deref(),
            method,
            &p.uri,
        );
        let Some(user) = user else {
            return Err(AuthFailure::UnknownUser(p.username));
        };
        let got = p.response.to_ascii_lowercase();
        if !ct_eq(expected.as_bytes(), got.as_bytes()) {
            return Err(AuthFailure::BadResponse);
        }
        // Stale only after the response checked out (RFC 7616 §3.3): the client
        // may then retry without asking the user again.
        let ttl = self.nonce_ttl.as_secs();
        if now > issued.saturating_add(ttl) || issued > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(AuthFailure::StaleNonce);
        }
        Ok(user.name.clone())
    }

    fn nonce_tag(&self, ts_and_random: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts any key length");
        mac.update(ts_and_random);
        mac.update(self.users.realm.as_bytes());
        mac
    }

    fn nonce_at(&self, ts: u64) -> String {
        let mut raw = [0u8; NONCE_LEN];
        raw[..8].copy_from_slice(&ts.to_be_bytes());
        let random: [u8; NONCE_RANDOM_LEN] = rand::random();
        raw[8..8 + NONCE_RANDOM_LEN].copy_from_slice(&random);
        let tag = self.nonce_tag(&raw[..8 + NONCE_RANDOM_LEN]).finalize().into_bytes();
        raw[8 + NONCE_RANDOM_LEN..].copy_from_slice(&tag[..NONCE_TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The nonce's issue time if it is genuine (made with our secret and realm).
    fn check_nonce(&self, nonce: &str) -> Result<u64, AuthFailure> {
        // Check the length before decoding: never trust the wire.
        if nonce.len() != (NONCE_LEN * 8).div_ceil(6) {
            return Err(AuthFailure::BadNonce);
        }
        let raw = URL_SAFE_NO_PAD.decode(nonce).map_err(|_| AuthFailure::BadNonce)?;
        if raw.len() != NONCE_LEN {
            return Err(AuthFailure::BadNonce);
        }
        let (body, tag) = raw.split_at(8 + NONCE_RANDOM_LEN);
        self.nonce_tag(body)
            .verify_truncated_left(tag)
            .map_err(|_| AuthFailure::BadNonce)?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&body[..8]);
        Ok(u64::from_be_bytes(ts))
    }
}

fn missing(name: &str) -> AuthFailure {
    AuthFailure::Malformed(format!("missing {name}"))
}

/// The credential parameters verification uses; others are ignored.
#[derive(Debug)]
struct Credentials {
    username: String,
    realm: String,
    nonce: String,
    uri: String,
    response: String,
    algorithm: Option<String>,
    cnonce: Option<String>,
    qop: Option<String>,
    nc: Option<String>,
}

impl Credentials {
    /// The parameters we use, each at most once; the five RFC 2069 ones are
    /// required.
    fn from_params(params: &DigestParams) -> Result<Credentials, AuthFailure> {
        let mut slots: [(&str, Option<String>); 9] = [
            ("username", None),
            ("realm", None),
            ("nonce", None),
            ("uri", None),
            ("response", None),
            ("algorithm", None),
            ("cnonce", None),
            ("qop", None),
            ("nc", None),
        ];
        for (name, v) in params.iter() {
            if let Some(slot) = slots.iter_mut().find(|(n, _)| *n == name) {
                if slot.1.is_some() {
                    return Err(AuthFailure::Malformed(format!("duplicate {name}")));
                }
                slot.1 = Some(v.to_owned());
            }
        }
        let [username, realm, nonce, uri, response, algorithm, cnonce, qop, nc] = slots.map(|(_, v)| v);
        Ok(Credentials {
            username: username.ok_or_else(|| missing("username"))?,
            realm: realm.ok_or_else(|| missing("realm"))?,
            nonce: nonce.ok_or_else(|| missing("nonce"))?,
            uri: uri.ok_or_else(|| missing("uri"))?,
            response: response.ok_or_else(|| missing("response"))?,
            algorithm,
            cnonce,
            qop,
            nc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::users::tests::users;
    use crate::sip::digest::MAX_VALUE_LEN;

    const SECRET: [u8; 32] = [7; 32];

    fn auth() -> DigestAuth {
        DigestAuth::new(users(), SECRET, DEFAULT_NONCE_TTL)
    }

    /// Both challenges, SHA-256 first (RFC 8760 §2.4 ordering).
    fn challenges(a: &DigestAuth, stale: bool) -> Vec<String> {
        a.challenges_for(stale, &[Algorithm::Sha256, Algorithm::Md5])
    }

    /// Parse then verify, as the proxy does.
    fn check(a: &DigestAuth, method: &str, value: &str) -> Result<String, AuthFailure> {
        a.verify(method, &DigestParams::parse(value)?)
    }

    fn check_at(a: &DigestAuth, method: &str, value: &str, now: u64) -> Result<String, AuthFailure> {
        a.verify_at(method, &DigestParams::parse(value)?, now)
    }

    /// The value of `name="..."` in a challenge.
    fn param(header: &str, name: &str) -> String {
        DigestParams::parse(header).unwrap().get(name).unwrap().to_owned()
    }

    fn client(a: &DigestAuth, alg: Algorithm, user: &str, password: &str) -> String {
        let nonce = param(&challenges(a, false)[0], "nonce");
        authorization_header(
            alg,
            user,
            "contoso.test",
            password,
            &nonce,
            "sip:contoso.test",
            "REGISTER",
            "0a4f113b",
            1,
        )
    }

    #[test]
    fn rfc2617_md5_known_answer() {
        let ha1 = ha1(Algorithm::Md5, "Mufasa", "testrealm@host.com", "Circle Of Life");
        let r = digest_response(
            Algorithm::Md5,
            &ha1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "00000001",
            "0a4f113b",
            Some("auth"),
            "GET",
            "/dir/index.html",
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc7616_sha256_known_answer() {
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let h = authorization_header(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
            nonce,
            "/dir/index.html",
            "GET",
            cnonce,
            1,
        );
        let want = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1";
        assert_eq!(param(&h, "response"), want);
        assert_eq!(param(&h, "nc"), "00000001");
        assert_eq!(param(&h, "algorithm"), "SHA-256");
        let ha1 = ha1(Algorithm::Sha256, "Mufasa", "http-auth@example.org", "Circle of Life");
        let r = digest_response(
            Algorithm::Sha256,
            &ha1,
            nonce,
            "00000001",
            cnonce,
            Some("auth"),
            "GET",
            "/dir/index.html",
        );
        assert_eq!(r, want);
    }

    #[test]
    fn challenges_shape() {
        let a = auth();
        let c = challenges(&a, false);
        assert_eq!(c.len(), 2);
        assert!(c[0].starts_with("Digest realm=\"contoso.test\", nonce=\""), "{}", c[0]);
        assert!(c[0].ends_with("\", qop=\"auth\", algorithm=SHA-256"), "{}", c[0]);
        assert!(c[1].ends_with("\", qop=\"auth\", algorithm=MD5"), "{}", c[1]);
        let nonce = param(&c[0], "nonce");
        assert_eq!(nonce.len(), 54);
        let raw = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        assert_eq!(raw.len(), NONCE_LEN);
        let ts = u64::from_be_bytes(raw[..8].try_into().unwrap());
        assert!(now_secs().abs_diff(ts) <= 1);
        assert_eq!(param(&c[0], "qop"), "auth");

        let s = challenges(&a, true);
        assert!(s[0].ends_with("algorithm=SHA-256, stale=true"), "{}", s[0]);
        assert!(s[1].ends_with("algorithm=MD5, stale=true"), "{}", s[1]);
        // Fresh randomness each time.
        assert_ne!(param(&s[0], "nonce"), nonce);
    }

    #[test]
    fn round_trip_both_algorithms() {
        let a = auth();
        for alg in [Algorithm::Sha256, Algorithm::Md5] {
            let h = client(&a, alg, "alice", "secret");
            assert_eq!(check(&a, "REGISTER", &h), Ok("alice".to_owned()), "{alg}");
            let h = client(&a, alg, "bob", "hunter2");
            assert_eq!(check(&a, "REGISTER", &h), Ok("bob".to_owned()), "{alg}");
        }
    }

    #[test]
    fn wrong_password_method_or_uri() {
        let a = auth();
        for alg in [Algorithm::Sha256, Algorithm::Md5] {
            let h = client(&a, alg, "alice", "Secret");
            assert_eq!(check(&a, "REGISTER", &h), Err(AuthFailure::BadResponse));
            let h = client(&a, alg, "alice", "secret");
            assert_eq!(check(&a, "INVITE", &h), Err(AuthFailure::BadResponse));
            let h = h.replace("sip:contoso.test", "sip:evil.test");
            assert_eq!(check(&a, "REGISTER", &h), Err(AuthFailure::BadResponse));
        }
        // Alice's credentials do not work under bob's name.
        let h = client(&a, Algorithm::Md5, "alice", "secret").replace("\"alice\"", "\"bob\"");
        assert_eq!(check(&a, "REGISTER", &h), Err(AuthFailure::BadResponse));
    }

    #[test]
    fn unknown_user() {
        let a = auth();
        let h = client(&a, Algorithm::Sha256, "mallory", "x");
        assert_eq!(
            check(&a, "REGISTER", &h),
            Err(AuthFailure::UnknownUser("mallory".to_owned()))
        );
        // Case-sensitive names.
        let h = client(&a, Algorithm::Sha256, "Alice", "secret");
        assert_eq!(
            check(&a, "REGISTER", &h),
            Err(AuthFailure::UnknownUser("Alice".to_owned()))
        );
    }

    #[test]
    fn tampered_or_foreign_nonce() {
        let a = auth();
        let h = client(&a, Algorithm::Sha256, "alice", "secret");
        let nonce = param(&h, "nonce");
        // Flip one character in each region: timestamp, random, tag.
        for pos in [2, 20, 50] {
            let mut t: Vec<u8> = nonce.clone().into_bytes();
            t[pos] = if t[pos] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(t).unwrap();
            let tampered = authorization_header(
                Algorithm::Sha256,
                "alice",
                "contoso.test",
                "secret",
                &t,
                "sip:contoso.test",
                "REGISTER",
                "c",
                1,
            );
            assert_eq!(check(&a, "REGISTER", &tampered), Err(AuthFailure::BadNonce), "{pos}");
        }
        for bad in ["", "abc", "dcd98b7102dd2f0e8b11d0f600bfb0c093", &"A".repeat(54)] {
            let h = h.replace(&nonce, bad);
            assert_eq!(check(&a, "REGISTER", &h), Err(AuthFailure::BadNonce), "{bad:?}");
        }
        // A nonce signed with another secret.
        let other = DigestAuth::new(users(), [8; 32], DEFAULT_NONCE_TTL);
        let h = client(&other, Algorithm::Md5, "alice", "secret");
        assert_eq!(check(&a, "REGISTER", &h), Err(AuthFailure::BadNonce));
        // Same secret: another node (or after a restart) accepts it.
        let same = DigestAuth::new(users(), SECRET, DEFAULT_NONCE_TTL);
        let h = client(&same, Algorithm::Md5, "alice", "secret");
        assert_eq!(check(&a, "REGISTER", &h), Ok("alice".to_owned()));
    }

    #[test]
    fn nonce_is_bound_to_realm() {
        let mut u = users();
        u.realm = "other.test".to_owned();
        let other = DigestAuth::new(u, SECRET, DEFAULT_NONCE_TTL);
        let nonce = other.nonce_at(now_secs());
        assert_eq!(other.check_nonce(&nonce).map(|_| ()), Ok(()));
        assert_eq!(auth().check_nonce(&nonce), Err(AuthFailure::BadNonce));
    }

    fn header_with_nonce(nonce: &str, password: &str) -> String {
        authorization_header(
            Algorithm::Sha256,
            "alice",
            "contoso.test",
            password,
            nonce,
            "sip:contoso.test",
            "REGISTER",
            "abc",
            2,
        )
    }

    #[test]
    fn expired_nonce_is_stale() {
        let a = DigestAuth::new(users(), SECRET, Duration::from_secs(300));
        let t0 = 1_700_000_000;
        let h = header_with_nonce(&a.nonce_at(t0), "secret");
        assert_eq!(check_at(&a, "REGISTER", &h, t0), Ok("alice".to_owned()));
        assert_eq!(check_at(&a, "REGISTER", &h, t0 + 300), Ok("alice".to_owned()));
        assert_eq!(check_at(&a, "REGISTER", &h, t0 + 301), Err(AuthFailure::StaleNonce));
        // Through the real clock: a nonce from long ago.
        assert_eq!(check(&a, "REGISTER", &h), Err(AuthFailure::StaleNonce));
        // Stale only with the right password (RFC 7616 §3.3).
        let wrong = header_with_nonce(&a.nonce_at(t0), "nope");
        assert_eq!(
            check_at(&a, "REGISTER", &wrong, t0 + 301),
            Err(AuthFailure::BadResponse)
        );
        // Far in the future (beyond clock skew) is re-challenged too.
        let future = header_with_nonce(&a.nonce_at(t0 + 61), "secret");
        assert_eq!(check_at(&a, "REGISTER", &future, t0), Err(AuthFailure::StaleNonce));
        let skewed = header_with_nonce(&a.nonce_at(t0 + 60), "secret");
        assert_eq!(check_at(&a, "REGISTER", &skewed, t0), Ok("alice".to_owned()));
    }

    #[test]
    fn wrong_realm() {
        let a = auth();
        let nonce = param(&challenges(&a, false)[0], "nonce");
        let h = authorization_header(
            Algorithm::Md5,
            "alice",
            "fabrikam.test",
            "secret",
            &nonce,
            "sip:contoso.test",
            "REGISTER",
            "c",
            1,
        );
        assert_eq!(check(&a, "REGISTER", &h), Err(AuthFailure::UnknownRealm));
    }

    #[test]
    fn malformed_headers() {
        let a = auth();
        let good = client(&a, Algorithm::Md5, "alice", "secret");
        let cases: Vec<String> = vec![
            String::new(),
            "Digest".to_owned(),
            "Digest ".to_owned(),
            "Basic YWxpY2U6c2VjcmV0".to_owned(),
            "Digestusername=\"alice\"".to_owned(),
            good.replace("Digest ", "Digest,"),
            good.replace("username=", "username "),
            good.replace("username=\"alice\"", "username=\"alice"),
            good.replace("username=\"alice\"", "username="),
            good.replace("username=\"alice\"", "username=\"al\u{1}ice\""),
            good.replace("username=\"alice\"", "username=\"alice\" x"),
            good.replace("username=\"alice\"", "username=al ice"),
            good.replace("username=\"alice\", ", ""),
            good.replace("response=", "respons="),
            good.replace(", uri=\"sip:contoso.test\"", ""),
            format!("{good}, username=\"alice\""),
            good.replace(", nc=00000001", ""),
            good.replace("nc=00000001", "nc=1"),
            good.replace("nc=00000001", "nc=0000000g"),
            good.replace(", cnonce=\"0a4f113b\"", ""),
            good.replace("cnonce=\"0a4f113b\"", "cnonce=\"\""),
            format!("{good}, =x"),
        ];
        for h in cases {
            assert!(
                matches!(check(&a, "REGISTER", &h), Err(AuthFailure::Malformed(_))),
                "{h:?} -> {:?}",
                check(&a, "REGISTER", &h)
            );
        }
    }

    #[test]
    fn over_long_header() {
        let a = auth();
        let good = client(&a, Algorithm::Sha256, "alice", "secret");
        let padding = MAX_VALUE_LEN - good.len() - ", x=\"\"".len();
        let fits = format!("{good}, x=\"{}\"", "a".repeat(padding));
        assert_eq!(fits.len(), MAX_VALUE_LEN);
        assert_eq!(check(&a, "REGISTER", &fits), Ok("alice".to_owned()));
        let over = format!("{good}, x=\"{}\"", "a".repeat(padding + 1));
        assert_eq!(
            check(&a, "REGISTER", &over),
            Err(AuthFailure::Malformed("longer than 4096 bytes".to_owned()))
        );
    }

    #[test]
    fn lenient_syntax() {
        let a = auth();
        let nonce = param(&challenges(&a, false)[0], "nonce");
        let ha1 = ha1(Algorithm::Sha256, "alice", "contoso.test", "secret");
        let resp = digest_response(
            Algorithm::Sha256,
            &ha1,
            &nonce,
            "0000000A",
            "x\"y",
            Some("auth"),
            "REGISTER",
            "sip:contoso.test",
        );
        // Mixed-case names, bare tokens, spaces around '=' and ',', empty list
        // elements, an escaped quote, an unknown parameter, uppercase response
        // and algorithm.
        let h = format!(
            "  dIgEsT   USERNAME = \"alice\" ,, Realm=\"contoso.test\",\tNonce={nonce} ,\
             uri = \"sip:contoso.test\", RESPONSE=\"{}\", opaque=\"zz\", \
             Algorithm=sha-256, cnonce=\"x\\\"y\", qop=\"auth\", NC=0000000A ,",
            resp.to_ascii_uppercase()
        );
        assert_eq!(check(&a, "REGISTER", &h), Ok("alice".to_owned()));
    }

    #[test]
    fn algorithm_and_qop_rules() {
        let a = auth();
        let nonce = param(&challenges(&a, false)[0], "nonce");
        let base = |alg: &str, qop: Option<&str>, response: &str| {
            let mut h = format!(
                "Digest username=\"alice\", realm=\"contoso.test\", nonce=\"{nonce}\", \
                 uri=\"sip:contoso.test\", response=\"{response}\""
            );
            if !alg.is_empty() {
                h += &format!(", algorithm={alg}");
            }
            if let Some(q) = qop {
                h += &format!(", qop={q}, nc=00000001, cnonce=\"c\"");
            }
            h
        };
        assert_eq!(
            check(&a, "REGISTER", &base("MD5-sess", Some("auth"), "00")),
            Err(AuthFailure::UnsupportedAlgorithm("MD5-sess".to_owned()))
        );
        assert_eq!(
            check(&a, "REGISTER", &base("SHA-512-256", Some("auth"), "00")),
            Err(AuthFailure::UnsupportedAlgorithm("SHA-512-256".to_owned()))
        );
        assert_eq!(
            check(&a, "REGISTER", &base("MD5", Some("auth-int"), "00")),
            Err(AuthFailure::UnsupportedQop("auth-int".to_owned()))
        );
        assert_eq!(
            check(&a, "REGISTER", &base("SHA-256", None, "00")),
            Err(AuthFailure::UnsupportedQop(String::new()))
        );
        // RFC 2069 style: MD5 without qop, algorithm absent or explicit.
        let ha1 = ha1(Algorithm::Md5, "alice", "contoso.test", "secret");
        let r = digest_response(
            Algorithm::Md5,
            &ha1,
            &nonce,
            "",
            "",
            None,
            "REGISTER",
            "sip:contoso.test",
        );
        assert_eq!(check(&a, "REGISTER", &base("", None, &r)), Ok("alice".to_owned()));
        assert_eq!(check(&a, "REGISTER", &base("md5", None, &r)), Ok("alice".to_owned()));
        assert_eq!(
            check(&a, "REGISTER", &base("", None, &"0".repeat(32))),
            Err(AuthFailure::BadResponse)
        );
    }

    #[test]
    fn failure_mapping() {
        assert!(AuthFailure::StaleNonce.is_stale());
        assert!(!AuthFailure::BadNonce.is_stale());
        assert!(AuthFailure::BadResponse.is_credential_failure());
        assert!(AuthFailure::UnknownUser("x".into()).is_credential_failure());
        assert!(!AuthFailure::BadNonce.is_credential_failure());
        assert!(!AuthFailure::StaleNonce.is_credential_failure());
    }

    #[test]
    fn algorithm_tokens() {
        assert_eq!(Algorithm::parse("md5"), Some(Algorithm::Md5));
        assert_eq!(Algorithm::parse("Sha-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::parse("SHA256"), None);
        assert_eq!(Algorithm::Sha256.to_string(), "SHA-256");
        assert_eq!(Algorithm::Md5.as_str(), "MD5");
    }

    #[test]
    fn debug_hides_secret() {
        let d = format!("{:?}", auth());
        assert!(d.contains("<redacted>"), "{d}");
        assert!(!d.contains("7, 7"), "{d}");
    }
}
