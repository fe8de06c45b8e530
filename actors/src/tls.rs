//! TLS material, the mesh trust verifier and hot-swappable rustls configs.
//!
//! - [`TlsMaterial`]: the PEM files a node reads (its certificate and key, the
//!   trust anchors, CRLs), loaded and checked together.
//! - [`MeshVerifier`]: one verifier used both as the server's client-cert
//!   verifier (accept) and the client's server-cert verifier (dial). It runs
//!   webpki (chain to a trust anchor, validity, CRLs), then requires both
//!   serverAuth and clientAuth EKUs, then requires the certificate to name a
//!   member of the current topology. A refusal carries a typed [`Rejection`]
//!   inside the rustls error so the caller can record the exact reason.
//! - [`TlsConfigs`]: the server and client configs built from one material,
//!   kept in an `ArcSwap` by the node so a reload swaps them atomically.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, SignatureScheme};
use sipmesh_state::Topology;
use time::OffsetDateTime;

use crate::config::TlsPaths;
use crate::reject::{RejectReason, Rejection};

/// Largest PEM file read (DoS bound against a misconfigured path to a huge file).
pub const MAX_PEM_FILE: u64 = 4 * 1024 * 1024;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// File unreadable or too large.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The file holds no usable item of the expected kind.
    #[error("{path}: no {what} found")]
    Missing {
        /// The file.
        path: String,
        /// What was expected ("certificate", "private key", …).
        what: &'static str,
    },
    /// Our own certificate does not fit the node.
    #[error("node certificate {path}: {message}")]
    OwnCert {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the material.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// Verifier construction failed (bad CA or CRL).
    #[error("tls verifier: {0}")]
    Verifier(String),
}

/// Facts read from a certificate, for display and identity checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names in the subjectAltName extension, lower-cased.
    pub dns_names: Vec<String>,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Extended key usage allows TLS server authentication.
    pub server_auth: bool,
    /// Extended key usage allows TLS client authentication.
    pub client_auth: bool,
}

impl CertInfo {
    /// Parse the facts out of a DER certificate.
    pub fn parse(der: &[u8]) -> Result<CertInfo, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("unparsable certificate: {e}"))?;
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                    dns_names.push(n.trim_end_matches('.').to_ascii_lowercase());
                }
            }
        }
        let (server_auth, client_auth) = match cert.extended_key_usage() {
            Ok(Some(eku)) => (
                eku.value.server_auth || eku.value.any,
                eku.value.client_auth || eku.value.any,
            ),
            _ => (false, false),
        };
        let serial = cert
            .tbs_certificate
            .raw_serial()
            .iter()
            .skip_while(|b| **b == 0)
            .map(|b| format!("{b:02x}"))
            .collect();
        let not_after = cert.validity().not_after.to_datetime();
        Ok(CertInfo {
            dns_names,
            serial,
            not_after,
            server_auth,
            client_auth,
        })
    }

    /// First DNS name, for "presented name" in logs.
    pub fn presented_name(&self) -> Option<String> {
        self.dns_names.first().cloned()
    }
}

/// The PEM material of one node, loaded and checked.
pub struct TlsMaterial {
    /// Our chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Our private key.
    pub key: PrivateKeyDer<'static>,
    /// Trust anchors.
    pub roots: Arc<RootCertStore>,
    /// Revocation lists.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Facts about our own leaf.
    pub own: CertInfo,
    /// Extra certificates for the SIP client port, chosen by SNI (pool names).
    pub sni: Vec<Arc<rustls::sign::CertifiedKey>>,
}

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

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let signing = provider().key_provider.load_private_key(key.clone_key())?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(chain, signing)))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let file_err = |message: String| TlsError::File {
        path: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?;
    if meta.len() > MAX_PEM_FILE {
        return Err(file_err(format!(
            "{} bytes is over the {MAX_PEM_FILE}-byte limit",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| file_err(e.to_string()))
}

fn pem_items<T>(
    path: &Path,
    what: &'static str,
    parse: impl Fn(&mut &[u8]) -> Vec<std::io::Result<T>>,
) -> Result<Vec<T>, TlsError> {
    let bytes = read_pem(path)?;
    let items = parse(&mut bytes.as_slice())
        .into_iter()
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| TlsError::File {
            path: path.display().to_string(),
            message: format!("bad PEM: {e}"),
        })?;
    if items.is_empty() {
        return Err(TlsError::Missing {
            path: path.display().to_string(),
            what,
        });
    }
    Ok(items)
}

impl TlsMaterial {
    /// Load everything and check that our certificate names `fqdn`, has both
    /// EKUs and chains to one of the configured trust anchors.
    pub fn load(paths: &TlsPaths, fqdn: &str) -> Result<TlsMaterial, TlsError> {
        let chain = pem_items(&paths.cert, "certificate", |r| rustls_pemfile::certs(r).collect())?;
        let key = rustls_pemfile::private_key(&mut read_pem(&paths.key)?.as_slice())
            .map_err(|e| TlsError::File {
                path: paths.key.display().to_string(),
                message: format!("bad PEM: {e}"),
            })?
            .ok_or_else(|| TlsError::Missing {
                path: paths.key.display().to_string(),
                what: "private key",
            })?;
        let anchors = pem_items(&paths.ca, "CA certificate", |r| rustls_pemfile::certs(r).collect())?;
        let mut roots = RootCertStore::empty();
        for a in anchors {
            roots.add(a).map_err(|e| TlsError::File {
                path: paths.ca.display().to_string(),
                message: format!("unusable trust anchor: {e}"),
            })?;
        }
        let mut crls = Vec::new();
        for p in &paths.crls {
            crls.extend(pem_items(p, "CRL", |r| rustls_pemfile::crls(r).collect())?);
        }
        let own_err = |message: String| TlsError::OwnCert {
            path: paths.cert.display().to_string(),
            message,
        };
        let own = CertInfo::parse(&chain[0]).map_err(own_err)?;
        if !own.dns_names.iter().any(|n| n == fqdn) {
            return Err(own_err(format!(
                "names {:?}, not this node's fqdn {fqdn}",
                own.dns_names
            )));
        }
        if !(own.server_auth && own.client_auth) {
            return Err(own_err(
                "needs both serverAuth and clientAuth extended key usages".into(),
            ));
        }
        let material = TlsMaterial {
            chain,
            key,
            roots: Arc::new(roots),
            crls,
            own,
            sni: Vec::new(),
        };
        // Our own certificate must pass the checks our peers will apply.
        let verifier = MeshVerifier::new(
            &material,
            Arc::new(ArcSwap::from_pointee(Topology {
                version: 0,
                members: vec![],
            })),
        )?;
        if let Err(e) =
            verifier
                .webpki_client
                .verify_client_cert(&material.chain[0], &material.chain[1..], UnixTime::now())
        {
            return Err(own_err(format!("does not verify against {}: {e}", paths.ca.display())));
        }
        Ok(material)
    }

    /// Add certificates the client port serves by SNI (e.g. a pool FQDN).
    pub fn with_sni(mut self, pairs: &[(std::path::PathBuf, std::path::PathBuf)]) -> Result<TlsMaterial, TlsError> {
        for (cert, key) in pairs {
            let chain = pem_items(cert, "certificate", |r| rustls_pemfile::certs(r).collect())?;
            let key = rustls_pemfile::private_key(&mut read_pem(key)?.as_slice())
                .map_err(|e| TlsError::File {
                    path: key.display().to_string(),
                    message: format!("bad PEM: {e}"),
                })?
                .ok_or_else(|| TlsError::Missing {
                    path: key.display().to_string(),
                    what: "private key",
                })?;
            self.sni.push(certified_key(chain, &key)?);
        }
        Ok(self)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The mesh trust check, used on both accept and dial.
#[derive(Debug)]
pub struct MeshVerifier {
    webpki_client: Arc<dyn ClientCertVerifier>,
    webpki_server: Arc<WebPkiServerVerifier>,
    topology: Arc<ArcSwap<Topology>>,
}

impl MeshVerifier {
    /// Build from loaded material and the live topology.
    pub fn new(material: &TlsMaterial, topology: Arc<ArcSwap<Topology>>) -> Result<MeshVerifier, TlsError> {
        // The CRL is issued per CA for its leaves; a missing CRL for some CA
        // must not lock every peer out, so unknown status is allowed.
        let webpki_client = WebPkiClientVerifier::builder_with_provider(material.roots.clone(), provider())
            .with_crls(material.crls.clone())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let webpki_server = WebPkiServerVerifier::builder_with_provider(material.roots.clone(), provider())
            .with_crls(material.crls.clone())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
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

fn reject(reason: RejectReason, presented_name: Option<String>, detail: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Rejection {
        reason,
        presented_name,
        detail,
    }))))
}

/// Re-tag a webpki error with our reason and the presented name.
fn classify_webpki(err: rustls::Error, end_entity: &CertificateDer<'_>) -> rustls::Error {
    let presented = CertInfo::parse(end_entity).ok().and_then(|i| i.presented_name());
    let reason = RejectReason::from_rustls(&err);
    reject(reason, presented, err.to_string())
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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki_client.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki_client.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki_client.supported_verify_schemes()
    }
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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki_server.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki_server.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki_server.supported_verify_schemes()
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
        client.resumption = rustls::client::Resumption::disabled();
        let optional = WebPkiClientVerifier::builder_with_provider(material.roots.clone(), provider())
            .with_crls(material.crls.clone())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut client_port = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(optional)
            .with_cert_resolver(Arc::new(SniResolver::new(
                certified_key(material.chain.clone(), &material.key)?,
                &material.sni,
            )));
        // No TLS 1.3 session tickets to SIP clients: some (sipsak) read one
        // record after sending a request and take the ticket for the answer.
        client_port.send_tls13_tickets = 0;
        Ok(TlsConfigs {
            client_port: Arc::new(client_port),
            server: Arc::new(server),
            client: Arc::new(client),
            own: material.own.clone(),
            verifier,
            crl_count: material.crls.len(),
        })
    }
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
