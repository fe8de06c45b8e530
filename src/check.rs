//! `sipmesh check`: every check against one node (`--socket`) or a whole
//! local cluster (`--dir`), like `linkerd check`: a line per check, each
//! problem with how to fix it, and a non-zero exit when anything is wrong.
//!
//! Per node it runs the node's own `check` (certificates and CRLs expiring
//! within `--days`, peers not up, members lagging the topology, federation
//! certificates) and reads `status`; across a cluster it also compares the
//! topology versions.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::cluster::ClusterFile;
use crate::ctl;

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The node it concerns.
    pub node: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

/// How to fix a problem a node's `check` reported.
fn fix_for(problem: &str, socket: &Path) -> String {
    let s = socket.display();
    if problem.starts_with("peer ") && !problem.contains("certificate") {
        return format!(
            "start that peer, or see why its link fails: `sipmesh ctl --socket {s} links` (last_error) and `sipmesh ctl --socket {s} rejections`"
        );
    }
    if problem.contains("CRL") {
        return format!(
            "publish a fresh CRL (`sipmesh pki crl --ca DIR --out FILE`), then `sipmesh ctl --socket {s} reload`"
        );
    }
    if problem.starts_with("this node's certificate") {
        return format!(
            "issue a new certificate (`sipmesh pki issue`), replace the files, then `sipmesh ctl --socket {s} reload`"
        );
    }
    if problem.starts_with("this edge's external certificate") {
        return "renew the external certificate ([federation.tls] in node.toml) and restart the edge".into();
    }
    if problem.starts_with("partner ") {
        return "ask the partner to renew it; put its new CA (ca_file) in the topology and `sipmesh topology publish`"
            .into();
    }
    if problem.contains("certificate expires") {
        return "renew that peer's certificate and `ctl reload` it".into();
    }
    if problem.starts_with("member ") && problem.contains("behind") {
        return "it catches up once its link is up; otherwise `sipmesh topology publish --socket ITS_SOCKET`".into();
    }
    "see `sipmesh ctl --socket SOCKET status`".into()
}

/// Check one node; its FQDN (when it answered) and its problems.
pub fn node(socket: &Path, days: u64, label: &str) -> (Option<String>, Option<u64>, Vec<Problem>) {
    let status = match ctl::command(socket, "status") {
        Ok(s) => s,
        Err(e) => {
            return (
                None,
                None,
                vec![Problem {
                    node: label.to_owned(),
                    problem: format!("the node does not answer on {}: {e}", socket.display()),
                    fix: "start it (`sipmesh node run --config node.toml`, or `sipmesh cluster up --dir DIR`), or give the right --socket".into(),
                }],
            )
        }
    };
    let fqdn = status["fqdn"].as_str().unwrap_or(label).to_owned();
    let version = status["topology_version"].as_u64();
    let mut problems = Vec::new();
    match ctl::request(socket, &json!({"cmd": "check", "days": days})) {
        Ok(report) => {
            for p in report["problems"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                problems.push(Problem {
                    node: fqdn.clone(),
                    problem: p.to_owned(),
                    fix: fix_for(p, socket),
                });
            }
        }
        Err(e) => problems.push(Problem {
            node: fqdn.clone(),
            problem: format!("check failed: {e}"),
            fix: "see the node's log".into(),
        }),
    }
    (Some(fqdn), version, problems)
}

/// The sockets to check: one `--socket`, or every node of `--dir`.
pub fn targets(socket: Option<PathBuf>, dir: Option<PathBuf>) -> anyhow::Result<Vec<(String, PathBuf)>> {
    match (socket, dir) {
        (Some(s), None) => Ok(vec![(s.display().to_string(), s)]),
        (None, Some(d)) => {
            let cluster = ClusterFile::load(&d)?;
            Ok(cluster.nodes.into_iter().map(|n| (n.fqdn, n.debug_socket)).collect())
        }
        (Some(_), Some(_)) => anyhow::bail!("check: give --socket or --dir, not both"),
        (None, None) => anyhow::bail!("check: give --socket SOCKET (one node) or --dir DIR (a cluster)"),
    }
}

/// Run every check; the report (`ok`, `nodes`, `problems`).
pub fn run(targets: &[(String, PathBuf)], days: u64) -> Value {
    let mut problems = Vec::new();
    let mut nodes = Vec::new();
    let mut versions = Vec::new();
    for (label, socket) in targets {
        let (fqdn, version, found) = node(socket, days, label);
        nodes.push(json!({"node": fqdn.clone().unwrap_or_else(|| label.clone()), "ok": found.is_empty(), "topology_version": version}));
        if let (Some(f), Some(v)) = (fqdn, version) {
            versions.push((f, v));
        }
        problems.extend(found);
    }
    if let Some(max) = versions.iter().map(|(_, v)| *v).max() {
        for (f, v) in versions.iter().filter(|(_, v)| *v < max) {
            problems.push(Problem {
                node: f.clone(),
                problem: format!("runs topology v{v}, others v{max}"),
                fix: "it catches up when its links are up; check them with `sipmesh ctl --socket S links`".into(),
            });
        }
    }
    json!({"ok": problems.is_empty(), "days": days, "nodes": nodes, "problems": problems})
}

/// The report for people.
pub fn render(report: &Value) -> String {
    let mut out = String::new();
    for n in report["nodes"].as_array().into_iter().flatten() {
        let mark = if n["ok"] == true { "ok  " } else { "FAIL" };
        out += &format!("{mark} {}\n", n["node"].as_str().unwrap_or("?"));
    }
    let problems = report["problems"].as_array().cloned().unwrap_or_default();
    if problems.is_empty() {
        out += &format!(
            "\nall checks passed: certificates valid beyond {} days, every link up, one topology version\n",
            report["days"]
        );
    } else {
        out += &format!("\n{} problem(s):\n", problems.len());
        for p in problems {
            out += &format!(
                "- {}: {}\n  fix: {}\n",
                p["node"].as_str().unwrap_or("?"),
                p["problem"].as_str().unwrap_or(""),
                p["fix"].as_str().unwrap_or("")
            );
        }
    }
    out
}
