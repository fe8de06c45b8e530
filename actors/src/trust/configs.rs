//! The rustls configs built from one [`TlsMaterial`] ([`TlsConfigs`]), kept
//! in an `ArcSwap` by the node so a reload swaps them atomically, and the
//! client port's certificate choice by SNI ([`SniResolver`]).

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sipmesh_state::Topology;

use super::material::{certified_key, provider, CertInfo, CrlFile, TlsError, TlsMaterial};
use super::verifier::{ClientCert, MeshVerifier};
use crate::config::CrlExpired;

/// Picks the client-port certificate by the SNI name the client asked for;
/// the node's own certificate otherwise (and for clients that send no SNI,
/// e.g. when they connect to an IP address).
#[derive(Debug)]
pub struct SniResolver {
    default: Arc<rustls::sign::CertifiedKey>,
    by_name: std::collections::HashMap<String, Arc<rustls::sign::CertifiedKey>>,
}

impl SniResolver {
    /// Index `extra` by every DNS name in each certificate.
    pub fn new(default: Arc<rustls::sign::CertifiedKey>, extra: &[Arc<rustls::sign::CertifiedKey>]) -> SniResolver {
        let mut by_name = std::collections::HashMap::new();
        for ck in std::iter::once(&default).chain(extra) {
            if let Some(leaf) = ck.cert.first() {
                if let Ok(info) = CertInfo::parse(leaf) {
                    for n in info.dns_names {
                        by_name.entry(n).or_insert_with(|| ck.clone());
                    }
                }
            }
        }
        SniResolver { default, by_name }
    }

    /// The certificate served for `name`.
    pub fn pick(&self, name: Option<&str>) -> Arc<rustls::sign::CertifiedKey> {
        name.and_then(|n| self.by_name.get(&n.trim_end_matches('.').to_ascii_lowercase()))
            .unwrap_or(&self.default)
            .clone()
    }
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Server and client configs built from one set of material.
pub struct TlsConfigs {
    /// For the mesh listener (client certificate required).
    pub server: Arc<rustls::ServerConfig>,
    /// For dialing peers (presents our certificate).
    pub client: Arc<rustls::ClientConfig>,
    /// Facts about our own certificate.
    pub own: CertInfo,
    /// The verifier both configs use, for re-checking live links.
    pub verifier: Arc<MeshVerifier>,
    /// Number of CRLs loaded.
    pub crl_count: usize,
    /// Each loaded CRL's file, issuer and nextUpdate (for `ctl check`).
    pub crl_files: Vec<CrlFile>,
    /// What an expired CRL means for peers (`tls.crl_expired`).
    pub crl_expired: CrlExpired,
    /// For the SIP client port: server authentication, optional client
    /// certificate (verified against the same CAs and CRLs when presented).
    pub client_port: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfigs")
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

impl TlsConfigs {
    /// Build both configs around one [`MeshVerifier`].
    pub fn build(material: &TlsMaterial, topology: Arc<ArcSwap<Topology>>) -> Result<TlsConfigs, TlsError> {
        let verifier = Arc::new(MeshVerifier::new(material, topology)?);
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(material.chain.clone(), material.key.clone_key())?;
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(material.chain.clone(), material.key.clone_key())?;
        // No session resumption on the mesh: a resumed session skips
        // certificate verification, which would let a revoked or removed peer
        // back in on an old ticket.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        server.ignore_client_order = true;
        client.resumption = rustls::client::Resumption::disabled();
        let optional = material.policy().client_verifier(ClientCert::Optional)?;
        let mut client_port = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(optional)
            .with_cert_resolver(Arc::new(SniResolver::new(
                certified_key(material.chain.clone(), &material.key)?,
                &material.sni,
            )));
        // No session resumption on the client port either: a client
        // certificate carries a SIP identity, and a resumed session (TLS 1.2
        // session id or ticket, TLS 1.3 ticket) would hand that identity on
        // without verifying the certificate again (revoked since, CRL now
        // expired, CA removed on reload). Stateful (session cache) and
        // stateless (tickets: the default ticketer never issues any) both off.
        // Also, some SIP clients (sipsak) read one record after sending a
        // request and would take a TLS 1.3 ticket for the answer.
        client_port.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        client_port.send_tls13_tickets = 0;
        client_port.ignore_client_order = true;
        if let Some(k) = &material.keylog {
            server.key_log = k.clone();
            client.key_log = k.clone();
            client_port.key_log = k.clone();
        }
        debug_assert!(!client_port.ticketer.enabled());
        Ok(TlsConfigs {
            client_port: Arc::new(client_port),
            server: Arc::new(server),
            client: Arc::new(client),
            own: material.own.clone(),
            verifier,
            crl_count: material.crls.len(),
            crl_files: material.crl_files.clone(),
            crl_expired: material.crl_expired,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivateKeyDer;

    fn certified(names: &[&str]) -> Arc<rustls::sign::CertifiedKey> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        certified_key(vec![cert.der().clone()], &der).unwrap()
    }

    fn first_name(ck: &rustls::sign::CertifiedKey) -> String {
        CertInfo::parse(&ck.cert[0]).unwrap().dns_names[0].clone()
    }

    #[test]
    fn sni_picks_the_pool_certificate_and_falls_back_to_the_node() {
        let node = certified(&["fe1.contoso.test"]);
        let pool = certified(&["pool1.contoso.test", "sip.contoso.test"]);
        let r = SniResolver::new(node, &[pool]);
        assert_eq!(first_name(&r.pick(Some("pool1.contoso.test"))), "pool1.contoso.test");
        assert_eq!(first_name(&r.pick(Some("SIP.contoso.test."))), "pool1.contoso.test");
        assert_eq!(first_name(&r.pick(Some("fe1.contoso.test"))), "fe1.contoso.test");
        assert_eq!(first_name(&r.pick(Some("other.test"))), "fe1.contoso.test");
        assert_eq!(first_name(&r.pick(None)), "fe1.contoso.test");
    }
}
