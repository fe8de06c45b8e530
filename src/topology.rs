//! Topology tooling behind `sipmesh topology`: key files and diff display.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::Deserialize;
use sipmesh_state::{AdminKey, TopologyDiff, TrustedServer};

/// File name of the admin private key made by `keygen`.
pub const ADMIN_KEY_FILE: &str = "topology-admin.key";
/// File name of the admin public key made by `keygen`.
pub const ADMIN_PUB_FILE: &str = "topology-admin.pub";

/// Write a file through a temporary and a rename, so readers never see half of it.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp-sipmesh");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Make a key pair in `dir`; refuses to overwrite an existing key.
pub fn keygen(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_path = dir.join(ADMIN_KEY_FILE);
    let pub_path = dir.join(ADMIN_PUB_FILE);
    if key_path.exists() {
        bail!(
            "{} already exists; refusing to overwrite a signing key",
            key_path.display()
        );
    }
    let key = AdminKey::generate();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .with_context(|| format!("cannot create {}", key_path.display()))?;
    std::io::Write::write_all(&mut f, key.to_pem().as_bytes())?;
    std::fs::write(&pub_path, key.public().to_text() + "\n")?;
    Ok((key_path, pub_path))
}

/// A diff as it comes back over the debug socket (or computed locally).
#[derive(Debug, Default, Deserialize)]
pub struct TopologyDiffView {
    /// Added members.
    pub added: Vec<TrustedServer>,
    /// Removed members.
    pub removed: Vec<TrustedServer>,
    /// Changed members (old, new).
    pub changed: Vec<(TrustedServer, TrustedServer)>,
    /// Federation policy changes, one line each.
    #[serde(default)]
    pub federation: Vec<String>,
}

impl From<TopologyDiff> for TopologyDiffView {
    fn from(d: TopologyDiff) -> Self {
        TopologyDiffView {
            added: d.added,
            removed: d.removed,
            changed: d.changed,
            federation: d.federation,
        }
    }
}

/// An optional address as the diff shows it.
fn shown(a: Option<std::net::SocketAddr>) -> String {
    a.map_or_else(|| "none".to_owned(), |a| a.to_string())
}

impl TopologyDiffView {
    /// One line per change: `+`, `-`, `~`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for m in &self.added {
            out += &format!(
                "+ {} ({}, mesh {}, client {})\n",
                m.fqdn,
                m.role,
                m.mesh_addr,
                shown(m.client_addr)
            );
        }
        for m in &self.removed {
            out += &format!("- {} ({}, mesh {})\n", m.fqdn, m.role, m.mesh_addr);
        }
        for (o, n) in &self.changed {
            let mut what = Vec::new();
            if o.role != n.role {
                what.push(format!("role {} -> {}", o.role, n.role));
            }
            if o.mesh_addr != n.mesh_addr {
                what.push(format!("mesh_addr {} -> {}", o.mesh_addr, n.mesh_addr));
            }
            if o.client_addr != n.client_addr {
                what.push(format!(
                    "client_addr {} -> {}",
                    shown(o.client_addr),
                    shown(n.client_addr)
                ));
            }
            if o.pool != n.pool {
                what.push(format!("pool {:?} -> {:?}", o.pool, n.pool));
            }
            out += &format!("~ {}: {}\n", n.fqdn, what.join(", "));
        }
        for line in &self.federation {
            out += line;
            out.push('\n');
        }
        out
    }
}
