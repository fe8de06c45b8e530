//! Shared harness for the multi-node integration tests.
//!
//! - [`Cluster`]: `sipmesh cluster up` in a tempdir, `cluster.json` parsed,
//!   every node waited for until its mesh is fully up.
//! - [`SingleNode`]: one hand-built node (own CA, topology, node.toml) for the
//!   rejection matrix.
//! - [`debug`] / [`try_debug`]: one request on a node's debug socket.
//! - [`eventually`] / [`poll_until`]: bounded polling.
//! - [`established_between`]: ESTABLISHED TCP connections between two node
//!   processes, from `/proc`.
//! - TLS client helpers (tokio-rustls) for tests that speak to a mesh port.
//!
//! Every process a test starts is owned by a guard that SIGKILLs and reaps it
//! on drop, panics included.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use serde_json::Value;
use sipmesh::pki::{self, IssueOptions, Issued};
use sipmesh_actors::config::{MeshTiming, NodeConfig, TlsPaths};
use sipmesh_actors::wire::{encode_to_vec, Frame, Hello, PROTOCOL_VERSION};
use sipmesh_state::{Fqdn, Role, Topology, TrustedServer};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sipmesh");
/// Domain of `cluster up` and of the hand-built nodes.
pub const DOMAIN: &str = "contoso.test";
/// Default poll interval of [`eventually`].
pub const POLL: Duration = Duration::from_millis(50);
/// How long a cluster gets to come fully up.
pub const CLUSTER_UP_DEADLINE: Duration = Duration::from_secs(15);
/// How long a single node gets to answer on its debug socket.
pub const NODE_READY_DEADLINE: Duration = Duration::from_secs(10);

/// `feN.contoso.test`.
pub fn fe(n: usize) -> String {
    format!("fe{n}.{DOMAIN}")
}

// ---------------------------------------------------------------- polling

/// Poll `f` every `every` until it returns `Some` or `deadline` passes.
pub fn poll_until<T>(deadline: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Poll `f` every 50 ms until it returns `Some`; panic naming `what` after `deadline`.
pub fn eventually<T>(deadline: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_until(deadline, POLL, f).unwrap_or_else(|| panic!("timed out after {deadline:?} waiting for {what}"))
}

// ---------------------------------------------------------------- debug socket

/// One request on a debug socket; `Ok(result)` or `Err(error text)` (transport
/// errors included, so it can be polled before the socket exists).
pub fn try_debug(socket: &Path, cmd: &str) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    if line.is_empty() {
        return Err("debug socket closed without an answer".into());
    }
    let answer: Value = serde_json::from_str(&line).map_err(|e| format!("bad answer {line:?}: {e}"))?;
    match answer.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(answer.get("result").cloned().unwrap_or(Value::Null)),
        Some(false) => Err(format!(
            "ok:false: {}",
            answer.get("error").and_then(Value::as_str).unwrap_or("<no error text>")
        )),
        None => Err(format!("answer without \"ok\": {line}")),
    }
}

/// One request on a debug socket; the `result`. Panics on `ok:false` with its error.
pub fn debug(socket: &Path, cmd: &str) -> Value {
    try_debug(socket, cmd).unwrap_or_else(|e| panic!("debug {cmd:?} on {}: {e}", socket.display()))
}

/// The `links` rows of a node.
pub fn links(socket: &Path) -> Vec<Value> {
    as_array(debug(socket, "links"), "links")
}

/// The `links` row for `peer`, if any.
pub fn link(socket: &Path, peer: &str) -> Option<Value> {
    links(socket).into_iter().find(|l| l["peer"] == peer)
}

/// The `rejections` records of a node, oldest first.
pub fn rejections(socket: &Path) -> Vec<Value> {
    as_array(debug(socket, "rejections"), "rejections")
}

fn as_array(v: Value, what: &str) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        other => panic!("{what}: expected a JSON array, got {other}"),
    }
}

/// Wait until the node logged more than `before` rejections; the newest one.
pub fn newest_rejection_after(socket: &Path, before: usize) -> Value {
    eventually(Duration::from_secs(3), "a new rejection record", || {
        let r = rejections(socket);
        (r.len() > before).then(|| r.last().cloned().expect("non-empty"))
    })
}

/// A link's `restarts` counter.
pub fn restarts(row: &Value) -> u64 {
    row["restarts"]
        .as_u64()
        .unwrap_or_else(|| panic!("link row without numeric restarts: {row}"))
}

// ---------------------------------------------------------------- processes

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// SIGKILL `pid` if it is still a live sipmesh process (guards against PID reuse).
pub fn kill_sipmesh_pid(pid: i32) {
    if pid <= 1 || !pid_alive(pid) {
        return;
    }
    let is_ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("sipmesh"))
        .unwrap_or(false);
    if is_ours {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ProcGuard {
    child: Option<Child>,
    /// For messages.
    pub name: String,
}

impl ProcGuard {
    /// Spawn `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> ProcGuard {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        ProcGuard {
            child: Some(child),
            name: name.to_owned(),
        }
    }

    /// Its PID.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    /// Exit status if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL and reap now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait (bounded) for it to exit by itself.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        poll_until(deadline, Duration::from_millis(20), || self.try_wait())
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of a file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A 127.0.0.1 port that was free a moment ago (bound, then released).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr")
}

// ---------------------------------------------------------------- cluster

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
}

impl NodeInfo {
    /// The mesh address.
    pub fn mesh(&self) -> SocketAddr {
        self.mesh_addr
            .parse()
            .unwrap_or_else(|e| panic!("{}: mesh_addr {:?}: {e}", self.fqdn, self.mesh_addr))
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

// ---------------------------------------------------------------- /proc/net/tcp

/// Socket inodes held by `pid` (from its `/proc/<pid>/fd` symlinks).
pub fn socket_inodes(pid: i32) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for entry in dir.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(i) = inode.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// One row of `/proc/net/tcp{,6}`.
#[derive(Clone, Debug)]
pub struct TcpRow {
    pub local_port: u16,
    pub remote_port: u16,
    /// Hex state; `01` = ESTABLISHED.
    pub state: String,
    pub inode: u64,
}

/// Every row of `/proc/net/tcp` and `/proc/net/tcp6`.
pub fn tcp_rows() -> Vec<TcpRow> {
    let port = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    let mut rows = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            if let (Some(local_port), Some(remote_port), Ok(inode)) = (port(f[1]), port(f[2]), f[9].parse()) {
                rows.push(TcpRow {
                    local_port,
                    remote_port,
                    state: f[3].to_owned(),
                    inode,
                });
            }
        }
    }
    rows
}

/// ESTABLISHED connections opened by process `a` to `b`'s mesh port, and by
/// `b` to `a`'s mesh port: `(a_to_b, b_to_a)`.
pub fn established_between(a_pid: i32, a_mesh_port: u16, b_pid: i32, b_mesh_port: u16) -> (usize, usize) {
    let a = socket_inodes(a_pid);
    let b = socket_inodes(b_pid);
    let rows = tcp_rows();
    let count = |mine: &HashSet<u64>, port: u16| {
        rows.iter()
            .filter(|r| r.state == "01" && mine.contains(&r.inode) && r.remote_port == port)
            .count()
    };
    (count(&a, b_mesh_port), count(&b, a_mesh_port))
}

// ---------------------------------------------------------------- PKI

/// A CA directory made with `sipmesh::pki`, issuing into distinct subdirs.
pub struct Pki {
    /// The CA directory.
    pub ca_dir: PathBuf,
    /// The CA certificate.
    pub ca_pem: PathBuf,
    root: PathBuf,
    issued: std::cell::Cell<u32>,
}

impl Pki {
    /// A new CA under `root/ca`.
    pub fn init(root: &Path, name: &str) -> Pki {
        let ca_dir = root.join("ca");
        let info = pki::init_ca(&ca_dir, name).unwrap_or_else(|e| panic!("init_ca {name}: {e}"));
        Pki {
            ca_pem: info.cert_path,
            ca_dir,
            root: root.to_owned(),
            issued: Default::default(),
        }
    }

    /// Use an existing CA directory (e.g. the cluster's), issuing under `root`.
    pub fn existing(ca_dir: &Path, ca_pem: &Path, root: &Path) -> Pki {
        Pki {
            ca_dir: ca_dir.to_owned(),
            ca_pem: ca_pem.to_owned(),
            root: root.to_owned(),
            issued: Default::default(),
        }
    }

    /// Issue into a fresh `root/issued-<k>/` so certificates with the same
    /// fqdn never overwrite each other.
    pub fn issue(&self, opts: &IssueOptions) -> Issued {
        let k = self.issued.get() + 1;
        self.issued.set(k);
        let out = self.root.join(format!("issued-{k}"));
        pki::issue(&self.ca_dir, opts, &out).unwrap_or_else(|e| panic!("issue {}: {e}", opts.fqdn))
    }

    /// Issue with default (valid mesh) options.
    pub fn issue_fqdn(&self, fqdn: &str) -> Issued {
        self.issue(&IssueOptions::new(fqdn))
    }

    /// Mark revoked (effective in the next CRL).
    pub fn revoke(&self, cert: &Issued) {
        pki::revoke(&self.ca_dir, &cert.serial).unwrap_or_else(|e| panic!("revoke {}: {e}", cert.serial));
    }

    /// Write the CRL to `out`.
    pub fn write_crl(&self, out: &Path) {
        pki::write_crl(&self.ca_dir, out).unwrap_or_else(|e| panic!("write_crl: {e}"));
    }
}

// ---------------------------------------------------------------- single node

/// Builder of a [`SingleNode`]: `fe1.contoso.test` with a CA made in the test.
pub struct SingleNodeBuilder {
    tmp: TempDir,
    /// The node's CA; issue and revoke client certificates before `start`.
    pub pki: Pki,
    fqdn: String,
    members: Vec<(String, SocketAddr)>,
    env: Vec<(String, String)>,
    heartbeat_ms: u64,
    backoff_ms: u64,
    handshake_timeout_ms: u64,
    max_connections: usize,
}

impl SingleNodeBuilder {
    /// Add a member whose mesh port nothing listens on.
    pub fn member(self, fqdn: &str) -> Self {
        let addr = free_addr();
        self.member_at(fqdn, addr)
    }

    /// Add a member whose mesh address is `mesh_addr`.
    pub fn member_at(mut self, fqdn: &str, mesh_addr: SocketAddr) -> Self {
        self.members.push((fqdn.to_owned(), mesh_addr));
        self
    }

    /// Extra environment for the node process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Heartbeat and backoff cap.
    pub fn timing(mut self, heartbeat_ms: u64, backoff_ms: u64) -> Self {
        self.heartbeat_ms = heartbeat_ms;
        self.backoff_ms = backoff_ms;
        self
    }

    /// TLS+hello deadline and the bound on simultaneous mesh connections.
    pub fn limits(mut self, handshake_timeout_ms: u64, max_connections: usize) -> Self {
        self.handshake_timeout_ms = handshake_timeout_ms;
        self.max_connections = max_connections;
        self
    }

    /// Write CRL, topology and node.toml, spawn `node run`, wait for the debug socket.
    pub fn start(self) -> SingleNode {
        let root = self.tmp.path().to_owned();
        let node_cert = self.pki.issue(&IssueOptions {
            ips: vec!["127.0.0.1".parse().expect("ip")],
            ..IssueOptions::new(&self.fqdn)
        });
        let crl = root.join("ca.crl");
        self.pki.write_crl(&crl);

        let mesh_addr = free_addr();
        let mut members = vec![(self.fqdn.clone(), mesh_addr)];
        members.extend(self.members.iter().cloned());
        let members: Vec<TrustedServer> = members
            .into_iter()
            .map(|(fqdn, mesh_addr)| TrustedServer {
                fqdn: Fqdn::new(&fqdn).unwrap_or_else(|e| panic!("fqdn {fqdn}: {e}")),
                role: Role::FrontEnd,
                mesh_addr,
                client_addr: free_addr(),
                pool: None,
            })
            .collect();
        let topology = Topology::new(1, members).unwrap_or_else(|e| panic!("topology: {e}"));
        let topology_path = root.join("topology.toml");
        std::fs::write(&topology_path, topology.to_toml_string()).expect("write topology");

        let debug_socket = root.join("debug.sock");
        let heartbeat = Duration::from_millis(self.heartbeat_ms);
        let config = NodeConfig {
            fqdn: Fqdn::new(&self.fqdn).expect("fqdn"),
            topology: Some(topology_path),
            topology_public_key: None,
            data_dir: root.join("data"),
            debug_socket: debug_socket.clone(),
            mesh_listen: None,
            client_listen: None,
            tls: TlsPaths {
                cert: node_cert.cert_path.clone(),
                key: node_cert.key_path.clone(),
                ca: self.pki.ca_pem.clone(),
                crls: vec![crl],
            },
            mesh: MeshTiming {
                heartbeat_interval: heartbeat,
                heartbeat_timeout: 3 * heartbeat,
                backoff_cap: Duration::from_millis(self.backoff_ms),
                handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
                max_connections: self.max_connections,
            },
            sip: Default::default(),
        };
        let config_path = root.join("node.toml");
        std::fs::write(&config_path, config.to_toml()).expect("write node.toml");

        let log = root.join("node.log");
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "run", "--config"]).arg(&config_path);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut proc = ProcGuard::spawn(&self.fqdn, cmd, &log);
        let ready = poll_until(NODE_READY_DEADLINE, POLL, || {
            if let Some(status) = proc.try_wait() {
                panic!("node exited early ({status}):\n{}", tail(&log, 80));
            }
            try_debug(&debug_socket, "status").ok()
        });
        if ready.is_none() {
            panic!(
                "node {} did not answer on {} within {NODE_READY_DEADLINE:?}:\n{}",
                self.fqdn,
                debug_socket.display(),
                tail(&log, 80)
            );
        }
        SingleNode {
            fqdn: self.fqdn,
            mesh_addr,
            debug_socket,
            log,
            node_cert,
            proc,
            pki: self.pki,
            tmp: self.tmp,
        }
    }
}

/// One live node built by hand; killed on drop.
pub struct SingleNode {
    pub fqdn: String,
    pub mesh_addr: SocketAddr,
    pub debug_socket: PathBuf,
    pub log: PathBuf,
    pub node_cert: Issued,
    pub proc: ProcGuard,
    pub pki: Pki,
    /// Owns the files; dropped last.
    pub tmp: TempDir,
}

impl SingleNode {
    /// A builder for `fe1.contoso.test` with a fresh CA.
    pub fn builder() -> SingleNodeBuilder {
        let tmp = tempfile::Builder::new()
            .prefix("sipmesh-node")
            .tempdir()
            .expect("tempdir");
        let pki = Pki::init(tmp.path(), "sipmesh test CA");
        SingleNodeBuilder {
            tmp,
            pki,
            fqdn: fe(1),
            members: Vec::new(),
            env: Vec::new(),
            heartbeat_ms: 200,
            backoff_ms: 1_000,
            handshake_timeout_ms: sipmesh_actors::config::DEFAULT_HANDSHAKE_TIMEOUT_MS,
            max_connections: sipmesh_actors::config::DEFAULT_MAX_MESH_CONNECTIONS,
        }
    }

    /// `debug` on this node.
    pub fn debug(&self, cmd: &str) -> Value {
        debug(&self.debug_socket, cmd)
    }
}

impl Drop for SingleNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== node log at failure ({})\n{}",
                self.log.display(),
                tail(&self.log, 60)
            );
        }
        self.proc.kill();
    }
}

// ---------------------------------------------------------------- TLS client

/// The crypto provider every test config uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Read PEM certificates.
pub fn load_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Read a PEM private key.
pub fn load_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A client config trusting `ca_pem` for the server and presenting `identity`
/// (or no certificate at all).
pub fn client_config(ca_pem: &Path, identity: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca_pem) {
        roots.add(c).expect("add trust anchor");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(load_certs(&id.cert_path), load_key(&id.key_path))
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// TCP + TLS to `addr`, verifying the server as `server_name`.
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("tcp connect timed out"))??;
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    tokio::time::timeout(
        Duration::from_secs(3),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("tls handshake timed out"))?
}

/// An encoded hello frame claiming `fqdn`.
pub fn hello_frame(fqdn: &str) -> Vec<u8> {
    hello_frame_with(fqdn, PROTOCOL_VERSION)
}

/// An encoded hello frame claiming `fqdn` and mesh protocol `protocol`.
pub fn hello_frame_with(fqdn: &str, protocol: u16) -> Vec<u8> {
    encode_to_vec(&Frame::Hello(Hello {
        protocol,
        fqdn: fqdn.to_owned(),
        topology_version: 1,
        features: 0,
    }))
    .expect("encode hello")
}

/// What a read on a connection the peer should close returned.
#[derive(Debug)]
pub enum ReadEnd {
    /// Clean EOF.
    Eof,
    /// A read error (TLS alert, reset, EOF without close_notify, …).
    Error(String),
    /// Data arrived instead: the connection was not refused.
    Data(Vec<u8>),
    /// Nothing within the deadline.
    Timeout,
}

impl ReadEnd {
    /// EOF or an error: the connection was closed by the peer.
    pub fn closed(&self) -> bool {
        matches!(self, ReadEnd::Eof | ReadEnd::Error(_))
    }
}

/// One read with a deadline.
pub async fn read_end<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, deadline: Duration) -> ReadEnd {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(deadline, stream.read(&mut buf)).await {
        Err(_) => ReadEnd::Timeout,
        Ok(Ok(0)) => ReadEnd::Eof,
        Ok(Ok(n)) => ReadEnd::Data(buf[..n].to_vec()),
        Ok(Err(e)) => ReadEnd::Error(e.to_string()),
    }
}

/// Write `bytes` and flush; a write error is returned as text (the peer may
/// already have refused the connection).
pub async fn send<S: tokio::io::AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), String> {
    stream.write_all(bytes).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}
