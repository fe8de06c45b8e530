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
//! - [`issue()`] with [`IssueOptions`]: issue an end-entity certificate.
//! - [`revoke`]: mark a serial revoked in the index.
//! - [`write_crl`] ([`write_crl_dated`]): publish a CRL listing every revoked serial.
//! - [`ca_cert_pem`]: read the CA certificate back (for trust stores in tests).
//! - [`PkiError`]: what can go wrong, naming the offending path or value.
//!
//! # Files
//!
//! - `mod.rs`: this facade, the CA file names, [`PkiError`] and the time helpers
//!   every step shares.
//! - `ca.rs`: [`init_ca`], [`ca_cert_pem`], and loading a CA directory to sign with.
//! - `issue.rs`: [`IssueOptions`], [`Issued`] and [`issue()`].
//! - `crl.rs`: [`revoke`], [`write_crl`] and [`CrlInfo`].
//! - `index.rs`: the `index.json` record of issued certificates.
//! - `names.rs`: validation of DNS names, SAN URIs and CA names; subject names.
//! - `serial.rs`: random serials and their hex forms.
//! - `files.rs`: atomic (and, for keys, private) file writes.

use std::io;
use std::path::{Path, PathBuf};

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

mod ca;
mod crl;
mod files;
mod index;
mod issue;
mod names;
mod serial;
#[cfg(test)]
mod test_util;

pub use ca::{ca_cert_pem, init_ca, CaInfo};
pub use crl::{revoke, write_crl, write_crl_dated, CrlInfo};
pub use issue::{issue, IssueOptions, Issued};

/// File name of the CA certificate inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the issued-certificate index inside a CA directory.
pub const INDEX_FILE: &str = "index.json";

/// Back-dating of `not_before` so peers with slightly slow clocks accept fresh certs.
const CLOCK_SKEW: Duration = Duration::hours(1);

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

fn io_err(path: &Path, cause: io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

fn rcgen_err(e: rcgen::Error) -> PkiError {
    PkiError::Rcgen(e.to_string())
}

/// Certificates carry whole seconds; strip so the index matches the certificate.
fn strip_nanos(t: OffsetDateTime) -> OffsetDateTime {
    t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(t)
}

fn rfc3339(t: OffsetDateTime) -> Result<String, PkiError> {
    t.format(&Rfc3339)
        .map_err(|e| PkiError::Index(format!("cannot format time {t}: {e}")))
}
