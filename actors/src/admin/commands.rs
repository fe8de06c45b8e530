//! The debug socket's commands: a request line parsed into a typed
//! [`Command`] (unknown commands and missing arguments refused with the
//! texts scripts know), and the answer of each.

use serde_json::{json, Value};

use super::NodeHandle;
use crate::mesh::membership::{GetTopology, OfferTopology};
use crate::mesh::node::{InjectPanic, Reload};
use crate::mesh::status::LinkState;

/// Default horizon of `check` for expiring certificates.
pub const DEFAULT_CHECK_DAYS: u64 = 30;
/// Longest horizon of `check`: 100 years is beyond any certificate's
/// lifetime, and keeps `now + days` far inside the dates `time` represents.
pub const MAX_CHECK_DAYS: u64 = 36_500;

/// How long `federation-explain` waits for the partner address to resolve.
pub const EXPLAIN_RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The command list shown by `help`.
pub const COMMANDS: &[&str] = &[
    "status",
    "links",
    "members",
    "rejections",
    "topology",
    "registrations",
    "federation",
    "federation-explain",
    "watch",
    "mesh",
    "publish",
    "reload",
    "check",
    "log-level",
    "help",
];

/// One request on the debug socket.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `status`.
    Status,
    /// `links`.
    Links,
    /// `members`.
    Members,
    /// `rejections`.
    Rejections,
    /// `topology`.
    Topology,
    /// `publish` with a signed document.
    Publish {
        /// The signed topology.
        document: String,
    },
    /// `reload`.
    Reload,
    /// `check` with its horizon in days.
    Check {
        /// Certificates expiring within this many days are problems.
        days: u64,
    },
    /// `registrations`.
    Registrations,
    /// `log-level` with a `RUST_LOG` directive.
    LogLevel {
        /// The directive.
        level: String,
    },
    /// `federation`: partners, their connections and refusals.
    Federation,
    /// `watch`: a live stream of events on this connection (see `socket.rs`).
    Watch,
    /// `mesh`: every member's view of every link, gathered over the mesh.
    Mesh,
    /// `federation-explain`: what happens to requests to or from a domain.
    FederationExplain {
        /// The foreign domain.
        domain: String,
        /// The From AOR of an inbound request, if asked.
        from: Option<String>,
    },
    /// `help`.
    Help,
    /// `fault` (only honoured with fault injection enabled).
    Fault {
        /// The peer whose link actor should panic.
        panic_link: String,
    },
}

fn string_arg(request: &Value, key: &str, missing: &str) -> Result<String, String> {
    request
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| missing.to_owned())
}

/// An optional integer argument within `range`: the default when absent, an
/// error naming the command, the key, the value and the allowed range when
/// it is anything else (negative, fractional, a string, out of range).
fn u64_arg(
    request: &Value,
    cmd: &str,
    key: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, String> {
    let Some(value) = request.get(key) else {
        return Ok(default);
    };
    value.as_u64().filter(|v| range.contains(v)).ok_or_else(|| {
        format!(
            "{cmd}: {key} {value} is not an integer in {}..={}",
            range.start(),
            range.end()
        )
    })
}

impl Command {
    /// Parse a request line: a JSON object `{"cmd": ...}` or the bare word.
    /// `faults`: whether `fault` is a known command in this process.
    pub fn parse(line: &str, faults: bool) -> Result<Command, String> {
        let request: Value = if line.trim_start().starts_with('{') {
            serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?
        } else {
            json!({ "cmd": line.trim() })
        };
        let cmd = request
            .get("cmd")
            .and_then(Value::as_str)
            .ok_or("bad request: missing \"cmd\"")?;
        Ok(match cmd {
            "status" => Command::Status,
            "links" => Command::Links,
            "members" => Command::Members,
            "rejections" => Command::Rejections,
            "topology" => Command::Topology,
            "publish" => Command::Publish {
                document: string_arg(&request, "document", "publish: missing \"document\"")?,
            },
            "reload" => Command::Reload,
            "check" => Command::Check {
                days: u64_arg(&request, "check", "days", DEFAULT_CHECK_DAYS, 0..=MAX_CHECK_DAYS)?,
            },
            "registrations" => Command::Registrations,
            "federation" => Command::Federation,
            "watch" => Command::Watch,
            "mesh" => Command::Mesh,
            "federation-explain" => Command::FederationExplain {
                domain: string_arg(&request, "domain", "federation-explain: missing \"domain\"")?,
                from: request.get("from").and_then(Value::as_str).map(str::to_owned),
            },
            "log-level" => Command::LogLevel {
                level: string_arg(
                    &request,
                    "level",
                    "log-level: missing \"level\" (e.g. \"info\", \"debug\", \"sipmesh_actors::proxy=trace\")",
                )?,
            },
            "help" => Command::Help,
            "fault" if faults => Command::Fault {
                panic_link: string_arg(&request, "panic_link", "fault: missing \"panic_link\"")?,
            },
            other => return Err(format!("unknown command {other:?} (commands: {})", COMMANDS.join(", "))),
        })
    }
}

/// How long `mesh` waits for each peer's view.
pub const MESH_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The N×N view: each member's links (ours directly, the others' asked over
/// their link to us, all at once), members we could not ask, and the pairs
/// whose two ends disagree.
pub(crate) async fn mesh_view(shared: &std::sync::Arc<crate::mesh::status::Shared>) -> Value {
    let me = shared.fqdn.to_string();
    let members: Vec<String> = shared
        .topology
        .load()
        .members
        .iter()
        .map(|m| m.fqdn.to_string())
        .collect();
    let asks = members.iter().filter(|m| **m != me).map(|m| async move {
        let rows = shared.query_links(m, MESH_QUERY_TIMEOUT).await;
        (m.clone(), rows)
    });
    let answers = futures_util::future::join_all(asks).await;
    let states = |rows: &Value| -> serde_json::Map<String, Value> {
        rows.as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some((
                    r["peer"].as_str()?.to_owned(),
                    json!({"state": r["state"], "rtt_ms": r["rtt_ms"], "since": r["since"]}),
                ))
            })
            .collect()
    };
    let mut views = serde_json::Map::new();
    let mine = serde_json::to_value(shared.link_rows()).unwrap_or_default();
    views.insert(me.clone(), json!({"reachable": true, "links": states(&mine)}));
    let mut unreachable = Vec::new();
    for (m, rows) in answers {
        match rows
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
        {
            Ok(rows) => {
                views.insert(m, json!({"reachable": true, "links": states(&rows)}));
            }
            Err(e) => {
                views.insert(m.clone(), json!({"reachable": false, "error": e}));
                unreachable.push(m);
            }
        }
    }
    // A pair is asymmetric when both ends answered and see it differently.
    let mut asymmetric = Vec::new();
    for (i, a) in members.iter().enumerate() {
        for b in &members[i + 1..] {
            let seen = |x: &str, y: &str| views.get(x).and_then(|v| v["links"].get(y)).map(|l| l["state"].clone());
            if let (Some(ab), Some(ba)) = (seen(a, b), seen(b, a)) {
                if ab != ba {
                    asymmetric.push(json!({"a": a, "b": b, "a_sees": ab, "b_sees": ba}));
                }
            }
        }
    }
    json!({"from": me, "members": members, "views": views, "unreachable": unreachable, "asymmetric": asymmetric})
}

/// Answer one request line.
pub async fn answer(line: &str, node: &NodeHandle) -> Result<Value, String> {
    execute(Command::parse(line, node.faults)?, node).await
}

async fn execute(command: Command, node: &NodeHandle) -> Result<Value, String> {
    let shared = &node.shared;
    match command {
        Command::Status => {
            let rows = shared.link_rows();
            Ok(json!({
                "fqdn": shared.fqdn.as_str(),
                "role": shared.role.as_str(),
                "topology_version": shared.topology.load().version,
                "links_up": rows.iter().filter(|r| r.state == LinkState::Up).count(),
                "links_total": rows.len(),
                "uptime_s": shared.started.elapsed().as_secs(),
                "pid": std::process::id(),
                "version": env!("CARGO_PKG_VERSION"),
                "mesh_addr": shared.mesh_addr.to_string(),
                "client_addr": node.proxy.client_addr().map(|a| a.to_string()),
                "rejections": shared.rejections.totals(),
                "accept": {
                    "mesh": shared.mesh_accept.to_json(),
                    "client": shared.client_accept.to_json(),
                },
                "sip": node.proxy.stats(),
            }))
        }
        Command::Links => serde_json::to_value(shared.link_rows()).map_err(|e| e.to_string()),
        Command::Members => {
            let t = shared.topology.load();
            Ok(Value::Array(
                t.members
                    .iter()
                    .map(|m| {
                        let version = if m.fqdn == shared.fqdn {
                            Some(t.version)
                        } else {
                            shared
                                .link(m.fqdn.as_str())
                                .and_then(|l| l.update(|i| i.peer_topology_version))
                        };
                        json!({
                            "topology_version": version,
                            "up_to_date": version == Some(t.version),
                            "fqdn": m.fqdn.as_str(),
                            "role": m.role.as_str(),
                            "mesh_addr": m.mesh_addr.to_string(),
                            "client_addr": m.client_addr.map(|a| a.to_string()),
                            "pool": m.pool.as_ref().map(|p| p.as_str()),
                            "self": m.fqdn == shared.fqdn,
                        })
                    })
                    .collect(),
            ))
        }
        Command::Rejections => serde_json::to_value(shared.rejections.recent()).map_err(|e| e.to_string()),
        Command::Federation => Ok(node.proxy.federation().status()),
        Command::Mesh => Ok(mesh_view(shared).await),
        // The socket streams `watch` itself; it never reaches here.
        Command::Watch => Err("watch: streams events on its own connection".into()),
        Command::FederationExplain { domain, from } => {
            let fed = node.proxy.federation();
            let mut verdict = fed.explain(&domain, from.as_deref(), node.proxy.domain(), shared);
            // Where the partner's edge is now: the edge's own resolver (SRV
            // included), elsewhere the pinned address through the system's.
            if let Some(located) = fed.locate(&domain).await {
                verdict["resolved"] = located;
            } else if let Some(address) = verdict["address"].as_str().map(str::to_owned) {
                let resolved =
                    tokio::time::timeout(EXPLAIN_RESOLVE_TIMEOUT, tokio::net::lookup_host(address.clone())).await;
                verdict["resolved"] = match resolved {
                    Ok(Ok(addrs)) => json!(addrs.map(|a| a.to_string()).collect::<Vec<_>>()),
                    Ok(Err(e)) => json!(format!("cannot resolve {address}: {e}")),
                    Err(_) => json!(format!("resolving {address} timed out")),
                };
            }
            Ok(verdict)
        }
        Command::Topology => {
            let report = node
                .membership
                .send(GetTopology)
                .await
                .map_err(|e| format!("membership unavailable: {e}"))??;
            serde_json::to_value(report).map_err(|e| e.to_string())
        }
        Command::Publish { document } => {
            let outcome = node
                .node
                .send(OfferTopology { document, from: None })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|r| r.to_string())?;
            serde_json::to_value(outcome).map_err(|e| e.to_string())
        }
        Command::Reload => {
            let report = node.node.send(Reload).await.map_err(|e| e.to_string())??;
            serde_json::to_value(report).map_err(|e| e.to_string())
        }
        Command::Check { days } => super::check::check(shared, node.proxy.federation(), days),
        Command::Registrations => {
            let now = crate::clock::now_secs();
            let rows = node.proxy.registrar.all_committed(now).await?;
            Ok(Value::Array(
                rows.iter()
                    .map(|b| {
                        json!({
                            "aor": b.aor,
                            "contact": b.contact,
                            "home_node": shared.fqdn.as_str(),
                            "flow_node": b.flow_node,
                            "flow_id": b.flow_id,
                            "expires_in": b.expires_in(now),
                        })
                    })
                    .collect(),
            ))
        }
        Command::LogLevel { level } => {
            let hook = node
                .set_log_level
                .as_ref()
                .ok_or("this process cannot change its log level")?;
            hook(&level).map(|now| json!({ "level": now }))
        }
        Command::Help => Ok(json!(COMMANDS)),
        Command::Fault { panic_link } => {
            node.node
                .send(InjectPanic {
                    peer: panic_link.clone(),
                })
                .await
                .map_err(|e| e.to_string())??;
            Ok(json!({ "panicked": panic_link }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_into_commands() {
        assert_eq!(Command::parse("status", false), Ok(Command::Status));
        assert_eq!(Command::parse(" links \n", false), Ok(Command::Links));
        assert_eq!(
            Command::parse(r#"{"cmd":"check"}"#, false),
            Ok(Command::Check { days: 30 })
        );
        assert_eq!(
            Command::parse(r#"{"cmd":"check","days":7}"#, false),
            Ok(Command::Check { days: 7 })
        );
        assert_eq!(
            Command::parse(r#"{"cmd":"publish","document":"D"}"#, false),
            Ok(Command::Publish { document: "D".into() })
        );
        assert_eq!(
            Command::parse(r#"{"cmd":"fault","panic_link":"fe2.contoso.test"}"#, true),
            Ok(Command::Fault {
                panic_link: "fe2.contoso.test".into()
            })
        );
    }

    #[test]
    fn bad_requests_are_refused_with_their_reason() {
        assert_eq!(
            Command::parse(r#"{"cmd":"publish"}"#, false),
            Err("publish: missing \"document\"".to_owned())
        );
        assert_eq!(
            Command::parse(r#"{"nocmd":1}"#, false),
            Err("bad request: missing \"cmd\"".to_owned())
        );
        assert!(Command::parse("{broken", false)
            .unwrap_err()
            .starts_with("bad request: "));
        for (request, text) in [
            (r#"{"cmd":"check","days":1000000000}"#, "1000000000"),
            (r#"{"cmd":"check","days":-1}"#, "-1"),
            (r#"{"cmd":"check","days":1.5}"#, "1.5"),
            (r#"{"cmd":"check","days":null}"#, "null"),
            (r#"{"cmd":"check","days":"30"}"#, "\"30\""),
        ] {
            assert_eq!(
                Command::parse(request, false),
                Err(format!("check: days {text} is not an integer in 0..={MAX_CHECK_DAYS}")),
                "{request}"
            );
        }
        assert_eq!(
            Command::parse(&format!(r#"{{"cmd":"check","days":{MAX_CHECK_DAYS}}}"#), false),
            Ok(Command::Check { days: MAX_CHECK_DAYS })
        );
        let unknown = Command::parse("fault", false).unwrap_err();
        assert!(
            unknown.starts_with("unknown command \"fault\" (commands: status, links,"),
            "{unknown}"
        );
    }
}
