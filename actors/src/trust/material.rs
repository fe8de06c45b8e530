//! The PEM material a node reads: its certificate and key, the trust
//! anchors, CRLs and the client port's extra (SNI) certificates, loaded and
//! checked together; facts read from certificates ([`CertInfo`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::RootCertStore;
use time::OffsetDateTime;

use super::verifier::{ClientCert, TrustPolicy};
use crate::config::{CrlExpired, TlsPaths};

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

/// Facts about one loaded CRL, for `ctl check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlFile {
    /// The file it came from.
    pub path: std::path::PathBuf,
    /// Its issuer, as text.
    pub issuer: String,
    /// Its nextUpdate: after it the CRL is expired (None if absent).
    pub next_update: Option<OffsetDateTime>,
}

impl CrlFile {
    /// Read issuer and nextUpdate out of a DER CRL.
    pub fn parse(path: &Path, der: &[u8]) -> Result<CrlFile, TlsError> {
        let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|e| TlsError::File {
            path: path.display().to_string(),
            message: format!("unparsable CRL: {e}"),
        })?;
        Ok(CrlFile {
            path: path.to_owned(),
            issuer: crl.issuer().to_string(),
            next_update: crl.next_update().map(|t| t.to_datetime()),
        })
    }

    /// Past its nextUpdate at `now`.
    pub fn expired_at(&self, now: OffsetDateTime) -> bool {
        self.next_update.is_some_and(|t| t <= now)
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
    /// Where each CRL came from and when it expires (same order as `crls`).
    pub crl_files: Vec<CrlFile>,
    /// What to do with peers whose CRL has expired.
    pub crl_expired: CrlExpired,
    /// Facts about our own leaf.
    pub own: CertInfo,
    /// Extra certificates for the SIP client port, chosen by SNI (pool names).
    pub sni: Vec<Arc<rustls::sign::CertifiedKey>>,
    /// Where session secrets go (`tls.keylog`), when enabled.
    pub keylog: Option<Arc<dyn rustls::KeyLog>>,
}

/// Session secrets appended to a file in the NSS key log format Wireshark
/// reads (`LABEL CLIENT_RANDOM SECRET`, hex), created 0600.
pub struct KeyLogPath {
    path: PathBuf,
    file: std::sync::Mutex<std::fs::File>,
}

impl std::fmt::Debug for KeyLogPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyLogPath({})", self.path.display())
    }
}

impl KeyLogPath {
    /// Open (append) or create `path`.
    pub fn open(path: &Path) -> Result<KeyLogPath, TlsError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| TlsError::File {
                path: path.display().to_string(),
                message: format!("tls.keylog: {e}"),
            })?;
        Ok(KeyLogPath {
            path: path.to_owned(),
            file: std::sync::Mutex::new(file),
        })
    }
}

impl rustls::KeyLog for KeyLogPath {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        use std::fmt::Write as _;
        use std::io::Write as _;
        let mut line = String::with_capacity(label.len() + 2 * (client_random.len() + secret.len()) + 3);
        line.push_str(label);
        line.push(' ');
        for b in client_random {
            let _ = write!(line, "{b:02x}");
        }
        line.push(' ');
        for b in secret {
            let _ = write!(line, "{b:02x}");
        }
        line.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = f.write_all(line.as_bytes());
    }
}

pub(crate) fn certified_key(
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

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
/// A private key file (PKCS#8, SEC1 or PKCS#1 PEM).
pub(crate) fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    load_key(path)
}

/// A certificate chain file, leaf first.
pub(crate) fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    load_certs(path, "certificate")
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut read_pem(path)?.as_slice())
        .map_err(|e| TlsError::File {
            path: path.display().to_string(),
            message: format!("bad PEM: {e}"),
        })?
        .ok_or_else(|| TlsError::Missing {
            path: path.display().to_string(),
            what: "private key",
        })
}

/// The certificates in a PEM file (at least one).
fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_items(path, what, |r| rustls_pemfile::certs(r).collect())
}

impl TlsMaterial {
    /// Load everything and check that our certificate names `fqdn`, has both
    /// EKUs and chains to one of the configured trust anchors.
    pub fn load(paths: &TlsPaths, fqdn: &str) -> Result<TlsMaterial, TlsError> {
        let chain = load_certs(&paths.cert, "certificate")?;
        let key = load_key(&paths.key)?;
        let anchors = load_certs(&paths.ca, "CA certificate")?;
        let mut roots = RootCertStore::empty();
        for a in anchors {
            roots.add(a).map_err(|e| TlsError::File {
                path: paths.ca.display().to_string(),
                message: format!("unusable trust anchor: {e}"),
            })?;
        }
        let mut crls = Vec::new();
        let mut crl_files = Vec::new();
        for p in &paths.crls {
            for crl in pem_items(p, "CRL", |r| rustls_pemfile::crls(r).collect())? {
                crl_files.push(CrlFile::parse(p, &crl)?);
                crls.push(crl);
            }
        }
        let now = OffsetDateTime::now_utc();
        for f in crl_files.iter().filter(|f| f.expired_at(now)) {
            tracing::warn!(
                crl = %f.path.display(),
                issuer = %f.issuer,
                next_update = %f.next_update.map(crate::rfc3339).unwrap_or_default(),
                policy = paths.crl_expired.as_str(),
                "CRL expired (tls.crl_expired decides whether peers it covers are refused)"
            );
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
            crl_files,
            crl_expired: paths.crl_expired,
            own,
            sni: Vec::new(),
            keylog: match &paths.keylog {
                Some(p) => {
                    tracing::warn!(path = %p.display(), "TLS key log enabled (tls.keylog): whoever reads this file can decrypt this node's mesh and client traffic");
                    Some(Arc::new(KeyLogPath::open(p)?) as Arc<dyn rustls::KeyLog>)
                }
                None => None,
            },
        };
        // Our own certificate must pass the checks our peers will apply,
        // except CRL expiry: a node whose CRL went stale still starts (and
        // reloads), so that `ctl check` can say so; peers are refused or
        // not by `tls.crl_expired`.
        let self_check = TrustPolicy {
            crl_expired: CrlExpired::Warn,
            ..material.policy()
        };
        let webpki = self_check.client_verifier(ClientCert::Required)?;
        if let Err(e) = webpki.verify_client_cert(&material.chain[0], &material.chain[1..], UnixTime::now()) {
            return Err(own_err(format!("does not verify against {}: {e}", paths.ca.display())));
        }
        Ok(material)
    }

    /// The trust policy of this material: its anchors and CRLs.
    pub fn policy(&self) -> TrustPolicy {
        TrustPolicy {
            roots: self.roots.clone(),
            crls: self.crls.clone(),
            crl_expired: self.crl_expired,
        }
    }

    /// Add certificates the client port serves by SNI (e.g. a pool FQDN).
    pub fn with_sni(mut self, pairs: &[(std::path::PathBuf, std::path::PathBuf)]) -> Result<TlsMaterial, TlsError> {
        for (cert, key) in pairs {
            let chain = load_certs(cert, "certificate")?;
            self.sni.push(certified_key(chain, &load_key(key)?)?);
        }
        Ok(self)
    }
}

/// The crypto provider every config and verifier uses: aws-lc-rs, with
/// TLS 1.3's AES-128-GCM/SHA-256 first (servers here pick by their own order).
/// Both suites are sound; SHA-256 has CPU instructions where SHA-384 has
/// none, and the key schedule's HMACs were 8 % of a mesh handshake's CPU.
/// Built once: verifiers ask for it on every handshake.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::LazyLock<Arc<CryptoProvider>> = std::sync::LazyLock::new(|| {
        let mut p = rustls::crypto::aws_lc_rs::default_provider();
        // A stable sort: only the preferred suite moves, the rest keep their order.
        p.cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        Arc::new(p)
    });
    PROVIDER.clone()
}
