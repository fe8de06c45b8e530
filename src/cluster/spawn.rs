//! The node processes: [`LocalCluster`], a cluster whose nodes are children
//! of this process (benchmarks), and stopping the children of `cluster up`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::generate::generate;
use super::{mesh_ready, ClusterFile, UpOptions, MAX_NODES, PARENT_PID_ENV, STOP_TIMEOUT};

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
