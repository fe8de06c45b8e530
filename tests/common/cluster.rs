//! [`Cluster`]: `sipmesh cluster up` in a tempdir, its `cluster.json` parsed
//! into [`ClusterInfo`] / [`NodeInfo`], every node waited for until its mesh
//! is fully up; everything killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;

use super::debug::{debug, link, try_debug};
use super::poll::{poll_until, CLUSTER_UP_DEADLINE, POLL};
use super::proc::{kill_sipmesh_pid, tail, ProcGuard};
use super::BIN;

/// `DIR/cluster.json` as written by `cluster up`. Deliberately not
/// `sipmesh::cluster::ClusterFile`: scripts read the JSON, so the tests parse
/// the documented field names independently and a rename breaks them.
#[derive(Clone, Debug, Deserialize)]
pub struct ClusterInfo {
    pub domain: String,
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub ca_dir: PathBuf,
    pub crl: PathBuf,
    pub topology: PathBuf,
    #[serde(default)]
    pub users: Vec<Value>,
    pub launcher_pid: i32,
    pub nodes: Vec<NodeInfo>,
}

/// One node of `cluster.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct NodeInfo {
    pub fqdn: String,
    pub role: String,
    pub client_addr: String,
    pub mesh_addr: String,
    pub debug_socket: PathBuf,
    pub data_dir: PathBuf,
    pub pid: i32,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The metrics listener `cluster up` gives every node.
    #[serde(default)]
    pub metrics_addr: Option<String>,
    /// The mesh page `cluster up` gives every node.
    #[serde(default)]
    pub admin_http: Option<String>,
}

impl NodeInfo {
    /// The mesh address.
    pub fn mesh(&self) -> SocketAddr {
        self.mesh_addr
            .parse()
            .unwrap_or_else(|e| panic!("{}: mesh_addr {:?}: {e}", self.fqdn, self.mesh_addr))
    }

    /// The SIP client address.
    pub fn client(&self) -> SocketAddr {
        self.client_addr
            .parse()
            .unwrap_or_else(|e| panic!("{}: client_addr {:?}: {e}", self.fqdn, self.client_addr))
    }
}

/// A local cluster started with `sipmesh cluster up`; everything is killed on drop.
pub struct Cluster {
    /// Owns every file (kept alive as long as the cluster).
    pub tmp: TempDir,
    /// The `--dir` given to `cluster up`.
    pub dir: PathBuf,
    /// The parsed `cluster.json`.
    pub info: ClusterInfo,
    /// The `cluster up` process.
    pub launcher: ProcGuard,
    /// Launcher output.
    pub launcher_log: PathBuf,
    /// Processes the test started itself (restarted nodes).
    pub extra: Vec<ProcGuard>,
    /// PIDs of processes started outside `launcher`/`extra` to kill on drop.
    pub extra_pids: Vec<i32>,
}

impl Cluster {
    /// `cluster up --nodes n --heartbeat-ms .. --backoff-cap-ms ..`, then wait
    /// until every node reports `links_up == n-1`.
    pub fn up(n: usize, heartbeat_ms: u64, backoff_ms: u64) -> Cluster {
        Cluster::up_with_env(n, heartbeat_ms, backoff_ms, &[])
    }

    /// [`Cluster::up`] with extra environment for the launcher (nodes inherit it).
    pub fn up_with_env(n: usize, heartbeat_ms: u64, backoff_ms: u64, env: &[(&str, &str)]) -> Cluster {
        Cluster::up_with_args(n, heartbeat_ms, backoff_ms, &[], env)
    }

    /// [`Cluster::up_with_env`] with extra `cluster up` arguments (e.g. `--t1-ms 50`).
    pub fn up_with_args(n: usize, heartbeat_ms: u64, backoff_ms: u64, args: &[&str], env: &[(&str, &str)]) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("sipmesh-it")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().join("cluster");
        let launcher_log = tmp.path().join("launcher.log");
        let mut cmd = Command::new(BIN);
        cmd.args(["cluster", "up", "--nodes", &n.to_string(), "--dir"])
            .arg(&dir)
            .args(["--heartbeat-ms", &heartbeat_ms.to_string()])
            .args(["--backoff-cap-ms", &backoff_ms.to_string()])
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut launcher = ProcGuard::spawn("cluster up", cmd, &launcher_log);
        let json_path = dir.join("cluster.json");
        let info = poll_until(CLUSTER_UP_DEADLINE, POLL, || {
            if let Some(status) = launcher.try_wait() {
                panic!(
                    "cluster up exited early ({status}) before writing cluster.json:\n{}",
                    tail(&launcher_log, 80)
                );
            }
            let text = std::fs::read_to_string(&json_path).ok()?;
            serde_json::from_str::<ClusterInfo>(&text).ok()
        });
        let info = info.unwrap_or_else(|| {
            let text = std::fs::read_to_string(&json_path).unwrap_or_default();
            let parse = serde_json::from_str::<ClusterInfo>(&text).err();
            panic!(
                "no parsable {} within {CLUSTER_UP_DEADLINE:?} (parse error: {parse:?})\ncontent: {text}\nlauncher log:\n{}",
                json_path.display(),
                tail(&launcher_log, 80)
            )
        });
        let cluster = Cluster {
            tmp,
            dir,
            info,
            launcher,
            launcher_log,
            extra: Vec::new(),
            extra_pids: Vec::new(),
        };
        assert_eq!(
            cluster.info.nodes.len(),
            n,
            "cluster.json lists {} nodes",
            cluster.info.nodes.len()
        );
        cluster.wait_full_mesh(CLUSTER_UP_DEADLINE);
        cluster
    }

    /// Wait until every node answers `status` with `links_up == n-1`; on
    /// timeout print the node logs and panic.
    pub fn wait_full_mesh(&self, deadline: Duration) {
        let want = self.info.nodes.len() as u64 - 1;
        let mut last = Vec::new();
        let ok = poll_until(deadline, POLL, || {
            let statuses: Vec<Result<Value, String>> = self
                .info
                .nodes
                .iter()
                .map(|n| try_debug(&n.debug_socket, "status"))
                .collect();
            last = self
                .info
                .nodes
                .iter()
                .zip(&statuses)
                .map(|(n, s)| match s {
                    Ok(s) => format!("{}: links_up={} ", n.fqdn, s["links_up"]),
                    Err(e) => format!("{}: {e} ", n.fqdn),
                })
                .collect();
            statuses
                .iter()
                .all(|s| matches!(s, Ok(s) if s["links_up"].as_u64() == Some(want)))
                .then_some(())
        });
        if ok.is_none() {
            panic!(
                "cluster not fully meshed (links_up == {want} everywhere) within {deadline:?}: {}\n{}",
                last.concat(),
                self.logs()
            );
        }
    }

    /// Node by fqdn.
    pub fn node(&self, fqdn: &str) -> &NodeInfo {
        self.info
            .nodes
            .iter()
            .find(|n| n.fqdn == fqdn)
            .unwrap_or_else(|| panic!("no node {fqdn} in cluster.json"))
    }

    /// `debug` on the node named `fqdn`.
    pub fn debug(&self, fqdn: &str, cmd: &str) -> Value {
        debug(&self.node(fqdn).debug_socket, cmd)
    }

    /// The link row of `fqdn` toward `peer` (panics when missing).
    pub fn link(&self, fqdn: &str, peer: &str) -> Value {
        link(&self.node(fqdn).debug_socket, peer).unwrap_or_else(|| panic!("{fqdn} has no link row for {peer}"))
    }

    /// Tails of the launcher and node logs.
    pub fn logs(&self) -> String {
        let mut s = format!("---- launcher log\n{}\n", tail(&self.launcher_log, 40));
        for n in &self.info.nodes {
            s += &format!("---- {} ({})\n{}\n", n.fqdn, n.log.display(), tail(&n.log, 60));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== cluster logs at failure\n{}", self.logs());
        }
        for n in &self.info.nodes {
            kill_sipmesh_pid(n.pid);
        }
        for pid in &self.extra_pids {
            kill_sipmesh_pid(*pid);
        }
        self.extra.clear();
        self.launcher.kill();
    }
}
