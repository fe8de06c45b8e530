//! [`Store`]: the embedded ACID store (redb) for the trusted-server set,
//! its version history, and a small key/value area.
//!
//! Tables:
//! - `topology_history: u64 -> &[u8]`: every committed [`Topology`], as JSON,
//!   keyed by version.
//! - `meta: &str -> &[u8]`: the current topology version under
//!   [`CURRENT_TOPOLOGY_KEY`] (u64 big-endian), plus whatever later features
//!   put there through [`Store::put_meta`].
//!
//! - `bindings: &str -> &[u8]`: registrar bindings per AOR, as JSON.
//!
//! Everything read back is re-validated through [`Topology::new`], so a
//! damaged entry surfaces as [`StoreError::Corrupt`] instead of a bad set.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::binding::Binding;
use crate::topology::{Topology, TopologyError};

const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("topology_history");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BINDINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("bindings");

/// Key in the `meta` table holding the current topology version (u64
/// big-endian). Reserved: [`Store::put_meta`] refuses it.
pub const CURRENT_TOPOLOGY_KEY: &str = "topology.current";

/// `meta` key of the signed document of the current topology (when it came signed).
pub const SIGNED_TOPOLOGY_KEY: &str = "topology.signed";

/// Embedded ACID store (redb) for the trusted-server set and its history.
///
/// `Send + Sync`: share it behind an `Arc`; redb serialises writers itself.
pub struct Store {
    db: Database,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be created or opened.
    #[error("cannot open store {}: {message}", .path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A topology was offered whose version is not newer than the current one.
    #[error("topology version {offered} is not newer than the current version {current}")]
    StaleVersion {
        /// The version already committed.
        current: u64,
        /// The version that was refused.
        offered: u64,
    },
    /// Stored data does not decode or does not validate.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// A topology offered to [`Store::put_topology`] fails validation
    /// (storing it would make it unreadable later).
    #[error("refusing to store topology: {0}")]
    Invalid(TopologyError),
    /// [`Store::put_meta`] was asked to write a key the store manages itself.
    #[error("meta key \"{0}\" is reserved")]
    ReservedKey(String),
    /// Any other database error.
    #[error("store backend error: {0}")]
    Backend(String),
}

fn backend(e: impl Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Store {
    /// Open the database at `path`, creating the file (and parent
    /// directories) if missing.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: path.to_owned(),
            message,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_err(e.to_string()))?;
        }
        make_private(path).map_err(|e| open_err(format!("cannot make it private (0600): {e}")))?;
        let db = Database::create(path).map_err(|e| open_err(e.to_string()))?;
        // Create both tables up front so read transactions never meet a
        // missing table.
        let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        txn.open_table(HISTORY).map_err(|e| open_err(e.to_string()))?;
        txn.open_table(META).map_err(|e| open_err(e.to_string()))?;
        txn.open_table(BINDINGS).map_err(|e| open_err(e.to_string()))?;
        txn.commit().map_err(|e| open_err(e.to_string()))?;
        Ok(Store { db })
    }

    /// The current topology, or `None` before the first
    /// [`put_topology`](Store::put_topology).
    pub fn current_topology(&self) -> Result<Option<Topology>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let Some(version) = current_version(&meta)? else {
            return Ok(None);
        };
        let history = txn.open_table(HISTORY).map_err(backend)?;
        match read_version(&history, version)? {
            Some(t) => Ok(Some(t)),
            None => Err(StoreError::Corrupt(format!(
                "current topology version {version} has no history entry"
            ))),
        }
    }

    /// Commit a new topology version: the history entry and the "current"
    /// pointer in ONE write transaction. Refuses version <= current with
    /// [`StoreError::StaleVersion`], and a topology that does not validate
    /// with [`StoreError::Invalid`].
    pub fn put_topology(&self, topology: &Topology) -> Result<(), StoreError> {
        self.put_topology_signed(topology, None)
    }

    /// Like [`Store::put_topology`], also keeping the signed document it came
    /// from (so it can be replicated after a restart), in the same transaction.
    pub fn put_topology_signed(&self, topology: &Topology, signed: Option<&str>) -> Result<(), StoreError> {
        let checked = Topology::new(topology.version, topology.members.clone())
            .and_then(|t| t.with_federation(topology.federation.clone()))
            .map_err(StoreError::Invalid)?;
        let bytes = serde_json::to_vec(&checked).map_err(backend)?;
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut meta = txn.open_table(META).map_err(backend)?;
            if let Some(current) = current_version(&meta)? {
                if checked.version <= current {
                    // Dropping the uncommitted transaction aborts it.
                    return Err(StoreError::StaleVersion {
                        current,
                        offered: checked.version,
                    });
                }
            }
            let mut history = txn.open_table(HISTORY).map_err(backend)?;
            history.insert(checked.version, bytes.as_slice()).map_err(backend)?;
            meta.insert(CURRENT_TOPOLOGY_KEY, checked.version.to_be_bytes().as_slice())
                .map_err(backend)?;
            match signed {
                Some(doc) => {
                    meta.insert(SIGNED_TOPOLOGY_KEY, doc.as_bytes()).map_err(backend)?;
                }
                None => {
                    meta.remove(SIGNED_TOPOLOGY_KEY).map_err(backend)?;
                }
            }
        }
        txn.commit().map_err(backend)
    }

    /// Replace the bindings of `aor` (an empty list removes the AOR), in one transaction.
    pub fn put_bindings(&self, aor: &str, bindings: &[Binding]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut table = txn.open_table(BINDINGS).map_err(backend)?;
            if bindings.is_empty() {
                table.remove(aor).map_err(backend)?;
            } else {
                let bytes = serde_json::to_vec(bindings).map_err(backend)?;
                table.insert(aor, bytes.as_slice()).map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)
    }

    /// Replace the bindings of several AORs (an empty list removes the AOR)
    /// in ONE transaction: one commit (one fsync) for a whole batch. Applied
    /// in order, so when an AOR appears twice the later list wins.
    pub fn put_bindings_batch(&self, writes: &[(String, Vec<Binding>)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut table = txn.open_table(BINDINGS).map_err(backend)?;
            for (aor, bindings) in writes {
                if bindings.is_empty() {
                    table.remove(aor.as_str()).map_err(backend)?;
                } else {
                    let bytes = serde_json::to_vec(bindings).map_err(backend)?;
                    table.insert(aor.as_str(), bytes.as_slice()).map_err(backend)?;
                }
            }
        }
        txn.commit().map_err(backend)
    }

    /// The bindings of `aor` (possibly expired ones: the caller filters by time).
    pub fn bindings(&self, aor: &str) -> Result<Vec<Binding>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(BINDINGS).map_err(backend)?;
        match table.get(aor).map_err(backend)? {
            Some(v) => {
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(format!("bindings of {aor}: {e}")))
            }
            None => Ok(Vec::new()),
        }
    }

    /// Every stored binding, by AOR.
    pub fn all_bindings(&self) -> Result<Vec<Binding>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(BINDINGS).map_err(backend)?;
        let mut all = Vec::new();
        for entry in table.iter().map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            let list: Vec<Binding> = serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Corrupt(format!("bindings of {}: {e}", k.value())))?;
            all.extend(list);
        }
        Ok(all)
    }

    /// The signed document of the current topology, if it came signed.
    pub fn signed_topology(&self) -> Result<Option<String>, StoreError> {
        match self.get_meta(SIGNED_TOPOLOGY_KEY)? {
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| StoreError::Corrupt("signed topology is not UTF-8".into())),
            None => Ok(None),
        }
    }

    /// Every stored topology version, ascending.
    pub fn topology_versions(&self) -> Result<Vec<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let history = txn.open_table(HISTORY).map_err(backend)?;
        let mut versions = Vec::new();
        for entry in history.iter().map_err(backend)? {
            let (key, _) = entry.map_err(backend)?;
            versions.push(key.value());
        }
        Ok(versions)
    }

    /// The topology stored as `version`, if any.
    pub fn topology_version(&self, version: u64) -> Result<Option<Topology>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let history = txn.open_table(HISTORY).map_err(backend)?;
        read_version(&history, version)
    }

    /// Generic small key/value area for later features (registrations,
    /// signed documents): table "meta". [`CURRENT_TOPOLOGY_KEY`] is reserved.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if key == CURRENT_TOPOLOGY_KEY || key == SIGNED_TOPOLOGY_KEY {
            return Err(StoreError::ReservedKey(key.to_owned()));
        }
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(key, value).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }

    /// The value stored under `key` in table "meta", if any.
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let meta = txn.open_table(META).map_err(backend)?;
        let value = meta.get(key).map_err(backend)?;
        Ok(value.map(|v| v.value().to_vec()))
    }
}

/// Mode of the store file: registrations (contacts, addresses) and the
/// trusted set are nobody else's business.
pub const STORE_FILE_MODE: u32 = 0o600;

/// Create `path` with [`STORE_FILE_MODE`] if missing (redb initialises an
/// empty file), and set that mode on an existing one (which may be 0644
/// from an older version or a copy).
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(STORE_FILE_MODE)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(STORE_FILE_MODE))
}

/// The "current" pointer from the meta table.
fn current_version(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Option<u64>, StoreError> {
    let Some(value) = meta.get(CURRENT_TOPOLOGY_KEY).map_err(backend)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = value.value().try_into().map_err(|_| {
        StoreError::Corrupt(format!(
            "{CURRENT_TOPOLOGY_KEY} is {} bytes, expected 8",
            value.value().len()
        ))
    })?;
    Ok(Some(u64::from_be_bytes(bytes)))
}

/// Decode and re-validate one history entry.
fn read_version(
    history: &impl ReadableTable<u64, &'static [u8]>,
    version: u64,
) -> Result<Option<Topology>, StoreError> {
    let Some(value) = history.get(version).map_err(backend)? else {
        return Ok(None);
    };
    let corrupt = |why: String| StoreError::Corrupt(format!("topology version {version}: {why}"));
    let decoded: Topology = serde_json::from_slice(value.value()).map_err(|e| corrupt(e.to_string()))?;
    if decoded.version != version {
        return Err(corrupt(format!("entry carries version {}", decoded.version)));
    }
    Topology::new(decoded.version, decoded.members)
        .and_then(|t| t.with_federation(decoded.federation))
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fqdn, Role, TrustedServer};

    fn topology(version: u64, names: &[&str]) -> Topology {
        let members = names
            .iter()
            .enumerate()
            .map(|(i, name)| TrustedServer {
                fqdn: Fqdn::new(name).unwrap(),
                role: Role::FrontEnd,
                mesh_addr: format!("127.0.0.1:{}", 6001 + 2 * i)
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
                client_addr: Some(format!("127.0.0.1:{}", 6000 + 2 * i).parse().unwrap()),
                pool: None,
                federation_addr: None,
                federation_fqdn: None,
            })
            .collect();
        Topology::new(version, members).unwrap()
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
    }

    #[test]
    fn store_file_is_private_also_when_it_existed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        drop(Store::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        store.put_meta("k", b"v").unwrap();
        assert_eq!(store.get_meta("k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("a/b/state.redb")).unwrap();
        assert_eq!(store.current_topology().unwrap(), None);
        assert_eq!(store.topology_versions().unwrap(), Vec::<u64>::new());
        assert_eq!(store.topology_version(1).unwrap(), None);
        assert_eq!(store.get_meta("nothing").unwrap(), None);
    }

    #[test]
    fn current_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let v1 = topology(1, &["fe1.contoso.test", "fe2.contoso.test"]);
        {
            let store = Store::open(&path).unwrap();
            store.put_topology(&v1).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.current_topology().unwrap(), Some(v1.clone()));
        assert_eq!(store.topology_version(1).unwrap(), Some(v1));
    }

    #[test]
    fn stale_version_is_refused_and_current_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let v1 = topology(1, &["fe1.contoso.test"]);
        let v2 = topology(2, &["fe1.contoso.test", "fe2.contoso.test"]);
        store.put_topology(&v1).unwrap();
        store.put_topology(&v2).unwrap();

        let err = store.put_topology(&v1).unwrap_err();
        assert!(
            matches!(err, StoreError::StaleVersion { current: 2, offered: 1 }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "topology version 1 is not newer than the current version 2"
        );
        // Same version again is stale too.
        assert!(matches!(
            store.put_topology(&v2),
            Err(StoreError::StaleVersion { current: 2, offered: 2 })
        ));
        assert_eq!(store.current_topology().unwrap(), Some(v2.clone()));
        assert_eq!(store.topology_versions().unwrap(), vec![1, 2]);
        assert_eq!(store.topology_version(1).unwrap(), Some(v1));
        assert_eq!(store.topology_version(2).unwrap(), Some(v2));
        assert_eq!(store.topology_version(3).unwrap(), None);
    }

    #[test]
    fn invalid_topology_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let bad = Topology {
            version: 0,
            members: topology(1, &["fe1.contoso.test"]).members,
            federation: Default::default(),
        };
        let err = store.put_topology(&bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refusing to store topology: invalid topology: 1 problem(s):\n  - version: must be at least 1"
        );
        assert_eq!(store.current_topology().unwrap(), None);
    }

    #[test]
    fn meta_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).unwrap();
            store.put_meta("registrations.alice", b"\x00\x01binary").unwrap();
            store.put_meta("k", b"first").unwrap();
            store.put_meta("k", b"second").unwrap();
            store.put_meta("empty", b"").unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.get_meta("registrations.alice").unwrap(),
            Some(b"\x00\x01binary".to_vec())
        );
        assert_eq!(store.get_meta("k").unwrap(), Some(b"second".to_vec()));
        assert_eq!(store.get_meta("empty").unwrap(), Some(Vec::new()));
        assert_eq!(store.get_meta("missing").unwrap(), None);
    }

    #[test]
    fn current_pointer_key_is_reserved() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        let err = store.put_meta(CURRENT_TOPOLOGY_KEY, b"x").unwrap_err();
        assert!(matches!(&err, StoreError::ReservedKey(k) if k == "topology.current"));
        assert_eq!(err.to_string(), "meta key \"topology.current\" is reserved");
        // The pointer itself is readable through get_meta.
        store.put_topology(&topology(5, &["fe1.contoso.test"])).unwrap();
        assert_eq!(
            store.get_meta(CURRENT_TOPOLOGY_KEY).unwrap(),
            Some(5u64.to_be_bytes().to_vec())
        );
    }

    #[test]
    fn corrupt_entry_names_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.redb")).unwrap();
        store.put_topology(&topology(1, &["fe1.contoso.test"])).unwrap();
        // Damage the entry behind the store's back.
        let txn = store.db.begin_write().unwrap();
        {
            let mut history = txn.open_table(HISTORY).unwrap();
            history.insert(1, b"{\"version\":1,\"members\":[]}".as_slice()).unwrap();
            history.insert(2, b"not json".as_slice()).unwrap();
        }
        txn.commit().unwrap();

        let err = store.current_topology().unwrap_err();
        assert_eq!(
            err.to_string(),
            "store is corrupt: topology version 1: invalid topology: 1 problem(s):\n  - topology has no members"
        );
        let err = store.topology_version(2).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.starts_with("topology version 2: expected ident")),
            "{err:?}"
        );
    }

    #[test]
    fn open_under_a_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"not a directory").unwrap();
        let path = file.join("state.redb");
        match Store::open(&path) {
            Err(StoreError::Open { path: p, message }) => {
                assert_eq!(p, path);
                assert!(!message.is_empty());
            }
            Err(other) => panic!("expected Open, got {other:?}"),
            Ok(_) => panic!("expected Open error"),
        }
        let Err(err) = Store::open(&path) else {
            panic!("expected an error")
        };
        assert!(err
            .to_string()
            .starts_with(&format!("cannot open store {}: ", path.display())));
    }

    #[test]
    fn bindings_persist_per_aor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let b = Binding {
            aor: "sip:alice@contoso.test".into(),
            contact: "<sip:alice@127.0.0.1:5999;transport=tls>".into(),
            expires_at: 2_000_000_000,
            flow_node: "fe1.contoso.test".into(),
            flow_id: 7,
            call_id: "c1".into(),
            cseq: 2,
            updated_at: 1_999_999_000,
            q: crate::binding::Q_DEFAULT,
        };
        {
            let store = Store::open(&path).unwrap();
            store.put_bindings(&b.aor, std::slice::from_ref(&b)).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.bindings(&b.aor).unwrap(), vec![b.clone()]);
        assert_eq!(store.all_bindings().unwrap().len(), 1);
        store.put_bindings(&b.aor, &[]).unwrap();
        assert!(store.bindings(&b.aor).unwrap().is_empty());
        // A batch: later entries for the same AOR win, empty lists remove.
        let bob = Binding {
            aor: "sip:bob@contoso.test".into(),
            ..b.clone()
        };
        let later = Binding { cseq: 3, ..b.clone() };
        store
            .put_bindings_batch(&[
                (b.aor.clone(), vec![b.clone()]),
                (bob.aor.clone(), vec![bob.clone()]),
                (b.aor.clone(), vec![later.clone()]),
                (bob.aor.clone(), vec![]),
            ])
            .unwrap();
        assert_eq!(store.bindings(&b.aor).unwrap(), vec![later]);
        assert!(store.bindings(&bob.aor).unwrap().is_empty());
        assert_eq!(b.expires_in(1_999_999_990), 10);
    }
}
