//! The node processes and the sockets handed to them.
//!
//! - [`NodeSockets`]: a node's mesh and client listeners, bound by the
//!   launcher before the topology names their ports.
//! - [`node_command`]: `sipmesh node run` with those sockets as fds 3 and 4
//!   (systemd socket activation, see [`crate::listenfds`]), its log and the
//!   parent-death pid.
//! - [`stop_children`]: SIGTERM, then SIGKILL, for the children of `cluster up`.
//! - [`LocalCluster`]: a cluster whose nodes are children of this process (benchmarks).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::generate::generate;
use super::{mesh_ready, ClusterFile, ClusterNode, UpOptions, CLUSTER_FILE, MAX_NODES, PARENT_PID_ENV, STOP_TIMEOUT};
use crate::listenfds;

/// The listening sockets of one node. The launcher binds them, writes their
/// addresses into the topology and hands them to the node process, so no
/// port is released in between for another process to take.
#[derive(Debug)]
pub(super) struct NodeSockets {
    mesh: TcpListener,
    client: TcpListener,
    /// An edge's federation listener.
    federation: Option<TcpListener>,
    /// The Prometheus metrics listener (`[admin] metrics`).
    metrics: Option<TcpListener>,
    /// The mesh page's listener (`[admin] http`).
    http: Option<TcpListener>,
}

/// Backlog of the sockets the launcher binds: the one nodes use when they
/// bind their own ports.
const LISTEN_BACKLOG: i32 = sipmesh_actors::net::accept::LISTEN_BACKLOG as i32;

/// A listening TCP socket (close-on-exec, as every socket socket2 makes).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As tokio and std do: a restarted cluster rebinds ports left in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

impl NodeSockets {
    /// Loopback ports the kernel chooses: mesh, client, metrics, mesh page.
    pub(super) fn fresh() -> anyhow::Result<NodeSockets> {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let bind = || listen(any).context("cannot bind a loopback port");
        Ok(NodeSockets {
            mesh: bind()?,
            client: bind()?,
            federation: None,
            metrics: Some(bind()?),
            http: Some(bind()?),
        })
    }

    /// Three loopback ports for an edge (mesh, client, federation).
    pub(super) fn fresh_edge() -> anyhow::Result<NodeSockets> {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut sockets = NodeSockets::fresh()?;
        sockets.federation = Some(listen(any).context("cannot bind a loopback port")?);
        Ok(sockets)
    }

    /// The metrics socket's address.
    pub(super) fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The mesh page socket's address.
    pub(super) fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The federation socket's address, on an edge.
    pub(super) fn federation_addr(&self) -> Option<SocketAddr> {
        self.federation.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The addresses `node` had before (restarting a stopped cluster).
    pub(super) fn again(node: &ClusterNode) -> anyhow::Result<NodeSockets> {
        let bind = |addr: SocketAddr, what: &str| {
            listen(addr).with_context(|| {
                format!(
                    "cannot bind {addr} again, the {what} address of {} in {CLUSTER_FILE}",
                    node.fqdn
                )
            })
        };
        Ok(NodeSockets {
            mesh: bind(node.mesh_addr, "mesh")?,
            client: bind(node.client_addr, "client")?,
            federation: node.federation_addr.map(|a| bind(a, "federation")).transpose()?,
            metrics: node.metrics_addr.map(|a| bind(a, "metrics")).transpose()?,
            http: node.admin_http.map(|a| bind(a, "admin_http")).transpose()?,
        })
    }

    /// The mesh socket's address.
    pub(super) fn mesh_addr(&self) -> std::io::Result<SocketAddr> {
        self.mesh.local_addr()
    }

    /// The client socket's address.
    pub(super) fn client_addr(&self) -> std::io::Result<SocketAddr> {
        self.client.local_addr()
    }
}

/// `exe node run --config ...` for `node`: stdout and stderr appended to its
/// log, the launcher's pid in [`PARENT_PID_ENV`], and `sockets` handed over.
/// The command owns the sockets: drop it once spawned, so that the node
/// holds the only copies and a stopped node frees its ports.
pub(super) fn node_command(exe: &Path, node: &ClusterNode, sockets: NodeSockets) -> anyhow::Result<Command> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .with_context(|| format!("cannot open {}", node.log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(["node", "run", "--config"])
        .arg(&node.config)
        .env(PARENT_PID_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut handed = vec![
        (listenfds::MESH, sockets.mesh.into()),
        (listenfds::CLIENT, sockets.client.into()),
    ];
    if let Some(f) = sockets.federation {
        handed.push((listenfds::FEDERATION, f.into()));
    }
    if let Some(m) = sockets.metrics {
        handed.push((listenfds::METRICS, m.into()));
    }
    if let Some(h) = sockets.http {
        handed.push((listenfds::HTTP, h.into()));
    }
    listenfds::hand_over(&mut cmd, handed)?;
    Ok(cmd)
}

/// SIGTERM every child, then SIGKILL those still running after [`STOP_TIMEOUT`].
pub(super) async fn stop_children(children: &mut [(String, tokio::process::Child, bool)]) {
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
        let sockets = (0..n)
            .map(|_| NodeSockets::fresh())
            .chain(opts.edge.then(NodeSockets::fresh_edge))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut file = generate(&dir, opts, &sockets)?;
        let exe = std::env::current_exe().context("cannot find the sipmesh executable")?;
        let spawned = Instant::now();
        let mut children = Vec::new();
        for (node, sockets) in file.nodes.iter_mut().zip(sockets) {
            let mut cmd = node_command(&exe, node, sockets)?;
            cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
            let child = cmd.spawn().with_context(|| format!("cannot start {}", node.fqdn))?;
            // The node owns its sockets now: close our copies.
            drop(cmd);
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
