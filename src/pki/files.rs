//! File writes for the CA: atomic replacement, and private (0600) key files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::{io_err, PkiError};

/// Create `dir` and its parents, naming `dir` in the error.
pub(super) fn create_dir_all(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))
}

/// Write `data` to `path` via a temporary file in the same directory and a rename.
///
/// `private` files get mode 0600 before any secret byte is written.
pub(super) fn write_atomic(path: &Path, data: &[u8], private: bool) -> Result<(), PkiError> {
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

#[cfg(test)]
mod tests {
    use super::super::{init_ca, issue, IssueOptions};
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
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
}
