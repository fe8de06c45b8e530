//! A small file-based certificate authority for labs, tests and the local cluster.
//!
//! Nodes only ever read PEM files (CA certificate, their own certificate and key,
//! optionally a CRL), so an enterprise CA works exactly the same way; this module
//! just makes those files without needing OpenSSL.
//!
//! # CA directory layout
//!
//! - `ca.pem`: the self-signed CA certificate (ECDSA P-256).
//! - `ca.key`: the CA private key, PKCS#8 PEM, mode 0600.
//! - `index.json`: every issued certificate (serial, fqdn, not_after, revoked_at)
//!   plus the last CRL number used.
//!
//! Every file is written atomically (temporary file in the same directory, fsync,
//! rename), so a crash never leaves a half-written key or index. The tooling
//! assumes one operator command at a time per CA directory: concurrent `issue` or
//! `revoke` calls on the same directory can lose an index update.
//!
//! # Inside
//!
//! - [`init_ca`]: create a CA directory.
//! - [`issue`] with [`IssueOptions`]: issue an end-entity certificate.
//! - [`revoke`]: mark a serial revoked in the index.
//! - [`write_crl`] ([`write_crl_dated`]): publish a CRL listing every revoked serial.
//! - [`ca_cert_pem`]: read the CA certificate back (for trust stores in tests).
//! - [`PkiError`]: what can go wrong, naming the offending path or value.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the issued-certificate index inside a CA directory.
pub const INDEX_FILE: &str = "index.json";

/// CA validity: long enough that a lab CA never expires under a running cluster.
const CA_VALIDITY: Duration = Duration::days(3650);
/// Back-dating of `not_before` so peers with slightly slow clocks accept fresh certs.
const CLOCK_SKEW: Duration = Duration::hours(1);
/// Back-dating of a CRL's `this_update`, for the same clock-skew reason.
const CRL_BACKDATE: Duration = Duration::minutes(1);
/// How long a CRL is valid; operators re-publish well within it.
const CRL_VALIDITY: Duration = Duration::days(7);
/// Serial length in bytes: 128 random bits (CA/B forum asks for at least 64).
const SERIAL_LEN: usize = 16;
/// Longest DNS name (RFC 1035, presentation form without the trailing dot).
const MAX_DNS_NAME: usize = 253;
/// Longest DNS label (RFC 1035).
const MAX_DNS_LABEL: usize = 63;
/// Longest CA common name (X.520 ub-common-name).
const MAX_CA_NAME: usize = 64;

/// Errors from the file-based CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Reading or writing a file or directory failed.
    #[error("i/o error on {}: {cause}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        cause: io::Error,
    },
    /// Refused to overwrite an existing CA file.
    #[error("{} already exists; refusing to overwrite an existing CA", .0.display())]
    Exists(PathBuf),
    /// `ca.pem`, `ca.key` or `index.json` is missing, unreadable or not a usable CA.
    #[error("{} is missing or unreadable: not a usable CA directory", .0.display())]
    NotACa(PathBuf),
    /// No certificate with this serial was issued by this CA.
    #[error("unknown serial {0:?}: not in the CA index")]
    UnknownSerial(String),
    /// The certificate with this serial is already revoked.
    #[error("serial {0} is already revoked")]
    AlreadyRevoked(String),
    /// A DNS name, URI or CA name is not acceptable.
    #[error("invalid name {0:?}")]
    BadName(String),
    /// Certificate or CRL generation failed (including impossible validity periods).
    #[error("certificate generation failed: {0}")]
    Rcgen(String),
    /// `index.json` is corrupt or could not be serialized.
    #[error("CA index error: {0}")]
    Index(String),
}

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

/// On-disk `index.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    /// Number of the last CRL written (0: none yet).
    crl_number: u64,
    /// Every certificate issued, in issue order.
    certs: Vec<IndexEntry>,
}

/// One issued certificate in `index.json`.
#[derive(Debug, Serialize, Deserialize)]
struct IndexEntry {
    /// Lower-case hex, no colons.
    serial: String,
    fqdn: String,
    /// RFC 3339.
    not_after: String,
    /// RFC 3339, or null while the certificate is good.
    revoked_at: Option<String>,
}

/// Create a self-signed ECDSA P-256 CA in `dir` (created if missing).
///
/// The certificate has basic constraints CA with path length 0 (it signs only
/// end-entity certificates), key usage keyCertSign + cRLSign + digitalSignature,
/// a subject key identifier, CN = `name` and 10 years of validity. Refuses with
/// [`PkiError::Exists`] if `ca.pem` or `ca.key` already exists.
pub fn init_ca(dir: &Path, name: &str) -> Result<CaInfo, PkiError> {
    validate_ca_name(name)?;
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
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

    fs::create_dir_all(out_dir).map_err(|e| io_err(out_dir, e))?;
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
        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
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

/// Load the CA certificate PEM text from `ca_dir/ca.pem`.
pub fn ca_cert_pem(ca_dir: &Path) -> Result<String, PkiError> {
    let path = ca_dir.join(CA_CERT_FILE);
    let pem = fs::read_to_string(&path).map_err(|_| PkiError::NotACa(path.clone()))?;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| PkiError::NotACa(path))?;
    Ok(pem)
}

/// The CA loaded from disk, ready to sign.
struct LoadedCa {
    issuer: Issuer<'static, KeyPair>,
    /// Subject key identifier of the CA certificate.
    ski: Vec<u8>,
}

impl LoadedCa {
    fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let index_path = dir.join(INDEX_FILE);
        let not_a_ca = |p: &Path| PkiError::NotACa(p.to_path_buf());

        let pem = fs::read_to_string(&cert_path).map_err(|_| not_a_ca(&cert_path))?;
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| not_a_ca(&cert_path))?;
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
        let ski = x509
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(kid) => Some(kid.0.to_vec()),
                _ => None,
            })
            .ok_or_else(|| not_a_ca(&cert_path))?;

        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|_| not_a_ca(&cert_path))?;
        Ok(Self { issuer, ski })
    }
}

fn load_index(path: &Path) -> Result<Index, PkiError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PkiError::NotACa(path.to_path_buf())),
        Err(e) => return Err(io_err(path, e)),
    };
    serde_json::from_str(&text).map_err(|e| PkiError::Index(format!("{}: {e}", path.display())))
}

fn save_index(path: &Path, index: &Index) -> Result<(), PkiError> {
    let mut text =
        serde_json::to_string_pretty(index).map_err(|e| PkiError::Index(format!("{}: {e}", path.display())))?;
    text.push('\n');
    write_atomic(path, text.as_bytes(), false)
}

/// Write `data` to `path` via a temporary file in the same directory and a rename.
///
/// `private` files get mode 0600 before any secret byte is written.
fn write_atomic(path: &Path, data: &[u8], private: bool) -> Result<(), PkiError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io_err(path, io::Error::other("not a file path")))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.{:016x}.tmp", rand::random::<u64>()));

    let result = (|| {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o644 });
        }
        let mut file = opts.open(&tmp).map_err(|e| io_err(&tmp, e))?;
        #[cfg(unix)]
        if private {
            // Exact mode whatever the umask.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(|e| io_err(&tmp, e))?;
        }
        file.write_all(data).map_err(|e| io_err(&tmp, e))?;
        file.sync_all().map_err(|e| io_err(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io_err(path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Persist the rename itself; best effort (not every platform can fsync a directory).
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn io_err(path: &Path, cause: io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

fn rcgen_err(e: rcgen::Error) -> PkiError {
    PkiError::Rcgen(e.to_string())
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Certificates carry whole seconds; strip so the index matches the certificate.
fn strip_nanos(t: OffsetDateTime) -> OffsetDateTime {
    t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(t)
}

fn rfc3339(t: OffsetDateTime) -> Result<String, PkiError> {
    t.format(&Rfc3339)
        .map_err(|e| PkiError::Index(format!("cannot format time {t}: {e}")))
}

/// A random positive serial of exactly [`SERIAL_LEN`] bytes, and its hex form.
///
/// The first byte is in 0x01..=0x7f, so the DER INTEGER needs no leading zero
/// and the hex form is always 32 characters.
fn random_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; SERIAL_LEN] = rand::random();
    bytes[0] = (bytes[0] & 0x7f).max(1);
    (SerialNumber::from_slice(&bytes), encode_hex(&bytes))
}

fn encode_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// Canonical comparison form of a serial: lower-case hex, no colons, no leading zeros.
fn normalize_serial(serial: &str) -> Option<String> {
    let hex: String = serial
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = hex.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
}

/// Validate a host name (letters, digits, hyphens; RFC 1035 lengths) and lower-case it.
///
/// Wildcards, IP literals, empty labels and a trailing dot are refused: the name
/// becomes a file name and must match a node's configured FQDN.
fn validate_dns_name(name: &str) -> Result<String, PkiError> {
    let bad = || PkiError::BadName(name.to_owned());
    if name.is_empty() || name.len() > MAX_DNS_NAME || name.parse::<IpAddr>().is_ok() {
        return Err(bad());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_DNS_LABEL
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad());
        }
    }
    // An all-numeric last label would read as an IPv4 address to some parsers.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    Ok(name.to_ascii_lowercase())
}

fn validate_uri(uri: &str) -> Result<Ia5String, PkiError> {
    let bad = || PkiError::BadName(uri.to_owned());
    let (scheme, rest) = uri.split_once(':').ok_or_else(bad)?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let rest_ok = !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_graphic());
    if !scheme_ok || !rest_ok {
        return Err(bad());
    }
    Ia5String::try_from(uri).map_err(|_| bad())
}

fn validate_ca_name(name: &str) -> Result<(), PkiError> {
    if name.trim().is_empty() || name.len() > MAX_CA_NAME || name.chars().any(char::is_control) {
        return Err(PkiError::BadName(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls::{CertificateError, RootCertStore};
    use rustls_pki_types::{CertificateRevocationListDer, ServerName, UnixTime};
    use std::sync::Arc;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn roots(ca_dir: &Path) -> Arc<RootCertStore> {
        let pem = ca_cert_pem(ca_dir).unwrap();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
        Arc::new(roots)
    }

    fn leaf(issued: &Issued) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(&issued.cert_path).unwrap()
    }

    fn cert_error(r: Result<impl std::fmt::Debug, rustls::Error>) -> CertificateError {
        match r {
            Err(rustls::Error::InvalidCertificate(e)) => e,
            other => panic!("expected InvalidCertificate, got {other:?}"),
        }
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn read_index(ca_dir: &Path) -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(ca_dir.join(INDEX_FILE)).unwrap()).unwrap()
    }

    #[test]
    fn client_verifier_accepts_good_and_rejects_revoked_expired_foreign_and_wrong_eku() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        let other_ca = tmp.path().join("other-ca");
        let out = tmp.path().join("certs");
        init_ca(&ca, "sipmesh test CA").unwrap();
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
    fn server_verifier_checks_name() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        init_ca(&ca, "sipmesh test CA").unwrap();
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
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        init_ca(&ca, "sipmesh test CA").unwrap();
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
        let ski = ca_x509
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
            .unwrap();
        let aki = x509
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(aki, ski);
    }

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

    #[cfg(unix)]
    #[test]
    fn key_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        let info = init_ca(&ca, "sipmesh test CA").unwrap();
        let issued = issue(&ca, &IssueOptions::new("fe1.contoso.test"), tmp.path()).unwrap();
        assert_eq!(mode(&info.key_path), 0o600);
        assert_eq!(mode(&issued.key_path), 0o600);
        // Re-issue replaces the key and keeps it private.
        let again = issue(&ca, &IssueOptions::new("fe1.contoso.test"), tmp.path()).unwrap();
        assert_eq!(mode(&again.key_path), 0o600);
        assert_ne!(again.serial, issued.serial);
        // No temporary files left behind.
        let stray: Vec<_> = fs::read_dir(&ca)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }

    #[test]
    fn serial_is_32_lower_hex_and_indexed() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        init_ca(&ca, "sipmesh test CA").unwrap();
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
    fn revoke_errors_and_serial_forms() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        init_ca(&ca, "sipmesh test CA").unwrap();
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
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        init_ca(&ca, "sipmesh test CA").unwrap();
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

    #[test]
    fn bad_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        init_ca(&ca, "sipmesh test CA").unwrap();
        for name in [
            "not a name!",
            "",
            "*.contoso.test",
            "fe1..contoso.test",
            "-fe1.contoso.test",
            "fe1.contoso.test.",
            "10.0.0.1",
            "../etc/passwd",
        ] {
            match issue(&ca, &IssueOptions::new(name), tmp.path()) {
                Err(PkiError::BadName(n)) => assert_eq!(n, name),
                other => panic!("{name:?}: expected BadName, got {other:?}"),
            }
        }
        let opts = IssueOptions {
            uris: vec!["no scheme".into()],
            ..IssueOptions::new("fe1.contoso.test")
        };
        assert!(matches!(issue(&ca, &opts, tmp.path()), Err(PkiError::BadName(u)) if u == "no scheme"));
        assert!(matches!(
            init_ca(&tmp.path().join("ca2"), ""),
            Err(PkiError::BadName(_))
        ));
        // Nothing was recorded for the refused requests.
        assert_eq!(read_index(&ca)["certs"].as_array().unwrap().len(), 0);
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

    #[test]
    fn inverted_validity_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        init_ca(&ca, "sipmesh test CA").unwrap();
        let now = OffsetDateTime::now_utc();
        let opts = IssueOptions {
            not_before: Some(now),
            not_after: Some(now - Duration::days(1)),
            ..IssueOptions::new("fe1.contoso.test")
        };
        assert!(matches!(issue(&ca, &opts, tmp.path()), Err(PkiError::Rcgen(_))));
    }
}
