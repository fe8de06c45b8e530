//! `bench mesh`: time to a full mesh of N node processes, and the memory an
//! idle link costs (N nodes against a 2-node mesh).

use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::cluster_options;
use crate::cluster::LocalCluster;

/// Result of `bench mesh`.
#[derive(Debug, Serialize)]
pub struct MeshReport {
    /// Nodes per run.
    pub nodes: usize,
    /// Time from spawning the nodes to a full mesh, per run, in milliseconds.
    pub ready_ms: Vec<u128>,
    /// Mean resident memory of a node with `nodes - 1` idle links, in KiB.
    pub rss_kib: u64,
    /// Mean resident memory of a node in a 2-node mesh (1 link), in KiB.
    pub rss_kib_one_link: u64,
    /// Memory an idle link adds, in KiB: the difference over the extra links.
    pub kib_per_idle_link: f64,
}

/// Mean VmRSS of the cluster's nodes, in KiB.
fn mean_rss_kib(cluster: &LocalCluster) -> anyhow::Result<u64> {
    let mut total = 0;
    for n in &cluster.file.nodes {
        let rss = super::load::rss_kib(n.pid).with_context(|| format!("no VmRSS for node {}", n.pid))?;
        total += rss;
    }
    Ok(total / cluster.file.nodes.len() as u64)
}

/// How long idle links settle before memory is read (first heartbeats, buffers).
pub const SETTLE: Duration = Duration::from_secs(2);

/// Time to a full mesh of `nodes` processes, `runs` times, and the memory an idle link costs.
pub fn mesh(nodes: usize, runs: usize) -> anyhow::Result<MeshReport> {
    if nodes < 3 {
        bail!("--nodes {nodes}: must be at least 3 (the memory estimate compares with a 2-node mesh)");
    }
    if runs == 0 {
        bail!("--runs 0: must be at least 1");
    }
    let mut ready_ms = Vec::new();
    let mut rss_kib = 0;
    for _ in 0..runs {
        let cluster = LocalCluster::start(&std::env::temp_dir(), &cluster_options(nodes))?;
        let ready = cluster.wait_ready(Duration::from_secs(30))?;
        ready_ms.push(ready.as_millis());
        std::thread::sleep(SETTLE);
        rss_kib = mean_rss_kib(&cluster)?;
        let dir = cluster.dir.clone();
        drop(cluster);
        let _ = std::fs::remove_dir_all(dir);
    }
    let pair = LocalCluster::start(&std::env::temp_dir(), &cluster_options(2))?;
    pair.wait_ready(Duration::from_secs(30))?;
    std::thread::sleep(SETTLE);
    let rss_kib_one_link = mean_rss_kib(&pair)?;
    let dir = pair.dir.clone();
    drop(pair);
    let _ = std::fs::remove_dir_all(dir);
    let extra_links = (nodes - 2) as f64;
    Ok(MeshReport {
        nodes,
        ready_ms,
        rss_kib,
        rss_kib_one_link,
        kib_per_idle_link: ((rss_kib as f64 - rss_kib_one_link as f64) / extra_links * 10.0).round() / 10.0,
    })
}

/// Render a mesh report for people.
pub fn render_mesh(r: &MeshReport) -> String {
    format!(
        "{}-node mesh fully up in (ms): {:?} (target < 2000)\n\
         node memory: {} KiB with {} idle links, {} KiB with 1: about {} KiB per idle link (target <= 64 KiB)",
        r.nodes,
        r.ready_ms,
        r.rss_kib,
        r.nodes - 1,
        r.rss_kib_one_link,
        r.kib_per_idle_link
    )
}
