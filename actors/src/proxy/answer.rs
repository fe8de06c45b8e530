//! Every reason the proxy answers a request itself, mapped to its SIP status
//! and headers in one place (authentication challenges included).

use crate::sip::{Header, HeaderName, ParseError};

/// How long a client should wait after a 503 before retrying, in seconds.
pub const RETRY_AFTER_S: u32 = 5;

/// Why the proxy answers a request with an error instead of forwarding it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SipReject {
    /// The message does not parse or validate.
    #[error("malformed: {0}")]
    Malformed(ParseError),
    /// No such user in the domain.
    #[error("no such user")]
    NotFound,
    /// Known user with no live registration (or its flow is gone).
    #[error("user not reachable")]
    Unavailable,
    /// Max-Forwards reached 0.
    #[error("too many hops")]
    TooManyHops,
    /// The request came back to this node unchanged.
    #[error("loop detected")]
    Loop,
    /// The mesh link towards the next node is not up.
    #[error("path to {0} is down")]
    PathDown(String),
    /// A queue on the path is full.
    #[error("queue full")]
    Busy,
    /// Authenticated, but not allowed (spoofed From, third-party REGISTER, auth failures).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A domain this node does not serve and has no federation for.
    #[error("domain {0} is not served here")]
    DomainNotAllowed(String),
    /// A federation rule refused the request (the reason names the rule).
    #[error("federation: {}", .0.as_str())]
    Federation(crate::federation::FedRefusal),
    /// A semantic error not caught by the parser.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// REGISTER expiry shorter than the minimum.
    #[error("interval too brief (min {0})")]
    IntervalTooBrief(u32),
    /// CANCEL (or in-dialog request) with no matching transaction / flow.
    #[error("no such transaction")]
    NoTransaction,
    /// The transaction timed out.
    #[error("request timeout")]
    Timeout,
    /// Request-URI scheme other than sip/sips.
    #[error("unsupported URI scheme")]
    UnsupportedScheme,
    /// Proxy-Require names extensions this proxy does not support.
    #[error("unsupported extensions {0:?}")]
    BadExtension(Vec<String>),
    /// Credentials needed: 401 for REGISTER (the registrar asks), 407
    /// otherwise (the proxy asks), with one challenge per algorithm offered.
    #[error("authentication required")]
    AuthRequired {
        /// REGISTER: answered by the registrar with 401 / WWW-Authenticate.
        registrar: bool,
        /// The challenge values, most preferred first.
        challenges: Vec<String>,
    },
    /// The Authorization header does not parse.
    #[error("bad authorization: {0}")]
    BadAuthorization(String),
    /// No Digest users are configured and the connection proved no identity.
    #[error("no digest users configured")]
    NoDigestUsers,
    /// Too many failed attempts: the source or the user is locked for
    /// `retry_after` more seconds; nothing was verified.
    #[error("too many failed authentication attempts (retry after {retry_after} s)")]
    LockedOut {
        /// Seconds until the lock ends (Retry-After).
        retry_after: u32,
    },
    /// A Route entry naming this node carries a flow token that is not ours
    /// (forged, moved to another flow, from a previous run), or a client used
    /// tokens none of which names its own connection (RFC 5626 §5.3: 403).
    #[error("invalid flow token")]
    BadFlowToken,
    /// Accepting the request would pass the bound on the request bytes held
    /// by live transactions: of its user (or flow), or of the whole node.
    #[error("transaction memory budget spent ({})", if *per_user { "this user" } else { "all users" })]
    TransactionBudget {
        /// The user's (flow's) own budget, not the node's total.
        per_user: bool,
    },
}

impl SipReject {
    /// Status code and reason phrase.
    pub fn status(&self) -> (u16, String) {
        match self {
            SipReject::Malformed(e) => e.status(),
            SipReject::NotFound => (404, "Not Found".into()),
            SipReject::Unavailable => (480, "Temporarily Unavailable".into()),
            SipReject::TooManyHops => (483, "Too Many Hops".into()),
            SipReject::Loop => (482, "Loop Detected".into()),
            SipReject::PathDown(_) | SipReject::Busy => (503, "Service Unavailable".into()),
            SipReject::TransactionBudget { per_user: true } => {
                (503, "Service Unavailable (too many pending bytes for this user)".into())
            }
            SipReject::TransactionBudget { per_user: false } => {
                (503, "Service Unavailable (too many pending bytes)".into())
            }
            SipReject::Forbidden(why) => (403, format!("Forbidden ({why})")),
            SipReject::DomainNotAllowed(_) => (403, "Domain Not Allowed".into()),
            SipReject::Federation(why) => why.status(),
            SipReject::BadRequest(why) => (400, why.clone()),
            SipReject::IntervalTooBrief(_) => (423, "Interval Too Brief".into()),
            SipReject::NoTransaction => (481, "Call/Transaction Does Not Exist".into()),
            SipReject::Timeout => (408, "Request Timeout".into()),
            SipReject::UnsupportedScheme => (416, "Unsupported URI Scheme".into()),
            SipReject::BadExtension(_) => (420, "Bad Extension".into()),
            SipReject::AuthRequired { registrar: true, .. } => (401, "Unauthorized".into()),
            SipReject::AuthRequired { registrar: false, .. } => (407, "Proxy Authentication Required".into()),
            SipReject::BadAuthorization(why) => (400, format!("Bad Authorization ({why})")),
            SipReject::NoDigestUsers => (
                403,
                "Forbidden (no digest users configured; use a client certificate)".into(),
            ),
            SipReject::LockedOut { .. } => (403, "Forbidden (too many failed authentication attempts)".into()),
            SipReject::BadFlowToken => (403, "Forbidden (invalid flow token)".into()),
        }
    }

    /// Headers the answer must carry.
    pub fn headers(&self) -> Vec<Header> {
        match self {
            SipReject::PathDown(_) | SipReject::Busy | SipReject::TransactionBudget { .. } => {
                vec![Header::new(HeaderName::RetryAfter, &RETRY_AFTER_S.to_string())]
            }
            SipReject::Federation(crate::federation::FedRefusal::RateLimited) => {
                vec![Header::new(HeaderName::RetryAfter, "1")]
            }
            SipReject::LockedOut { retry_after } => {
                vec![Header::new(HeaderName::RetryAfter, &retry_after.to_string())]
            }
            SipReject::IntervalTooBrief(min) => vec![Header::new(HeaderName::MinExpires, &min.to_string())],
            SipReject::BadExtension(options) => vec![Header::new(HeaderName::Unsupported, &options.join(", "))],
            SipReject::AuthRequired { registrar, challenges } => {
                let name = if *registrar {
                    HeaderName::WwwAuthenticate
                } else {
                    HeaderName::ProxyAuthenticate
                };
                challenges.iter().map(|c| Header::new(name, c)).collect()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(SipReject::NotFound.status().0, 404);
        assert_eq!(SipReject::Unavailable.status().0, 480);
        assert_eq!(SipReject::TooManyHops.status(), (483, "Too Many Hops".into()));
        assert_eq!(SipReject::Loop.status().0, 482);
        assert_eq!(SipReject::Timeout.status().0, 408);
        assert_eq!(SipReject::PathDown("fe2".into()).status().0, 503);
        assert_eq!(SipReject::PathDown("fe2".into()).headers()[0].value_str(), "5");
        assert_eq!(SipReject::IntervalTooBrief(60).headers()[0].value_str(), "60");
        assert_eq!(SipReject::DomainNotAllowed("fabrikam.test".into()).status().0, 403);
        assert_eq!(
            SipReject::BadFlowToken.status(),
            (403, "Forbidden (invalid flow token)".into())
        );
        assert!(SipReject::BadFlowToken.headers().is_empty());
        for per_user in [true, false] {
            let why = SipReject::TransactionBudget { per_user };
            assert_eq!(why.status().0, 503);
            let h = why.headers();
            assert_eq!(h.len(), 1);
            assert_eq!((h[0].name, h[0].value_str()), (HeaderName::RetryAfter, "5"));
        }
        assert_eq!(
            SipReject::TransactionBudget { per_user: true }.status().1,
            "Service Unavailable (too many pending bytes for this user)"
        );
    }

    #[test]
    fn authentication_answers() {
        let ask = |registrar| SipReject::AuthRequired {
            registrar,
            challenges: vec!["Digest a".into(), "Digest b".into()],
        };
        assert_eq!(ask(true).status(), (401, "Unauthorized".into()));
        assert_eq!(ask(false).status(), (407, "Proxy Authentication Required".into()));
        let h = ask(true).headers();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].name, HeaderName::WwwAuthenticate);
        assert_eq!(h[1].value_str(), "Digest b");
        assert_eq!(ask(false).headers()[0].name, HeaderName::ProxyAuthenticate);
        assert_eq!(
            SipReject::BadAuthorization("missing nonce".into()).status(),
            (400, "Bad Authorization (missing nonce)".into())
        );
        assert_eq!(SipReject::NoDigestUsers.status().0, 403);
        let locked = SipReject::LockedOut { retry_after: 20 };
        assert_eq!(
            locked.status(),
            (403, "Forbidden (too many failed authentication attempts)".into())
        );
        let h = locked.headers();
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].name, h[0].value_str()), (HeaderName::RetryAfter, "20"));
        // A uri= that is not the Request-URI is a bad request (RFC 7616 §3.4.6).
        assert_eq!(
            SipReject::BadAuthorization("uri does not match the Request-URI".into()).status(),
            (400, "Bad Authorization (uri does not match the Request-URI)".into())
        );
    }
}
