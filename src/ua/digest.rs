//! Client side of SIP Digest: reading a 401/407 challenge, answering it with
//! [`authorization_header`], and REGISTER around one challenge.

use sipmesh_actors::auth::{authorization_header, Algorithm};
use sipmesh_actors::sip::digest::DigestParams;
use sipmesh_actors::sip::{HeaderName, SipMessage};

use super::UaError;

/// The value of `name=` in a Digest challenge (quoted or token); the name
/// matches case-insensitively and only as a whole parameter name.
pub fn challenge_param(challenge: &str, name: &str) -> Option<String> {
    // The node's own grammar (one parser for challenges and credentials).
    DigestParams::parse(challenge).ok()?.get(name).map(str::to_owned)
}

/// Who answers a Digest challenge, and how.
#[derive(Clone, Copy, Debug)]
pub struct Credentials<'a> {
    /// The user part of the AOR (`alice`).
    pub user: &'a str,
    /// Its password.
    pub password: &'a str,
    /// The Digest `uri`: the Request-URI answered (`sip:contoso.test` for REGISTER).
    pub uri: &'a str,
    /// Algorithms we answer, most preferred first.
    pub algorithms: &'a [Algorithm],
    /// Our client nonce.
    pub cnonce: &'a str,
}

impl Credentials<'_> {
    /// The `Authorization` (or `Proxy-Authorization`, for a 407) value answering
    /// `challenge_resp` for `method`: the challenge of the first of
    /// [`Credentials::algorithms`] it offers, nonce count 1.
    pub fn authorization(&self, challenge_resp: &SipMessage, method: &str) -> Result<String, UaError> {
        let name = match challenge_resp.status() {
            Some(407) => HeaderName::ProxyAuthenticate,
            _ => HeaderName::WwwAuthenticate,
        };
        let offered = |alg: Algorithm| {
            challenge_resp
                .headers_named(name)
                .map(|h| h.value_str())
                .find(|c| challenge_param(c, "algorithm").is_some_and(|a| a.eq_ignore_ascii_case(alg.as_str())))
        };
        let (algorithm, challenge) = self
            .algorithms
            .iter()
            .find_map(|&alg| offered(alg).map(|c| (alg, c)))
            .ok_or_else(|| UaError::NoChallenge {
                algorithms: self.algorithms.to_vec(),
            })?;
        let realm = challenge_param(challenge, "realm").ok_or(UaError::ChallengeParam("realm"))?;
        let nonce = challenge_param(challenge, "nonce").ok_or(UaError::ChallengeParam("nonce"))?;
        Ok(authorization_header(
            algorithm,
            self.user,
            &realm,
            self.password,
            &nonce,
            self.uri,
            method,
            self.cnonce,
            1,
        ))
    }
}

/// REGISTER with at most one Digest challenge: `exchange(None)` sends the
/// request and returns the node's final answer; when that is a 401,
/// `exchange(Some(authorization))` sends it again with credentials and its
/// answer is returned. How the request is worded and how the answer is
/// awaited (queued, matched by branch) is the caller's.
pub async fn register(
    creds: &Credentials<'_>,
    mut exchange: impl AsyncFnMut(Option<&str>) -> Result<SipMessage, UaError>,
) -> Result<SipMessage, UaError> {
    let first = exchange(None).await?;
    if first.status() != Some(401) {
        return Ok(first);
    }
    let authorization = creds.authorization(&first, "REGISTER")?;
    exchange(Some(&authorization)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_param_reads_quoted_and_token_values_by_whole_name() {
        let c = r#"Digest realm="contoso.test", nonce="n0", qop="auth", algorithm=SHA-256, stale=true"#;
        assert_eq!(challenge_param(c, "realm").as_deref(), Some("contoso.test"));
        assert_eq!(challenge_param(c, "algorithm").as_deref(), Some("SHA-256"));
        assert_eq!(challenge_param(c, "stale").as_deref(), Some("true"));
        // `nonce` must not match inside `cnonce`, nor a name without `=`.
        assert_eq!(
            challenge_param(r#"Digest cnonce="x", nonce="y""#, "nonce").as_deref(),
            Some("y")
        );
        assert_eq!(challenge_param("Digest realm", "realm"), None);
    }

    fn challenge(status: u16, header: &str, values: &[&str]) -> SipMessage {
        let mut text = format!(
            "SIP/2.0 {status} Unauthorized\r\nVia: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-1\r\n\
             From: <sip:alice@contoso.test>;tag=a\r\nTo: <sip:alice@contoso.test>;tag=b\r\n\
             Call-ID: c@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
        );
        for v in values {
            text.push_str(&format!("{header}: {v}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        SipMessage::parse(text.into()).expect("test challenge parses")
    }

    const SHA: &str = r#"Digest realm="contoso.test", nonce="ns", qop="auth", algorithm=SHA-256"#;
    const MD5: &str = r#"Digest realm="contoso.test", nonce="nm", qop="auth", algorithm=MD5"#;

    fn creds(algorithms: &[Algorithm]) -> Credentials<'_> {
        Credentials {
            user: "alice",
            password: "pw",
            uri: "sip:contoso.test",
            algorithms,
            cnonce: "c1",
        }
    }

    #[test]
    fn answers_the_most_preferred_algorithm_offered() {
        let resp = challenge(401, "WWW-Authenticate", &[SHA, MD5]);
        let want = |alg, nonce| {
            authorization_header(
                alg,
                "alice",
                "contoso.test",
                "pw",
                nonce,
                "sip:contoso.test",
                "REGISTER",
                "c1",
                1,
            )
        };
        let md5_only = creds(&[Algorithm::Md5]).authorization(&resp, "REGISTER").unwrap();
        assert_eq!(md5_only, want(Algorithm::Md5, "nm"));
        let sha_first = creds(&[Algorithm::Sha256, Algorithm::Md5]).authorization(&resp, "REGISTER");
        assert_eq!(sha_first.unwrap(), want(Algorithm::Sha256, "ns"));
    }

    #[test]
    fn a_407_is_answered_from_proxy_authenticate() {
        let resp = challenge(407, "Proxy-Authenticate", &[MD5]);
        let auth = creds(&[Algorithm::Md5]).authorization(&resp, "MESSAGE").unwrap();
        assert!(auth.contains(r#"nonce="nm""#), "{auth}");
    }

    #[test]
    fn no_acceptable_challenge_names_what_was_wanted() {
        let resp = challenge(401, "WWW-Authenticate", &[MD5]);
        let err = creds(&[Algorithm::Sha256])
            .authorization(&resp, "REGISTER")
            .unwrap_err();
        assert_eq!(err.to_string(), "no SHA-256 challenge");
        let none = challenge(401, "WWW-Authenticate", &[]);
        let err = creds(&[Algorithm::Sha256, Algorithm::Md5]).authorization(&none, "REGISTER");
        assert_eq!(err.unwrap_err().to_string(), "no SHA-256 or MD5 challenge");
    }
}
