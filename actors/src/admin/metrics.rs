//! The opt-in metrics listener (`[admin] metrics = "127.0.0.1:9464"`):
//! Prometheus scrapes `GET /metrics`, answered in OpenMetrics text by the
//! `prometheus-client` crate.
//!
//! The values are read at scrape time from the state `ctl` shows (links,
//! rejections, the proxy's counters, federation), through one
//! [`Collector`], so the metrics and `ctl` never disagree; only the RTT
//! histogram is recorded as heartbeats come back (in `LinkStatus`).
//!
//! The HTTP side is deliberately small and bounded: one request per
//! connection, a request head of at most
//! [`MAX_REQUEST_HEAD`](super::http::MAX_REQUEST_HEAD) bytes read
//! within [`REQUEST_TIMEOUT`], at most [`MAX_METRICS_CONNECTIONS`] at once.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use super::http::{self, respond, REQUEST_TIMEOUT};
use super::NodeHandle;
use crate::mesh::status::LinkState;

/// Scrapes served at once (more wait in the listen backlog).
pub const MAX_METRICS_CONNECTIONS: usize = 16;
/// The content type of the answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Encode one family of `rows` (skipped when empty: a family without samples says nothing).
fn family<M: EncodeMetric>(enc: &mut DescriptorEncoder, name: &str, help: &str, rows: &[(Labels, M)]) -> fmt::Result {
    let Some((_, first)) = rows.first() else {
        return Ok(());
    };
    let mut m = enc.encode_descriptor(name, help, None, first.metric_type())?;
    for (l, metric) in rows {
        metric.encode(m.encode_family(l)?)?;
    }
    Ok(())
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Reads the node's state at each scrape.
pub struct NodeCollector {
    node: NodeHandle,
}

impl fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeCollector")
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let shared = &self.node.shared;
        let fqdn = shared.fqdn.as_str();
        family(
            &mut enc,
            "build_info",
            "Build and node identity (always 1)",
            &[(
                labels(&[
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("fqdn", fqdn),
                    ("role", shared.role.as_str()),
                ]),
                ConstGauge::new(1i64),
            )],
        )?;
        family(
            &mut enc,
            "topology_version",
            "Version of the topology in effect",
            &[(Labels::new(), ConstGauge::new(shared.topology.load().version as i64))],
        )?;

        // Links, per peer.
        let links: Vec<_> = shared
            .links
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut up = Vec::new();
        let mut state = Vec::new();
        let mut restarts = Vec::new();
        let mut frames = Vec::new();
        let mut bytes = Vec::new();
        let mut not_after = Vec::new();
        let mut depth = Vec::new();
        let mut drops = Vec::new();
        for l in &links {
            let peer = l.peer.as_str();
            let (st, cert) = l.update(|i| (i.state, i.cert_not_after));
            let st_text = serde_json::to_value(st)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            up.push((
                labels(&[("peer", peer)]),
                ConstGauge::new(i64::from(st == LinkState::Up)),
            ));
            state.push((labels(&[("peer", peer), ("state", &st_text)]), ConstGauge::new(1i64)));
            restarts.push((
                labels(&[("peer", peer)]),
                ConstCounter::new(l.restarts.load(std::sync::atomic::Ordering::Relaxed)),
            ));
            for (dir, f, b) in [("in", &l.frames_in, &l.bytes_in), ("out", &l.frames_out, &l.bytes_out)] {
                frames.push((
                    labels(&[("peer", peer), ("direction", dir)]),
                    ConstCounter::new(f.load(std::sync::atomic::Ordering::Relaxed)),
                ));
                bytes.push((
                    labels(&[("peer", peer), ("direction", dir)]),
                    ConstCounter::new(b.load(std::sync::atomic::Ordering::Relaxed)),
                ));
            }
            depth.push((labels(&[("peer", peer)]), ConstGauge::new(l.queue_depth() as i64)));
            drops.push((
                labels(&[("peer", peer)]),
                ConstCounter::new(l.queue_full.load(std::sync::atomic::Ordering::Relaxed)),
            ));
            if let Some(t) = cert {
                not_after.push((labels(&[("whose", peer)]), ConstGauge::new(t.unix_timestamp())));
            }
        }
        not_after.push((
            labels(&[("whose", "self")]),
            ConstGauge::new(shared.tls.load().own.not_after.unix_timestamp()),
        ));
        family(&mut enc, "link_up", "1 when the link to the peer is up", &up)?;
        family(
            &mut enc,
            "link_state",
            "The link's state (1 for the current one)",
            &state,
        )?;
        family(
            &mut enc,
            "link_restarts",
            "Link sessions ended, redials and actor restarts",
            &restarts,
        )?;
        family(&mut enc, "link_frames", "Mesh frames", &frames)?;
        family(&mut enc, "link_bytes", "Mesh bytes", &bytes)?;
        family(
            &mut enc,
            "link_queue_depth",
            "Frames waiting in the link's writer queue",
            &depth,
        )?;
        family(
            &mut enc,
            "link_queue_drops",
            "Frames refused because the link's writer queue was full (answered 503)",
            &drops,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "link_rtt_seconds",
                "Heartbeat round-trip time",
                None,
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            for l in &links {
                let l_labels = labels(&[("peer", l.peer.as_str())]);
                l.rtt_histogram.encode(m.encode_family(&l_labels)?)?;
            }
        }
        family(
            &mut enc,
            "certificate_not_after_seconds",
            "notAfter of this node's certificate (whose=self) and of each peer's, Unix seconds",
            &not_after,
        )?;

        // Refusals at the doors.
        let rejections: Vec<_> = shared
            .rejections
            .totals()
            .into_iter()
            .map(|(reason, n)| (labels(&[("reason", &reason)]), ConstCounter::new(n)))
            .collect();
        family(
            &mut enc,
            "rejections",
            "TLS connections refused, by reason (mesh and federation doors)",
            &rejections,
        )?;
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for (door, stats) in [("mesh", &shared.mesh_accept), ("client", &shared.client_accept)] {
            let j = stats.to_json();
            accepted.push((labels(&[("door", door)]), ConstCounter::new(u(&j["accepted"]))));
            if let Some(r) = j["refused"].as_object() {
                for (reason, n) in r {
                    refused.push((labels(&[("door", door), ("reason", reason)]), ConstCounter::new(u(n))));
                }
            }
        }
        family(
            &mut enc,
            "connections_accepted",
            "Connections accepted, by door",
            &accepted,
        )?;
        family(
            &mut enc,
            "connections_refused",
            "Connections refused before TLS, by door and reason",
            &refused,
        )?;

        // SIP.
        let sip = self.node.proxy.stats();
        let requests: Vec<_> = sip["requests"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(method, n)| (labels(&[("method", method)]), ConstCounter::new(u(n))))
            .collect();
        family(&mut enc, "sip_requests", "SIP requests received, by method", &requests)?;
        let mut responses = std::collections::BTreeMap::<(String, String), u64>::new();
        for (method, codes) in sip["transactions"].as_object().into_iter().flatten() {
            for (code, n) in codes.as_object().into_iter().flatten() {
                let class = format!("{}xx", code.chars().next().unwrap_or('0'));
                *responses.entry((method.clone(), class)).or_default() += u(n);
            }
        }
        let responses: Vec<_> = responses
            .into_iter()
            .map(|((method, class), n)| (labels(&[("method", &method), ("class", &class)]), ConstCounter::new(n)))
            .collect();
        family(
            &mut enc,
            "sip_responses",
            "Final SIP responses sent upstream, by method and class",
            &responses,
        )?;
        family(
            &mut enc,
            "sip_client_connections",
            "Open client (and partner) connections",
            &[(Labels::new(), ConstGauge::new(u(&sip["flows"]) as i64))],
        )?;
        family(
            &mut enc,
            "sip_transactions",
            "Live transactions, by kind",
            &[
                (
                    labels(&[("kind", "server")]),
                    ConstGauge::new(u(&sip["server_transactions"]) as i64),
                ),
                (
                    labels(&[("kind", "client")]),
                    ConstGauge::new(u(&sip["client_transactions"]) as i64),
                ),
            ],
        )?;
        family(
            &mut enc,
            "registrar_pending_writes",
            "Registrations answered and not yet on disk",
            &[(
                Labels::new(),
                ConstGauge::new(u(&sip["registrar"]["pending_writes"]) as i64),
            )],
        )?;
        family(
            &mut enc,
            "registrar_queue_drops",
            "REGISTERs refused because the registrar's write queue was full",
            &[(
                Labels::new(),
                ConstCounter::new(u(&sip["registrar"]["refused_queue_full"])),
            )],
        )?;
        let now = crate::clock::now_secs();
        if let Ok(bindings) = self.node.proxy.registrar.all(now) {
            family(
                &mut enc,
                "registrations",
                "Live bindings stored at this node (it is their home)",
                &[(Labels::new(), ConstGauge::new(bindings.len() as i64))],
            )?;
        }
        self.node.proxy.txn_duration.encode(enc.encode_descriptor(
            "sip_transaction_duration_seconds",
            "Time from a request's arrival to its final response, by method",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?)?;
        family(
            &mut enc,
            "registrar_written",
            "Registrations written to the store",
            &[(Labels::new(), ConstCounter::new(u(&sip["registrar"]["written"])))],
        )?;

        // Federation, per partner.
        let fed = self.node.proxy.federation().rows();
        let mut fed_up = Vec::new();
        let mut fed_requests = Vec::new();
        let mut fed_refusals = Vec::new();
        for r in &fed {
            let d = r.domain.as_str();
            fed_up.push((labels(&[("partner", d)]), ConstGauge::new(i64::from(r.state == "up"))));
            fed_requests.push((
                labels(&[("partner", d), ("direction", "in")]),
                ConstCounter::new(r.requests_in),
            ));
            fed_requests.push((
                labels(&[("partner", d), ("direction", "out")]),
                ConstCounter::new(r.requests_out),
            ));
            for (reason, n) in &r.refusals {
                fed_refusals.push((labels(&[("partner", d), ("reason", reason)]), ConstCounter::new(*n)));
            }
        }
        family(
            &mut enc,
            "federation_partner_up",
            "1 when the outbound connection to the partner is up",
            &fed_up,
        )?;
        family(
            &mut enc,
            "federation_requests",
            "Requests exchanged with a partner",
            &fed_requests,
        )?;
        family(
            &mut enc,
            "federation_refusals",
            "Federation refusals, by partner and reason",
            &fed_refusals,
        )?;
        Ok(())
    }
}

/// The registry of one node.
pub fn registry(node: NodeHandle) -> Registry {
    let mut registry = Registry::with_prefix("sipmesh");
    registry.register_collector(Box::new(NodeCollector { node }));
    registry
}

/// The metrics text now.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Serve `GET /metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, node: NodeHandle) {
    let registry = Arc::new(registry(node));
    http::accept_loop(listener, MAX_METRICS_CONNECTIONS, "metrics", move |tcp| {
        let registry = registry.clone();
        async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(tcp, &registry)).await;
        }
    })
    .await
}

async fn answer(mut tcp: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let Some(request) = http::read_request(&mut tcp).await? else {
        return Ok(());
    };
    match (request.method.as_str(), request.route()) {
        ("GET", "/metrics") => respond(&mut tcp, "200 OK", CONTENT_TYPE, &[], render(registry).as_bytes()).await,
        ("GET", _) => {
            respond(
                &mut tcp,
                "404 Not Found",
                "text/plain",
                &[],
                b"only /metrics is served here\n",
            )
            .await
        }
        _ => respond(&mut tcp, "405 Method Not Allowed", "text/plain", &[], b"GET /metrics\n").await,
    }
}
