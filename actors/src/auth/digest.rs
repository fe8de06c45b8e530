//! Digest hashing, the server side (challenges, nonces, verification) and the
//! client-side helpers (RFC 3261 §22, RFC 7616, RFC 8760 SHA-256).
//!
//! Inside: [`Algorithm`]; [`ha1`], [`digest_response`] and
//! [`authorization_header`]; [`DigestAuth`], which makes challenges and
//! verifies credentials parsed by [`crate::sip::digest`]; [`AuthFailure`],
//! why a credential was refused.
//!
//! Nonces: `base64url(timestamp || seq || HMAC-SHA256(secret, node || realm
//! || flow id || client address || timestamp || seq)[..16])`, `seq` a
//! per-node issue counter. A nonce is therefore good only on the node, in the
//! realm and on the very connection it was issued on: a header captured by a
//! callee (or anyone) and replayed on another connection is refused as
//! [`AuthFailure::BadNonce`] (the secret is random per run, so a restart
//! invalidates every nonce too). On its own connection each nonce count is
//! accepted once: the highest `nc` seen per nonce is kept, for the nonce's
//! lifetime, in a table bounded by [`MAX_NONCES_TRACKED`]. `uri=` must be the
//! Request-URI. The counter in the nonce tells a client how many challenges
//! the node issued, nothing more.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use super::users::{UserEntry, UsersFile};
use crate::clock::now_secs;
use crate::sip::digest::{quote, DigestParams, DigestSyntaxError};

/// Default nonce lifetime.
pub const DEFAULT_NONCE_TTL: Duration = Duration::from_secs(300);

/// How far in the future a nonce's timestamp may be (clock skew between mesh
/// nodes sharing the secret) before it is treated as stale.
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;

/// Truncated HMAC bytes in a nonce (128 bits: not guessable online).
const NONCE_TAG_LEN: usize = 16;
/// Decoded nonce length: timestamp, issue sequence number, tag.
const NONCE_LEN: usize = 8 + 8 + NONCE_TAG_LEN;

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
    /// The nonce was not made by this node, for this realm and this
    /// connection (forged, or replayed from another connection).
    #[error("bad nonce")]
    BadNonce,
    /// The nonce count is not above the highest one already seen for this
    /// nonce (a replay), or the nonce was forgotten under table pressure and
    /// cannot be proved fresh. Refused before the response is verified.
    #[error("nonce count replayed")]
    Replayed,
    /// `uri=` is not the Request-URI (RFC 7616 §3.4.6: answer 400).
    #[error("uri does not match the Request-URI")]
    UriMismatch,
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

    /// A short stable name, for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Malformed(_) => "malformed",
            AuthFailure::UnknownRealm => "unknown_realm",
            AuthFailure::UnknownUser(_) => "unknown_user",
            AuthFailure::StaleNonce => "stale",
            AuthFailure::BadNonce => "bad_nonce",
            AuthFailure::Replayed => "replayed",
            AuthFailure::UriMismatch => "uri_mismatch",
            AuthFailure::BadResponse => "bad_response",
            AuthFailure::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            AuthFailure::UnsupportedQop(_) => "unsupported_qop",
        }
    }
}

/// A syntax error is a malformed credential (answered 400, never re-challenged).
impl From<DigestSyntaxError> for AuthFailure {
    fn from(e: DigestSyntaxError) -> Self {
        AuthFailure::Malformed(e.to_string())
    }
}

/// The connection a nonce is issued on and only valid on: the flow id and
/// the client's address (a flow id alone is unique only within one run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonceBinding {
    /// The flow id.
    pub flow: u64,
    /// The client's address.
    pub remote: SocketAddr,
}

/// A request being authenticated: what the credentials must match.
#[derive(Clone, Copy, Debug)]
pub struct DigestRequest<'a> {
    /// The method (`REGISTER`), hashed into HA2.
    pub method: &'a str,
    /// The Request-URI as received; `uri=` must be equal to it.
    pub request_uri: &'a str,
    /// The connection it came on.
    pub binding: NonceBinding,
}

/// Verifies Authorization headers and makes challenges.
#[derive(Clone)]
pub struct DigestAuth {
    users: Arc<UsersFile>,
    /// Index of `users` by name: a lookup per REGISTER (and per stranger's
    /// guess) must not scan an enterprise's whole users file.
    by_name: Arc<HashMap<String, usize>>,
    secret: [u8; 32],
    node: String,
    nonce_ttl: Duration,
    /// Issue counter: every nonce gets the next value, so nonces are unique
    /// and ordered (the nonce-count table forgets oldest first).
    issued: Arc<AtomicU64>,
    counts: Arc<Mutex<NonceCounts>>,
}

impl fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestAuth")
            .field("realm", &self.users.realm)
            .field("node", &self.node)
            .field("users", &self.users.users.len())
            .field("secret", &"<redacted>")
            .field("nonce_ttl", &self.nonce_ttl)
            .finish()
    }
}

/// A fresh random nonce secret.
pub fn generate_secret() -> [u8; 32] {
    rand::random()
}

impl DigestAuth {
    /// A verifier for `users` on node `node`, signing nonces with `secret`;
    /// nonces older than `nonce_ttl` (whole seconds) are stale.
    pub fn new(users: UsersFile, secret: [u8; 32], nonce_ttl: Duration, node: &str) -> DigestAuth {
        let by_name = users
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.clone(), i))
            .collect();
        DigestAuth {
            users: Arc::new(users),
            by_name: Arc::new(by_name),
            secret,
            node: node.to_owned(),
            nonce_ttl,
            issued: Arc::new(AtomicU64::new(0)),
            counts: Arc::new(Mutex::new(NonceCounts::default())),
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

    /// The user named `name` (case-sensitive), by index.
    pub fn user(&self, name: &str) -> Option<&UserEntry> {
        self.by_name.get(name).and_then(|&i| self.users.users.get(i))
    }

    /// Nonces whose highest nonce count is currently remembered.
    pub fn nonces_tracked(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// `WWW-Authenticate` / `Proxy-Authenticate` values for `algorithms`, in
    /// that order (many deployed clients answer only the first challenge they
    /// see), each with realm, a nonce valid only on the connection `binding`,
    /// qop="auth", algorithm, and stale=true when asked.
    pub fn challenges_for(&self, stale: bool, algorithms: &[Algorithm], binding: NonceBinding) -> Vec<String> {
        let nonce = self.nonce_at(now_secs(), binding);
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
    /// the algorithm policy, on the same parse), for `request`. In order:
    /// syntax, algorithm and qop, realm, `uri=` against the Request-URI, the
    /// nonce's MAC (node, realm, connection), the nonce count (each accepted
    /// once), then the response, then the nonce's age. Returns the
    /// authenticated user name.
    pub fn verify(&self, request: &DigestRequest<'_>, credentials: &DigestParams) -> Result<String, AuthFailure> {
        self.verify_at(request, credentials, now_secs())
    }

    fn verify_at(
        &self,
        request: &DigestRequest<'_>,
        credentials: &DigestParams,
        now: u64,
    ) -> Result<String, AuthFailure> {
        let p = Credentials::from_params(credentials)?;
        let alg = match &p.algorithm {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a).ok_or_else(|| AuthFailure::UnsupportedAlgorithm(a.clone()))?,
        };
        let nc = match &p.qop {
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
                u32::from_str_radix(nc, 16).map_err(|_| AuthFailure::Malformed("nc is not 8 hex digits".to_owned()))?
            }
            // RFC 2069 style, kept for old MD5 clients only; RFC 7616 requires
            // qop. No nonce count: such a nonce is good for one use (as nc=1).
            None if alg == Algorithm::Md5 => 1,
            None => return Err(AuthFailure::UnsupportedQop(String::new())),
        };
        if p.realm != self.users.realm {
            return Err(AuthFailure::UnknownRealm);
        }
        // RFC 7616 §3.4.6 / RFC 2617 §3.2.2.5: the credentials are for this
        // Request-URI and no other. Compared as sent (clients copy it).
        if p.uri != request.request_uri {
            return Err(AuthFailure::UriMismatch);
        }
        let (issued, seq) = self.check_nonce(&p.nonce, request.binding)?;
        let ttl = self.nonce_ttl.as_secs();
        let fresh = now <= issued.saturating_add(ttl) && issued <= now.saturating_add(MAX_CLOCK_SKEW_SECS);
        if fresh {
            // Before the response is computed: a replayed count is refused
            // without costing a hash or telling anything about the password.
            let expires = issued.saturating_add(ttl);
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            counts.expire(now);
            if !counts.accept(seq, expires, nc) {
                return Err(AuthFailure::Replayed);
            }
        }

        let user = self.user(&p.username);
        // Hash even for an unknown user so timing does not tell which names exist.
        let ha1 = user.map_or("", |u| u.ha1(alg));
        let expected = digest_response(
            alg,
            ha1,
            &p.nonce,
            p.nc.as_deref().unwrap_or(""),
            p.cnonce.as_deref().unwrap_or(""),
            p.qop.as_deref(),
            request.method,
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
        if !fresh {
            return Err(AuthFailure::StaleNonce);
        }
        Ok(user.name.clone())
    }

    /// The MAC over everything a nonce is bound to.
    fn nonce_tag(&self, ts_and_seq: &[u8], binding: NonceBinding) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts any key length");
        mac.update(b"sipmesh digest nonce v2\0");
        // Length-prefixed, so no two field lists hash alike.
        for field in [self.node.as_bytes(), self.users.realm.as_bytes()] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac.update(&binding.flow.to_be_bytes());
        let remote = binding.remote.to_string();
        mac.update(&(remote.len() as u64).to_be_bytes());
        mac.update(remote.as_bytes());
        mac.update(ts_and_seq);
        mac
    }

    fn nonce_at(&self, ts: u64, binding: NonceBinding) -> String {
        let seq = self.issued.fetch_add(1, Ordering::Relaxed);
        let mut raw = [0u8; NONCE_LEN];
        raw[..8].copy_from_slice(&ts.to_be_bytes());
        raw[8..16].copy_from_slice(&seq.to_be_bytes());
        let tag = self.nonce_tag(&raw[..16], binding).finalize().into_bytes();
        raw[16..].copy_from_slice(&tag[..NONCE_TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The nonce's issue time and sequence number if it is genuine: made by
    /// this node, for our realm, on the connection `binding`.
    fn check_nonce(&self, nonce: &str, binding: NonceBinding) -> Result<(u64, u64), AuthFailure> {
        // Check the length before decoding: never trust the wire.
        if nonce.len() != (NONCE_LEN * 8).div_ceil(6) {
            return Err(AuthFailure::BadNonce);
        }
        let raw = URL_SAFE_NO_PAD.decode(nonce).map_err(|_| AuthFailure::BadNonce)?;
        if raw.len() != NONCE_LEN {
            return Err(AuthFailure::BadNonce);
        }
        let (body, tag) = raw.split_at(16);
        self.nonce_tag(body, binding)
            .verify_truncated_left(tag)
            .map_err(|_| AuthFailure::BadNonce)?;
        let ts = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
        let seq = u64::from_be_bytes(body[8..16].try_into().expect("8 bytes"));
        Ok((ts, seq))
    }
}

/// Most nonces whose highest nonce count is remembered (DoS bound: about
/// 40 bytes each, so ~1.3 MB; a nonce enters only when credentials on it are
/// presented, and a locked source presents none, so a flood needs many
/// sources). Beyond it the oldest is forgotten, and every nonce issued
/// before a forgotten one is refused as [`AuthFailure::Replayed`] (the
/// client is re-challenged): forgetting never reopens a replay.
pub const MAX_NONCES_TRACKED: usize = 32_768;

/// The highest nonce count accepted per nonce, for nonces still fresh.
#[derive(Debug, Default)]
struct NonceCounts {
    /// By nonce sequence number (issue order): (expiry in Unix seconds, highest nc).
    by_seq: BTreeMap<u64, (u64, u32)>,
    /// Nonces with a sequence number below this were forgotten (expired or
    /// evicted); none of them is accepted any more.
    floor: u64,
}

impl NonceCounts {
    fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// Drop nonces that expired by `now` (they are refused as stale anyway).
    fn expire(&mut self, now: u64) {
        // Expiry grows with the sequence number (issue order), up to clock steps.
        while let Some((&seq, &(expires, _))) = self.by_seq.first_key_value() {
            if expires >= now {
                break;
            }
            self.by_seq.remove(&seq);
            self.floor = self.floor.max(seq + 1);
        }
    }

    /// Whether `nc` is above every count accepted so far for nonce `seq`
    /// (then it is recorded).
    fn accept(&mut self, seq: u64, expires: u64, nc: u32) -> bool {
        if let Some((_, highest)) = self.by_seq.get_mut(&seq) {
            if nc <= *highest {
                return false;
            }
            *highest = nc;
            return true;
        }
        if seq < self.floor || nc == 0 {
            return false;
        }
        if self.by_seq.len() >= MAX_NONCES_TRACKED {
            if let Some((oldest, _)) = self.by_seq.pop_first() {
                self.floor = self.floor.max(oldest + 1);
            }
            if seq < self.floor {
                return false;
            }
        }
        self.by_seq.insert(seq, (expires, nc));
        true
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
    const NODE: &str = "fe1.contoso.test";
    /// The connection the tests' nonces are issued on.
    const B: NonceBinding = NonceBinding {
        flow: 17,
        remote: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000),
    };

    fn auth() -> DigestAuth {
        DigestAuth::new(users(), SECRET, DEFAULT_NONCE_TTL, NODE)
    }

    #[test]
    fn users_are_found_by_exact_name_through_the_index() {
        let a = auth();
        for u in &users().users {
            assert_eq!(a.user(&u.name), Some(u));
        }
        assert_eq!(a.user("carol"), None);
        assert_eq!(a.user("BOB"), None, "names are case-sensitive");
        assert_eq!(a.user(""), None);
    }

    /// Both challenges, SHA-256 first (RFC 8760 §2.4 ordering).
    fn challenges(a: &DigestAuth, stale: bool) -> Vec<String> {
        a.challenges_for(stale, &[Algorithm::Sha256, Algorithm::Md5], B)
    }

    fn request(method: &str) -> DigestRequest<'_> {
        DigestRequest {
            method,
            request_uri: "sip:contoso.test",
            binding: B,
        }
    }

    /// Parse then verify, as the proxy does (Request-URI sip:contoso.test, connection B).
    fn check(a: &DigestAuth, method: &str, value: &str) -> Result<String, AuthFailure> {
        a.verify(&request(method), &DigestParams::parse(value)?)
    }

    fn check_at(a: &DigestAuth, method: &str, value: &str, now: u64) -> Result<String, AuthFailure> {
        a.verify_at(&request(method), &DigestParams::parse(value)?, now)
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
        assert_eq!(nonce.len(), 43);
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
            // Another uri than the Request-URI: refused before any hashing.
            let h = h.replace("sip:contoso.test", "sip:evil.test");
            assert_eq!(check(&a, "REGISTER", &h), Err(AuthFailure::UriMismatch));
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
        for pos in [2, 14, 30] {
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
        for bad in ["", "abc", "dcd98b7102dd2f0e8b11d0f600bfb0c093", &"A".repeat(43)] {
            let h = h.replace(&nonce, bad);
            assert_eq!(check(&a, "REGISTER", &h), Err(AuthFailure::BadNonce), "{bad:?}");
        }
        // A nonce signed with another secret.
        let other = DigestAuth::new(users(), [8; 32], DEFAULT_NONCE_TTL, NODE);
        let h = client(&other, Algorithm::Md5, "alice", "secret");
        assert_eq!(check(&a, "REGISTER", &h), Err(AuthFailure::BadNonce));
        // The same secret under another node's name: not ours either.
        let fe2 = DigestAuth::new(users(), SECRET, DEFAULT_NONCE_TTL, "fe2.contoso.test");
        let h = client(&fe2, Algorithm::Md5, "alice", "secret");
        assert_eq!(check(&a, "REGISTER", &h), Err(AuthFailure::BadNonce));
        // Same secret and node (the verifier's clone): accepted.
        let same = DigestAuth::new(users(), SECRET, DEFAULT_NONCE_TTL, NODE);
        let h = client(&same, Algorithm::Md5, "alice", "secret");
        assert_eq!(check(&a, "REGISTER", &h), Ok("alice".to_owned()));
    }

    #[test]
    fn nonce_is_bound_to_the_connection() {
        let a = auth();
        let h = client(&a, Algorithm::Sha256, "alice", "secret");
        let params = DigestParams::parse(&h).unwrap();
        let on = |flow, remote: &str| DigestRequest {
            binding: NonceBinding {
                flow,
                remote: remote.parse().unwrap(),
            },
            ..request("REGISTER")
        };
        // Another flow id, or the same id from another address: bad nonce.
        assert_eq!(
            a.verify(&on(18, "127.0.0.1:40000"), &params),
            Err(AuthFailure::BadNonce)
        );
        assert_eq!(
            a.verify(&on(17, "127.0.0.1:40001"), &params),
            Err(AuthFailure::BadNonce)
        );
        assert_eq!(a.verify(&on(17, "127.0.0.1:40000"), &params), Ok("alice".to_owned()));
    }

    #[test]
    fn each_nonce_count_is_accepted_once() {
        let a = auth();
        let nonce = param(&challenges(&a, false)[0], "nonce");
        let with = |nc, password| {
            authorization_header(
                Algorithm::Sha256,
                "alice",
                "contoso.test",
                password,
                &nonce,
                "sip:contoso.test",
                "REGISTER",
                "c",
                nc,
            )
        };
        assert_eq!(check(&a, "REGISTER", &with(1, "wrong")), Err(AuthFailure::BadResponse));
        // The count of a failed attempt is used up too; the right password does not revive it.
        assert_eq!(check(&a, "REGISTER", &with(1, "secret")), Err(AuthFailure::Replayed));
        assert_eq!(check(&a, "REGISTER", &with(3, "secret")), Ok("alice".to_owned()));
        assert_eq!(check(&a, "REGISTER", &with(3, "secret")), Err(AuthFailure::Replayed));
        assert_eq!(check(&a, "REGISTER", &with(2, "secret")), Err(AuthFailure::Replayed));
        assert_eq!(check(&a, "REGISTER", &with(4, "secret")), Ok("alice".to_owned()));
        assert_eq!(check(&a, "REGISTER", &with(0, "secret")), Err(AuthFailure::Replayed));
        assert_eq!(a.nonces_tracked(), 1);
    }

    #[test]
    fn the_nonce_count_table_is_bounded_and_never_reopens_a_replay() {
        let mut t = NonceCounts::default();
        let far = u64::MAX;
        for seq in 0..MAX_NONCES_TRACKED as u64 {
            assert!(t.accept(seq, far, 1));
        }
        assert_eq!(t.len(), MAX_NONCES_TRACKED);
        // One more: the oldest (seq 0) is forgotten, and with it every older nonce.
        assert!(t.accept(MAX_NONCES_TRACKED as u64, far, 1));
        assert_eq!(t.len(), MAX_NONCES_TRACKED);
        assert!(!t.accept(0, far, 2), "a forgotten nonce is not accepted again");
        assert!(!t.accept(1, far, 1), "still tracked: nc 1 was seen");
        assert!(t.accept(1, far, 2));
        // Expiry forgets in issue order and raises the floor the same way.
        let mut t = NonceCounts::default();
        assert!(t.accept(5, 100, 1));
        assert!(t.accept(6, 200, 1));
        t.expire(150);
        assert_eq!(t.len(), 1);
        assert!(!t.accept(5, 100, 2));
        assert!(!t.accept(4, 100, 1), "issued before an expired nonce");
        assert!(t.accept(7, 300, 1));
    }

    #[test]
    fn nonce_is_bound_to_realm() {
        let mut u = users();
        u.realm = "other.test".to_owned();
        let other = DigestAuth::new(u, SECRET, DEFAULT_NONCE_TTL, NODE);
        let nonce = other.nonce_at(now_secs(), B);
        assert_eq!(other.check_nonce(&nonce, B).map(|_| ()), Ok(()));
        assert_eq!(auth().check_nonce(&nonce, B), Err(AuthFailure::BadNonce));
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
        let a = DigestAuth::new(users(), SECRET, Duration::from_secs(300), NODE);
        let t0 = 1_700_000_000;
        let h = header_with_nonce(&a.nonce_at(t0, B), "secret");
        assert_eq!(check_at(&a, "REGISTER", &h, t0), Ok("alice".to_owned()));
        let h = header_with_nonce(&a.nonce_at(t0, B), "secret");
        assert_eq!(check_at(&a, "REGISTER", &h, t0 + 300), Ok("alice".to_owned()));
        let h = header_with_nonce(&a.nonce_at(t0, B), "secret");
        assert_eq!(check_at(&a, "REGISTER", &h, t0 + 301), Err(AuthFailure::StaleNonce));
        // Through the real clock: a nonce from long ago.
        assert_eq!(check(&a, "REGISTER", &h), Err(AuthFailure::StaleNonce));
        // Stale only with the right password (RFC 7616 §3.3).
        let wrong = header_with_nonce(&a.nonce_at(t0, B), "nope");
        assert_eq!(
            check_at(&a, "REGISTER", &wrong, t0 + 301),
            Err(AuthFailure::BadResponse)
        );
        // Far in the future (beyond clock skew) is re-challenged too.
        let future = header_with_nonce(&a.nonce_at(t0 + 61, B), "secret");
        assert_eq!(check_at(&a, "REGISTER", &future, t0), Err(AuthFailure::StaleNonce));
        let skewed = header_with_nonce(&a.nonce_at(t0 + 60, B), "secret");
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
        let fresh = || param(&challenges(&a, false)[0], "nonce");
        let nonce = fresh();
        let base = |nonce: &str, alg: &str, qop: Option<&str>, response: &str| {
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
            check(&a, "REGISTER", &base(&nonce, "MD5-sess", Some("auth"), "00")),
            Err(AuthFailure::UnsupportedAlgorithm("MD5-sess".to_owned()))
        );
        assert_eq!(
            check(&a, "REGISTER", &base(&nonce, "SHA-512-256", Some("auth"), "00")),
            Err(AuthFailure::UnsupportedAlgorithm("SHA-512-256".to_owned()))
        );
        assert_eq!(
            check(&a, "REGISTER", &base(&nonce, "MD5", Some("auth-int"), "00")),
            Err(AuthFailure::UnsupportedQop("auth-int".to_owned()))
        );
        assert_eq!(
            check(&a, "REGISTER", &base(&nonce, "SHA-256", None, "00")),
            Err(AuthFailure::UnsupportedQop(String::new()))
        );
        // RFC 2069 style: MD5 without qop, algorithm absent or explicit; such
        // a nonce is good once (it has no count).
        let ha1 = ha1(Algorithm::Md5, "alice", "contoso.test", "secret");
        let r = |nonce: &str| {
            digest_response(
                Algorithm::Md5,
                &ha1,
                nonce,
                "",
                "",
                None,
                "REGISTER",
                "sip:contoso.test",
            )
        };
        let (n1, n2, n3) = (fresh(), fresh(), fresh());
        assert_eq!(
            check(&a, "REGISTER", &base(&n1, "", None, &r(&n1))),
            Ok("alice".to_owned())
        );
        assert_eq!(
            check(&a, "REGISTER", &base(&n1, "", None, &r(&n1))),
            Err(AuthFailure::Replayed)
        );
        assert_eq!(
            check(&a, "REGISTER", &base(&n2, "md5", None, &r(&n2))),
            Ok("alice".to_owned())
        );
        assert_eq!(
            check(&a, "REGISTER", &base(&n3, "", None, &"0".repeat(32))),
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
