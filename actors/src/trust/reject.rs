//! Why a mesh connection was refused: one enum, one mapping from rustls
//! errors, one bounded log that the debug socket shows.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use rustls::CertificateError;
use serde::Serialize;
use time::OffsetDateTime;

/// How many rejections the log keeps (DoS bound: a scanner must not grow memory).
pub const MAX_REJECTIONS_KEPT: usize = 512;

/// Longest detail text kept per rejection (DoS bound on peer-influenced text).
pub const MAX_REJECTION_DETAIL: usize = 300;

/// The reason a connection was refused; its text form is an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RejectReason {
    /// The peer presented no client certificate.
    NoClientCert,
    /// The chain does not lead to a configured trust anchor.
    UnknownCa,
    /// Outside its validity period (expired or not yet valid).
    Expired,
    /// Listed in a loaded CRL.
    Revoked,
    /// The CRL of the certificate's issuer is past its nextUpdate (and
    /// `tls.crl_expired = "refuse"`).
    CrlExpired,
    /// A CRL of the issuer is loaded but none covers the certificate.
    RevocationUnknown,
    /// Valid certificate, but no name in it is a topology member.
    NotInTopology,
    /// The certificate (or hello) names someone other than expected.
    NameMismatch,
    /// Missing serverAuth or clientAuth extended key usage.
    BadEku,
    /// Any other certificate defect (bad encoding, bad signature, critical extension).
    BadCert,
    /// TLS failed for a reason unrelated to certificates (or timed out).
    Handshake,
    /// TLS was fine but the mesh protocol was violated (bad frame, bad hello).
    Protocol,
    /// The connection limit was reached.
    ConnectionLimit,
    /// Federation: a valid certificate, but of no partner (or a partner's
    /// edge connecting for another domain).
    NotAPartner,
}

impl RejectReason {
    /// The stable text form.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NoClientCert => "no-client-cert",
            RejectReason::UnknownCa => "unknown-ca",
            RejectReason::Expired => "expired",
            RejectReason::Revoked => "revoked",
            RejectReason::CrlExpired => "crl-expired",
            RejectReason::RevocationUnknown => "revocation-unknown",
            RejectReason::NotInTopology => "not-in-topology",
            RejectReason::NameMismatch => "name-mismatch",
            RejectReason::BadEku => "bad-eku",
            RejectReason::BadCert => "bad-cert",
            RejectReason::Handshake => "handshake",
            RejectReason::Protocol => "protocol",
            RejectReason::ConnectionLimit => "connection-limit",
            RejectReason::NotAPartner => "not-a-partner",
        }
    }

    /// Classify a rustls error; everything not about certificates is `Handshake`.
    pub fn from_rustls(err: &rustls::Error) -> RejectReason {
        use CertificateError as C;
        match err {
            rustls::Error::NoCertificatesPresented => RejectReason::NoClientCert,
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer | C::BadSignature => RejectReason::UnknownCa,
                C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
                    RejectReason::Expired
                }
                C::Revoked => RejectReason::Revoked,
                C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => RejectReason::CrlExpired,
                C::UnknownRevocationStatus => RejectReason::RevocationUnknown,
                C::NotValidForName | C::NotValidForNameContext { .. } => RejectReason::NameMismatch,
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => RejectReason::BadEku,
                _ => RejectReason::BadCert,
            },
            _ => RejectReason::Handshake,
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed refusal, carried inside rustls errors and recorded in the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    /// Why.
    pub reason: RejectReason,
    /// The (first DNS) name the peer's certificate presented, if any.
    pub presented_name: Option<String>,
    /// Human-readable detail.
    pub detail: String,
}

/// Which way the refused connection went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A peer dialled us.
    Inbound,
    /// We dialled a peer.
    Outbound,
    /// A live link re-checked after a reload.
    Recheck,
}

impl Direction {
    /// The text form shown on the debug socket.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Recheck => "recheck",
        }
    }
}

/// One recorded refusal as shown by `ctl rejections`.
#[derive(Clone, Debug, Serialize)]
pub struct RejectionRecord {
    /// When (RFC 3339).
    pub at: String,
    /// The remote socket address.
    pub remote_addr: String,
    /// Stable reason text.
    pub reason: RejectReason,
    /// Name in the presented certificate, if any.
    pub presented_name: Option<String>,
    /// `inbound` (accept), `outbound` (dial) or `recheck` (a live link re-checked after a reload).
    pub direction: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

/// Bounded log of refusals plus per-reason totals since start.
#[derive(Default)]
pub struct RejectionLog {
    inner: Mutex<LogInner>,
    events: std::sync::Arc<crate::events::EventBus>,
}

#[derive(Default)]
struct LogInner {
    recent: VecDeque<RejectionRecord>,
    totals: BTreeMap<RejectReason, u64>,
    logged_at: BTreeMap<RejectReason, Instant>,
}

impl RejectionLog {
    /// A log that also announces each refusal on `events`.
    pub fn with_events(events: std::sync::Arc<crate::events::EventBus>) -> RejectionLog {
        RejectionLog {
            inner: Mutex::default(),
            events,
        }
    }

    /// Record one refusal; log it unless one of the same reason was logged
    /// less than [`crate::net::accept::REFUSAL_LOG_INTERVAL`] ago (a
    /// stranger must not flood the log; the totals count every one).
    pub fn record(&self, remote: SocketAddr, direction: Direction, rejection: &Rejection) {
        let direction = direction.as_str();
        self.events.publish("rejection", || {
            serde_json::json!({
                "remote_addr": remote.to_string(),
                "direction": direction,
                "reason": rejection.reason,
                "presented_name": rejection.presented_name,
                "detail": rejection.detail,
            })
        });
        let due = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            match inner.logged_at.get(&rejection.reason) {
                Some(t) if now.duration_since(*t) < crate::net::accept::REFUSAL_LOG_INTERVAL => false,
                _ => {
                    inner.logged_at.insert(rejection.reason, now);
                    true
                }
            }
        };
        if due {
            tracing::warn!(
                remote = %remote,
                reason = %rejection.reason,
                presented_name = rejection.presented_name.as_deref().unwrap_or("-"),
                direction,
                detail = %rejection.detail,
                "mtls connection rejected (logged at most once a second per reason)"
            );
        }
        let mut detail = rejection.detail.clone();
        if detail.len() > MAX_REJECTION_DETAIL {
            let mut cut = MAX_REJECTION_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        let record = RejectionRecord {
            at: crate::rfc3339(OffsetDateTime::now_utc()),
            remote_addr: remote.to_string(),
            reason: rejection.reason,
            presented_name: rejection.presented_name.clone(),
            direction,
            detail,
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *inner.totals.entry(rejection.reason).or_default() += 1;
        if inner.recent.len() == MAX_REJECTIONS_KEPT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(record);
    }

    /// The kept records, oldest first.
    pub fn recent(&self) -> Vec<RejectionRecord> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recent
            .iter()
            .cloned()
            .collect()
    }

    /// Totals per reason since start.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.totals.iter().map(|(k, v)| (k.as_str().to_owned(), *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_errors_map_to_reasons() {
        use rustls::Error as E;
        let cases = [
            (E::NoCertificatesPresented, "no-client-cert"),
            (E::InvalidCertificate(CertificateError::UnknownIssuer), "unknown-ca"),
            (E::InvalidCertificate(CertificateError::Expired), "expired"),
            (E::InvalidCertificate(CertificateError::NotValidYet), "expired"),
            (E::InvalidCertificate(CertificateError::Revoked), "revoked"),
            (
                E::InvalidCertificate(CertificateError::ExpiredRevocationList),
                "crl-expired",
            ),
            (
                E::InvalidCertificate(CertificateError::UnknownRevocationStatus),
                "revocation-unknown",
            ),
            (
                E::InvalidCertificate(CertificateError::NotValidForName),
                "name-mismatch",
            ),
            (E::InvalidCertificate(CertificateError::InvalidPurpose), "bad-eku"),
            (E::InvalidCertificate(CertificateError::BadEncoding), "bad-cert"),
            (E::HandshakeNotComplete, "handshake"),
        ];
        for (err, want) in cases {
            assert_eq!(RejectReason::from_rustls(&err).as_str(), want, "{err:?}");
        }
    }

    #[test]
    fn log_is_bounded_and_counts_everything() {
        let log = RejectionLog::default();
        let r = Rejection {
            reason: RejectReason::Revoked,
            presented_name: Some("fe2.contoso.test".into()),
            detail: "x".repeat(MAX_REJECTION_DETAIL * 2),
        };
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for _ in 0..MAX_REJECTIONS_KEPT + 10 {
            log.record(addr, Direction::Inbound, &r);
        }
        let recent = log.recent();
        assert_eq!(recent.len(), MAX_REJECTIONS_KEPT);
        assert_eq!(recent[0].detail.len(), MAX_REJECTION_DETAIL);
        assert_eq!(log.totals().get("revoked"), Some(&(MAX_REJECTIONS_KEPT as u64 + 10)));
        let json = serde_json::to_value(&recent[0]).unwrap();
        assert_eq!(json["reason"], "revoked");
        assert_eq!(json["presented_name"], "fe2.contoso.test");
        assert_eq!(json["direction"], "inbound");
    }
}
