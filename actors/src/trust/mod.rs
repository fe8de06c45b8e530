//! Trust: what a node believes about the other side of a TLS connection.
//!
//! - [`material`]: the PEM files (certificate, key, anchors, CRLs, SNI certs)
//!   and [`CertInfo`], the facts read from a certificate.
//! - [`verifier`]: [`TrustPolicy`] (one builder for the webpki verifiers) and
//!   [`MeshVerifier`] (chain, validity, revocation, EKUs, topology membership).
//! - [`configs`]: the rustls configs of the mesh and client ports, swapped whole
//!   on reload; the SNI certificate resolver.
//! - [`reject`]: rejection reasons, their mapping from rustls errors, the log.
//! - [`verified`]: chains a verifier already accepted, so reconnects skip
//!   the chain and CRL signature checks.

pub mod configs;
pub mod material;
pub mod reject;
pub mod verified;
pub mod verifier;

pub use configs::{SniResolver, TlsConfigs};
pub use material::{CertInfo, CrlFile, TlsError, TlsMaterial, MAX_PEM_FILE};
pub use reject::{Direction, RejectReason, Rejection, RejectionLog};
pub use verifier::{rejection_of, rejection_of_tls, ClientCert, MeshVerifier, TrustPolicy};

/// The peer's certificate chain of an established TLS session (owned, so it
/// can be kept for re-checks after a reload).
pub fn peer_chain(conn: &rustls::CommonState) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    conn.peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default()
}
