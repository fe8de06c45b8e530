//! `bench relay`: a sender registered at node A sends MESSAGEs at a fixed
//! rate to a responder registered at node B, both [`crate::ua`] connections;
//! every transaction crosses A → MTLS → B and back.
//!
//! The load itself is [`super::load::Load`], the generator `bench compare`
//! uses too; this file registers its two clients (REGISTER bytes here, TLS,
//! framing and the Digest answer [`crate::ua`]'s) and words the report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;
use sipmesh_actors::auth::Algorithm;

use super::cluster_options;
use super::load::{check_run, Load, Shape};
use crate::cluster::LocalCluster;
use crate::ua::{self, Connection, Credentials, UaError};

pub use super::load::{DRAIN, MAX_DURATION, MAX_TRANSACTIONS};
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

/// Digest algorithms the load client answers: MD5 only, as the bench always
/// has (registration happens before the measured window).
pub(super) const ALGORITHMS: &[Algorithm] = &[Algorithm::Md5];

/// The load client's REGISTER of `user@domain` from our `port`: CSeq 1
/// without credentials, 2 with `auth`.
/// A REGISTER from a client at `local`. Like a phone's: its own address in
/// Via and Contact and a branch unique to the request (clients on different
/// source IPs can have the same port; a shared branch and sent-by would make
/// the server take one client's request for another's retransmission).
pub(super) fn register_request(user: &str, domain: &str, local: SocketAddr, cseq: u32, auth: Option<&str>) -> String {
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let branch = rand::random::<u64>();
    format!(
        "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK-reg{cseq}-{branch:016x}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=bench\r\nTo: <sip:{user}@{domain}>\r\n\
         Call-ID: reg-{user}@bench\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@{local};transport=tls>\r\nExpires: 3600\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

/// The load every bench relays: alice registered on the cluster's first
/// node sends to bob registered on its second.
pub(super) async fn alice_to_bob(cluster: &LocalCluster) -> anyhow::Result<Load> {
    let file = &cluster.file;
    let (a, b) = (&file.nodes[0], &file.nodes[1]);
    let tls = ua::client_config(&file.ca, None)?;
    let pw = |aor: &str| file.users.iter().find(|u| u.aor == aor).map(|u| u.password.clone());
    let from = format!("sip:alice@{}", file.domain);
    let to = format!("sip:bob@{}", file.domain);
    let sender = registered(
        a.client_addr,
        &a.fqdn,
        tls.clone(),
        &from,
        &pw(&from).context("no alice")?,
    )
    .await?;
    let receiver = registered(b.client_addr, &b.fqdn, tls, &to, &pw(&to).context("no bob")?).await?;
    Ok(Load::start(sender, receiver, &from, &to))
}

/// A load client connected to `addr` (the node verified as `server_name`)
/// and registered there as `aor` with `password`.
pub(super) async fn registered(
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
        conn.send_raw(register_request(user, domain, conn.local, cseq, auth).as_bytes())
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
/// Run the relay benchmark.
pub fn relay(opts: &RelayOptions) -> anyhow::Result<RelayReport> {
    check_run(opts.rate, opts.warmup, opts.duration)?;
    let cluster = LocalCluster::start(&std::env::temp_dir(), &cluster_options(2))?;
    let ready = cluster.wait_ready(Duration::from_secs(15))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let mut report = local.block_on(&rt, relay_run(&cluster, opts))?;
    report.mesh_ready_ms = ready.as_millis();
    let _ = std::fs::remove_dir_all(&cluster.dir);
    Ok(report)
}

async fn relay_run(cluster: &LocalCluster, opts: &RelayOptions) -> anyhow::Result<RelayReport> {
    let file = &cluster.file;
    let (a, b) = (&file.nodes[0], &file.nodes[1]);
    let mut load = alice_to_bob(cluster).await?;
    let never = AtomicBool::new(false);
    let r = load
        .run(
            Shape {
                rate: opts.rate,
                warmup: opts.warmup,
                duration: opts.duration,
                body: opts.body,
            },
            &[a.pid, b.pid],
            &never,
            |_| {},
        )
        .await?;
    let mut cpu = BTreeMap::new();
    cpu.insert(a.fqdn.clone(), r.cpu_us[0]);
    cpu.insert(b.fqdn.clone(), r.cpu_us[1]);
    Ok(RelayReport {
        rate: opts.rate,
        duration_s: r.duration_s,
        sent: r.sent,
        answered: r.answered,
        statuses: r.statuses,
        latency_ms: r.latency_ms,
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
