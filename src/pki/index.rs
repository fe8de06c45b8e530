//! `index.json`: every certificate the CA issued and the last CRL number used.
//!
//! [`revoke`](super::revoke) edits it and [`write_crl`](super::write_crl) reads
//! the revoked entries back; it is always rewritten whole and atomically.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::files::write_atomic;
use super::{io_err, PkiError};

/// On-disk `index.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Index {
    /// Number of the last CRL written (0: none yet).
    pub(super) crl_number: u64,
    /// Every certificate issued, in issue order.
    pub(super) certs: Vec<IndexEntry>,
}

/// One issued certificate in `index.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct IndexEntry {
    /// Lower-case hex, no colons.
    pub(super) serial: String,
    pub(super) fqdn: String,
    /// RFC 3339.
    pub(super) not_after: String,
    /// RFC 3339, or null while the certificate is good.
    pub(super) revoked_at: Option<String>,
}

/// Read the index at `path`; a missing file means the directory is not a CA.
pub(super) fn load_index(path: &Path) -> Result<Index, PkiError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PkiError::NotACa(path.to_path_buf())),
        Err(e) => return Err(io_err(path, e)),
    };
    serde_json::from_str(&text).map_err(|e| PkiError::Index(format!("{}: {e}", path.display())))
}

/// Replace the index at `path` with `index`, pretty-printed.
pub(super) fn save_index(path: &Path, index: &Index) -> Result<(), PkiError> {
    let mut text =
        serde_json::to_string_pretty(index).map_err(|e| PkiError::Index(format!("{}: {e}", path.display())))?;
    text.push('\n');
    write_atomic(path, text.as_bytes(), false)
}
