//! `sipmesh bench`: measurements an operator can run on their own machine.
//!
//! - `relay`: a 2-node cluster; a sender registered at node A sends MESSAGEs
//!   at a fixed rate to a responder registered at node B (so every
//!   transaction crosses A → MTLS → B and back). Reports latency percentiles,
//!   answered/failed counts, and the CPU each node spent per transaction (from
//!   `/proc/<pid>/stat`), next to the design targets.
//! - `mesh`: time from starting N node processes to a full mesh.
//!
//! Load is open-loop (paced by the clock, not by answers), bounded in count
//! and time, and only ever sent to the cluster it starts on 127.0.0.1.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use sipmesh_actors::auth::{authorization_header, Algorithm};
use sipmesh_actors::sip::{HeaderName, Incoming, SipDecoder, SipMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::cluster::{LocalCluster, UpOptions};

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

/// The reading side of a client connection.
struct Reader {
    rd: ReadHalf<TlsStream<TcpStream>>,
    buf: BytesMut,
    decoder: SipDecoder,
}

impl Reader {
    async fn next(&mut self) -> anyhow::Result<SipMessage> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Some(Incoming::Message(m)) => return Ok(m),
                Some(Incoming::KeepAlive) => continue,
                Some(Incoming::Invalid { error, .. }) => bail!("node sent a malformed message: {error}"),
                None => {}
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                bail!("node closed the connection");
            }
        }
    }

    /// A message already buffered, without reading.
    fn buffered(&mut self) -> Option<SipMessage> {
        match self.decoder.decode(&mut self.buf) {
            Some(Incoming::Message(m)) => Some(m),
            _ => None,
        }
    }
}

/// A minimal SIP-over-TLS client for load generation.
struct Ua {
    reader: Reader,
    wr: WriteHalf<TlsStream<TcpStream>>,
    port: u16,
    user: String,
    domain: String,
}

fn client_tls(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Ua {
    async fn connect(addr: &str, server_name: &str, tls: Arc<rustls::ClientConfig>, aor: &str) -> anyhow::Result<Ua> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        let port = tcp.local_addr()?.port();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())?;
        let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
        let (rd, wr) = tokio::io::split(stream);
        let (user, domain) = aor
            .trim_start_matches("sip:")
            .split_once('@')
            .context("AOR without @")?;
        Ok(Ua {
            reader: Reader {
                rd,
                buf: BytesMut::with_capacity(64 * 1024),
                decoder: SipDecoder::new(),
            },
            wr,
            port,
            user: user.to_owned(),
            domain: domain.to_owned(),
        })
    }

    async fn next(&mut self) -> anyhow::Result<SipMessage> {
        self.reader.next().await
    }

    fn register_request(&self, cseq: u32, auth: Option<&str>) -> String {
        let (user, domain, port) = (&self.user, &self.domain, self.port);
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bK-reg{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=bench\r\nTo: <sip:{user}@{domain}>\r\n\
             Call-ID: reg-{user}@bench\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@127.0.0.1:{port};transport=tls>\r\nExpires: 3600\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    }

    async fn register(&mut self, password: &str) -> anyhow::Result<()> {
        self.wr.write_all(self.register_request(1, None).as_bytes()).await?;
        let challenge = self.next().await?;
        if challenge.status() != Some(401) {
            bail!("REGISTER: expected 401, got {:?}", challenge.status());
        }
        let www = challenge
            .headers_named(HeaderName::WwwAuthenticate)
            .map(|h| h.value_str().to_owned())
            .find(|v| v.contains("MD5"))
            .context("no MD5 challenge")?;
        let param = |name: &str| {
            www.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_owned)
        };
        let (realm, nonce) = (param("realm").context("realm")?, param("nonce").context("nonce")?);
        let uri = format!("sip:{}", self.domain);
        let auth = authorization_header(
            Algorithm::Md5,
            &self.user,
            &realm,
            password,
            &nonce,
            &uri,
            "REGISTER",
            "bench",
            1,
        );
        self.wr
            .write_all(self.register_request(2, Some(&auth)).as_bytes())
            .await?;
        let ok = self.next().await?;
        if ok.status() != Some(200) {
            bail!("REGISTER: expected 200, got {:?}", ok.status());
        }
        Ok(())
    }
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
    let tls = client_tls(&file.ca)?;
    let pw = |aor: &str| file.users.iter().find(|u| u.aor == aor).map(|u| u.password.clone());
    let sender_aor = format!("sip:alice@{}", file.domain);
    let receiver_aor = format!("sip:bob@{}", file.domain);
    let mut sender = Ua::connect(&a.client_addr.to_string(), &a.fqdn, tls.clone(), &sender_aor).await?;
    sender.register(&pw(&sender_aor).context("no alice")?).await?;
    let mut receiver = Ua::connect(&b.client_addr.to_string(), &b.fqdn, tls, &receiver_aor).await?;
    receiver.register(&pw(&receiver_aor).context("no bob")?).await?;

    // Responder: answer every request 200, batching writes.
    let responder = tokio::task::spawn_local(async move {
        let mut out = Vec::with_capacity(64 * 1024);
        loop {
            let Ok(req) = receiver.next().await else { return };
            out.clear();
            out.extend_from_slice(&SipMessage::response_to(&req, 200, "OK", Some("benchb")).to_bytes());
            while let Some(more) = receiver.reader.buffered() {
                out.extend_from_slice(&SipMessage::response_to(&more, 200, "OK", Some("benchb")).to_bytes());
            }
            if receiver.wr.write_all(&out).await.is_err() {
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

    let Ua {
        mut reader,
        mut wr,
        port,
        ..
    } = sender;
    let collector = {
        let (sent_at, latencies, statuses, answered, last_answer) = (
            sent_at.clone(),
            latencies.clone(),
            statuses.clone(),
            answered.clone(),
            last_answer.clone(),
        );
        tokio::task::spawn_local(async move {
            while let Ok(resp) = reader.next().await {
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

/// The cluster a bench starts: `cluster up` defaults.
fn cluster_options(nodes: usize) -> UpOptions {
    UpOptions {
        nodes: Some(nodes),
        dir: None,
        domain: "contoso.test".into(),
        heartbeat_ms: sipmesh_actors::config::DEFAULT_HEARTBEAT_MS,
        backoff_cap_ms: 1000,
        t1_ms: sipmesh_actors::config::DEFAULT_T1_MS,
        digest_algorithms: None,
    }
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
        let status = std::fs::read_to_string(format!("/proc/{}/status", n.pid))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .context("no VmRSS")?;
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
