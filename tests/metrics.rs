//! Prometheus metrics: `cluster up` gives every node a metrics listener on
//! an ephemeral loopback port (`metrics_addr` in `cluster.json`); each
//! answers `GET /metrics` in OpenMetrics text, and Debian's `prometheus`
//! scrapes a 3-node cluster and answers a query for every node's links.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::{poll_until, tail, Cluster, ProcGuard};
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// `GET path` on `addr`: (status line, headers, body).
fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut tcp = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

fn metrics_addrs(cluster: &Cluster) -> Vec<(String, SocketAddr)> {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(cluster.dir.join("cluster.json")).unwrap()).unwrap();
    json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let addr = n["metrics_addr"]
                .as_str()
                .unwrap_or_else(|| panic!("no metrics_addr in {n}"))
                .parse()
                .unwrap();
            (n["fqdn"].as_str().unwrap().to_owned(), addr)
        })
        .collect()
}

#[test]
fn every_node_serves_openmetrics_and_prometheus_scrapes_the_links() {
    let cluster = Cluster::up(3, 200, 1000);
    let nodes = metrics_addrs(&cluster);
    assert_eq!(nodes.len(), 3);
    for (fqdn, addr) in &nodes {
        assert!(addr.ip().is_loopback(), "{addr}");
        // Heartbeats every 200 ms: the RTT histogram fills within a second.
        let body = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
            let (status, headers, body) = get(*addr, "/metrics");
            assert_eq!(status, "HTTP/1.1 200 OK");
            assert!(
                headers.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
                "{headers}"
            );
            body.contains("sipmesh_link_rtt_seconds_count{peer=")
                .then_some(body)
                .filter(|b| !b.contains("sipmesh_link_rtt_seconds_count{peer=\"fe1.contoso.test\"} 0\n"))
        })
        .unwrap_or_else(|| panic!("{fqdn}: no RTT samples"));
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert!(
            body.contains(&format!(
                "sipmesh_build_info{{version=\"{}\",fqdn=\"{fqdn}\",role=\"front-end\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{body}"
        );
        assert!(body.contains("# TYPE sipmesh_link_rtt_seconds histogram"), "{body}");
        assert!(body.contains("sipmesh_topology_version 1\n"), "{body}");
        for (peer, _) in nodes.iter().filter(|(p, _)| p != fqdn) {
            assert!(
                body.contains(&format!("sipmesh_link_up{{peer=\"{peer}\"}} 1\n")),
                "{fqdn} -> {peer}:\n{body}"
            );
            assert!(
                body.contains(&format!("sipmesh_link_state{{peer=\"{peer}\",state=\"up\"}} 1\n")),
                "{body}"
            );
        }
        assert!(
            body.contains("sipmesh_certificate_not_after_seconds{whose=\"self\"}"),
            "{body}"
        );
        let (status, _, _) = get(*addr, "/");
        assert_eq!(status, "HTTP/1.1 404 Not Found");
    }

    // Debian's prometheus scrapes all three every second.
    if !std::path::Path::new(PROMETHEUS).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus is required under CI (scripts/test installs it)"
        );
        eprintln!("skipping the scrape: prometheus is not installed (scripts/test installs it)");
        return;
    }
    let dir = cluster.tmp.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let targets: Vec<String> = nodes.iter().map(|(_, a)| format!("'{a}'")).collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: sipmesh\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let web: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = Command::new(PROMETHEUS);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={web}"));
    let log = dir.join("prometheus.log");
    let mut prom = ProcGuard::spawn("prometheus", cmd, &log);
    let query = "/api/v1/query?query=sipmesh_link_up";
    let result = poll_until(Duration::from_secs(30), Duration::from_millis(250), || {
        if let Some(status) = prom.try_wait() {
            panic!("prometheus exited ({status}):\n{}", tail(&log, 40));
        }
        let (status, _, body) = std::panic::catch_unwind(|| get(web, query)).ok()?;
        if status != "HTTP/1.1 200 OK" {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let rows = v["data"]["result"].as_array()?.clone();
        (rows.len() == 6).then_some(rows)
    })
    .unwrap_or_else(|| panic!("prometheus never had 6 link series:\n{}", tail(&log, 40)));
    // Every node's view of both its peers, all up.
    let mut seen: Vec<(String, String)> = result
        .iter()
        .map(|r| {
            assert_eq!(r["value"][1], "1", "{r}");
            assert_eq!(r["metric"]["job"], "sipmesh");
            (
                r["metric"]["instance"].as_str().unwrap().to_owned(),
                r["metric"]["peer"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let mut expected: Vec<(String, String)> = nodes
        .iter()
        .flat_map(|(fqdn, addr)| {
            nodes
                .iter()
                .filter(move |(p, _)| p != fqdn)
                .map(move |(p, _)| (addr.to_string(), p.clone()))
        })
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
    prom.kill();
}
