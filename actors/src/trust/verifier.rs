//! The trust checks: a [`TrustPolicy`] (anchors and CRLs, one place that
//! builds the webpki verifiers) and the [`MeshVerifier`], used both as the
//! server's client-cert verifier (accept) and the client's server-cert
//! verifier (dial). It runs webpki (chain to a trust anchor, validity, CRLs),
//! then requires both serverAuth and clientAuth EKUs, then requires the
//! certificate to name a member of the current topology. A refusal carries a
//! typed [`Rejection`] inside the rustls error so the caller can record the
//! exact reason.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, SignatureScheme};
use sipmesh_state::Topology;

use super::material::{provider, CertInfo, TlsError, TlsMaterial};
use super::reject::{RejectReason, Rejection};
use super::verified::VerifiedChains;
use crate::config::CrlExpired;

/// The handshake signature checks of a verifier here: those of its webpki
/// verifier `$inner` (only the certificate checks differ).
macro_rules! delegate_signatures {
    // A verifier without a webpki one inside (the federation listener's,
    // which picks the partner per handshake): the provider's algorithms.
    (provider) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = $crate::trust::material::provider().signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = $crate::trust::material::provider().signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            $crate::trust::material::provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
    ($inner:ident) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.$inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.$inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.$inner.supported_verify_schemes()
        }
    };
}
pub(crate) use delegate_signatures;

/// Whether a server verifier demands a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCert {
    /// The mesh (and later federation) ports: no certificate, no connection.
    Required,
    /// The SIP client port: a certificate is optional, verified when presented.
    Optional,
}

/// Who is trusted: anchors and revocation lists, and what an expired CRL
/// means. Every webpki verifier is built here, so the revocation rules are
/// the same on every door (the Edge builds one per partner CA).
///
/// Revocation rules:
/// - Only the end entity is checked against the CRLs (the anchors are
///   configured by hand; intermediates are trusted by their anchor).
/// - A CRL past its nextUpdate is an error (`crl-expired`) unless
///   `crl_expired` is [`CrlExpired::Warn`].
/// - Unknown revocation status (no loaded CRL is authoritative for the
///   certificate) is accepted only when no loaded CRL has the certificate's
///   issuer: that CA publishes no CRL here, so there is nothing to check
///   against, and refusing would lock out every peer of a CA that simply has
///   no CRL. When a CRL of that issuer is loaded but does not cover the
///   certificate (a partitioned CRL, a distribution point we lack), the
///   status is unknown where it should be known, and the peer is refused
///   (`revocation-unknown`).
#[derive(Clone, Debug)]
pub struct TrustPolicy {
    /// Trust anchors.
    pub roots: Arc<RootCertStore>,
    /// Revocation lists.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Refuse or accept peers whose CRL has expired.
    pub crl_expired: CrlExpired,
}

impl TrustPolicy {
    /// What the revocation rules and the chain cache need from the CRLs, in
    /// one parse: the raw issuer names (unparsable CRLs were refused at
    /// load; here they simply name nobody) and the earliest nextUpdate,
    /// which ends every remembered chain when expired CRLs are refused.
    fn revocation(&self) -> (Revocation, VerifiedChains) {
        let mut crl_issuers = Vec::new();
        let mut earliest = u64::MAX;
        for (_, crl) in self.crls.iter().filter_map(|c| x509_parser::parse_x509_crl(c).ok()) {
            crl_issuers.push(crl.tbs_cert_list.issuer.as_raw().to_vec());
            if let Some(t) = crl.next_update() {
                earliest = earliest.min(t.timestamp().max(0) as u64);
            }
        }
        let cap = if self.crl_expired == CrlExpired::Refuse {
            earliest
        } else {
            u64::MAX
        };
        let revocation = Revocation {
            crl_issuers,
            crl_expired: self.crl_expired,
        };
        (revocation, VerifiedChains::new(cap))
    }

    /// A verifier of client certificates.
    pub fn client_verifier(&self, mode: ClientCert) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let build = |allow_unknown: bool| {
            let mut builder = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
                .with_crls(self.crls.clone())
                .only_check_end_entity_revocation();
            if allow_unknown {
                builder = builder.allow_unknown_revocation_status();
            }
            if self.crl_expired == CrlExpired::Refuse {
                builder = builder.enforce_revocation_expiration();
            }
            if mode == ClientCert::Optional {
                builder = builder.allow_unauthenticated();
            }
            builder.build().map_err(|e| TlsError::Verifier(e.to_string()))
        };
        let (revocation, verified) = self.revocation();
        Ok(Arc::new(PolicyClientVerifier {
            strict: build(false)?,
            lenient: build(true)?,
            revocation,
            verified,
        }))
    }

    /// A verifier of server certificates (the name is checked by webpki).
    pub fn server_verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
        let build = |allow_unknown: bool| {
            let mut builder = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
                .with_crls(self.crls.clone())
                .only_check_end_entity_revocation();
            if allow_unknown {
                builder = builder.allow_unknown_revocation_status();
            }
            if self.crl_expired == CrlExpired::Refuse {
                builder = builder.enforce_revocation_expiration();
            }
            builder.build().map_err(|e| TlsError::Verifier(e.to_string()))
        };
        let (revocation, verified) = self.revocation();
        Ok(Arc::new(PolicyServerVerifier {
            strict: build(false)?,
            lenient: build(true)?,
            revocation,
            verified,
        }))
    }
}

/// The revocation decisions webpki cannot make per CA.
#[derive(Debug)]
struct Revocation {
    crl_issuers: Vec<Vec<u8>>,
    crl_expired: CrlExpired,
}

impl Revocation {
    /// Judge the strict verifier's verdict on `leaf`; `lenient` re-verifies
    /// accepting unknown revocation status.
    fn judge<T>(
        &self,
        leaf: &CertificateDer<'_>,
        strict: Result<T, rustls::Error>,
        lenient: impl FnOnce() -> Result<T, rustls::Error>,
    ) -> Result<T, rustls::Error> {
        use CertificateError as C;
        let Err(rustls::Error::InvalidCertificate(err)) = &strict else {
            return strict;
        };
        match err {
            C::UnknownRevocationStatus => {
                let parsed = x509_parser::parse_x509_certificate(leaf).ok();
                let issuer = parsed.as_ref().map(|(_, c)| c.tbs_certificate.issuer.as_raw());
                let has_crl = issuer.is_some_and(|i| self.crl_issuers.iter().any(|c| c.as_slice() == i));
                if has_crl {
                    Err(reject(
                        RejectReason::RevocationUnknown,
                        presented(leaf),
                        format!(
                            "a CRL of the issuer {} is loaded but none covers this certificate",
                            parsed.map(|(_, c)| c.issuer().to_string()).unwrap_or_default()
                        ),
                    ))
                } else {
                    // This CA has no CRL configured: nothing to check against.
                    lenient()
                }
            }
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
                let when = match err {
                    C::ExpiredRevocationListContext { next_update, .. } => {
                        let t = time::OffsetDateTime::UNIX_EPOCH
                            + time::Duration::seconds(next_update.as_secs().min(i64::MAX as u64) as i64);
                        format!(" at nextUpdate {}", crate::rfc3339(t))
                    }
                    _ => String::new(),
                };
                Err(reject(
                    RejectReason::CrlExpired,
                    presented(leaf),
                    format!(
                        "the CRL of this certificate's issuer expired{when}; refused because tls.crl_expired = \"{}\"",
                        self.crl_expired.as_str()
                    ),
                ))
            }
            _ => strict,
        }
    }
}

fn presented(leaf: &CertificateDer<'_>) -> Option<String> {
    CertInfo::parse(leaf).ok().and_then(|i| i.presented_name())
}

/// webpki's client verifier under the [`TrustPolicy`] revocation rules.
#[derive(Debug)]
struct PolicyClientVerifier {
    strict: Arc<dyn ClientCertVerifier>,
    lenient: Arc<dyn ClientCertVerifier>,
    revocation: Revocation,
    verified: VerifiedChains,
}

impl ClientCertVerifier for PolicyClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.strict.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.strict.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.strict.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = VerifiedChains::key(end_entity, intermediates, "");
        if self.verified.holds(&key, now) {
            return Ok(ClientCertVerified::assertion());
        }
        let verdict = self.revocation.judge(
            end_entity,
            self.strict.verify_client_cert(end_entity, intermediates, now),
            || self.lenient.verify_client_cert(end_entity, intermediates, now),
        );
        if verdict.is_ok() {
            self.verified.accepted(key, end_entity, intermediates, now);
        }
        verdict
    }

    delegate_signatures!(strict);
}

/// webpki's server verifier under the [`TrustPolicy`] revocation rules.
#[derive(Debug)]
struct PolicyServerVerifier {
    strict: Arc<WebPkiServerVerifier>,
    lenient: Arc<WebPkiServerVerifier>,
    revocation: Revocation,
    verified: VerifiedChains,
}

impl ServerCertVerifier for PolicyServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = VerifiedChains::key(end_entity, intermediates, &server_name.to_str());
        if self.verified.holds(&key, now) {
            return Ok(ServerCertVerified::assertion());
        }
        let verdict = self.revocation.judge(
            end_entity,
            self.strict
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            || {
                self.lenient
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            },
        );
        if verdict.is_ok() {
            self.verified.accepted(key, end_entity, intermediates, now);
        }
        verdict
    }

    delegate_signatures!(strict);
}

/// The mesh trust check, used on both accept and dial.
#[derive(Debug)]
pub struct MeshVerifier {
    webpki_client: Arc<dyn ClientCertVerifier>,
    webpki_server: Arc<dyn ServerCertVerifier>,
    topology: Arc<ArcSwap<Topology>>,
}

impl MeshVerifier {
    /// Build from loaded material and the live topology.
    pub fn new(material: &TlsMaterial, topology: Arc<ArcSwap<Topology>>) -> Result<MeshVerifier, TlsError> {
        let policy = material.policy();
        let webpki_client = policy.client_verifier(ClientCert::Required)?;
        let webpki_server = policy.server_verifier()?;
        Ok(MeshVerifier {
            webpki_client,
            webpki_server,
            topology,
        })
    }

    /// Checks after webpki: both EKUs, and a name in the topology.
    fn mesh_checks(&self, end_entity: &CertificateDer<'_>) -> Result<CertInfo, rustls::Error> {
        let info = CertInfo::parse(end_entity).map_err(|e| reject(RejectReason::BadCert, None, e))?;
        if !(info.server_auth && info.client_auth) {
            return Err(reject(
                RejectReason::BadEku,
                info.presented_name(),
                "certificate lacks serverAuth and clientAuth extended key usages".into(),
            ));
        }
        let topology = self.topology.load();
        if !info.dns_names.iter().any(|n| topology.contains(n)) {
            return Err(reject(
                RejectReason::NotInTopology,
                info.presented_name(),
                format!("no name of the certificate is in topology v{}", topology.version),
            ));
        }
        Ok(info)
    }
}

/// A rustls certificate error carrying our typed [`Rejection`].
pub(crate) fn reject(reason: RejectReason, presented_name: Option<String>, detail: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Rejection {
        reason,
        presented_name,
        detail,
    }))))
}

/// Re-tag a webpki error with our reason and the presented name (keeping a
/// [`Rejection`] the policy verifier already made).
fn classify_webpki(err: rustls::Error, end_entity: &CertificateDer<'_>) -> rustls::Error {
    let r = rejection_of_tls(&err);
    reject(r.reason, r.presented_name.or_else(|| presented(end_entity)), r.detail)
}

impl ClientCertVerifier for MeshVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki_client.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.webpki_client
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| classify_webpki(e, end_entity))?;
        self.mesh_checks(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    delegate_signatures!(webpki_client);
}

impl ServerCertVerifier for MeshVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki_server
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| classify_webpki(e, end_entity))?;
        self.mesh_checks(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    delegate_signatures!(webpki_server);
}

impl MeshVerifier {
    /// Re-run every check on a live link's peer chain (after a reload).
    pub fn recheck(&self, chain: &[CertificateDer<'static>]) -> Result<(), Rejection> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(Rejection {
                reason: RejectReason::NoClientCert,
                presented_name: None,
                detail: "no peer certificate recorded".into(),
            });
        };
        ClientCertVerifier::verify_client_cert(self, leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| rejection_of_tls(&e))
    }
}

/// Our [`Rejection`] inside a rustls error, or a classification of it.
pub fn rejection_of_tls(tls: &rustls::Error) -> Rejection {
    if let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = tls {
        if let Some(r) = other.0.downcast_ref::<Rejection>() {
            return r.clone();
        }
    }
    Rejection {
        reason: RejectReason::from_rustls(tls),
        presented_name: None,
        detail: tls.to_string(),
    }
}

/// Pull our [`Rejection`] (or a classification) out of a handshake error.
pub fn rejection_of(err: &std::io::Error) -> Option<Rejection> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    if let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = tls {
        if let Some(r) = other.0.downcast_ref::<Rejection>() {
            return Some(r.clone());
        }
    }
    match RejectReason::from_rustls(tls) {
        RejectReason::Handshake => None,
        reason => Some(Rejection {
            reason,
            presented_name: None,
            detail: tls.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
        Issuer, KeyIdMethod, KeyPair, SerialNumber,
    };
    use time::{Duration, OffsetDateTime};

    struct Ca {
        cert: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(ca: &Ca, name: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn crl(ca: &Ca, next_update: OffsetDateTime) -> CertificateRevocationListDer<'static> {
        let params = CertificateRevocationListParams {
            this_update: next_update - Duration::days(1),
            next_update,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&ca.issuer).unwrap().der().clone()
    }

    fn policy(cas: &[&Ca], crls: Vec<CertificateRevocationListDer<'static>>, crl_expired: CrlExpired) -> TrustPolicy {
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca.cert.clone()).unwrap();
        }
        TrustPolicy {
            roots: Arc::new(roots),
            crls,
            crl_expired,
        }
    }

    /// The reason a client certificate is refused with, or None when accepted.
    fn verdict(policy: &TrustPolicy, cert: &CertificateDer<'_>) -> Option<&'static str> {
        let client = policy.client_verifier(ClientCert::Required).unwrap();
        let server = policy.server_verifier().unwrap();
        let name = ServerName::try_from("fe2.contoso.test").unwrap();
        let as_client = client.verify_client_cert(cert, &[], UnixTime::now()).err();
        let as_server = server.verify_server_cert(cert, &[], &name, &[], UnixTime::now()).err();
        let reason = |e: Option<rustls::Error>| e.map(|e| rejection_of_tls(&e).reason.as_str());
        let (c, s) = (reason(as_client), reason(as_server));
        assert_eq!(c, s, "client and server verifiers disagree");
        c
    }

    #[test]
    fn expired_crl_is_refused_or_warned_per_policy() {
        let a = ca("CA A");
        let peer = leaf(&a, "fe2.contoso.test");
        let now = OffsetDateTime::now_utc();
        let stale = vec![crl(&a, now - Duration::hours(1))];
        let fresh = vec![crl(&a, now + Duration::days(7))];
        assert_eq!(
            verdict(&policy(&[&a], stale.clone(), CrlExpired::Refuse), &peer),
            Some("crl-expired")
        );
        assert_eq!(verdict(&policy(&[&a], stale, CrlExpired::Warn), &peer), None);
        assert_eq!(verdict(&policy(&[&a], fresh, CrlExpired::Refuse), &peer), None);
        // The detail says what happened and why it was refused.
        let p = policy(&[&a], vec![crl(&a, now - Duration::hours(1))], CrlExpired::Refuse);
        let err = p
            .client_verifier(ClientCert::Required)
            .unwrap()
            .verify_client_cert(&peer, &[], UnixTime::now())
            .unwrap_err();
        let r = rejection_of_tls(&err);
        assert_eq!(r.presented_name.as_deref(), Some("fe2.contoso.test"));
        assert!(r.detail.contains("expired at nextUpdate"), "{}", r.detail);
        assert!(r.detail.contains("tls.crl_expired = \"refuse\""), "{}", r.detail);
    }

    #[test]
    fn unknown_status_is_allowed_only_for_a_ca_without_a_crl() {
        let (a, b) = (ca("CA A"), ca("CA B"));
        let now = OffsetDateTime::now_utc();
        // Only A publishes a CRL: B's peers have unknown status, accepted
        // (nothing to check against); A's peers are checked.
        let p = policy(&[&a, &b], vec![crl(&a, now + Duration::days(7))], CrlExpired::Refuse);
        assert_eq!(verdict(&p, &leaf(&a, "fe2.contoso.test")), None);
        assert_eq!(verdict(&p, &leaf(&b, "fe2.contoso.test")), None);
        // B's CRL expired: B's peers refused, A's unaffected.
        let p = policy(
            &[&a, &b],
            vec![crl(&a, now + Duration::days(7)), crl(&b, now - Duration::hours(1))],
            CrlExpired::Refuse,
        );
        assert_eq!(verdict(&p, &leaf(&a, "fe2.contoso.test")), None);
        assert_eq!(verdict(&p, &leaf(&b, "fe2.contoso.test")), Some("crl-expired"));
    }

    /// A remembered verdict never outlives what it was based on: an accepted
    /// chain is accepted again from the cache, but not past its CRL's
    /// nextUpdate (when expired CRLs are refused) and not for another chain.
    #[test]
    fn remembered_chains_end_at_the_crl_next_update() {
        let (a, b) = (ca("CA A"), ca("CA B"));
        let now = OffsetDateTime::now_utc();
        let p = policy(&[&a], vec![crl(&a, now + Duration::hours(1))], CrlExpired::Refuse);
        let client = p.client_verifier(ClientCert::Required).unwrap();
        let peer = leaf(&a, "fe2.contoso.test");
        let at =
            |t: OffsetDateTime| UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.unix_timestamp() as u64));
        assert!(client.verify_client_cert(&peer, &[], at(now)).is_ok());
        assert!(client
            .verify_client_cert(&peer, &[], at(now + Duration::minutes(1)))
            .is_ok());
        // Past the CRL's nextUpdate: verified again, and refused.
        let late = client
            .verify_client_cert(&peer, &[], at(now + Duration::hours(2)))
            .unwrap_err();
        assert_eq!(rejection_of_tls(&late).reason.as_str(), "crl-expired");
        // A stranger's chain is refused every time (refusals are not remembered).
        let stranger = leaf(&b, "fe2.contoso.test");
        for _ in 0..2 {
            let e = client.verify_client_cert(&stranger, &[], at(now)).unwrap_err();
            assert_eq!(rejection_of_tls(&e).reason.as_str(), "unknown-ca");
        }
    }

    #[test]
    fn verified_chains_are_bounded_and_keyed_by_every_byte() {
        let a = ca("CA A");
        let cache = VerifiedChains::new(u64::MAX);
        let now = UnixTime::now();
        let peer = leaf(&a, "fe2.contoso.test");
        let key = VerifiedChains::key(&peer, &[], "");
        cache.accepted(key, &peer, &[], now);
        assert!(cache.holds(&key, now));
        assert!(!cache.holds(&VerifiedChains::key(&peer, &[], "fe2.contoso.test"), now));
        assert!(!cache.holds(&VerifiedChains::key(&peer, std::slice::from_ref(&a.cert), ""), now));
        let after_ttl = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            now.as_secs() + super::super::verified::VERIFIED_CHAIN_TTL.as_secs(),
        ));
        assert!(!cache.holds(&key, after_ttl));
        let before = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_secs() - 1));
        assert!(!cache.holds(&key, before), "a clock stepped back is verified again");
        for i in 0..super::super::verified::MAX_VERIFIED_CHAINS {
            cache.accepted(VerifiedChains::key(&peer, &[], &i.to_string()), &peer, &[], now);
        }
        assert!(cache.len() <= super::super::verified::MAX_VERIFIED_CHAINS);
    }
}
