//! SIP Digest authentication (RFC 3261 §22, RFC 8760 SHA-256) against a users file.
//!
//! Inside:
//! - `users`: [`UsersFile`] / [`UserEntry`], the TOML users file (passwords
//!   stored only as HA1 hashes, MD5 and SHA-256), and [`AuthConfigError`].
//! - `digest`: [`Algorithm`] and the hashes ([`ha1`], [`digest_response`]);
//!   [`DigestAuth`], which makes `WWW-Authenticate` challenges with nonces
//!   bound to the node, the realm and the connection ([`NonceBinding`]) and
//!   verifies `Authorization` / `Proxy-Authorization` credentials for a
//!   [`DigestRequest`] (qop=auth, each nonce count once, `uri=` = the
//!   Request-URI; qop-less MD5 for RFC 2069 clients, one use per nonce);
//!   [`AuthFailure`], why a credential was refused; the client side,
//!   [`authorization_header`].
//! - `lockout`: [`Lockouts`], failures per source and per user with
//!   exponential [`Backoff`]: the proxy refuses a locked source or user
//!   before verifying anything.
//!
//! The header grammar itself (one parser for challenges and credentials) is
//! [`crate::sip::digest`]; the caller parses once and takes every decision,
//! verification included, on that parse.

mod digest;
mod lockout;
mod users;

pub use digest::{
    authorization_header, digest_response, generate_secret, ha1, Algorithm, AuthFailure, DigestAuth, DigestRequest,
    NonceBinding, DEFAULT_NONCE_TTL, MAX_CLOCK_SKEW_SECS, MAX_NONCES_TRACKED,
};
pub use lockout::{source_key, Backoff, Locked, Lockout, Lockouts, FAILURE_WINDOW, MAX_TRACKED, USER_LIMIT_FACTOR};
pub use users::{AuthConfigError, UserEntry, UsersFile};
