//! `bench compare`: the same load, from the same generator ([`super::load`]),
//! through two chains one after the other on 127.0.0.1:
//! UA → A → TLS/MTLS → B → UA and back, with Kamailio ([`super::kamailio`])
//! and with sipmesh (two nodes, as `bench relay`). Per rate it reports each
//! chain's latency percentiles, answered/failed by status and CPU per
//! transaction of A, B and the generator; then a max-rate search per chain;
//! then the ratios sipmesh / Kamailio. It writes an SVG chart into the bench
//! directory. Ctrl-C stops the run; both chains are torn down either way.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::load::{check_run, Load, RunResult, Shape};
use super::{cluster_options, kamailio};
use crate::cluster::LocalCluster;
use crate::ua::{self, Connection};

/// The max-rate search stops doubling here.
pub const MAX_SEARCH_RATE: u32 = 256_000;
/// Bisection stops when the bracket is this narrow (5 %).
const SEARCH_PRECISION: f64 = 0.05;
/// Confirming runs tried, each 5 % lower, before the search gives up.
const CONFIRM_TRIES: usize = 4;

/// Options of `bench compare`.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// Rates per second, each measured on both chains.
    pub rates: Vec<u32>,
    /// Measured seconds per rate.
    pub duration: Duration,
    /// Unmeasured warm-up before each rate.
    pub warmup: Duration,
    /// MESSAGE body bytes.
    pub body: usize,
    /// Search each chain's highest rate answered in full.
    pub max_search: bool,
    /// Where configs, logs and the chart go (kept); a temp dir otherwise.
    pub dir: Option<PathBuf>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// Latency percentiles (ms).
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

/// CPU µs per transaction.
#[derive(Clone, Debug, Serialize)]
pub struct Cpu {
    /// Node A (relays).
    pub a: f64,
    /// Node B (registrar, delivers).
    pub b: f64,
    /// The load generator (this process).
    pub generator: f64,
}

/// One rate on one chain (field names are an interface).
#[derive(Clone, Debug, Serialize)]
pub struct PerRate {
    /// Requests per second.
    pub rate: u32,
    /// Measured requests sent.
    pub sent: u64,
    /// Of those, answered with a final response.
    pub answered: u64,
    /// Final statuses seen.
    pub statuses: BTreeMap<u16, u64>,
    /// Latency percentiles.
    pub latency_ms: Latency,
    /// CPU per transaction.
    pub cpu_us_per_txn: Cpu,
}

/// One chain's results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Chain {
    /// One row per rate.
    pub per_rate: Vec<PerRate>,
    /// Highest rate answered in full (null without the search).
    pub max_rate: Option<u32>,
    /// Why the chain stopped early (a crashed server, a broken connection).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// sipmesh / Kamailio at one rate.
#[derive(Clone, Debug, Serialize)]
pub struct RatioRow {
    /// Requests per second.
    pub rate: u32,
    /// CPU of A.
    pub cpu_a: Option<f64>,
    /// CPU of B.
    pub cpu_b: Option<f64>,
    /// P99 latency.
    pub p99: Option<f64>,
}

/// sipmesh / Kamailio.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    /// One row per rate.
    pub per_rate: Vec<RatioRow>,
    /// Of the max rates.
    pub max_rate: Option<f64>,
}

/// The whole report (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// The rates measured.
    pub rates: Vec<u32>,
    /// The Kamailio chain.
    pub kamailio: Chain,
    /// The sipmesh chain.
    pub sipmesh: Chain,
    /// Sipmesh / Kamailio.
    pub ratio: Ratio,
    /// The SVG chart.
    pub chart: PathBuf,
    /// The bench directory (configs, logs).
    pub dir: PathBuf,
}

fn per_rate(r: &RunResult) -> PerRate {
    let l = |k: &str| r.latency_ms.get(k).copied().unwrap_or(0.0);
    PerRate {
        rate: r.rate,
        sent: r.sent,
        answered: r.answered,
        statuses: r.statuses.clone(),
        latency_ms: Latency {
            p50: l("p50"),
            p90: l("p90"),
            p99: l("p99"),
            p999: l("p999"),
            max: l("max"),
        },
        cpu_us_per_txn: Cpu {
            a: r.cpu_us.first().copied().unwrap_or(0.0),
            b: r.cpu_us.get(1).copied().unwrap_or(0.0),
            generator: r.generator_us,
        },
    }
}

/// A REGISTER without credentials (Kamailio's registrar here asks none).
async fn register_plain(conn: &mut Connection, user: &str, domain: &str) -> anyhow::Result<()> {
    let port = conn.local.port();
    let req = format!(
        "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bK-reg1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=bench\r\nTo: <sip:{user}@{domain}>\r\n\
         Call-ID: reg-{user}@bench\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:{user}@127.0.0.1:{port};transport=tls>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
    );
    conn.send_raw(req.as_bytes()).await?;
    let answer = conn.next_message().await?;
    if answer.status() != Some(200) {
        bail!(
            "REGISTER {user}@{domain} at Kamailio B: expected 200, got {:?}",
            answer.status()
        );
    }
    Ok(())
}

/// Runs every rate, then the search, on one chain.
struct Driver<'a> {
    opts: &'a CompareOptions,
    stop: &'a AtomicBool,
    bar: &'a indicatif::ProgressBar,
}

impl Driver<'_> {
    async fn one(&self, load: &mut Load, pids: &[u32], rate: u32, label: &str) -> anyhow::Result<RunResult> {
        self.bar.set_message(format!("{label} at {rate}/s"));
        let before = self.bar.position();
        let r = load
            .run(
                Shape {
                    rate,
                    warmup: self.opts.warmup,
                    duration: self.opts.duration,
                    body: self.opts.body,
                },
                pids,
                self.stop,
                |n| self.bar.set_position(before + n),
            )
            .await;
        if self.stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        r
    }

    async fn chain(&self, load: &mut Load, pids: &[u32], label: &str, alive: &mut dyn FnMut() -> bool) -> Chain {
        let mut chain = Chain::default();
        for &rate in &self.opts.rates {
            match self.one(load, pids, rate, label).await {
                Ok(r) => chain.per_rate.push(per_rate(&r)),
                Err(e) => {
                    chain.failed = Some(format!("at {rate}/s: {e:#}"));
                    return chain;
                }
            }
            if !alive() {
                chain.failed = Some(format!("{label} exited during the {rate}/s run"));
                return chain;
            }
        }
        if self.opts.max_search {
            let mut best = 0;
            match self.search(load, pids, label, alive, &mut best).await {
                Ok(max) => chain.max_rate = Some(max),
                Err(e) => {
                    // The chain broke at a higher rate: what passed before is its result.
                    chain.max_rate = (best > 0).then_some(best);
                    chain.failed = Some(format!(
                        "max-rate search: the chain broke above {best}/s ({e:#}); max_rate is the highest rate answered in full before"
                    ));
                }
            }
        }
        chain
    }

    /// Doubling from the highest passing rate, bisection to 5 %, one confirming run.
    async fn search(
        &self,
        load: &mut Load,
        pids: &[u32],
        label: &str,
        alive: &mut dyn FnMut() -> bool,
        best: &mut u32,
    ) -> anyhow::Result<u32> {
        let mut pass = |r: &RunResult| {
            if r.all_ok() {
                *best = (*best).max(r.rate);
            }
            r.all_ok()
        };
        let mut lo = 0u32;
        let mut hi: Option<u32> = None;
        let mut rate = self.opts.rates.iter().copied().max().unwrap_or(1000);
        while hi.is_none() && rate <= MAX_SEARCH_RATE {
            if check_run(rate, self.opts.warmup, self.opts.duration).is_err() {
                break;
            }
            let r = self.one(load, pids, rate, &format!("{label} search")).await?;
            if !alive() {
                hi = Some(rate);
                break;
            }
            if pass(&r) {
                lo = rate;
                rate = rate.saturating_mul(2);
            } else {
                hi = Some(rate);
            }
        }
        let Some(mut hi) = hi else { return Ok(lo) };
        if !alive() {
            return Ok(lo);
        }
        if lo == 0 {
            lo = 1;
        }
        while (hi - lo) as f64 > lo as f64 * SEARCH_PRECISION && alive() {
            let mid = lo + (hi - lo) / 2;
            let r = self.one(load, pids, mid, &format!("{label} search")).await?;
            if pass(&r) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let mut candidate = lo;
        for _ in 0..CONFIRM_TRIES {
            if !alive() {
                break;
            }
            let r = self.one(load, pids, candidate, &format!("{label} confirm")).await?;
            if pass(&r) {
                return Ok(candidate);
            }
            candidate = (candidate as f64 * (1.0 - SEARCH_PRECISION)) as u32;
        }
        Ok(candidate)
    }
}

/// Run the comparison.
pub fn compare(opts: &CompareOptions) -> anyhow::Result<CompareReport> {
    for &rate in &opts.rates {
        check_run(rate, opts.warmup, opts.duration)?;
    }
    let missing = kamailio::missing_packages();
    if !missing.is_empty() {
        bail!(
            "bench compare needs Debian's {} (apt-get install {}); it installs nothing itself",
            missing.join(" and "),
            missing.join(" ")
        );
    }
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("sipmesh-compare-{:08x}", rand::random::<u32>())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("--dir {}", dir.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let planned: u64 = opts
        .rates
        .iter()
        .map(|r| (*r as f64 * (opts.warmup + opts.duration).as_secs_f64()) as u64)
        .sum::<u64>()
        * 2;
    let bar = if opts.progress {
        indicatif::ProgressBar::new(planned)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let (kam, mesh) = local.block_on(&rt, async {
        let s = stop.clone();
        tokio::task::spawn_local(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                s.store(true, Ordering::Relaxed);
            }
        });
        let driver = Driver {
            opts,
            stop: &stop,
            bar: &bar,
        };
        let kam = kamailio_chain(&driver, &dir).await;
        let mesh = if stop.load(Ordering::Relaxed) {
            Chain {
                failed: Some("interrupted".into()),
                ..Chain::default()
            }
        } else {
            sipmesh_chain(&driver, &dir).await
        };
        (kam, mesh)
    });
    bar.finish_and_clear();
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted (Ctrl-C); both chains stopped");
    }
    let ratio = ratio(&opts.rates, &kam, &mesh);
    let chart = dir.join("compare.svg");
    std::fs::write(&chart, svg(&opts.rates, &kam, &mesh))?;
    let report = CompareReport {
        rates: opts.rates.clone(),
        kamailio: kam,
        sipmesh: mesh,
        ratio,
        chart,
        dir: dir.clone(),
    };
    std::fs::write(dir.join("compare.json"), serde_json::to_string_pretty(&report)?)?;
    Ok(report)
}

async fn kamailio_chain(driver: &Driver<'_>, dir: &Path) -> Chain {
    let fail = |e: anyhow::Error| Chain {
        failed: Some(format!("{e:#}")),
        ..Chain::default()
    };
    let mut chain = match kamailio::start(dir) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let load = async {
        let tls = ua::client_config(&chain.ca, None)?;
        let sender = Connection::open(chain.a_client, "kamailio-a.bench.test", tls.clone()).await?;
        let mut receiver = Connection::open(chain.b_client, "kamailio-b.bench.test", tls).await?;
        register_plain(&mut receiver, "bob", kamailio::DOMAIN).await?;
        let to = format!("sip:bob@{}", kamailio::DOMAIN);
        anyhow::Ok(Load::start(
            sender,
            receiver,
            &format!("sip:alice@{}", kamailio::DOMAIN),
            &to,
        ))
    };
    let mut load = match load.await {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let pids = chain.pids;
    let result = driver.chain(&mut load, &pids, "kamailio", &mut || chain.alive()).await;
    drop(load);
    drop(chain);
    result
}

async fn sipmesh_chain(driver: &Driver<'_>, dir: &Path) -> Chain {
    let fail = |e: anyhow::Error| Chain {
        failed: Some(format!("{e:#}")),
        ..Chain::default()
    };
    let up = cluster_options(2);
    let cluster = match LocalCluster::start(dir, &up).and_then(|c| c.wait_ready(Duration::from_secs(15)).map(|_| c)) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let load = async {
        let file = &cluster.file;
        let (a, b) = (&file.nodes[0], &file.nodes[1]);
        anyhow::Ok((super::relay::alice_to_bob(&cluster).await?, [a.pid, b.pid]))
    };
    let (mut load, pids) = match load.await {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let result = driver.chain(&mut load, &pids, "sipmesh", &mut || true).await;
    drop(load);
    drop(cluster);
    result
}

fn div(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| (a / b * 1000.0).round() / 1000.0)
}

fn ratio(rates: &[u32], kam: &Chain, mesh: &Chain) -> Ratio {
    let find = |c: &Chain, r: u32| c.per_rate.iter().find(|p| p.rate == r).cloned();
    let per_rate = rates
        .iter()
        .map(|&rate| match (find(mesh, rate), find(kam, rate)) {
            (Some(m), Some(k)) => RatioRow {
                rate,
                cpu_a: div(m.cpu_us_per_txn.a, k.cpu_us_per_txn.a),
                cpu_b: div(m.cpu_us_per_txn.b, k.cpu_us_per_txn.b),
                p99: div(m.latency_ms.p99, k.latency_ms.p99),
            },
            _ => RatioRow {
                rate,
                cpu_a: None,
                cpu_b: None,
                p99: None,
            },
        })
        .collect();
    let max_rate = match (mesh.max_rate, kam.max_rate) {
        (Some(m), Some(k)) => div(m as f64, k as f64),
        _ => None,
    };
    Ratio { per_rate, max_rate }
}

/// Render the report for people.
pub fn render_compare(r: &CompareReport) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "RATE/s",
        "CHAIN",
        "SENT",
        "ANSWERED",
        "STATUSES",
        "p50 ms",
        "p90",
        "p99",
        "p99.9",
        "max",
        "A µs/txn",
        "B µs/txn",
        "GEN µs/txn",
    ]);
    for &rate in &r.rates {
        for (name, c) in [("kamailio", &r.kamailio), ("sipmesh", &r.sipmesh)] {
            if let Some(p) = c.per_rate.iter().find(|p| p.rate == rate) {
                let statuses: Vec<String> = p.statuses.iter().map(|(k, v)| format!("{k}×{v}")).collect();
                t.add_row(vec![
                    rate.to_string(),
                    name.to_owned(),
                    p.sent.to_string(),
                    p.answered.to_string(),
                    statuses.join(" "),
                    format!("{:.2}", p.latency_ms.p50),
                    format!("{:.2}", p.latency_ms.p90),
                    format!("{:.2}", p.latency_ms.p99),
                    format!("{:.2}", p.latency_ms.p999),
                    format!("{:.2}", p.latency_ms.max),
                    format!("{:.1}", p.cpu_us_per_txn.a),
                    format!("{:.1}", p.cpu_us_per_txn.b),
                    format!("{:.1}", p.cpu_us_per_txn.generator),
                ]);
            }
        }
    }
    let mut out = format!(
        "compare: MESSAGE UA -> A -> TLS/MTLS -> B -> UA -> 200, same generator, one chain after the other\n{t}\n"
    );
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    out += "sipmesh / kamailio:";
    for row in &r.ratio.per_rate {
        let _ = write!(
            out,
            "  {}/s: CPU A {} B {} p99 {};",
            row.rate,
            f(row.cpu_a),
            f(row.cpu_b),
            f(row.p99)
        );
    }
    out += "\n";
    let m = |v: Option<u32>| v.map_or_else(|| "not searched".to_owned(), |v| format!("{v}/s"));
    let _ = writeln!(
        out,
        "max rate answered in full: kamailio {}, sipmesh {} (ratio {})",
        m(r.kamailio.max_rate),
        m(r.sipmesh.max_rate),
        f(r.ratio.max_rate)
    );
    for (name, c) in [("kamailio", &r.kamailio), ("sipmesh", &r.sipmesh)] {
        if let Some(why) = &c.failed {
            let _ = writeln!(out, "{name} stopped early: {why}");
        }
    }
    let _ = write!(out, "chart: {}", r.chart.display());
    out
}

/// A line: its name, colour and (rate, value) points.
type Line = (&'static str, &'static str, Vec<(f64, f64)>);
/// A panel: its title, unit and lines.
type Panel = (&'static str, &'static str, [Line; 4]);

/// Two panels against rate: p50/p99 latency, and CPU per transaction (A+B).
pub fn svg(rates: &[u32], kam: &Chain, mesh: &Chain) -> String {
    const W: f64 = 900.0;
    const H: f64 = 340.0;
    const PAD: f64 = 60.0;
    let max_rate = rates.iter().copied().max().unwrap_or(1) as f64;
    let series = |c: &Chain, f: &dyn Fn(&PerRate) -> f64| -> Vec<(f64, f64)> {
        c.per_rate.iter().map(|p| (p.rate as f64, f(p))).collect()
    };
    let panels: [Panel; 2] = [
        (
            "latency (ms)",
            "ms",
            [
                ("kamailio p99", "#c0392b", series(kam, &|p| p.latency_ms.p99)),
                ("sipmesh p99", "#27ae60", series(mesh, &|p| p.latency_ms.p99)),
                ("kamailio p50", "#e6a0a0", series(kam, &|p| p.latency_ms.p50)),
                ("sipmesh p50", "#9fd8b0", series(mesh, &|p| p.latency_ms.p50)),
            ],
        ),
        (
            "CPU per transaction (µs)",
            "µs",
            [
                ("kamailio A", "#c0392b", series(kam, &|p| p.cpu_us_per_txn.a)),
                ("sipmesh A", "#27ae60", series(mesh, &|p| p.cpu_us_per_txn.a)),
                ("kamailio B", "#e6a0a0", series(kam, &|p| p.cpu_us_per_txn.b)),
                ("sipmesh B", "#9fd8b0", series(mesh, &|p| p.cpu_us_per_txn.b)),
            ],
        ),
    ];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        H * 2.0
    );
    for (k, (title, unit, lines)) in panels.iter().enumerate() {
        let y0 = k as f64 * H;
        let top = lines
            .iter()
            .flat_map(|(_, _, pts)| pts.iter().map(|p| p.1))
            .fold(0.0f64, f64::max)
            .max(0.001)
            * 1.1;
        let x = |r: f64| PAD + (W - 2.0 * PAD) * r / max_rate;
        let y = |v: f64| y0 + H - PAD + -(H - 2.0 * PAD) * v / top;
        let _ = writeln!(
            s,
            "<text x=\"{PAD}\" y=\"{}\" font-size=\"14\">{title} against rate (per second)</text>",
            y0 + 24.0
        );
        let _ = writeln!(
            s,
            "<line x1=\"{PAD}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#333\"/><line x1=\"{PAD}\" y1=\"{2}\" x2=\"{PAD}\" y2=\"{0}\" stroke=\"#333\"/>",
            y0 + H - PAD,
            W - PAD,
            y0 + PAD
        );
        for &r in rates {
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{r}</text>",
                x(r as f64),
                y0 + H - PAD + 16.0
            );
        }
        for i in 0..=4 {
            let v = top * i as f64 / 4.0;
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.1} {unit}</text>",
                PAD - 6.0,
                y(v) + 4.0
            );
        }
        for (j, (name, colour, pts)) in lines.iter().enumerate() {
            let path: Vec<String> = pts.iter().map(|(r, v)| format!("{:.1},{:.1}", x(*r), y(*v))).collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2.5\" points=\"{}\"/>",
                path.join(" ")
            );
            for (r, v) in pts {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{colour}\"/>",
                    x(*r),
                    y(*v)
                );
            }
            let ly = y0 + PAD + 16.0 * j as f64;
            let _ = writeln!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"4\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{name}</text>",
                W - PAD - 150.0,
                ly - 4.0,
                W - PAD - 130.0,
                ly
            );
        }
    }
    s += "</svg>\n";
    s
}
