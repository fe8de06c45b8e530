//! The CA itself: [`init_ca`] creates a CA directory, [`ca_cert_pem`] reads its
//! certificate back, and [`LoadedCa`] opens it to sign certificates and CRLs.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use super::files::{create_dir_all, write_atomic};
use super::index::{save_index, Index};
use super::names::{common_name, validate_ca_name};
use super::serial::random_serial;
use super::{io_err, rcgen_err, strip_nanos, PkiError, CA_CERT_FILE, CA_KEY_FILE, CLOCK_SKEW, INDEX_FILE};

/// CA validity: long enough that a lab CA never expires under a running cluster.
const CA_VALIDITY: Duration = Duration::days(3650);

/// Where [`init_ca`] put the new CA.
#[derive(Clone, Debug)]
pub struct CaInfo {
    /// Path of the CA certificate (`<dir>/ca.pem`).
    pub cert_path: PathBuf,
    /// Path of the CA private key (`<dir>/ca.key`, mode 0600).
    pub key_path: PathBuf,
    /// The CA common name.
    pub name: String,
}

/// Create a self-signed ECDSA P-256 CA in `dir` (created if missing).
///
/// The certificate has basic constraints CA with path length 0 (it signs only
/// end-entity certificates), key usage keyCertSign + cRLSign + digitalSignature,
/// a subject key identifier, CN = `name` and 10 years of validity. Refuses with
/// [`PkiError::Exists`] if `ca.pem` or `ca.key` already exists.
pub fn init_ca(dir: &Path, name: &str) -> Result<CaInfo, PkiError> {
    validate_ca_name(name)?;
    create_dir_all(dir)?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let index_path = dir.join(INDEX_FILE);
    // ca.key too: never clobber a key, even one left by a half-finished init.
    for path in [&cert_path, &key_path] {
        if path.try_exists().map_err(|e| io_err(path, e))? {
            return Err(PkiError::Exists(path.clone()));
        }
    }

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial().0);
    params.not_before = strip_nanos(now - CLOCK_SKEW);
    params.not_after = strip_nanos(now + CA_VALIDITY);
    // SHA-256 key identifier (RFC 7093 method 1); the CRL reuses it as its AKI.
    params.key_identifier_method = KeyIdMethod::Sha256;
    let cert = params.self_signed(&key).map_err(rcgen_err)?;

    // ca.pem last: its presence means the directory is complete.
    write_atomic(&key_path, key.serialize_pem().as_bytes(), true)?;
    save_index(&index_path, &Index::default())?;
    write_atomic(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(CaInfo {
        cert_path,
        key_path,
        name: name.to_owned(),
    })
}

/// Load the CA certificate PEM text from `ca_dir/ca.pem`.
pub fn ca_cert_pem(ca_dir: &Path) -> Result<String, PkiError> {
    read_ca_cert(ca_dir).map(|(pem, _)| pem)
}

/// Read `ca_dir/ca.pem` as PEM text and its first certificate; any failure is
/// [`PkiError::NotACa`] naming `ca.pem`.
fn read_ca_cert(ca_dir: &Path) -> Result<(String, CertificateDer<'static>), PkiError> {
    let path = ca_dir.join(CA_CERT_FILE);
    let pem = fs::read_to_string(&path).map_err(|_| PkiError::NotACa(path.clone()))?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| PkiError::NotACa(path))?;
    Ok((pem, der))
}

/// The subject key identifier of `cert`, if it carries one.
pub(super) fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(kid) => Some(kid.0.to_vec()),
        _ => None,
    })
}

/// The CA loaded from disk, ready to sign.
pub(super) struct LoadedCa {
    pub(super) issuer: Issuer<'static, KeyPair>,
    /// Subject key identifier of the CA certificate.
    pub(super) ski: Vec<u8>,
}

impl LoadedCa {
    /// Open the CA in `dir`: its certificate, a matching key and an index must all
    /// be there, or [`PkiError::NotACa`] names the first that is not.
    pub(super) fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let index_path = dir.join(INDEX_FILE);
        let not_a_ca = |p: &Path| PkiError::NotACa(p.to_path_buf());

        let (_, der) = read_ca_cert(dir)?;
        let key_pem = fs::read_to_string(&key_path).map_err(|_| not_a_ca(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|_| not_a_ca(&key_path))?;
        if !index_path.is_file() {
            return Err(not_a_ca(&index_path));
        }

        let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|_| not_a_ca(&cert_path))?;
        let is_ca = matches!(x509.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(not_a_ca(&cert_path));
        }
        // A key that does not match the certificate would sign unverifiable certs.
        if x509.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key) {
            return Err(not_a_ca(&key_path));
        }
        let ski = subject_key_id(&x509).ok_or_else(|| not_a_ca(&cert_path))?;

        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|_| not_a_ca(&cert_path))?;
        Ok(Self { issuer, ski })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::read_index;
    use super::super::{issue, write_crl, IssueOptions};
    use super::*;

    #[test]
    fn init_twice_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("nested/ca");
        let info = init_ca(&ca, "sipmesh test CA").unwrap();
        assert_eq!(info.cert_path, ca.join("ca.pem"));
        assert_eq!(info.key_path, ca.join("ca.key"));
        assert_eq!(info.name, "sipmesh test CA");
        let before = fs::read(&info.key_path).unwrap();
        match init_ca(&ca, "again") {
            Err(PkiError::Exists(p)) => assert_eq!(p, ca.join("ca.pem")),
            other => panic!("expected Exists, got {other:?}"),
        }
        assert_eq!(fs::read(&info.key_path).unwrap(), before);
        assert_eq!(read_index(&ca), serde_json::json!({"crl_number": 0, "certs": []}));
    }

    #[test]
    fn missing_ca_is_not_a_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let err = issue(tmp.path(), &IssueOptions::new("fe1.contoso.test"), tmp.path()).unwrap_err();
        assert!(matches!(&err, PkiError::NotACa(p) if *p == tmp.path().join("ca.pem")));
        assert!(err.to_string().contains("ca.pem"), "{err}");
        assert!(matches!(ca_cert_pem(tmp.path()), Err(PkiError::NotACa(_))));
        assert!(matches!(
            write_crl(tmp.path(), &tmp.path().join("crl.pem")),
            Err(PkiError::NotACa(_))
        ));
    }
}
