//! SIP Digest authentication (RFC 3261 §22, RFC 8760 SHA-256) against a users file.
//!
//! Inside:
//! - `users`: [`UsersFile`] / [`UserEntry`], the TOML users file (passwords
//!   stored only as HA1 hashes, MD5 and SHA-256), and [`AuthConfigError`].
//! - `digest`: [`Algorithm`] and the hashes ([`ha1`], [`digest_response`]);
//!   [`DigestAuth`], which makes `WWW-Authenticate` challenges with stateless
//!   nonces and verifies `Authorization` / `Proxy-Authorization` credentials
//!   (qop=auth; qop-less MD5 for RFC 2069 clients); [`AuthFailure`], why a
//!   credential was refused; the client side, [`authorization_header`].
//! - `lockout`: [`FailureTracker`], consecutive failures per key, so a proxy
//!   can answer 403 after the retry limit.
//!
//! The header grammar itself (one parser for challenges and credentials) is
//! [`crate::sip::digest`]; the caller parses once and takes every decision,
//! verification included, on that parse.

mod digest;
mod lockout;
mod users;

pub use digest::{
    authorization_header, digest_response, generate_secret, ha1, Algorithm, AuthFailure, DigestAuth, DEFAULT_NONCE_TTL,
    MAX_CLOCK_SKEW_SECS,
};
pub use lockout::{FailureTracker, MAX_TRACKED};
pub use users::{AuthConfigError, UserEntry, UsersFile};
