//! `bench storm`: what a restarted server sees when every client comes back
//! at once. N TLS clients connect to node A and REGISTER with Digest, all
//! at the same moment, while relayed MESSAGE traffic (alice on A → bob on
//! B, the `bench relay` shape) keeps running at a fixed rate through it.
//!
//! The storm's clients run on their own threads (a multi-threaded runtime):
//! their handshakes must not slow the generator of the relayed traffic, whose
//! latency is the point. They come from many loopback addresses (127.2.x.y),
//! at most [`CLIENTS_PER_IP`] each, as phones behind many NATs would, so the
//! node's per-IP limit is not what is measured. Each client keeps its
//! connection open until the storm is over, as a phone keeps its flow.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::cluster_options;
use super::load::{check_run, rss_kib, tree_cpu_us, RunResult, Shape};
use super::relay::{alice_to_bob, register_request, ALGORITHMS};
use crate::cluster::LocalCluster;
use crate::ua::{self, Connection, Credentials, UaError};

/// Most clients in one storm (the node's default client connection cap is 10,000).
pub const MAX_STORM_CLIENTS: usize = 9_000;
/// Clients per source address (the node allows 100 per IP by default).
pub const CLIENTS_PER_IP: usize = 50;
/// How long one client may take from connect to its 200.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(30);
/// Storm clients between their connect and the end of their TLS handshake
/// at once (the rest wait their turn, their time running).
pub const HANDSHAKES_IN_FLIGHT: usize = 256;
/// Nice value of the storm clients' threads (as the nodes' TLS pool).
const STORM_CLIENT_NICE: i32 = 10;
/// Unmeasured relayed traffic before the storm starts.
const WARMUP: Duration = Duration::from_secs(2);
/// Targets (issue 11).
pub const TARGET_STORM_MS: f64 = 3_000.0;
/// Relayed p99 during the storm.
pub const TARGET_STORM_P99_MS: f64 = 5.0;

/// What `bench storm` is asked to do.
#[derive(Clone, Debug)]
pub struct StormOptions {
    /// Clients registering at once.
    pub clients: usize,
    /// Relayed MESSAGEs per second during the storm.
    pub rate: u32,
    /// Measured seconds of relayed traffic; the storm starts with them.
    pub duration: Duration,
}

/// The report of `bench storm`.
#[derive(Clone, Debug, Serialize)]
pub struct StormReport {
    /// Clients started.
    pub clients: usize,
    /// Of those, registered (200 to the REGISTER with credentials).
    pub registered: usize,
    /// Failures by kind: a status code, or `connect`, `tls`, `closed`, or
    /// `timeout-STEP` (`tls`, `challenge`, `register`: what never came).
    pub failures: BTreeMap<String, u64>,
    /// The first error of each kind, as the client saw it.
    pub failure_examples: BTreeMap<String, String>,
    /// Time from the storm's start until every client was registered (ms);
    /// `null` when some never were.
    pub all_registered_ms: Option<f64>,
    /// Registration time per client (ms): p50, p90, p99, max.
    pub client_ms: BTreeMap<String, f64>,
    /// Node A's CPU during the storm, in ms, and per registered client in µs.
    pub node_cpu_ms: f64,
    /// Node A's CPU per registered client (µs): TLS handshake, two REGISTERs, a Digest check.
    pub node_cpu_us_per_client: f64,
    /// Node A's resident memory before the storm and with every client connected (KiB).
    pub rss_kib_before: u64,
    /// See `rss_kib_before`.
    pub rss_kib_after: u64,
    /// The relayed traffic that ran through the storm.
    pub background: RunResult,
}

/// The source address of client `i`: 127.2.x.y, [`CLIENTS_PER_IP`] each.
fn source(i: usize) -> IpAddr {
    let n = i / CLIENTS_PER_IP;
    IpAddr::V4(Ipv4Addr::new(127, 2, (n / 250) as u8, (n % 250 + 1) as u8))
}

/// Why a client failed, as a report key.
fn failure_kind(e: &anyhow::Error) -> String {
    match e.downcast_ref::<UaError>() {
        Some(UaError::Connect { .. }) => "connect".into(),
        Some(UaError::Handshake { .. }) => "tls".into(),
        Some(UaError::Status { got: Some(code), .. }) => code.to_string(),
        _ => match e.downcast_ref::<Failure>() {
            Some(Failure::Status(code)) => code.to_string(),
            Some(Failure::Timeout(phase)) => format!("timeout-{phase}"),
            None => "closed".into(),
        },
    }
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("REGISTER answered {0}")]
    Status(u16),
    /// The client deadline passed while waiting for this step.
    #[error("no {0} within the client deadline")]
    Timeout(&'static str),
}

/// One step of a client, failing with its name when the deadline passes.
async fn step<T, E: Into<anyhow::Error>>(
    deadline: tokio::time::Instant,
    phase: &'static str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout_at(deadline, f).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(Failure::Timeout(phase).into()),
    }
}

/// What every storm client shares: where it connects, as whom it verifies
/// the node, its domain, and the gate of handshakes in flight.
struct Target {
    addr: SocketAddr,
    server_name: String,
    tls: Arc<rustls::ClientConfig>,
    domain: String,
    gate: tokio::sync::Semaphore,
}

/// One storm client: connect from `from`, REGISTER, answer the challenge.
async fn client(to: &Target, from: IpAddr, user: &str, password: &str) -> anyhow::Result<Connection> {
    let domain = to.domain.as_str();
    let deadline = tokio::time::Instant::now() + CLIENT_DEADLINE;
    // Connect only when this client can go straight on to its ClientHello:
    // a phone sends it at once, and the node drops a connection that stays
    // silent (`CLIENT_HELLO_TIMEOUT`). Thousands of simulated phones on two
    // cores would otherwise connect long before they could compute one.
    let handshake = to.gate.acquire().await?;
    let mut conn = step(
        deadline,
        "tls",
        Connection::open_from(Some(from), to.addr, &to.server_name, to.tls.clone()),
    )
    .await?;
    drop(handshake);
    let uri = format!("sip:{domain}");
    let cnonce = format!("storm-{user}");
    let creds = Credentials {
        user,
        password,
        uri: &uri,
        algorithms: ALGORITHMS,
        cnonce: &cnonce,
    };
    // The two exchanges written out (not `ua::register`'s closure): these
    // clients run on a multi-threaded runtime, so the future must be `Send`.
    conn.send_raw(register_request(user, domain, conn.local, 1, None).as_bytes())
        .await?;
    let mut answer = step(deadline, "challenge", conn.next_message()).await?;
    if answer.status() == Some(401) {
        let authorization = creds.authorization(&answer, "REGISTER")?;
        conn.send_raw(register_request(user, domain, conn.local, 2, Some(&authorization)).as_bytes())
            .await?;
        answer = step(deadline, "register", conn.next_message()).await?;
    }
    match answer.status() {
        Some(200) => Ok(conn),
        Some(code) => Err(Failure::Status(code).into()),
        None => Err(Failure::Status(0).into()),
    }
}

/// Run the storm: every client at once on a thread pool of its own; returns
/// each client's outcome with its time from the storm's start.
fn storm(
    clients: usize,
    addr: SocketAddr,
    server_name: String,
    tls: Arc<rustls::ClientConfig>,
    users: crate::cluster::LoadUsers,
    domain: String,
) -> anyhow::Result<Vec<Result<Duration, (String, String)>>> {
    // The storm's clients stand for phones on other machines: at nice
    // STORM_CLIENT_NICE they take what the nodes leave of the shared cores,
    // not the routing thread's share.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| {
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), STORM_CLIENT_NICE);
        })
        .enable_all()
        .build()?;
    Ok(rt.block_on(async move {
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(clients);
        let target = Arc::new(Target {
            addr,
            server_name,
            tls,
            domain,
            gate: tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT),
        });
        for i in 0..clients {
            let target = target.clone();
            let user = users.name(i + 1);
            let password = users.password.clone();
            tasks.push(tokio::spawn(async move {
                let run = client(&target, source(i), &user, &password);
                match run.await {
                    Ok(conn) => (Ok(start.elapsed()), Some(conn)),
                    Err(e) => (Err((failure_kind(&e), format!("{e:#}"))), None),
                }
            }));
        }
        let mut out = Vec::with_capacity(clients);
        // Connections stay open until every client is done, as phones keep theirs.
        let mut open = Vec::with_capacity(clients);
        for t in tasks {
            match t.await {
                Ok((r, conn)) => {
                    out.push(r);
                    open.extend(conn);
                }
                Err(e) => out.push(Err(("closed".into(), e.to_string()))),
            }
        }
        drop(open);
        out
    }))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    (sorted[i] * 100.0).round() / 100.0
}

/// Run the storm benchmark.
pub fn storm_bench(opts: &StormOptions) -> anyhow::Result<StormReport> {
    if opts.clients == 0 || opts.clients > MAX_STORM_CLIENTS {
        bail!("--clients {}: must be between 1 and {MAX_STORM_CLIENTS}", opts.clients);
    }
    check_run(opts.rate, WARMUP, opts.duration)?;
    let mut up = cluster_options(2);
    up.load_users = opts.clients;
    let cluster = LocalCluster::start(&std::env::temp_dir(), &up)?;
    cluster.wait_ready(Duration::from_secs(30))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, run(&cluster, opts));
    let _ = std::fs::remove_dir_all(&cluster.dir);
    result
}

async fn run(cluster: &LocalCluster, opts: &StormOptions) -> anyhow::Result<StormReport> {
    let file = &cluster.file;
    let a = &file.nodes[0];
    let tls = ua::client_config(&file.ca, None)?;
    let mut load = alice_to_bob(cluster).await?;
    let users = file.load_users.clone().context("the cluster has no load users")?;
    let never = AtomicBool::new(false);
    let shape = Shape {
        rate: opts.rate,
        warmup: WARMUP,
        duration: opts.duration,
        body: 200,
    };
    let probes = [a.pid];
    let background = load.run(shape, &probes, &never, |_| {});
    let (addr, name, domain, clients, pid) = (a.client_addr, a.fqdn.clone(), file.domain.clone(), opts.clients, a.pid);
    let storm = async move {
        // The storm starts with the measured window of the relayed traffic.
        tokio::time::sleep(WARMUP).await;
        let rss_before = rss_kib(pid).unwrap_or(0);
        let cpu0 = tree_cpu_us(pid);
        let thread = std::thread::spawn(move || storm(clients, addr, name, tls, users, domain));
        // Wait without blocking the generator's thread.
        while !thread.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let outcomes = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the storm thread panicked"))??;
        let cpu_us = tree_cpu_us(pid) - cpu0;
        anyhow::Ok((outcomes, cpu_us, rss_before))
    };
    let (bg, storm) = tokio::join!(background, storm);
    let bg = bg?;
    let (outcomes, cpu_us, rss_before) = storm?;
    let rss_after = rss_kib(a.pid).unwrap_or(0);
    let mut failures = BTreeMap::new();
    let mut failure_examples = BTreeMap::new();
    let mut times: Vec<f64> = Vec::new();
    for o in &outcomes {
        match o {
            Ok(t) => times.push(t.as_secs_f64() * 1000.0),
            Err((kind, error)) => {
                *failures.entry(kind.clone()).or_insert(0u64) += 1;
                failure_examples.entry(kind.clone()).or_insert_with(|| error.clone());
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let registered = times.len();
    let mut client_ms = BTreeMap::new();
    for (k, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)] {
        client_ms.insert(k.to_owned(), percentile(&times, p));
    }
    Ok(StormReport {
        clients: opts.clients,
        registered,
        failures,
        failure_examples,
        all_registered_ms: (registered == opts.clients).then(|| percentile(&times, 1.0)),
        client_ms,
        node_cpu_ms: (cpu_us / 100.0).round() / 10.0,
        node_cpu_us_per_client: if registered > 0 {
            (cpu_us / registered as f64).round()
        } else {
            0.0
        },
        rss_kib_before: rss_before,
        rss_kib_after: rss_after,
        background: bg,
    })
}

/// Render a storm report for people.
pub fn render_storm(r: &StormReport) -> String {
    let lat = |k: &str| r.background.latency_ms.get(k).copied().unwrap_or(0.0);
    let cm = |k: &str| r.client_ms.get(k).copied().unwrap_or(0.0);
    let all = r
        .all_registered_ms
        .map_or_else(|| "not all registered".to_owned(), |ms| format!("{ms:.0} ms"));
    let storm_met = r.all_registered_ms.is_some_and(|ms| ms <= TARGET_STORM_MS);
    let p99_met = lat("p99") <= TARGET_STORM_P99_MS && r.background.answered == r.background.sent;
    format!(
        "storm: {} TLS clients REGISTER (Digest) at node A at once, while {} MESSAGE/s relay A -> MTLS -> B\n\
         registered {} of {} in {all}; failures {:?}{}\n\
         per client ms: p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}\n\
         node A: {:.0} ms of CPU ({:.0} µs per client), RSS {} KiB before, {} KiB with every client connected\n\
         relayed during the storm: sent {}, answered {} {:?}; latency ms p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n\
         targets: all registered within {TARGET_STORM_MS:.0} ms [{}]; relayed p99 <= {TARGET_STORM_P99_MS} ms [{}]",
        r.clients,
        r.background.rate,
        r.registered,
        r.clients,
        r.failures,
        r.failure_examples
            .iter()
            .map(|(k, e)| format!("\n  first {k}: {e}"))
            .collect::<String>(),
        cm("p50"),
        cm("p90"),
        cm("p99"),
        cm("max"),
        r.node_cpu_ms,
        r.node_cpu_us_per_client,
        r.rss_kib_before,
        r.rss_kib_after,
        r.background.sent,
        r.background.answered,
        r.background.statuses,
        lat("p50"),
        lat("p90"),
        lat("p99"),
        lat("p999"),
        lat("max"),
        if storm_met { "met" } else { "missed" },
        if p99_met { "met" } else { "missed" },
    )
}
