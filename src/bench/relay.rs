//! `bench relay`: a sender registered at node A sends MESSAGEs at a fixed
//! rate to a responder registered at node B, both [`crate::ua`] connections;
//! every transaction crosses A → MTLS → B and back.
//!
//! The load user agent is only what the bench words itself: its REGISTER and
//! MESSAGE bytes. TLS, framing and the Digest answer are [`crate::ua`]'s. The
//! sender writes each MESSAGE straight to the connection's write half (one
//! `format!` and two writes, no flush); the responder batches its 200s.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use serde::Serialize;
use sipmesh_actors::auth::Algorithm;
use sipmesh_actors::sip::{Incoming, SipMessage};
use tokio::io::AsyncWriteExt;

use super::cluster_options;
use crate::cluster::LocalCluster;
use crate::ua::{self, Connection, Credentials, UaError};

/// Most transactions one relay run may send (bounds memory and time).
pub const MAX_TRANSACTIONS: u64 = 2_000_000;
/// Longest measured duration accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// How long to wait for the last answers after the last send.
pub const DRAIN: Duration = Duration::from_secs(3);
/// Design target: CPU per relayed transaction on the relaying node.
pub const TARGET_RELAY_US: f64 = 25.0;
/// Design target: p99 latency at half load.
pub const TARGET_P99_MS: f64 = 2.5;

/// Options of `bench relay`.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// Transactions per second.
    pub rate: u32,
    /// Measured duration.
    pub duration: Duration,
    /// Unmeasured warm-up before it.
    pub warmup: Duration,
    /// MESSAGE body size in bytes.
    pub body: usize,
}

/// Result of `bench relay` (JSON field names are an interface).
#[derive(Debug, Serialize)]
pub struct RelayReport {
    /// Requested rate.
    pub rate: u32,
    /// Measured seconds.
    pub duration_s: f64,
    /// Measured transactions sent.
    pub sent: u64,
    /// Of those, answered with a final response.
    pub answered: u64,
    /// Final statuses seen (measured window).
    pub statuses: BTreeMap<u16, u64>,
    /// Latency percentiles in milliseconds: p50, p90, p99, p999, max.
    pub latency_ms: BTreeMap<String, f64>,
    /// CPU microseconds per transaction, by node FQDN (A relays, B delivers).
    pub cpu_us_per_txn: BTreeMap<String, f64>,
    /// Time from spawning the nodes to a full mesh, in milliseconds.
    pub mesh_ready_ms: u128,
}

/// Read utime+stime of `pid` in microseconds.
fn cpu_us(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).context("bad /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: field 3 is index 0; utime is field 14, stime 15.
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Ok((utime + stime) / hz * 1e6)
}

/// Digest algorithms the load client answers: MD5 only, as the bench always
/// has (registration happens before the measured window).
const ALGORITHMS: &[Algorithm] = &[Algorithm::Md5];

/// The load client's REGISTER of `user@domain` from our `port`: CSeq 1
/// without credentials, 2 with `auth`.
fn register_request(user: &str, domain: &str, port: u16, cseq: u32, auth: Option<&str>) -> String {
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    format!(
        "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bK-reg{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=bench\r\nTo: <sip:{user}@{domain}>\r\n\
         Call-ID: reg-{user}@bench\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@127.0.0.1:{port};transport=tls>\r\nExpires: 3600\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

/// A load client connected to `addr` (the node verified as `server_name`)
/// and registered there as `aor` with `password`.
async fn registered(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    aor: &str,
    password: &str,
) -> anyhow::Result<Connection> {
    let mut conn = Connection::open(addr, server_name, tls).await?;
    let (user, domain) = aor
        .trim_start_matches("sip:")
        .split_once('@')
        .context("AOR without @")?;
    let port = conn.local.port();
    let uri = format!("sip:{domain}");
    let creds = Credentials {
        user,
        password,
        uri: &uri,
        algorithms: ALGORITHMS,
        cnonce: "bench",
    };
    let answer = ua::register(&creds, async |auth: Option<&str>| {
        let cseq = if auth.is_some() { 2 } else { 1 };
        conn.send_raw(register_request(user, domain, port, cseq, auth).as_bytes())
            .await?;
        let answer = conn.next_message().await?;
        // The node challenges every first REGISTER; anything else is wrong here.
        if auth.is_none() && answer.status() != Some(401) {
            return Err(UaError::Status {
                what: "REGISTER",
                expected: 401,
                got: answer.status(),
            });
        }
        Ok(answer)
    })
    .await?;
    if answer.status() != Some(200) {
        bail!("REGISTER: expected 200, got {:?}", answer.status());
    }
    Ok(conn)
}
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Run the relay benchmark.
pub fn relay(opts: &RelayOptions) -> anyhow::Result<RelayReport> {
    if opts.rate == 0 {
        bail!("--rate 0: must be at least 1");
    }
    if opts.duration > MAX_DURATION || opts.duration.is_zero() {
        bail!(
            "--duration {:?}: must be between 1 s and {} s",
            opts.duration,
            MAX_DURATION.as_secs()
        );
    }
    let total = (opts.rate as f64 * (opts.warmup + opts.duration).as_secs_f64()) as u64;
    if total > MAX_TRANSACTIONS {
        bail!("{total} transactions (rate × time) is over the {MAX_TRANSACTIONS} limit");
    }
    let cluster = LocalCluster::start(&std::env::temp_dir(), &cluster_options(2))?;
    let ready = cluster.wait_ready(Duration::from_secs(15))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let mut report = local.block_on(&rt, relay_run(&cluster, opts, total))?;
    report.mesh_ready_ms = ready.as_millis();
    let _ = std::fs::remove_dir_all(&cluster.dir);
    Ok(report)
}

async fn relay_run(cluster: &LocalCluster, opts: &RelayOptions, total: u64) -> anyhow::Result<RelayReport> {
    let file = &cluster.file;
    let (a, b) = (&file.nodes[0], &file.nodes[1]);
    let tls = ua::client_config(&file.ca, None)?;
    let pw = |aor: &str| file.users.iter().find(|u| u.aor == aor).map(|u| u.password.clone());
    let sender_aor = format!("sip:alice@{}", file.domain);
    let receiver_aor = format!("sip:bob@{}", file.domain);
    let sender_pw = pw(&sender_aor).context("no alice")?;
    let sender = registered(a.client_addr, &a.fqdn, tls.clone(), &sender_aor, &sender_pw).await?;
    let receiver_pw = pw(&receiver_aor).context("no bob")?;
    let mut receiver = registered(b.client_addr, &b.fqdn, tls, &receiver_aor, &receiver_pw).await?;

    // Responder: answer every request 200, batching writes.
    let responder = tokio::task::spawn_local(async move {
        let mut out = Vec::with_capacity(64 * 1024);
        loop {
            let Ok(req) = receiver.next_message().await else { return };
            out.clear();
            out.extend_from_slice(&SipMessage::response_to(&req, 200, "OK", Some("benchb")).to_bytes());
            // Only messages already buffered: anything else decoded (a keep-alive)
            // ends the batch and is dropped, as the bench has always done.
            while let Some(Incoming::Message(more)) = receiver.reader.buffered() {
                out.extend_from_slice(&SipMessage::response_to(&more, 200, "OK", Some("benchb")).to_bytes());
            }
            if receiver.writer.write_all(&out).await.is_err() {
                return;
            }
        }
    });

    let warm = (opts.rate as f64 * opts.warmup.as_secs_f64()) as u64;
    let sent_at: Rc<RefCell<Vec<Option<Instant>>>> = Rc::new(RefCell::new(vec![None; total as usize]));
    let latencies: Rc<RefCell<Vec<u64>>> = Rc::new(RefCell::new(Vec::with_capacity(total as usize)));
    let statuses: Rc<RefCell<BTreeMap<u16, u64>>> = Rc::default();
    let answered = Rc::new(RefCell::new(0u64));
    let last_answer = Rc::new(RefCell::new(Instant::now()));

    let Connection {
        mut reader,
        writer: mut wr,
        local,
        ..
    } = sender;
    let port = local.port();
    let collector = {
        let (sent_at, latencies, statuses, answered, last_answer) = (
            sent_at.clone(),
            latencies.clone(),
            statuses.clone(),
            answered.clone(),
            last_answer.clone(),
        );
        tokio::task::spawn_local(async move {
            while let Ok(resp) = reader.next_message().await {
                let Some(code) = resp.status() else { continue };
                if code < 200 {
                    continue;
                }
                let Some(i) = resp
                    .call_id()
                    .ok()
                    .and_then(|c| c.strip_prefix('b'))
                    .and_then(|c| c.split('@').next())
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                let now = Instant::now();
                *last_answer.borrow_mut() = now;
                if i < warm {
                    continue;
                }
                if let Some(t) = sent_at.borrow().get(i as usize).copied().flatten() {
                    latencies.borrow_mut().push(now.duration_since(t).as_micros() as u64);
                }
                *statuses.borrow_mut().entry(code).or_default() += 1;
                *answered.borrow_mut() += 1;
            }
        })
    };

    let body = Bytes::from(vec![b'x'; opts.body]);
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / opts.rate as f64);
    let (mut cpu_a0, mut cpu_b0, mut t0) = (0.0, 0.0, Instant::now());
    for i in 0..total {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        if i == warm {
            cpu_a0 = cpu_us(a.pid)?;
            cpu_b0 = cpu_us(b.pid)?;
            t0 = Instant::now();
        }
        let msg = format!(
            "MESSAGE {receiver_aor} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bK-b{i}\r\n\
             Max-Forwards: 70\r\nFrom: <{sender_aor}>;tag=bencha\r\nTo: <{receiver_aor}>\r\nCall-ID: b{i}@bench\r\n\
             CSeq: {} MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            i + 1,
            body.len()
        );
        sent_at.borrow_mut()[i as usize] = Some(Instant::now());
        wr.write_all(msg.as_bytes()).await?;
        wr.write_all(&body).await?;
    }
    let measured_sent = total - warm;
    let drain_deadline = Instant::now() + DRAIN;
    while *answered.borrow() < measured_sent && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t1 = (*last_answer.borrow()).max(t0);
    let (cpu_a1, cpu_b1) = (cpu_us(a.pid)?, cpu_us(b.pid)?);
    collector.abort();
    responder.abort();

    let mut lat = latencies.borrow().clone();
    lat.sort_unstable();
    let n = measured_sent.max(1) as f64;
    let mut latency_ms = BTreeMap::new();
    for (k, p) in [
        ("p50", 0.50),
        ("p90", 0.90),
        ("p99", 0.99),
        ("p999", 0.999),
        ("max", 1.0),
    ] {
        latency_ms.insert(k.to_owned(), percentile(&lat, p));
    }
    let mut cpu = BTreeMap::new();
    cpu.insert(a.fqdn.clone(), ((cpu_a1 - cpu_a0) / n * 10.0).round() / 10.0);
    cpu.insert(b.fqdn.clone(), ((cpu_b1 - cpu_b0) / n * 10.0).round() / 10.0);
    let answered = *answered.borrow();
    let statuses = statuses.borrow().clone();
    Ok(RelayReport {
        rate: opts.rate,
        duration_s: (t1 - t0).as_secs_f64(),
        sent: measured_sent,
        answered,
        statuses,
        latency_ms,
        cpu_us_per_txn: cpu,
        mesh_ready_ms: 0,
    })
}

/// Render a relay report for people.
pub fn render_relay(r: &RelayReport) -> String {
    let (a, b): (Vec<_>, Vec<_>) = r.cpu_us_per_txn.iter().enumerate().partition(|(i, _)| *i == 0);
    let cpu_a = a.first().map(|(_, (k, v))| format!("{k} {v} µs")).unwrap_or_default();
    let cpu_b = b.first().map(|(_, (k, v))| format!("{k} {v} µs")).unwrap_or_default();
    let relay_us = r.cpu_us_per_txn.values().next().copied().unwrap_or(0.0);
    let p99 = r.latency_ms.get("p99").copied().unwrap_or(0.0);
    let lat = |k: &str| r.latency_ms.get(k).copied().unwrap_or(0.0);
    format!(
        "relay: MESSAGE A -> MTLS -> B -> 200, {} /s for {:.1} s (mesh up in {} ms)\n\
         sent {}, answered {} {:?}\n\
         latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n\
         CPU per transaction: {cpu_a} (relaying), {cpu_b} (delivering)\n\
         targets: relaying node <= {TARGET_RELAY_US} µs [{}]; p99 <= {TARGET_P99_MS} ms at half of the highest rate this machine sustains [{} at this rate]",
        r.rate,
        r.duration_s,
        r.mesh_ready_ms,
        r.sent,
        r.answered,
        r.statuses,
        lat("p50"),
        lat("p90"),
        lat("p99"),
        lat("p999"),
        lat("max"),
        if relay_us <= TARGET_RELAY_US { "met" } else { "missed" },
        if p99 <= TARGET_P99_MS { "met" } else { "missed" },
    )
}
