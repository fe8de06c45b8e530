//! `sipmesh cluster up|down`: a local cluster on 127.0.0.1 for labs and tests.
//!
//! `up` makes a CA, one certificate per node, a CRL and a topology, writes each
//! node's `node.toml`, starts one `sipmesh node run` process per node and
//! writes `DIR/cluster.json` (the "local cluster contract" scripts rely on).
//! It stays in the foreground; Ctrl-C, SIGTERM or SIGHUP stop the nodes.
//! Nodes also die with the launcher if it is killed (parent-death signal).
//! Running `up` again on a stopped cluster's directory restarts the same nodes
//! with their certificates, stores and ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use sipmesh_actors::config::{MeshTiming, NodeConfig, SipConfig, TlsPaths};
use sipmesh_state::{Fqdn, Role, Topology, TrustedServer};

use crate::pki;

/// Environment variable through which the launcher tells a node its pid, so
/// the node can ask for a parent-death signal.
pub const PARENT_PID_ENV: &str = "SIPMESH_PARENT_PID";
/// The cluster file inside the cluster directory.
pub const CLUSTER_FILE: &str = "cluster.json";
/// Most nodes `cluster up` starts (each is a process with 2 ports).
pub const MAX_NODES: usize = 64;
/// How long `up` waits for the full mesh before saying so.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long nodes get to stop after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The launcher's pid.
    pub launcher_pid: u32,
    /// The nodes.
    pub nodes: Vec<ClusterNode>,
}

/// A demo SIP user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterUser {
    /// Address of record.
    pub aor: String,
    /// Password.
    pub password: String,
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
}

/// Options of `cluster up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// Node count (default 3; ignored with a note when restarting a directory).
    pub nodes: Option<usize>,
    /// Directory; a fresh one under the temp dir when absent.
    pub dir: Option<PathBuf>,
    /// SIP domain.
    pub domain: String,
    /// Heartbeat interval given to nodes.
    pub heartbeat_ms: u64,
    /// Redial backoff cap given to nodes.
    pub backoff_cap_ms: u64,
    /// SIP transaction timer base given to nodes.
    pub t1_ms: u64,
    /// Digest algorithms the nodes offer, in challenge order (None: the node default).
    pub digest_algorithms: Option<Vec<sipmesh_actors::auth::Algorithm>>,
}

/// Demo users `cluster up` creates.
pub const DEMO_USERS: &[&str] = &["alice", "bob", "carol", "dave"];

fn password() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

impl ClusterFile {
    /// Read `DIR/cluster.json`.
    pub fn load(dir: &Path) -> anyhow::Result<ClusterFile> {
        let path = dir.join(CLUSTER_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a cluster file", path.display()))
    }

    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(CLUSTER_FILE);
        let tmp = dir.join(".cluster.json.tmp");
        // It lists the demo passwords: owner-only, like the keys.
        write_private(&tmp, &(serde_json::to_string_pretty(self)? + "\n"))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    fn live_pids(&self) -> Vec<u32> {
        std::iter::once(self.launcher_pid)
            .chain(self.nodes.iter().map(|n| n.pid))
            .filter(|p| alive(*p))
            .collect()
    }
}

/// Write a file readable by its owner only (mode 0600).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
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

/// True when `pid` runs and is not a zombie.
pub fn alive(pid: u32) -> bool {
    if pid == 0 || kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => !stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Reserve `n` distinct free loopback ports (kernel-chosen ephemeral ports).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<_, _>>()
        .context("cannot reserve loopback ports")?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

fn generate(dir: &Path, n: usize, opts: &UpOptions) -> anyhow::Result<ClusterFile> {
    let ca_dir = dir.join("ca");
    let ca = pki::init_ca(&ca_dir, "sipmesh Local Root CA")?;
    let ports = free_ports(2 * n)?;
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut members = Vec::new();
    let mut nodes = Vec::new();
    let crl = ca_dir.join("crl.pem");
    let topology_path = dir.join("topology.toml");
    let (topology_key, topology_public_key) = crate::topology::keygen(dir)?;
    let users: Vec<ClusterUser> = DEMO_USERS
        .iter()
        .map(|u| ClusterUser {
            aor: format!("sip:{u}@{}", opts.domain),
            password: password(),
        })
        .collect();
    let users_file = sipmesh_actors::auth::UsersFile {
        realm: opts.domain.clone(),
        users: DEMO_USERS
            .iter()
            .zip(&users)
            .map(|(name, u)| sipmesh_actors::auth::UserEntry::from_password(name, &opts.domain, &u.password))
            .collect(),
    };
    let users_path = dir.join("users.toml");
    write_private(&users_path, &users_file.to_toml())?;
    for i in 0..n {
        let fqdn = Fqdn::new(&format!("fe{}.{}", i + 1, opts.domain)).context("--domain")?;
        let node_dir = dir.join(format!("fe{}", i + 1));
        let mut issue = pki::IssueOptions::new(fqdn.as_str());
        issue.ips = vec![localhost];
        let cert = pki::issue(&ca_dir, &issue, &node_dir)?;
        let mesh_addr = SocketAddr::new(localhost, ports[2 * i]);
        let client_addr = SocketAddr::new(localhost, ports[2 * i + 1]);
        members.push(TrustedServer {
            fqdn: fqdn.clone(),
            role: Role::FrontEnd,
            mesh_addr,
            client_addr,
            pool: None,
        });
        let config = NodeConfig {
            fqdn: fqdn.clone(),
            topology: Some(topology_path.clone()),
            topology_public_key: Some(topology_public_key.clone()),
            data_dir: node_dir.join("data"),
            debug_socket: node_dir.join("debug.sock"),
            mesh_listen: None,
            client_listen: None,
            tls: TlsPaths {
                cert: cert.cert_path,
                key: cert.key_path,
                ca: ca.cert_path.clone(),
                crls: vec![crl.clone()],
                crl_expired: Default::default(),
            },
            mesh: MeshTiming {
                heartbeat_interval: Duration::from_millis(opts.heartbeat_ms),
                heartbeat_timeout: Duration::from_millis(3 * opts.heartbeat_ms),
                backoff_cap: Duration::from_millis(opts.backoff_cap_ms),
                ..MeshTiming::default()
            },
            sip: SipConfig {
                domain: Some(opts.domain.clone()),
                users: Some(users_path.clone()),
                t1: Duration::from_millis(opts.t1_ms),
                digest_algorithms: opts
                    .digest_algorithms
                    .clone()
                    .unwrap_or_else(|| SipConfig::default().digest_algorithms),
                ..SipConfig::default()
            },
        };
        let config_path = node_dir.join("node.toml");
        std::fs::write(&config_path, config.to_toml())?;
        nodes.push(ClusterNode {
            fqdn: fqdn.to_string(),
            role: Role::FrontEnd,
            client_addr,
            mesh_addr,
            debug_socket: config.debug_socket.clone(),
            data_dir: config.data_dir.clone(),
            pid: 0,
            config: config_path,
            log: node_dir.join("node.log"),
        });
    }
    pki::write_crl(&ca_dir, &crl)?;
    let topology = Topology::new(1, members)?;
    let admin = sipmesh_state::AdminKey::load(&topology_key)?;
    std::fs::write(&topology_path, admin.sign(&topology.to_toml_string()))?;
    Ok(ClusterFile {
        domain: opts.domain.clone(),
        ca: ca.cert_path,
        ca_key: ca.key_path,
        ca_dir,
        crl,
        topology: topology_path,
        topology_key,
        topology_public_key,
        users,
        launcher_pid: std::process::id(),
        nodes,
    })
}

fn fresh_dir() -> anyhow::Result<PathBuf> {
    let stamp = format!("{:08x}", rand::random::<u32>());
    let dir = std::env::temp_dir().join(format!("sipmesh-cluster-{stamp}"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Run `cluster up` in the foreground until a signal.
pub fn up(opts: UpOptions) -> anyhow::Result<()> {
    let n = opts.nodes.unwrap_or(3);
    if !(1..=MAX_NODES).contains(&n) {
        bail!("--nodes {n}: must be between 1 and {MAX_NODES}");
    }
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.canonicalize()?
        }
        None => fresh_dir()?,
    };
    let mut cluster = if dir.join(CLUSTER_FILE).exists() {
        let old = ClusterFile::load(&dir)?;
        let live = old.live_pids();
        if !live.is_empty() {
            bail!(
                "a cluster is already running in {} (pids {live:?}); stop it with `sipmesh cluster down --dir {}`",
                dir.display(),
                dir.display()
            );
        }
        if opts.nodes.is_some_and(|want| want != old.nodes.len()) {
            eprintln!(
                "note: {} holds a {}-node cluster; restarting it as it is",
                dir.display(),
                old.nodes.len()
            );
        }
        println!("restarting the cluster in {}", dir.display());
        old
    } else {
        if std::fs::read_dir(&dir)?.next().is_some() {
            bail!(
                "{} is not empty and holds no {CLUSTER_FILE}; choose an empty or new --dir",
                dir.display()
            );
        }
        println!("creating a {n}-node cluster in {}", dir.display());
        generate(&dir, n, &opts)?
    };
    cluster.launcher_pid = std::process::id();
    // Children must be spawned from this (main) thread: the parent-death
    // signal fires when the spawning thread exits.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_cluster(&dir, cluster))
}

async fn run_cluster(dir: &Path, mut cluster: ClusterFile) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let exe = std::env::current_exe().context("cannot find the sipmesh executable")?;
    let mut children = Vec::new();
    for node in &mut cluster.nodes {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let child = tokio::process::Command::new(&exe)
            .args(["node", "run", "--config"])
            .arg(&node.config)
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", node.fqdn))?;
        node.pid = child.id().unwrap_or(0);
        children.push((node.fqdn.clone(), child, false));
    }
    cluster.save(dir)?;
    print_summary(dir, &cluster);

    let started = Instant::now();
    let mut ready = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let reason = loop {
        tokio::select! {
            _ = sigint.recv() => break "interrupt",
            _ = sigterm.recv() => break "SIGTERM",
            _ = sighup.recv() => break "SIGHUP",
            _ = tick.tick() => {
                for (fqdn, child, reported) in &mut children {
                    if !*reported {
                        if let Ok(Some(status)) = child.try_wait() {
                            *reported = true;
                            eprintln!("node {fqdn} exited ({status}); see its log");
                        }
                    }
                }
                if !ready {
                    match mesh_ready(&cluster) {
                        Ok(true) => {
                            ready = true;
                            let n = cluster.nodes.len();
                            println!(
                                "cluster ready: {n} nodes, {} links up, in {} ms. Ctrl-C stops it.",
                                n * (n - 1) / 2,
                                started.elapsed().as_millis()
                            );
                        }
                        _ if started.elapsed() > READY_TIMEOUT => {
                            ready = true;
                            eprintln!("cluster not fully meshed after {} s; check `sipmesh ctl --socket ... links` and the node logs", READY_TIMEOUT.as_secs());
                        }
                        _ => {}
                    }
                }
            }
        }
    };
    println!("stopping the cluster ({reason})");
    stop_children(&mut children).await;
    println!(
        "cluster stopped; `sipmesh cluster up --dir {}` restarts it",
        dir.display()
    );
    Ok(())
}

fn mesh_ready(cluster: &ClusterFile) -> anyhow::Result<bool> {
    let want = cluster.nodes.len() as u64 - 1;
    for node in &cluster.nodes {
        let status = crate::ctl::command(&node.debug_socket, "status")?;
        if status["links_up"].as_u64() != Some(want) {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn stop_children(children: &mut [(String, tokio::process::Child, bool)]) {
    for (_, child, _) in children.iter() {
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    for (fqdn, child, _) in children.iter_mut() {
        if tokio::time::timeout_at(deadline, child.wait()).await.is_err() {
            eprintln!(
                "node {fqdn} did not stop within {} s; killing it",
                STOP_TIMEOUT.as_secs()
            );
            let _ = child.kill().await;
        }
    }
}

fn print_summary(dir: &Path, cluster: &ClusterFile) {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec!["NODE", "PID", "MESH (MTLS)", "CLIENT (TLS)", "DEBUG SOCKET"]);
    for n in &cluster.nodes {
        t.add_row(vec![
            n.fqdn.clone(),
            n.pid.to_string(),
            n.mesh_addr.to_string(),
            n.client_addr.to_string(),
            n.debug_socket.display().to_string(),
        ]);
    }
    println!("{t}");
    if !cluster.users.is_empty() {
        println!(
            "demo SIP users (Digest, realm {}; any node's client port, TLS with CA {}):",
            cluster.domain,
            cluster.ca.display()
        );
        for u in &cluster.users {
            println!("  {}  password {}", u.aor, u.password);
        }
    }
    println!("cluster file: {}", dir.join(CLUSTER_FILE).display());
    if let Some(first) = cluster.nodes.first() {
        println!(
            "inspect:      sipmesh ctl --socket {} links",
            first.debug_socket.display()
        );
    }
    println!(
        "stop:         Ctrl-C here, or `sipmesh cluster down --dir {}`",
        dir.display()
    );
}

/// `cluster down`: stop a cluster started elsewhere.
pub fn down(dir: &Path) -> anyhow::Result<()> {
    let cluster = ClusterFile::load(dir)?;
    let live = cluster.live_pids();
    if live.is_empty() {
        println!("no cluster process is running in {}", dir.display());
        return Ok(());
    }
    // The launcher stops its nodes; nodes started by hand get SIGTERM directly.
    for pid in &live {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT + Duration::from_secs(1);
    while Instant::now() < deadline && !cluster.live_pids().is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stubborn = cluster.live_pids();
    for pid in &stubborn {
        eprintln!("pid {pid} ignored SIGTERM; killing it");
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    println!("stopped {} process(es) of the cluster in {}", live.len(), dir.display());
    Ok(())
}

/// A cluster whose nodes are children of this process, for benchmarks:
/// generated in `dir`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct LocalCluster {
    /// Its directory.
    pub dir: PathBuf,
    /// Its cluster file.
    pub file: ClusterFile,
    children: Vec<std::process::Child>,
    /// When the node processes were spawned.
    pub spawned: Instant,
}

impl LocalCluster {
    /// Generate and start `opts.nodes` nodes in a fresh directory under `parent`.
    pub fn start(parent: &Path, opts: &UpOptions) -> anyhow::Result<LocalCluster> {
        let n = opts.nodes.unwrap_or(3);
        if !(1..=MAX_NODES).contains(&n) {
            bail!("--nodes {n}: must be between 1 and {MAX_NODES}");
        }
        let dir = parent.join(format!("sipmesh-bench-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir)?;
        let mut file = generate(&dir, n, opts)?;
        let exe = std::env::current_exe().context("cannot find the sipmesh executable")?;
        let spawned = Instant::now();
        let mut children = Vec::new();
        for node in &mut file.nodes {
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
            let child = std::process::Command::new(&exe)
                .args(["node", "run", "--config"])
                .arg(&node.config)
                .env(PARENT_PID_ENV, std::process::id().to_string())
                .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {}", node.fqdn))?;
            node.pid = child.id();
            children.push(child);
        }
        file.save(&dir)?;
        Ok(LocalCluster {
            dir,
            file,
            children,
            spawned,
        })
    }

    /// Wait until every node reports a full mesh; the time since spawn.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = self.spawned + timeout;
        loop {
            if matches!(mesh_ready(&self.file), Ok(true)) {
                return Ok(self.spawned.elapsed());
            }
            if Instant::now() > deadline {
                bail!(
                    "no full mesh within {} s; logs in {}",
                    timeout.as_secs(),
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in &self.children {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}
