//! Revocation: [`revoke`] marks a serial in the index, [`write_crl`] publishes
//! every revoked serial as a signed CRL ([`CrlInfo`]).

use std::path::{Path, PathBuf};

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::ca::LoadedCa;
use super::files::{create_dir_all, write_atomic};
use super::index::{load_index, save_index};
use super::serial::{decode_hex, normalize_serial};
use super::{rcgen_err, rfc3339, strip_nanos, PkiError, INDEX_FILE};

/// Back-dating of a CRL's `this_update`, for the same clock-skew reason as `CLOCK_SKEW`.
const CRL_BACKDATE: Duration = Duration::minutes(1);
/// How long a CRL is valid; operators re-publish well within it.
const CRL_VALIDITY: Duration = Duration::days(7);

/// A CRL written by [`write_crl`].
#[derive(Clone, Debug)]
pub struct CrlInfo {
    /// Where the PEM CRL was written.
    pub path: PathBuf,
    /// The CRL number carried in the CRL (1 for the first CRL of a CA).
    pub number: u64,
    /// How many serials the CRL lists.
    pub revoked: usize,
}

/// Mark `serial` revoked in the CA index (takes effect in the next [`write_crl`]).
///
/// Accepts upper- or lower-case hex with optional colons (as printed by OpenSSL
/// or x509-parser); leading zero bytes are ignored.
pub fn revoke(ca_dir: &Path, serial: &str) -> Result<(), PkiError> {
    // Opening the CA first gives NotACa (not UnknownSerial) on a wrong directory.
    LoadedCa::load(ca_dir)?;
    let wanted = normalize_serial(serial).ok_or_else(|| PkiError::UnknownSerial(serial.into()))?;
    let index_path = ca_dir.join(INDEX_FILE);
    let mut index = load_index(&index_path)?;
    let entry = index
        .certs
        .iter_mut()
        .find(|e| normalize_serial(&e.serial).as_deref() == Some(wanted.as_str()))
        .ok_or_else(|| PkiError::UnknownSerial(serial.into()))?;
    if entry.revoked_at.is_some() {
        return Err(PkiError::AlreadyRevoked(entry.serial.clone()));
    }
    entry.revoked_at = Some(rfc3339(strip_nanos(OffsetDateTime::now_utc()))?);
    save_index(&index_path, &index)
}

/// Write a PEM CRL to `out`, signed by the CA in `ca_dir`, listing every revoked serial.
///
/// this_update = now - 1 min, next_update = now + 7 days; the CRL carries an
/// authority key identifier equal to the CA's subject key identifier and the
/// next CRL number, which is persisted in `index.json` (after the CRL is
/// written, so a failed write never skips a number). Written atomically, so a
/// node re-reading the CRL never sees a partial file.
pub fn write_crl(ca_dir: &Path, out: &Path) -> Result<CrlInfo, PkiError> {
    let now = OffsetDateTime::now_utc();
    write_crl_dated(ca_dir, out, now - CRL_BACKDATE, now + CRL_VALIDITY)
}

/// [`write_crl`] with explicit thisUpdate and nextUpdate (e.g. a nextUpdate in
/// the past, to test how nodes treat an expired CRL).
pub fn write_crl_dated(
    ca_dir: &Path,
    out: &Path,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
) -> Result<CrlInfo, PkiError> {
    let ca = LoadedCa::load(ca_dir)?;
    let index_path = ca_dir.join(INDEX_FILE);
    let mut index = load_index(&index_path)?;
    let number = index
        .crl_number
        .checked_add(1)
        .ok_or_else(|| PkiError::Index("crl_number overflow".into()))?;

    let mut revoked_certs = Vec::new();
    for entry in &index.certs {
        let Some(revoked_at) = &entry.revoked_at else {
            continue;
        };
        let bytes = decode_hex(&entry.serial)
            .ok_or_else(|| PkiError::Index(format!("bad serial {:?} in index", entry.serial)))?;
        let revocation_time = OffsetDateTime::parse(revoked_at, &Rfc3339)
            .map_err(|e| PkiError::Index(format!("bad revoked_at {revoked_at:?} for {}: {e}", entry.serial)))?;
        revoked_certs.push(RevokedCertParams {
            // Same bytes as in the certificate, so the DER INTEGERs match exactly.
            serial_number: SerialNumber::from_slice(&bytes),
            revocation_time: strip_nanos(revocation_time),
            reason_code: None,
            invalidity_date: None,
        });
    }

    let params = CertificateRevocationListParams {
        this_update: strip_nanos(this_update),
        next_update: strip_nanos(next_update),
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        // rcgen derives the CRL's AKI from these params, not from the issuer, so
        // pass the CA's own SKI: webpki matches CRLs to issuers by it.
        key_identifier_method: KeyIdMethod::PreSpecified(ca.ski.clone()),
    };
    let revoked = params.revoked_certs.len();
    let crl = params.signed_by(&ca.issuer).map_err(rcgen_err)?;
    let pem = crl.pem().map_err(rcgen_err)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    write_atomic(out, pem.as_bytes(), false)?;

    index.crl_number = number;
    save_index(&index_path, &index)?;
    Ok(CrlInfo {
        path: out.to_path_buf(),
        number,
        revoked,
    })
}

#[cfg(test)]
mod tests {
    use rustls::server::WebPkiClientVerifier;
    use rustls::CertificateError;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateRevocationListDer, UnixTime};

    use super::super::test_util::{cert_error, leaf, new_ca, provider, read_index, roots};
    use super::super::{init_ca, issue, IssueOptions};
    use super::*;

    #[test]
    fn client_verifier_accepts_good_and_rejects_revoked_expired_foreign_and_wrong_eku() {
        let (tmp, ca) = new_ca();
        let other_ca = tmp.path().join("other-ca");
        let out = tmp.path().join("certs");
        init_ca(&other_ca, "someone else").unwrap();

        let good = issue(&ca, &IssueOptions::new("fe1.contoso.test"), &out).unwrap();
        let revoked = issue(&ca, &IssueOptions::new("fe2.contoso.test"), &out).unwrap();
        let now = OffsetDateTime::now_utc();
        let expired = issue(
            &ca,
            &IssueOptions {
                not_before: Some(now - Duration::days(30)),
                not_after: Some(now - Duration::days(1)),
                ..IssueOptions::new("old.contoso.test")
            },
            &out,
        )
        .unwrap();
        let foreign = issue(
            &other_ca,
            &IssueOptions::new("fe3.contoso.test"),
            &tmp.path().join("foreign"),
        )
        .unwrap();
        let server_only = issue(
            &ca,
            &IssueOptions {
                client_auth: false,
                ..IssueOptions::new("edge.contoso.test")
            },
            &out,
        )
        .unwrap();

        revoke(&ca, &revoked.serial).unwrap();
        let crl_path = tmp.path().join("crl.pem");
        let info = write_crl(&ca, &crl_path).unwrap();
        assert_eq!(info.revoked, 1);
        assert_eq!(info.number, 1);

        let crl = CertificateRevocationListDer::from_pem_file(&crl_path).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(&ca), provider())
            .with_crls([crl])
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .unwrap();
        let t = UnixTime::now();

        verifier.verify_client_cert(&leaf(&good), &[], t).unwrap();
        assert_eq!(
            cert_error(verifier.verify_client_cert(&leaf(&revoked), &[], t)),
            CertificateError::Revoked
        );
        let e = cert_error(verifier.verify_client_cert(&leaf(&expired), &[], t));
        assert!(
            matches!(e, CertificateError::Expired | CertificateError::ExpiredContext { .. }),
            "{e:?}"
        );
        assert_eq!(
            cert_error(verifier.verify_client_cert(&leaf(&foreign), &[], t)),
            CertificateError::UnknownIssuer
        );
        let e = cert_error(verifier.verify_client_cert(&leaf(&server_only), &[], t));
        assert!(
            matches!(
                e,
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn revoke_errors_and_serial_forms() {
        let (tmp, ca) = new_ca();
        let issued = issue(&ca, &IssueOptions::new("fe1.contoso.test"), tmp.path()).unwrap();

        let err = revoke(&ca, "deadbeef").unwrap_err();
        assert!(matches!(&err, PkiError::UnknownSerial(s) if s == "deadbeef"));
        assert!(err.to_string().contains("deadbeef"), "{err}");

        // Upper case with colons, as OpenSSL prints it.
        let colons = decode_hex(&issued.serial)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        revoke(&ca, &colons).unwrap();
        assert!(read_index(&ca)["certs"][0]["revoked_at"].is_string());

        let err = revoke(&ca, &issued.serial).unwrap_err();
        assert!(matches!(&err, PkiError::AlreadyRevoked(s) if *s == issued.serial));
        assert!(err.to_string().contains(&issued.serial), "{err}");

        let missing = tmp.path().join("nope");
        assert!(matches!(revoke(&missing, "01"), Err(PkiError::NotACa(_))));
    }

    #[test]
    fn crl_number_increments_and_persists() {
        let (tmp, ca) = new_ca();
        let crl_path = tmp.path().join("out/crl.pem");
        let first = write_crl(&ca, &crl_path).unwrap();
        let second = write_crl(&ca, &crl_path).unwrap();
        assert_eq!((first.number, second.number), (1, 2));
        assert_eq!(second.revoked, 0);
        assert_eq!(second.path, crl_path);
        assert_eq!(read_index(&ca)["crl_number"], 2);

        let der = CertificateRevocationListDer::from_pem_file(&crl_path).unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        assert_eq!(crl.crl_number().unwrap().to_string(), "2");
        let next = crl.next_update().unwrap().timestamp();
        let this = crl.last_update().timestamp();
        assert_eq!(next - this, (CRL_VALIDITY + CRL_BACKDATE).whole_seconds());
    }
}
