//! Authentication at the client door: a connection's proven identity (TLS
//! client certificate, or Digest once per connection), or the answer that
//! asks for one. Every answer is a [`SipReject`]; the status codes live in
//! `answer.rs`.
//!
//! Order of the checks, each before the next costs anything:
//! 1. a locked source address is refused (403, Retry-After), unchallenged;
//! 2. the credentials (taken out of the request by [`take_credentials`], so
//!    they are never forwarded) are parsed once; that parse serves the
//!    algorithm policy, the lockout key and the verification;
//! 3. a locked user is refused the same way, the right password included;
//! 4. [`DigestAuth::verify`](crate::auth::DigestAuth::verify): realm, `uri=`
//!    = Request-URI, the nonce's binding to this node and connection, the
//!    nonce count, the response, the nonce's age;
//! 5. each failed guess is counted, one by one, and the one that reaches the
//!    limit locks the source (and, at a higher limit, the user).
//!
//! Counted in [`AuthCounters`] (`status` → `sip.auth`), logged at most once
//! per [`AUTH_LOG_INTERVAL`] per reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::answer::SipReject;
use super::flows::Flow;
use super::Proxy;
use crate::auth::{Algorithm, AuthFailure, DigestRequest, Locked, Lockouts, NonceBinding};
use crate::config::SipConfig;
use crate::sip::digest::{DigestParams, DigestSyntaxError};
use crate::sip::{HeaderName, Method, SipMessage, StartLine};

/// At most one log line per reason per interval: strangers decide how often
/// authentication fails, so an unthrottled line per failure is theirs to flood.
pub const AUTH_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Counters of the door's Digest decisions (`status` → `sip.auth`).
#[derive(Debug, Default, Serialize)]
pub struct AuthCounters {
    /// Credentials verified and accepted.
    pub successes: u64,
    /// Guesses verified and wrong (bad response or unknown user).
    pub failures: u64,
    /// Failures that locked a source or a user.
    pub lockouts: u64,
    /// Requests refused unverified because the source or user was locked.
    pub refused_while_locked: u64,
    /// Nonce counts seen before (replays), refused unverified.
    pub replayed: u64,
    /// Nonces not made by this node for this realm and connection.
    pub bad_nonce: u64,
    /// Right response on an expired nonce (re-challenged with stale=true).
    pub stale: u64,
    /// `uri=` not equal to the Request-URI.
    pub uri_mismatch: u64,
    /// Credentials that do not parse (or lack a parameter).
    pub malformed: u64,
    /// Other realm, algorithm not offered, unsupported qop.
    pub refused_other: u64,
}

/// The door's mutable authentication state, behind the proxy's one lock.
#[derive(Debug)]
pub(super) struct AuthGuard {
    lockouts: Lockouts,
    counters: AuthCounters,
    /// Per log reason: when it was last logged, and how many were suppressed since.
    logged: HashMap<&'static str, (Instant, u64)>,
}

impl AuthGuard {
    pub(super) fn new(config: &SipConfig) -> Self {
        AuthGuard {
            lockouts: Lockouts::new(config.auth_retry_limit, config.lockout),
            counters: AuthCounters::default(),
            logged: HashMap::new(),
        }
    }

    /// `Some(suppressed since the last line)` when `reason` may be logged now.
    fn may_log(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        match self.logged.get_mut(reason) {
            Some((last, suppressed)) if now.saturating_duration_since(*last) < AUTH_LOG_INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                *last = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                self.logged.insert(reason, (now, 0));
                Some(0)
            }
        }
    }

    fn refuse_locked(&mut self, locked: Locked, flow: &Flow, user: Option<&str>, now: Instant) -> SipReject {
        self.counters.refused_while_locked += 1;
        if let Some(suppressed) = self.may_log("locked", now) {
            let by = match locked {
                Locked::Source(_) => "source",
                Locked::User(_) => "user",
            };
            tracing::info!(remote = %flow.remote, user = user.unwrap_or(""), locked = by, suppressed,
                "authentication refused while locked");
        }
        locked_out(locked)
    }

    /// The `sip.auth` object of `status`.
    pub(super) fn stats(&self, nonces_tracked: usize, now: Instant) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.counters).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("locked_sources".into(), self.lockouts.sources.locked_count(now).into());
            o.insert("locked_users".into(), self.lockouts.users.locked_count(now).into());
            o.insert("nonces_tracked".into(), nonces_tracked.into());
        }
        v
    }
}

fn locked_out(locked: Locked) -> SipReject {
    let ms = locked.remaining().as_millis();
    let secs = u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX).max(1);
    SipReject::LockedOut { retry_after: secs }
}

/// The clock locks are measured on: tokio's, so a paused test clock moves them.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Take every Authorization and Proxy-Authorization header out of a client's
/// request, returning their values (Authorization first). Credentials are for
/// this proxy only: once taken here, no path can forward them.
pub(super) fn take_credentials(msg: &mut SipMessage) -> Vec<String> {
    let is_creds = |n: HeaderName| matches!(n, HeaderName::Authorization | HeaderName::ProxyAuthorization);
    if !msg.headers.iter().any(|h| is_creds(h.name)) {
        return Vec::new();
    }
    let mut values: Vec<(bool, String)> = msg
        .headers
        .iter()
        .filter(|h| is_creds(h.name))
        .map(|h| (h.name == HeaderName::ProxyAuthorization, h.value_str().to_owned()))
        .collect();
    msg.headers.retain(|h| !is_creds(h.name));
    values.sort_by_key(|(proxy, _)| *proxy); // stable: Authorization first, each in order
    values.into_iter().map(|(_, v)| v).collect()
}

/// The credentials to verify, parsed once: the first for our realm, else the
/// first presented (whose problem is then answered).
fn select(credentials: &[String], realm: &str) -> Option<Result<DigestParams, DigestSyntaxError>> {
    let mut first = None;
    for c in credentials {
        let parsed = DigestParams::parse(c);
        if parsed.as_ref().is_ok_and(|p| p.get("realm") == Some(realm)) {
            return Some(parsed);
        }
        first.get_or_insert(parsed);
    }
    first
}

impl Proxy {
    /// The identity `msg` on `flow` is from, or the answer asking for one.
    /// `credentials` are the values [`take_credentials`] took out of `msg`.
    pub(super) fn authenticate(
        &self,
        flow: &Arc<Flow>,
        msg: &SipMessage,
        credentials: &[String],
    ) -> Result<String, SipReject> {
        if let Some(id) = flow.identity() {
            return Ok(id);
        }
        let registrar = msg.method() == Some(&Method::Register);
        let Some(auth) = &self.auth else {
            return Err(SipReject::NoDigestUsers);
        };
        let binding = NonceBinding {
            flow: flow.id,
            remote: flow.remote,
        };
        let challenge = |stale: bool| SipReject::AuthRequired {
            registrar,
            challenges: auth.challenges_for(stale, &self.config.digest_algorithms, binding),
        };
        let now = now();
        let ip = flow.remote.ip();
        let mut guard = self.auth_guard.lock().unwrap_or_else(|p| p.into_inner());
        // A locked source gets nothing, not even a nonce.
        if let Some(locked) = guard.lockouts.locked(ip, None, now) {
            return Err(guard.refuse_locked(locked, flow, None, now));
        }
        let params = match select(credentials, auth.realm()) {
            None => return Err(challenge(false)),
            Some(Err(e)) => {
                guard.counters.malformed += 1;
                return Err(SipReject::BadAuthorization(e.to_string()));
            }
            Some(Ok(p)) => p,
        };
        // One parse serves the algorithm policy, the lockout key and the
        // verification, so they cannot read the header differently.
        let used = params.algorithm().and_then(Algorithm::parse).unwrap_or(Algorithm::Md5);
        if !self.config.digest_algorithms.contains(&used) {
            guard.counters.refused_other += 1;
            return Err(challenge(false));
        }
        let known_user = params.username().filter(|u| auth.user(u).is_some());
        if let Some(locked) = guard.lockouts.locked(ip, known_user, now) {
            return Err(guard.refuse_locked(locked, flow, known_user, now));
        }
        let (method, request_uri) = match &msg.start {
            StartLine::Request { method, uri } => (method.as_str(), uri.as_str()),
            StartLine::Response { .. } => return Err(challenge(false)),
        };
        let request = DigestRequest {
            method,
            request_uri,
            binding,
        };
        let failure = match auth.verify(&request, &params) {
            Ok(user) => {
                guard.counters.successes += 1;
                guard.lockouts.succeed(ip, &user);
                drop(guard);
                let identity = self.aor_of(&user);
                *flow.digest_identity.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity.clone());
                return Ok(identity);
            }
            Err(e) => e,
        };
        let c = &mut guard.counters;
        match &failure {
            AuthFailure::Malformed(_) => c.malformed += 1,
            AuthFailure::UriMismatch => c.uri_mismatch += 1,
            AuthFailure::StaleNonce => c.stale += 1,
            AuthFailure::BadNonce => c.bad_nonce += 1,
            AuthFailure::Replayed => c.replayed += 1,
            AuthFailure::BadResponse | AuthFailure::UnknownUser(_) => c.failures += 1,
            AuthFailure::UnknownRealm | AuthFailure::UnsupportedAlgorithm(_) | AuthFailure::UnsupportedQop(_) => {
                c.refused_other += 1
            }
        }
        let locked = if failure.is_credential_failure() {
            let locked = guard.lockouts.fail(ip, known_user, now);
            if locked.is_some() {
                guard.counters.lockouts += 1;
            }
            locked
        } else {
            None
        };
        if let Some(suppressed) = guard.may_log(failure.reason(), now) {
            let user = params.username().unwrap_or("");
            tracing::warn!(remote = %flow.remote, user = %user, reason = failure.reason(), locked = locked.is_some(),
                suppressed, "digest authentication failed");
        }
        drop(guard);
        Err(match failure {
            _ if locked.is_some() => locked_out(locked.expect("checked")),
            AuthFailure::Malformed(why) => SipReject::BadAuthorization(why),
            // RFC 7616 §3.4.6: a request for another resource is a bad request.
            AuthFailure::UriMismatch => SipReject::BadAuthorization(failure.to_string()),
            f => challenge(f.is_stale()),
        })
    }

    /// The `sip.auth` object of `status`.
    pub(super) fn auth_stats(&self) -> serde_json::Value {
        let tracked = self.auth.as_ref().map_or(0, |a| a.nonces_tracked());
        self.auth_guard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stats(tracked, now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn credentials_are_taken_out_authorization_first() {
        let text = "MESSAGE sip:bob@contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bK-1\r\n\
                    Proxy-Authorization: Digest p1\r\nFrom: <sip:a@contoso.test>;tag=1\r\n\
                    authorization: Digest a1\r\nTo: <sip:bob@contoso.test>\r\nCall-ID: c\r\n\
                    Proxy-Authorization: Digest p2\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
        let mut msg = SipMessage::parse(Bytes::from(text)).unwrap();
        let taken = take_credentials(&mut msg);
        assert_eq!(taken, ["Digest a1", "Digest p1", "Digest p2"]);
        assert!(msg.header(HeaderName::Authorization).is_none());
        assert!(msg.header(HeaderName::ProxyAuthorization).is_none());
        let out = String::from_utf8(msg.to_bytes().to_vec()).unwrap().to_ascii_lowercase();
        assert!(!out.contains("authorization"), "{out}");
        assert_eq!(msg.headers.len(), 6);
        assert!(take_credentials(&mut msg).is_empty());
    }

    #[test]
    fn our_realm_is_chosen_else_the_first() {
        let other = "Digest realm=\"other.test\", username=\"x\"".to_owned();
        let ours = "Digest realm=\"contoso.test\", username=\"y\"".to_owned();
        let bad = "Basic xyz".to_owned();
        let pick = |c: &[String]| select(c, "contoso.test").map(|r| r.map(|p| p.username().map(str::to_owned)));
        assert_eq!(pick(&[other.clone(), ours.clone()]), Some(Ok(Some("y".into()))));
        assert_eq!(pick(&[bad.clone(), ours]), Some(Ok(Some("y".into()))));
        assert_eq!(pick(std::slice::from_ref(&other)), Some(Ok(Some("x".into()))));
        assert!(matches!(pick(&[bad, other]), Some(Err(_))));
        assert_eq!(pick(&[]), None);
    }

    #[test]
    fn logs_are_throttled_per_reason() {
        let mut g = AuthGuard::new(&SipConfig::default());
        let t0 = Instant::now();
        assert_eq!(g.may_log("bad_response", t0), Some(0));
        assert_eq!(g.may_log("bad_response", t0 + Duration::from_millis(999)), None);
        assert_eq!(g.may_log("bad_response", t0 + Duration::from_millis(999)), None);
        assert_eq!(g.may_log("replayed", t0), Some(0), "another reason has its own budget");
        assert_eq!(g.may_log("bad_response", t0 + AUTH_LOG_INTERVAL), Some(2));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let ra = |ms| match locked_out(Locked::Source(Duration::from_millis(ms))) {
            SipReject::LockedOut { retry_after } => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!((ra(0), ra(1), ra(1000), ra(1001), ra(10_000)), (1, 1, 1, 2, 10));
    }
}
