//! Authentication at the client door: a connection's proven identity (TLS
//! client certificate, or Digest once per connection), or the answer that
//! asks for one. Every answer is a [`SipReject`]; the status codes live in
//! `answer.rs`.

use std::sync::Arc;
use std::time::Instant;

use super::answer::SipReject;
use super::flows::Flow;
use super::Proxy;
use crate::auth::{Algorithm, AuthFailure};
use crate::sip::digest::DigestParams;
use crate::sip::{HeaderName, Method, SipMessage};

impl Proxy {
    /// The identity `msg` on `flow` is from, or the answer asking for one.
    pub(super) fn authenticate(&self, flow: &Arc<Flow>, msg: &SipMessage) -> Result<String, SipReject> {
        if let Some(id) = flow.identity() {
            return Ok(id);
        }
        let registrar = msg.method() == Some(&Method::Register);
        let Some(auth) = &self.auth else {
            return Err(SipReject::NoDigestUsers);
        };
        let challenge = |stale: bool| SipReject::AuthRequired {
            registrar,
            challenges: auth.challenges_for(stale, &self.config.digest_algorithms),
        };
        let creds = msg
            .header(HeaderName::Authorization)
            .or_else(|| msg.header(HeaderName::ProxyAuthorization))
            .map(|h| h.value_str().to_owned());
        let Some(creds) = creds else {
            return Err(challenge(false));
        };
        // One parse serves the algorithm policy, the verification and the
        // failure key, so they cannot read the header differently.
        let parsed = DigestParams::parse(&creds);
        let verdict = match &parsed {
            Err(e) => Err(AuthFailure::from(e.clone())),
            Ok(params) => {
                let used = params.algorithm().and_then(Algorithm::parse).unwrap_or(Algorithm::Md5);
                if !self.config.digest_algorithms.contains(&used) {
                    return Err(challenge(false));
                }
                let method = msg.method().map(|m| m.to_string()).unwrap_or_default();
                auth.verify(&method, params)
            }
        };
        match verdict {
            Ok(user) => {
                let identity = self.aor_of(&user);
                *flow.digest_identity.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity.clone());
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .succeed(&format!("{}|{user}", flow.remote.ip()));
                Ok(identity)
            }
            Err(AuthFailure::Malformed(why)) => Err(SipReject::BadAuthorization(why)),
            Err(e) if e.is_stale() => Err(challenge(true)),
            Err(e) if e.is_credential_failure() => {
                let user = match &e {
                    AuthFailure::UnknownUser(u) => u.clone(),
                    _ => parsed
                        .as_ref()
                        .ok()
                        .and_then(DigestParams::username)
                        .unwrap_or_default()
                        .to_owned(),
                };
                let key = format!("{}|{user}", flow.remote.ip());
                let blocked = self
                    .failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .fail(&key, Instant::now());
                crate::refused!(self.refusals, super::refusals::ClientRefusal::DigestFailure, remote = %flow.remote, user = %user, blocked, "digest authentication failed");
                Err(if blocked {
                    SipReject::LockedOut
                } else {
                    challenge(false)
                })
            }
            Err(_) => Err(challenge(false)),
        }
    }
}
