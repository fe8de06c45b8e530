//! `DIR/cluster.json`, the "local cluster contract" scripts rely on:
//! [`ClusterFile`], [`ClusterUser`], [`ClusterNode`], and the owner-only
//! writer used for it and the other secrets `cluster up` writes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sipmesh_state::Role;

use super::{alive, CLUSTER_FILE};

/// `cluster.json`; field names are an interface (extend, never rename).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    /// SIP domain of the cluster.
    pub domain: String,
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// CA private key (PEM), so test tools can issue more certificates.
    pub ca_key: PathBuf,
    /// The CA directory usable with `sipmesh pki issue --ca`.
    pub ca_dir: PathBuf,
    /// The CRL file every node loads.
    pub crl: PathBuf,
    /// The topology file every node was started with (signed).
    pub topology: PathBuf,
    /// The topology admin's private key, so scripts can sign and publish changes.
    pub topology_key: PathBuf,
    /// The matching public key every node is configured with.
    pub topology_public_key: PathBuf,
    /// Demo SIP users (Digest credentials for any node's client port).
    pub users: Vec<ClusterUser>,
    /// Bench users (`UpOptions::load_users`), when there are any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_users: Option<LoadUsers>,
    /// The launcher's pid.
    pub launcher_pid: u32,
    /// The nodes.
    pub nodes: Vec<ClusterNode>,
    /// The edge, when started with `--edge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<ClusterEdge>,
}

/// The federation side of a cluster's edge.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterEdge {
    /// The edge's internal FQDN (a member of the topology).
    pub fqdn: String,
    /// The public name on its external certificate.
    pub federation_fqdn: String,
    /// The listener partners dial.
    pub federation_addr: SocketAddr,
    /// The CA of the external certificate (what partners trust).
    pub federation_ca: PathBuf,
    /// Its key, so tools can issue more external certificates.
    pub federation_ca_key: PathBuf,
}

/// A demo SIP user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterUser {
    /// Address of record.
    pub aor: String,
    /// Password.
    pub password: String,
}

/// Many numbered users with one password: `sip:{prefix}{n:05}@domain` for
/// `n` in `1..=count`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadUsers {
    /// Name prefix (`load`).
    pub prefix: String,
    /// How many.
    pub count: usize,
    /// Their one password.
    pub password: String,
}

impl LoadUsers {
    /// The user name of number `n` (1-based).
    pub fn name(&self, n: usize) -> String {
        format!("{}{n:05}", self.prefix)
    }
}

/// One node of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Node FQDN.
    pub fqdn: String,
    /// Role in the topology.
    pub role: Role,
    /// SIP client (TLS) address.
    pub client_addr: SocketAddr,
    /// Mesh (MTLS) address.
    pub mesh_addr: SocketAddr,
    /// Debug socket path.
    pub debug_socket: PathBuf,
    /// Data directory (the Store).
    pub data_dir: PathBuf,
    /// Process id.
    pub pid: u32,
    /// Its node.toml.
    pub config: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// An edge's federation listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation_addr: Option<SocketAddr>,
    /// Its Prometheus metrics listener (`GET /metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
    /// Its mesh page (`[admin] http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_http: Option<SocketAddr>,
}

impl ClusterFile {
    /// Read `DIR/cluster.json`.
    pub fn load(dir: &Path) -> anyhow::Result<ClusterFile> {
        let path = dir.join(CLUSTER_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a cluster file", path.display()))
    }

    pub(super) fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(CLUSTER_FILE);
        let tmp = dir.join(".cluster.json.tmp");
        // It lists the demo passwords: owner-only, like the keys.
        write_private(&tmp, &(serde_json::to_string_pretty(self)? + "\n"))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    pub(super) fn live_pids(&self) -> Vec<u32> {
        std::iter::once(self.launcher_pid)
            .chain(self.nodes.iter().map(|n| n.pid))
            .filter(|p| alive(*p))
            .collect()
    }
}

/// Write a file readable by its owner only (mode 0600).
pub(super) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // `mode` only applies to a file created here: an existing one keeps its
    // mode (e.g. 0644), so set it exactly, before the secret is written.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod 0600 {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
