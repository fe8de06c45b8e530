//! Helpers shared by the pki unit tests: a fresh CA, trust stores built from it,
//! and readers for what the CA wrote.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tempfile::TempDir;

use super::{ca_cert_pem, init_ca, Issued, INDEX_FILE};

/// A temporary directory with a CA initialised in its `ca` subdirectory.
pub(super) fn new_ca() -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    init_ca(&ca, "sipmesh test CA").unwrap();
    (tmp, ca)
}

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A root store trusting only the CA in `ca_dir`.
pub(super) fn roots(ca_dir: &Path) -> Arc<RootCertStore> {
    let pem = ca_cert_pem(ca_dir).unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .unwrap();
    Arc::new(roots)
}

pub(super) fn leaf(issued: &Issued) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(&issued.cert_path).unwrap()
}

/// The certificate error inside a verifier's result; panics on anything else.
pub(super) fn cert_error(r: Result<impl std::fmt::Debug, rustls::Error>) -> CertificateError {
    match r {
        Err(rustls::Error::InvalidCertificate(e)) => e,
        other => panic!("expected InvalidCertificate, got {other:?}"),
    }
}

pub(super) fn read_index(ca_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(ca_dir.join(INDEX_FILE)).unwrap()).unwrap()
}
