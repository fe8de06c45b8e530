//! Issuing end-entity certificates: [`IssueOptions`] in, [`Issued`] files out.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

use super::ca::LoadedCa;
use super::files::{create_dir_all, write_atomic};
use super::index::{load_index, save_index, IndexEntry};
use super::names::{common_name, validate_dns_name, validate_uri};
use super::serial::random_serial;
use super::{rcgen_err, rfc3339, strip_nanos, PkiError, CLOCK_SKEW, INDEX_FILE};

/// What to put in an end-entity certificate made by [`issue`].
#[derive(Clone, Debug)]
pub struct IssueOptions {
    /// DNS name of the node: subject CN and SAN DNS entry. Lower-cased on issue.
    pub fqdn: String,
    /// Extra SAN IP addresses.
    pub ips: Vec<IpAddr>,
    /// Extra SAN URIs (e.g. `sip:alice@contoso.test`).
    pub uris: Vec<String>,
    /// Validity in days from now (not_before is back-dated one hour for clock skew).
    pub days: u32,
    /// Overrides the computed not_before (tests make not-yet-valid certificates).
    pub not_before: Option<OffsetDateTime>,
    /// Overrides the computed not_after (tests make expired certificates).
    pub not_after: Option<OffsetDateTime>,
    /// Add the serverAuth extended key usage.
    pub server_auth: bool,
    /// Add the clientAuth extended key usage.
    pub client_auth: bool,
}

impl IssueOptions {
    /// Defaults for a mesh node: 365 days, both serverAuth and clientAuth, no extra SANs.
    pub fn new(fqdn: &str) -> Self {
        Self {
            fqdn: fqdn.to_owned(),
            ips: Vec::new(),
            uris: Vec::new(),
            days: 365,
            not_before: None,
            not_after: None,
            server_auth: true,
            client_auth: true,
        }
    }
}

/// An end-entity certificate written by [`issue`].
#[derive(Clone, Debug)]
pub struct Issued {
    /// Path of the leaf certificate PEM (`<out>/<fqdn>.pem`, leaf only, no chain).
    pub cert_path: PathBuf,
    /// Path of the private key PEM (`<out>/<fqdn>.key`, PKCS#8, mode 0600).
    pub key_path: PathBuf,
    /// Serial number, 32 lower-case hex characters, no colons.
    pub serial: String,
    /// End of validity as encoded in the certificate (whole seconds, UTC).
    pub not_after: OffsetDateTime,
}

/// Issue an end-entity certificate signed by the CA in `ca_dir`.
///
/// Fresh ECDSA P-256 key, random positive 16-byte serial, key usage
/// digitalSignature, the requested EKUs, SANs (DNS `fqdn`, then IPs, then URIs)
/// and an authority key identifier matching the CA. Writes `out_dir/<fqdn>.pem`
/// (leaf only) and `out_dir/<fqdn>.key` (0600), replacing earlier ones, and
/// records the certificate in `index.json` before writing them so that every
/// certificate on disk can be revoked.
pub fn issue(ca_dir: &Path, opts: &IssueOptions, out_dir: &Path) -> Result<Issued, PkiError> {
    let fqdn = validate_dns_name(&opts.fqdn)?;
    let mut sans = Vec::with_capacity(1 + opts.ips.len() + opts.uris.len());
    sans.push(SanType::DnsName(
        Ia5String::try_from(fqdn.as_str()).map_err(|_| PkiError::BadName(opts.fqdn.clone()))?,
    ));
    sans.extend(opts.ips.iter().copied().map(SanType::IpAddress));
    for uri in &opts.uris {
        sans.push(SanType::URI(validate_uri(uri)?));
    }

    let now = OffsetDateTime::now_utc();
    let not_before = strip_nanos(opts.not_before.unwrap_or(now - CLOCK_SKEW));
    let not_after = match opts.not_after {
        Some(t) => t,
        None => now
            .checked_add(Duration::days(i64::from(opts.days)))
            .ok_or_else(|| PkiError::Rcgen(format!("validity of {} days is too long", opts.days)))?,
    };
    let not_after = strip_nanos(not_after);
    if not_after <= not_before {
        return Err(PkiError::Rcgen(format!(
            "not_after {} is not after not_before {}",
            rfc3339(not_after)?,
            rfc3339(not_before)?
        )));
    }

    let ca = LoadedCa::load(ca_dir)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
    let (serial_number, serial) = random_serial();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&fqdn);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if opts.server_auth {
        params.insert_extended_key_usage(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if opts.client_auth {
        params.insert_extended_key_usage(ExtendedKeyUsagePurpose::ClientAuth);
    }
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial_number);
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, &ca.issuer).map_err(rcgen_err)?;

    let index_path = ca_dir.join(INDEX_FILE);
    let mut index = load_index(&index_path)?;
    index.certs.push(IndexEntry {
        serial: serial.clone(),
        fqdn: fqdn.clone(),
        not_after: rfc3339(not_after)?,
        revoked_at: None,
    });
    save_index(&index_path, &index)?;

    create_dir_all(out_dir)?;
    let cert_path = out_dir.join(format!("{fqdn}.pem"));
    let key_path = out_dir.join(format!("{fqdn}.key"));
    write_atomic(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(Issued {
        cert_path,
        key_path,
        serial,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::CertificateError;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use time::format_description::well_known::Rfc3339;
    use x509_parser::extensions::ParsedExtension;

    use super::super::ca::subject_key_id;
    use super::super::ca_cert_pem;
    use super::super::serial::encode_hex;
    use super::super::test_util::{cert_error, leaf, new_ca, provider, read_index, roots};
    use super::*;

    #[test]
    fn server_verifier_checks_name() {
        let (tmp, ca) = new_ca();
        let fe1 = issue(&ca, &IssueOptions::new("fe1.contoso.test"), tmp.path()).unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(&ca), provider())
            .build()
            .unwrap();
        let t = UnixTime::now();
        let name = |n: &'static str| ServerName::try_from(n).unwrap();

        verifier
            .verify_server_cert(&leaf(&fe1), &[], &name("fe1.contoso.test"), &[], t)
            .unwrap();
        let e = cert_error(verifier.verify_server_cert(&leaf(&fe1), &[], &name("fe2.contoso.test"), &[], t));
        assert!(
            matches!(
                e,
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn leaf_carries_requested_sans_and_aki() {
        let (tmp, ca) = new_ca();
        let opts = IssueOptions {
            ips: vec!["192.0.2.7".parse().unwrap()],
            uris: vec!["sip:alice@contoso.test".into()],
            ..IssueOptions::new("FE1.Contoso.Test")
        };
        let issued = issue(&ca, &opts, tmp.path()).unwrap();
        assert_eq!(issued.cert_path, tmp.path().join("fe1.contoso.test.pem"));
        let der = leaf(&issued);
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(encode_hex(x509.raw_serial()), issued.serial);
        assert_eq!(x509.validity().not_after.timestamp(), issued.not_after.unix_timestamp());
        let sans: Vec<String> = x509
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            sans,
            [
                "DNSName(fe1.contoso.test)",
                "IPAddress(c0:00:02:07)",
                "URI(sip:alice@contoso.test)"
            ]
        );
        // Leaf only: exactly one PEM block.
        let pem = fs::read_to_string(&issued.cert_path).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1);

        let ca_der = CertificateDer::from_pem_slice(ca_cert_pem(&ca).unwrap().as_bytes()).unwrap();
        let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let ku = ca_x509.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
        let ski = subject_key_id(&ca_x509).unwrap();
        let aki = x509
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0.to_vec()),
                _ => None,
            })
            .unwrap();
        assert_eq!(aki, ski);
    }

    #[test]
    fn serial_is_32_lower_hex_and_indexed() {
        let (tmp, ca) = new_ca();
        for _ in 0..8 {
            let issued = issue(&ca, &IssueOptions::new("fe1.contoso.test"), tmp.path()).unwrap();
            assert_eq!(issued.serial.len(), 32, "{}", issued.serial);
            assert!(issued
                .serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
        let index = read_index(&ca);
        let certs = index["certs"].as_array().unwrap();
        assert_eq!(certs.len(), 8);
        assert_eq!(certs[0]["fqdn"], "fe1.contoso.test");
        assert!(certs[0]["revoked_at"].is_null());
        let not_after = certs[0]["not_after"].as_str().unwrap();
        OffsetDateTime::parse(not_after, &Rfc3339).unwrap();
    }

    #[test]
    fn inverted_validity_is_refused() {
        let (tmp, ca) = new_ca();
        let now = OffsetDateTime::now_utc();
        let opts = IssueOptions {
            not_before: Some(now),
            not_after: Some(now - Duration::days(1)),
            ..IssueOptions::new("fe1.contoso.test")
        };
        assert!(matches!(issue(&ca, &opts, tmp.path()), Err(PkiError::Rcgen(_))));
    }
}
