//! Who a partner is: its anchors (from the signed topology) and the name its
//! edge certificate must carry, checked per RFC 5922 in both directions.
//!
//! - Names ([`sip_identities`]): the `sip:` URI SANs when there are any, else
//!   the DNS SANs, and the subject CN only when the certificate has no SAN at
//!   all; compared exactly, case-insensitively, never as wildcards.
//! - Dialing a partner ([`PartnerServerVerifier`]): the chain must end in
//!   *that* partner's anchors (webpki, through the same [`TrustPolicy`] as the
//!   mesh), and name its expected edge. Kamailio and OpenSIPS leave this name
//!   check to the routing script.
//! - Accepting a partner ([`FederationClientVerifier`]): a client certificate
//!   is required, and it must chain to some partner's anchors and name that
//!   partner's edge (allowed-server) or domain (allowed-domain). Which partner
//!   it is comes out of [`PartnerSet::identify`], also used after the
//!   handshake to label the connection.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sipmesh_state::{Partner, PartnerMode, Topology};

use crate::config::CrlExpired;
use crate::sip::SipUri;
use crate::trust::verifier::{delegate_signatures, reject};
use crate::trust::{rejection_of_tls, ClientCert, RejectReason, Rejection, TrustPolicy};

/// The identities a certificate asserts for SIP (RFC 5922 §7.1), lower case,
/// and whether they came from `sip:` URI SANs (which name a SIP domain).
pub fn sip_identities(der: &[u8]) -> (Vec<String>, bool) {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return (Vec::new(), false);
    };
    let san = cert.subject_alternative_name().ok().flatten();
    let has_san = san.is_some();
    let names: Vec<&GeneralName> = san.map(|s| s.value.general_names.iter().collect()).unwrap_or_default();
    let uris: Vec<String> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.to_ascii_lowercase().starts_with("sip:") => SipUri::parse(u)
                .ok()
                .filter(|u| u.user.is_none())
                .map(|u| u.host.to_string().to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    if !uris.is_empty() {
        return (uris, true);
    }
    let dns: Vec<String> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.trim_end_matches('.').to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    if !dns.is_empty() || has_san {
        return (dns, false);
    }
    let cns = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(|cn| cn.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    (cns, false)
}

/// Whether the certificate names `partner`'s edge: its expected edge name
/// (allowed-server), or its domain (from a `sip:` URI SAN), or, for an
/// allowed-domain partner, the domain or a host in it (where its SRV
/// targets live, `sip.northwind.test` for `northwind.test`). Wildcards never
/// match.
pub fn names_partner(der: &[u8], partner: &Partner) -> bool {
    let (ids, from_uri) = sip_identities(der);
    let expected_edge = partner.edge.as_ref().map(|e| e.as_str().to_ascii_lowercase());
    let in_domain = |id: &str| {
        id == partner.domain
            || id
                .strip_suffix(partner.domain.as_str())
                .is_some_and(|h| h.ends_with('.'))
    };
    ids.iter().filter(|id| !id.contains('*')).any(|id| {
        Some(id) == expected_edge.as_ref()
            || (from_uri && *id == partner.domain)
            || (partner.mode == PartnerMode::AllowedDomain && in_domain(id))
    })
}

/// The name a partner's edge must carry, for messages and for SNI.
pub fn expected_name(partner: &Partner) -> String {
    partner
        .edge
        .as_ref()
        .map_or_else(|| partner.domain.clone(), |e| e.as_str().to_owned())
}

fn presented(der: &[u8]) -> Option<String> {
    sip_identities(der).0.into_iter().next()
}

/// One partner's anchors as a trust policy.
struct PartnerTrust {
    partner: Partner,
    policy: Option<TrustPolicy>,
}

impl PartnerTrust {
    fn new(partner: &Partner) -> PartnerTrust {
        let mut roots = RootCertStore::empty();
        let mut pem = partner.ca_pem.as_bytes();
        for der in rustls_pemfile::certs(&mut pem).flatten() {
            let _ = roots.add(der);
        }
        // The partner's CRLs, checked like ours (per issuer, expiry refused).
        let mut crl_pem = partner.crl_pem.as_deref().unwrap_or_default().as_bytes();
        let crls = rustls_pemfile::crls(&mut crl_pem).flatten().collect();
        let policy = (!roots.is_empty()).then(|| TrustPolicy {
            roots: Arc::new(roots),
            crls,
            crl_expired: CrlExpired::Refuse,
        });
        PartnerTrust {
            partner: partner.clone(),
            policy,
        }
    }
}

/// The partners of one topology version, ready to judge certificates.
pub struct PartnerSet {
    version: u64,
    partners: Vec<PartnerTrust>,
}

impl PartnerSet {
    fn new(topology: &Topology) -> PartnerSet {
        PartnerSet {
            version: topology.version,
            partners: topology.federation.partners.iter().map(PartnerTrust::new).collect(),
        }
    }

    /// Which partner a client chain belongs to: the first whose anchors
    /// verify it and whose edge it names. Otherwise the most telling
    /// refusal: `name-mismatch` (a partner's CA, another name), a chain
    /// error from a partner's CA (`expired`, `revoked`, ...), else
    /// `unknown-ca`.
    pub fn identify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<String, Rejection> {
        let mut best: Option<Rejection> = None;
        for t in &self.partners {
            let Some(policy) = &t.policy else { continue };
            let Ok(verifier) = policy.client_verifier(ClientCert::Required) else {
                continue;
            };
            match verifier.verify_client_cert(end_entity, intermediates, now) {
                Ok(_) if names_partner(end_entity, &t.partner) => return Ok(t.partner.domain.clone()),
                Ok(_) => {
                    best = Some(Rejection {
                        reason: RejectReason::NameMismatch,
                        presented_name: presented(end_entity),
                        detail: format!(
                            "certificate from {}'s CA does not name its edge {}",
                            t.partner.domain,
                            expected_name(&t.partner)
                        ),
                    })
                }
                Err(e) => {
                    let r = rejection_of_tls(&e);
                    if r.reason != RejectReason::UnknownCa && best.is_none() {
                        best = Some(r);
                    }
                }
            }
        }
        Err(best.unwrap_or_else(|| Rejection {
            reason: RejectReason::UnknownCa,
            presented_name: presented(end_entity),
            detail: "the chain ends in no partner's trust anchors".into(),
        }))
    }
}

/// The partner set of the live topology, rebuilt when its version changes.
#[derive(Clone)]
pub struct LivePartners {
    topology: Arc<ArcSwap<Topology>>,
    cache: Arc<Mutex<Option<Arc<PartnerSet>>>>,
}

impl std::fmt::Debug for LivePartners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LivePartners")
    }
}

impl LivePartners {
    /// Follow `topology`.
    pub fn new(topology: Arc<ArcSwap<Topology>>) -> LivePartners {
        LivePartners {
            topology,
            cache: Arc::default(),
        }
    }

    /// The partners now.
    pub fn current(&self) -> Arc<PartnerSet> {
        let topology = self.topology.load();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match &*cache {
            Some(set) if set.version == topology.version => set.clone(),
            _ => {
                let set = Arc::new(PartnerSet::new(&topology));
                *cache = Some(set.clone());
                set
            }
        }
    }
}

/// The federation listener's check of a partner's client certificate.
#[derive(Debug)]
pub struct FederationClientVerifier {
    /// The live partners.
    pub partners: LivePartners,
}

impl ClientCertVerifier for FederationClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.partners
            .current()
            .identify(end_entity, intermediates, now)
            .map(|_| ClientCertVerified::assertion())
            .map_err(|r| reject(r.reason, r.presented_name, r.detail))
    }

    delegate_signatures!(provider);
}

/// The check of one partner's edge when we dial it.
#[derive(Debug)]
pub struct PartnerServerVerifier {
    partner: Partner,
    /// The names the edge may carry (the first is also the SNI).
    names: Vec<String>,
    webpki: Arc<dyn ServerCertVerifier>,
}

impl PartnerServerVerifier {
    /// For `partner`, accepting an edge certificate naming one of `names`;
    /// `None` when its document carries no usable anchor.
    pub fn new(partner: &Partner, names: Vec<String>) -> Option<PartnerServerVerifier> {
        let trust = PartnerTrust::new(partner);
        let webpki = trust.policy?.server_verifier().ok()?;
        Some(PartnerServerVerifier {
            partner: partner.clone(),
            names,
            webpki,
        })
    }
}

impl ServerCertVerifier for PartnerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let expected = self.names.join(" or ");
        // Chain, validity, revocation and EKU from webpki, with each name we
        // accept in turn; then the RFC 5922 rules webpki does not know.
        let mut first_err = None;
        for name in &self.names {
            let Ok(server_name) = ServerName::try_from(name.as_str()) else {
                continue;
            };
            match self
                .webpki
                .verify_server_cert(end_entity, intermediates, &server_name, ocsp_response, now)
            {
                Ok(_) => {
                    let (ids, _) = sip_identities(end_entity);
                    if ids.iter().any(|id| !id.contains('*') && self.names.contains(id))
                        || names_partner(end_entity, &self.partner)
                    {
                        return Ok(ServerCertVerified::assertion());
                    }
                    first_err.get_or_insert(reject(
                        RejectReason::NameMismatch,
                        presented(end_entity),
                        format!("certificate does not name {expected} (RFC 5922: no wildcards)"),
                    ));
                }
                Err(e) => {
                    let r = rejection_of_tls(&e);
                    let detail = match r.reason {
                        RejectReason::NameMismatch => format!("certificate does not name {expected}"),
                        _ => r.detail,
                    };
                    first_err.get_or_insert(reject(
                        r.reason,
                        r.presented_name.or_else(|| presented(end_entity)),
                        detail,
                    ));
                }
            }
        }
        Err(first_err.unwrap_or_else(|| {
            reject(
                RejectReason::NameMismatch,
                presented(end_entity),
                format!("no usable name in {expected}"),
            )
        }))
    }

    delegate_signatures!(webpki);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: &str, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn partner(mode: PartnerMode, edge: Option<&str>) -> Partner {
        Partner {
            domain: "fabrikam.test".into(),
            mode,
            edge: edge.map(|e| sipmesh_state::Fqdn::new(e).unwrap()),
            address: None,
            ca_pem: String::new(),
            crl_pem: None,
            max_rate: None,
        }
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().unwrap())
    }

    fn uri(u: &str) -> SanType {
        SanType::URI(u.try_into().unwrap())
    }

    #[test]
    fn rfc_5922_identities_uri_sans_first_then_dns_then_cn_never_wildcards() {
        let server = partner(PartnerMode::AllowedServer, Some("sip.fabrikam.test"));
        // DNS SAN naming the edge.
        assert!(names_partner(&cert("x", vec![dns("sip.fabrikam.test")]), &server));
        // URI SANs win over DNS SANs: a sip: URI naming the domain is the identity.
        let both = cert("x", vec![uri("sip:fabrikam.test"), dns("other.test")]);
        assert_eq!(sip_identities(&both), (vec!["fabrikam.test".to_owned()], true));
        assert!(names_partner(&both, &server));
        let uri_other = cert("x", vec![uri("sip:other.test"), dns("sip.fabrikam.test")]);
        assert!(
            !names_partner(&uri_other, &server),
            "DNS SANs are ignored when sip: URIs exist"
        );
        // A wildcard never matches.
        assert!(!names_partner(&cert("x", vec![dns("*.fabrikam.test")]), &server));
        // The CN counts only without any SAN.
        assert!(names_partner(&cert("sip.fabrikam.test", vec![]), &server));
        assert!(!names_partner(
            &cert("sip.fabrikam.test", vec![dns("other.test")]),
            &server
        ));
        // Another edge of the same domain is not the pinned one ...
        assert!(!names_partner(&cert("x", vec![dns("edge2.fabrikam.test")]), &server));
        // ... but is a host of an allowed-domain partner; a look-alike is not.
        let domain = partner(PartnerMode::AllowedDomain, None);
        assert!(names_partner(&cert("x", vec![dns("edge2.fabrikam.test")]), &domain));
        assert!(names_partner(&cert("x", vec![dns("fabrikam.test")]), &domain));
        assert!(!names_partner(&cert("x", vec![dns("evilfabrikam.test")]), &domain));
    }
}
