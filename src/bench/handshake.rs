//! `bench handshake`: new TLS connections per second from parallel clients,
//! and the server CPU each one costs.
//!
//! Three doors, one after the other, with the same client code:
//! - **sipmesh mesh port** (mutual TLS): the client presents a certificate
//!   of a topology member (freshly issued by the cluster CA for node B's
//!   FQDN), so the node runs its whole verifier (chain, validity, CRL) on
//!   every connection. The client closes right after the handshake, before
//!   any hello: the node's cost is the accept, the handshake and the refusal.
//! - **sipmesh client port** (TLS, no client certificate).
//! - **Kamailio** (optional): B's mutual-TLS port of the `bench compare`
//!   chain, with A's certificate. Kamailio's TLS module has died under this
//!   load (a double free and a SIGSEGV in a child take the whole server
//!   down); the bench watches for that and reports what was served before.
//!
//! Every full handshake: resumption is off on the client (and the node never
//! issues tickets), so no connection skips the certificate checks. Server CPU
//! is from `/proc/PID/task/*/schedstat` of the server's whole process tree.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use super::cluster_options;
use super::kamailio;
use super::load::tree_cpu_us;
use crate::cluster::LocalCluster;
use crate::pki::{self, IssueOptions};
use crate::ua;

/// Most parallel clients.
pub const MAX_PARALLEL: usize = 256;
/// Longest measured time per door.
pub const MAX_HANDSHAKE_DURATION: Duration = Duration::from_secs(120);
/// Longest excerpt of one Kamailio log line in the report.
const CRASH_LINE_CHARS: usize = 100;
/// How often the Kamailio process is checked while it is under load.
const WATCH: Duration = Duration::from_millis(100);

/// What `bench handshake` is asked to do.
#[derive(Clone, Debug)]
pub struct HandshakeOptions {
    /// Measured time per door.
    pub duration: Duration,
    /// Parallel clients (each one connection at a time).
    pub parallel: usize,
    /// Also measure Kamailio's mutual-TLS port.
    pub kamailio: bool,
    /// Keep Kamailio's configs and logs here (a temporary directory when absent).
    pub dir: Option<std::path::PathBuf>,
}

/// One door's result.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Door {
    /// What was measured.
    pub door: String,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Connections that failed (refused, reset, timed out), with the first error.
    pub failed: u64,
    /// The first failure, as the client saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Seconds measured (until the end, or until the server died).
    pub seconds: f64,
    /// Completed handshakes per second.
    pub per_second: f64,
    /// Server CPU per completed handshake, in µs (all its threads and processes).
    pub server_cpu_us: f64,
    /// The server died under the load: how it ended, after how many handshakes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub died: Option<String>,
}

/// The report of `bench handshake`.
#[derive(Clone, Debug, Serialize)]
pub struct HandshakeReport {
    /// Parallel clients.
    pub parallel: usize,
    /// Seconds per door.
    pub duration_s: f64,
    /// Each door, in the order measured.
    pub doors: Vec<Door>,
}

/// The target for a mesh-port handshake (issue 11).
pub const TARGET_MESH_HANDSHAKE_US: f64 = 250.0;

/// Run the handshake benchmark.
pub fn handshake(opts: &HandshakeOptions) -> anyhow::Result<HandshakeReport> {
    if opts.parallel == 0 || opts.parallel > MAX_PARALLEL {
        bail!("--parallel {}: must be between 1 and {MAX_PARALLEL}", opts.parallel);
    }
    if opts.duration.is_zero() || opts.duration > MAX_HANDSHAKE_DURATION {
        bail!(
            "--duration {}: must be between 1 and {} seconds",
            opts.duration.as_secs(),
            MAX_HANDSHAKE_DURATION.as_secs()
        );
    }
    if opts.kamailio {
        let missing = kamailio::missing_packages();
        if !missing.is_empty() {
            bail!(
                "bench handshake needs Debian's {} for Kamailio (apt-get install {}, or --no-kamailio); it installs nothing itself",
                missing.join(" and "),
                missing.join(" ")
            );
        }
    }
    // Clients on two worker threads: a client handshake costs about as much
    // as the server's, and one thread would be what limits the rate.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut doors = Vec::new();
    {
        let cluster = LocalCluster::start(&std::env::temp_dir(), &cluster_options(2))?;
        cluster.wait_ready(Duration::from_secs(15))?;
        let file = &cluster.file;
        let (a, b) = (&file.nodes[0], &file.nodes[1]);
        // A member's certificate (B's name), issued fresh by the cluster CA.
        let id = pki::issue(
            &file.ca_dir,
            &IssueOptions::new(&b.fqdn),
            &cluster.dir.join("bench-client"),
        )?;
        let mesh = full_handshakes(ua::client_config(&file.ca, Some(&id))?);
        let client = full_handshakes(ua::client_config(&file.ca, None)?);
        let never = || None;
        doors.push(rt.block_on(hammer(
            "sipmesh mesh port (MTLS)",
            a.mesh_addr,
            &a.fqdn,
            mesh,
            a.pid,
            opts,
            never,
        )));
        doors.push(rt.block_on(hammer(
            "sipmesh client port (TLS)",
            a.client_addr,
            &a.fqdn,
            client,
            a.pid,
            opts,
            never,
        )));
        let _ = std::fs::remove_dir_all(&cluster.dir);
    }
    if opts.kamailio {
        let dir = match &opts.dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("sipmesh-handshake-{:08x}", rand::random::<u32>())),
        };
        doors.push(kamailio_door(&rt, &dir, opts));
        if opts.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(HandshakeReport {
        parallel: opts.parallel,
        duration_s: opts.duration.as_secs_f64(),
        doors,
    })
}

fn kamailio_door(rt: &tokio::runtime::Runtime, dir: &Path, opts: &HandshakeOptions) -> Door {
    const NAME: &str = "kamailio B (MTLS)";
    let failed = |e: anyhow::Error| Door {
        door: NAME.into(),
        first_error: Some(format!("{e:#}")),
        ..Door::default()
    };
    let chain = match kamailio::start(dir) {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let config = match ua::client_config(&chain.ca, Some(&chain.a_identity)) {
        Ok(c) => full_handshakes(c),
        Err(e) => return failed(e.into()),
    };
    let pid = chain.pids[1];
    let log = chain.logs[1].clone();
    let chain = std::sync::Mutex::new(chain);
    let died = || {
        let mut c = chain.lock().ok()?;
        let tail = crash_lines(&log);
        // A failed assertion in its allocator takes the server down; it may
        // still be exiting when we look.
        if c.alive() && !tail.contains("Assertion") {
            return None;
        }
        Some(if tail.is_empty() {
            "exited".to_owned()
        } else {
            format!("exited; its log: {tail}")
        })
    };
    rt.block_on(hammer(
        NAME,
        chain_addr(&chain),
        kamailio::B_NAME,
        config,
        pid,
        opts,
        died,
    ))
}

fn chain_addr(chain: &std::sync::Mutex<kamailio::KamailioChain>) -> SocketAddr {
    chain.lock().map(|c| c.b_mesh).unwrap_or_else(|e| e.into_inner().b_mesh)
}

/// What a Kamailio log says about how it died (memory errors, failed
/// assertions, signals): each such line from its keyword on, cut to
/// [`CRASH_LINE_CHARS`], at most two plus the first assertion.
fn crash_lines(log: &Path) -> String {
    const KEYS: [&str; 3] = ["BUG", "Assertion", "SIGSEGV"];
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let from_key = |l: &str| {
        let at = KEYS.iter().filter_map(|k| l.find(k)).min()?;
        Some(l[at..].trim().chars().take(CRASH_LINE_CHARS).collect::<String>())
    };
    let mut lines: Vec<String> = text.lines().filter_map(from_key).take(2).collect();
    if let Some(a) = text.lines().filter(|l| l.contains("Assertion")).find_map(from_key) {
        if !lines.contains(&a) {
            lines.push(a);
        }
    }
    lines.join(" | ")
}

/// A client config that never resumes: every connection a full handshake.
fn full_handshakes(config: Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    let mut c = (*config).clone();
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// `parallel` clients connect, handshake and close, again and again, for
/// the duration or until `died` reports the server gone.
async fn hammer(
    door: &str,
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
    pid: u32,
    opts: &HandshakeOptions,
    mut died: impl FnMut() -> Option<String>,
) -> Door {
    let done = Arc::new(AtomicU64::new(0));
    // When the last handshake completed, in µs since the start.
    let last_ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let cpu0 = tree_cpu_us(pid);
    let start = Instant::now();
    let end = start + opts.duration;
    let mut tasks = Vec::new();
    for _ in 0..opts.parallel {
        let (done, failed, stop, first_error, last_ok) = (
            done.clone(),
            failed.clone(),
            stop.clone(),
            first_error.clone(),
            last_ok.clone(),
        );
        let (config, name) = (config.clone(), name.to_owned());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                match ua::connect(addr, &name, config.clone()).await {
                    Ok(stream) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        last_ok.fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                        drop(stream);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut f) = first_error.lock() {
                            f.get_or_insert_with(|| e.to_string());
                        }
                        // A refused or dead server: do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    // The server's CPU is read while it runs: a dead one has no /proc entry.
    let mut cpu = 0.0;
    let mut death = None;
    while Instant::now() < end {
        tokio::time::sleep(WATCH).await;
        if let Some(how) = died() {
            death = Some(how);
            break;
        }
        cpu = tree_cpu_us(pid) - cpu0;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // A server that crashed near the end may still be exiting: look again
    // once the clients are done (they wait out their timeouts on a wedged one).
    if death.is_none() {
        tokio::time::sleep(WATCH).await;
        death = died();
        if death.is_none() {
            cpu = tree_cpu_us(pid) - cpu0;
        }
    }
    let handshakes = done.load(Ordering::Relaxed);
    let (seconds, died) = match death {
        Some(how) => {
            let at = last_ok.load(Ordering::Relaxed) as f64 / 1e6;
            (
                at,
                Some(format!("{how} (after {handshakes} handshakes, the last at {at:.1} s)")),
            )
        }
        None => (start.elapsed().as_secs_f64().min(opts.duration.as_secs_f64()), None),
    };
    let first_error = first_error.lock().ok().and_then(|f| f.clone());
    Door {
        door: door.to_owned(),
        handshakes,
        failed: failed.load(Ordering::Relaxed),
        first_error,
        seconds: (seconds * 100.0).round() / 100.0,
        per_second: if seconds > 0.0 {
            (handshakes as f64 / seconds).round()
        } else {
            0.0
        },
        server_cpu_us: if handshakes > 0 {
            (cpu / handshakes as f64 * 10.0).round() / 10.0
        } else {
            0.0
        },
        died,
    }
}

/// Render a handshake report for people.
pub fn render_handshake(r: &HandshakeReport) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header([
        "DOOR",
        "HANDSHAKES",
        "FAILED",
        "PER SECOND",
        "SERVER µs/HANDSHAKE",
        "NOTE",
    ]);
    for d in &r.doors {
        let note = d
            .died
            .clone()
            .or_else(|| d.first_error.clone().map(|e| format!("first failure: {e}")))
            .unwrap_or_default();
        table.add_row([
            d.door.clone(),
            d.handshakes.to_string(),
            d.failed.to_string(),
            format!("{:.0}", d.per_second),
            format!("{:.1}", d.server_cpu_us),
            note,
        ]);
    }
    let mesh = r.doors.first().map(|d| d.server_cpu_us).unwrap_or(0.0);
    format!(
        "handshake: new TLS connections from {} parallel clients, {:.0} s per door, full handshakes only\n{table}\n\
         target: mesh-port handshake <= {TARGET_MESH_HANDSHAKE_US} µs of server CPU [{}]",
        r.parallel,
        r.duration_s,
        if mesh > 0.0 && mesh <= TARGET_MESH_HANDSHAKE_US {
            "met"
        } else {
            "missed"
        }
    )
}
