//! `sipmesh cluster up|down`: a local cluster on 127.0.0.1 for labs and tests.
//!
//! `up` makes a CA, one certificate per node, a CRL and a topology, writes each
//! node's `node.toml`, starts one `sipmesh node run` process per node and
//! writes `DIR/cluster.json` (the "local cluster contract" scripts rely on).
//! The launcher binds each node's mesh and client sockets itself, writes their
//! addresses into the topology and hands the sockets to the node by socket
//! activation ([`crate::listenfds`]): no port is released and bound again, so
//! no other process can take one in between.
//! It stays in the foreground; Ctrl-C, SIGTERM or SIGHUP stop the nodes.
//! Nodes also die with the launcher if it is killed (parent-death signal).
//! Running `up` again on a stopped cluster's directory restarts the same nodes
//! with their certificates, stores and ports.
//!
//! # Layout
//!
//! - `file.rs`: [`ClusterFile`] and its parts, `cluster.json` itself.
//! - `generate.rs`: the CA, certificates, `node.toml` files and topology of a new cluster.
//! - `spawn.rs`: the launcher's sockets, node processes, [`LocalCluster`].

mod federate;
mod file;
mod generate;
mod spawn;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use self::federate::federate;
pub use self::file::{ClusterEdge, ClusterFile, ClusterNode, ClusterUser, LoadUsers};
use self::generate::generate;
pub use self::spawn::LocalCluster;
use self::spawn::{node_command, stop_children, NodeSockets};

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
    /// Add an edge (`edge1.<domain>`) with a federation listener and an
    /// external certificate from a separate CA.
    pub edge: bool,
    /// The edge's resolver for partner names (`[federation] dns`).
    pub federation_dns: Option<std::net::SocketAddr>,
    /// Every node's resolver for members named by DNS (`[mesh] dns`).
    pub mesh_dns: Option<std::net::SocketAddr>,
    /// Write each node's TLS secrets to `NODE_DIR/tls-keys.log` (for Wireshark).
    pub keylog: bool,
    /// Extra Digest users `load00001`… sharing one password, for benches
    /// that register many clients at once (`bench storm`); 0 for none.
    pub load_users: usize,
}

/// Demo users `cluster up` creates.
pub const DEMO_USERS: &[&str] = &["alice", "bob", "carol", "dave"];

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
    let (mut cluster, sockets) = if dir.join(CLUSTER_FILE).exists() {
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
        let sockets = old
            .nodes
            .iter()
            .map(NodeSockets::again)
            .collect::<anyhow::Result<_>>()?;
        (old, sockets)
    } else {
        if std::fs::read_dir(&dir)?.next().is_some() {
            bail!(
                "{} is not empty and holds no {CLUSTER_FILE}; choose an empty or new --dir",
                dir.display()
            );
        }
        println!("creating a {n}-node cluster in {}", dir.display());
        let sockets: Vec<_> = (0..n)
            .map(|_| NodeSockets::fresh())
            .chain(opts.edge.then(NodeSockets::fresh_edge))
            .collect::<anyhow::Result<_>>()?;
        (generate(&dir, &opts, &sockets)?, sockets)
    };
    cluster.launcher_pid = std::process::id();
    // Children must be spawned from this (main) thread: the parent-death
    // signal fires when the spawning thread exits.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_cluster(&dir, cluster, sockets))
}

async fn run_cluster(dir: &Path, mut cluster: ClusterFile, sockets: Vec<NodeSockets>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let exe = std::env::current_exe().context("cannot find the sipmesh executable")?;
    let mut children = Vec::new();
    for (node, sockets) in cluster.nodes.iter_mut().zip(sockets) {
        let mut cmd = tokio::process::Command::from(node_command(&exe, node, sockets)?);
        let child = cmd
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", node.fqdn))?;
        // The node owns its sockets now: close our copies.
        drop(cmd);
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
    if let Some(e) = &cluster.edge {
        println!(
            "federation:   {} listens as {} at {} (external CA {}); partner with `sipmesh cluster federate --dir {} --dir OTHER`",
            e.fqdn,
            e.federation_fqdn,
            e.federation_addr,
            e.federation_ca.display(),
            dir.display()
        );
    }
    println!("cluster file: {}", dir.join(CLUSTER_FILE).display());
    if let Some(first) = cluster.nodes.first() {
        println!(
            "inspect:      sipmesh ctl --socket {} links",
            first.debug_socket.display()
        );
        if let Some(page) = first.admin_http {
            println!("mesh page:    http://{page}/");
        }
        let scrape: Vec<String> = cluster
            .nodes
            .iter()
            .filter_map(|n| n.metrics_addr)
            .map(|a| a.to_string())
            .collect();
        if !scrape.is_empty() {
            println!("metrics:      GET /metrics on {}", scrape.join(", "));
        }
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
