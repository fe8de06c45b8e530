//! The one load generator of `bench relay` and `bench compare`: a sender
//! connection sends MESSAGEs at a fixed rate (open loop, paced by the
//! clock) to an AOR whose responder connection answers each with 200; the
//! answers' latencies go into an HDR histogram. It does not care what is
//! between the two connections (two sipmesh nodes, or two Kamailios), so
//! both chains are measured by exactly the same code.
//!
//! CPU is read from `/proc/PID/task/*/schedstat` (nanoseconds on CPU, exact)
//! for every thread of a process and of all its descendants (Kamailio forks
//! its workers), and for this process itself (the generator).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use sipmesh_actors::sip::{Incoming, SipMessage};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use crate::ua::Connection;

/// Most transactions one run may send (bounds memory and time).
pub const MAX_TRANSACTIONS: u64 = 2_000_000;
/// Longest measured duration accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// How long to wait for the last answers after the last send.
pub const DRAIN: Duration = Duration::from_secs(3);
/// A write that cannot complete for this long means the chain stopped
/// reading (a server that died or wedged): the run ends with an error.
pub const WRITE_STALL: Duration = Duration::from_secs(5);
/// Highest latency the histogram holds (µs); above it a sample is clamped.
const HIST_MAX_US: u64 = 120_000_000;

/// A process's resident memory (VmRSS) in KiB; `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time (µs) of `pid`'s threads and of its descendants' threads.
pub fn tree_cpu_us(pid: u32) -> f64 {
    descendants(pid).into_iter().map(process_cpu_us).sum()
}

/// CPU time (µs) of `pid`'s threads alone (the generator: the chains it
/// started are its children, and not its cost).
pub fn process_cpu_us(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ns as f64 / 1000.0
}

/// `pid` and every process below it.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // After "(comm) ": state, then the parent's pid.
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if let Some(pp) = ppid {
                parent_of.push((p, pp));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(parent_of.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// One measured run at one rate.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Requested rate.
    pub rate: u32,
    /// Measured transactions sent.
    pub sent: u64,
    /// Of those, answered with a final response.
    pub answered: u64,
    /// Final statuses seen (measured window).
    pub statuses: BTreeMap<u16, u64>,
    /// Latency in milliseconds: `p50, p90, p99, p999, max`.
    pub latency_ms: BTreeMap<String, f64>,
    /// CPU µs per measured transaction: one per probed process tree, in the
    /// order given.
    #[serde(skip)]
    pub cpu_us: Vec<f64>,
    /// The generator's CPU µs per transaction.
    #[serde(skip)]
    pub generator_us: f64,
    /// Seconds from the first measured send to the last answer.
    pub duration_s: f64,
}

impl RunResult {
    /// Every request got a 200.
    pub fn all_ok(&self) -> bool {
        self.sent > 0 && self.answered == self.sent && self.statuses.get(&200) == Some(&self.sent)
    }
}

/// What the collector task fills in for the current run.
struct Window {
    /// First call number of this run; answers below it are late ones of a previous run.
    base: u64,
    /// First measured call number (the warm-up is before it).
    measured_from: u64,
    sent_at: Vec<Option<Instant>>,
    hist: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    answered: u64,
    last_answer: Instant,
}

/// A sender and a responder, each connected and registered where the chain wants them.
pub struct Load {
    writer: tokio::io::WriteHalf<crate::ua::ClientStream>,
    port: u16,
    from: String,
    to: String,
    window: Rc<RefCell<Window>>,
    next: u64,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Load {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Load {
    /// Start the responder on `receiver` and the answer collector on
    /// `sender`; MESSAGEs go from `from` to `to` (AORs). Call inside a `LocalSet`.
    pub fn start(sender: Connection, mut receiver: Connection, from: &str, to: &str) -> Load {
        let responder = tokio::task::spawn_local(async move {
            let mut out = Vec::with_capacity(64 * 1024);
            loop {
                let Ok(req) = receiver.next_message().await else { return };
                out.clear();
                if req.method().is_some() {
                    out.extend_from_slice(&SipMessage::response_to(&req, 200, "OK", Some("benchb")).to_bytes());
                }
                // Answer everything already buffered in one write.
                while let Some(Incoming::Message(more)) = receiver.reader.buffered() {
                    if more.method().is_some() {
                        out.extend_from_slice(&SipMessage::response_to(&more, 200, "OK", Some("benchb")).to_bytes());
                    }
                }
                if !out.is_empty() && receiver.writer.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        let window = Rc::new(RefCell::new(Window {
            base: 0,
            measured_from: 0,
            sent_at: Vec::new(),
            hist: Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds"),
            statuses: BTreeMap::new(),
            answered: 0,
            last_answer: Instant::now(),
        }));
        let Connection {
            mut reader,
            writer,
            local,
            ..
        } = sender;
        let w = window.clone();
        let collector = tokio::task::spawn_local(async move {
            while let Ok(resp) = reader.next_message().await {
                let Some(code) = resp.status().filter(|c| *c >= 200) else {
                    continue;
                };
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
                let mut w = w.borrow_mut();
                if i < w.base {
                    continue;
                }
                w.last_answer = now;
                if i < w.measured_from {
                    continue;
                }
                let idx = (i - w.base) as usize;
                if let Some(t) = w.sent_at.get_mut(idx).and_then(Option::take) {
                    let us = (now.duration_since(t).as_micros() as u64).clamp(1, HIST_MAX_US);
                    let _ = w.hist.record(us);
                    *w.statuses.entry(code).or_default() += 1;
                    w.answered += 1;
                }
            }
        });
        Load {
            writer,
            port: local.port(),
            from: from.to_owned(),
            to: to.to_owned(),
            window,
            next: 0,
            tasks: vec![responder, collector],
        }
    }

    /// One run: `warmup` unmeasured, then `duration` measured at `rate`,
    /// then up to [`DRAIN`] for the last answers. `probes` are the pids
    /// whose process trees' CPU is reported; `progress` gets the number
    /// sent so far every 1,000; `stop` ends the run early (Ctrl-C).
    pub async fn run(
        &mut self,
        shape: Shape,
        probes: &[u32],
        stop: &AtomicBool,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<RunResult> {
        let Shape {
            rate,
            warmup,
            duration,
            body,
        } = shape;
        check_run(rate, warmup, duration)?;
        let warm = (rate as f64 * warmup.as_secs_f64()) as u64;
        let total = warm + (rate as f64 * duration.as_secs_f64()) as u64;
        let base = self.next;
        self.next += total;
        {
            let mut w = self.window.borrow_mut();
            w.base = base;
            w.measured_from = base + warm;
            w.sent_at = vec![None; total as usize];
            w.hist.reset();
            w.statuses.clear();
            w.answered = 0;
        }
        let body = vec![b'x'; body];
        let start = tokio::time::Instant::now();
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let mut cpu0 = Vec::new();
        let (mut gen0, mut t0) = (0.0, Instant::now());
        let mut sent = 0u64;
        for k in 0..total {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep_until(start + interval.mul_f64(k as f64)).await;
            if k == warm {
                cpu0 = probes.iter().map(|p| tree_cpu_us(*p)).collect();
                gen0 = process_cpu_us(std::process::id());
                t0 = Instant::now();
            }
            let i = base + k;
            let msg = format!(
                "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bK-b{i};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <{from}>;tag=bencha\r\nTo: <{to}>\r\nCall-ID: b{i}@bench\r\n\
                 CSeq: {} MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                k + 1,
                body.len(),
                to = self.to,
                from = self.from,
                port = self.port,
            );
            self.window.borrow_mut().sent_at[k as usize] = Some(Instant::now());
            let write = async {
                self.writer.write_all(msg.as_bytes()).await?;
                self.writer.write_all(&body).await
            };
            match tokio::time::timeout(WRITE_STALL, write).await {
                Ok(r) => r?,
                Err(_) => bail!(
                    "the chain stopped reading for {} s at request {k}",
                    WRITE_STALL.as_secs()
                ),
            }
            if k >= warm {
                sent += 1;
            }
            if k % 1000 == 999 {
                progress(k + 1);
            }
        }
        if cpu0.is_empty() {
            bail!("stopped before the measured window");
        }
        let drain_deadline = Instant::now() + DRAIN;
        while self.window.borrow().answered < sent && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let n = sent.max(1) as f64;
        let per_txn = |before: f64, after: f64| ((after - before) / n * 10.0).round() / 10.0;
        let cpu_us: Vec<f64> = probes
            .iter()
            .zip(&cpu0)
            .map(|(p, before)| per_txn(*before, tree_cpu_us(*p)))
            .collect();
        let generator_us = per_txn(gen0, process_cpu_us(std::process::id()));
        let w = self.window.borrow();
        let ms = |v: u64| v as f64 / 1000.0;
        let mut latency_ms = BTreeMap::new();
        if !w.hist.is_empty() {
            for (k, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999)] {
                latency_ms.insert(k.to_owned(), ms(w.hist.value_at_quantile(q)));
            }
            latency_ms.insert("max".to_owned(), ms(w.hist.max()));
        } else {
            for k in ["p50", "p90", "p99", "p999", "max"] {
                latency_ms.insert(k.to_owned(), 0.0);
            }
        }
        Ok(RunResult {
            rate,
            sent,
            answered: w.answered,
            statuses: w.statuses.clone(),
            latency_ms,
            cpu_us,
            generator_us,
            duration_s: (w.last_answer.max(t0) - t0).as_secs_f64(),
        })
    }
}

/// What one run sends.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Requests per second.
    pub rate: u32,
    /// Unmeasured time first.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// MESSAGE body bytes.
    pub body: usize,
}

/// Bounds of one run, each error naming the value.
pub fn check_run(rate: u32, warmup: Duration, duration: Duration) -> anyhow::Result<()> {
    if rate == 0 {
        bail!("--rate 0: must be at least 1");
    }
    if duration > MAX_DURATION || duration.is_zero() {
        bail!(
            "--duration {:?}: must be between 1 s and {} s",
            duration,
            MAX_DURATION.as_secs()
        );
    }
    let total = (rate as f64 * (warmup + duration).as_secs_f64()) as u64;
    if total > MAX_TRANSACTIONS {
        bail!("{total} transactions at {rate}/s (rate × time) is over the {MAX_TRANSACTIONS} limit");
    }
    Ok(())
}

/// Parse `--rates 3000,6000,12000`.
pub fn parse_rates(text: &str) -> anyhow::Result<Vec<u32>> {
    let rates: Vec<u32> = text
        .split(',')
        .map(|r| {
            r.trim()
                .parse::<u32>()
                .ok()
                .filter(|v| *v > 0)
                .with_context(|| format!("--rates {text:?}: {r:?} is not a positive rate"))
        })
        .collect::<anyhow::Result<_>>()?;
    if rates.is_empty() {
        bail!("--rates {text:?}: no rate given");
    }
    Ok(rates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_or_name_the_bad_one() {
        assert_eq!(parse_rates("3000, 6000,12000").unwrap(), vec![3000, 6000, 12000]);
        assert_eq!(
            parse_rates("3000,x").unwrap_err().to_string(),
            "--rates \"3000,x\": \"x\" is not a positive rate"
        );
        assert_eq!(
            parse_rates("0").unwrap_err().to_string(),
            "--rates \"0\": \"0\" is not a positive rate"
        );
    }

    #[test]
    fn this_process_tree_has_cpu_time() {
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(tree_cpu_us(std::process::id()) > 0.0);
        assert_eq!(descendants(std::process::id())[0], std::process::id());
    }
}
