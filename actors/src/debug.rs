//! DebugServer: the node's Unix-domain debug socket (mode 0600).
//!
//! One request per line, one JSON answer per line. A request is either a JSON
//! object `{"cmd": "links"}` or just the command word. Answers are
//! `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.
//!
//! Commands (field names are an interface for scripts):
//! - `status`: `fqdn, role, topology_version, links_up, links_total, uptime_s`,
//!   plus `pid, version, mesh_addr, rejections` (totals by reason) and `sip`
//!   (`domain, flows, requests` by method, `transactions` by method and final status).
//! - `links`: list of `peer, state (up|connecting|backoff|down), rtt_ms, since,
//!   restarts, last_error, cert_not_after, tls_version, cipher, frames_in,
//!   frames_out, bytes_in, bytes_out` plus `cert_serial, direction, local_addr,
//!   remote_addr, peer_topology_version, redial_in_ms`.
//! - `members`: list of `fqdn, role, mesh_addr, client_addr` plus `pool, self`,
//!   `topology_version` (the version that member reports; null when unknown)
//!   and `up_to_date`.
//! - `rejections`: list of `at, remote_addr, reason, presented_name` plus
//!   `direction, detail`, oldest first (the last
//!   [`MAX_REJECTIONS_KEPT`](crate::reject::MAX_REJECTIONS_KEPT)).
//! - `topology`: `version, history, signed, dynamic, toml, refusals` of the
//!   trusted-server set in effect (`refusals`: `at, from, reason, detail`).
//! - `publish` (`{"cmd":"publish","document":"<signed topology>"}`): offer a
//!   signed topology; answers `offered, current, applied, diff` or an error
//!   starting with its reason (`bad-signature`, `stale-version`, `invalid`, `static`).
//! - `reload`: re-read certificate, key, CA bundle and CRLs; re-check live
//!   links. Answers `cert_serial, cert_not_after, crls, links_rechecked`.
//! - `check` (`{"cmd":"check","days":30}`): `ok` and `problems` (certificates
//!   expiring within `days`, peers not up, members lagging the topology version).
//! - `registrations`: bindings stored at this node (it is their home):
//!   `aor, contact, home_node, flow_node, flow_id, expires_in`.
//! - `log-level` (`{"cmd":"log-level","level":"debug"}`): change the log
//!   filter at run time (a `RUST_LOG` directive); answers the filter in effect.
//! - `help`: the command list.
//! - `fault` (`{"cmd":"fault","panic_link":"<peer>"}`): only when the node
//!   runs with `SIPMESH_FAULT_INJECTION=1`; makes that link's actor panic.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::codec::{Framed, LinesCodec};

use crate::membership::GetTopology;
use crate::node::{InjectPanic, NodeHandle, OfferTopology, Reload};
use crate::status::LinkState;
use crate::status::Shared;
use crate::NodeError;

/// Longest request line (DoS bound; the largest request is `publish`, a signed
/// topology of at most `MAX_SIGNED_DOC` bytes, JSON-escaped).
pub const MAX_DEBUG_LINE: usize = 4 * sipmesh_state::signed::MAX_SIGNED_DOC;
/// Default horizon of `check` for expiring certificates.
pub const DEFAULT_CHECK_DAYS: u64 = 30;
/// Simultaneous debug clients.
pub const MAX_DEBUG_CLIENTS: usize = 16;
/// A debug client silent for this long is disconnected.
pub const DEBUG_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The command list shown by `help`.
pub const COMMANDS: &[&str] = &[
    "status",
    "links",
    "members",
    "rejections",
    "topology",
    "registrations",
    "publish",
    "reload",
    "check",
    "log-level",
    "help",
];

/// Bind the socket with mode 0600, replacing a stale socket file but never a
/// live one.
pub fn bind(path: &Path) -> Result<UnixListener, NodeError> {
    let err = |message: String| NodeError::DebugSocket {
        path: path.to_owned(),
        message,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err("another process is serving this socket".into()));
        }
        std::fs::remove_file(path).map_err(|e| err(format!("cannot remove stale socket: {e}")))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    // Create the socket file 0600 from the start (no window where others could
    // connect), then restore the umask.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| err(e.to_string()))?;
    Ok(listener)
}

/// Serve debug clients until the task is dropped.
pub async fn serve(listener: UnixListener, node: NodeHandle) {
    let limit = Arc::new(Semaphore::new(MAX_DEBUG_CLIENTS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let node = node.clone();
        actix_rt::spawn(async move {
            client(stream, node).await;
            drop(permit);
        });
    }
}

async fn client(stream: UnixStream, node: NodeHandle) {
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_DEBUG_LINE));
    loop {
        let line = match tokio::time::timeout(DEBUG_IDLE_TIMEOUT, lines.next()).await {
            Ok(Some(Ok(line))) => line,
            Ok(Some(Err(e))) => {
                let _ = lines
                    .send(json!({"ok": false, "error": e.to_string()}).to_string())
                    .await;
                return;
            }
            _ => return,
        };
        if line.trim().is_empty() {
            continue;
        }
        let answer = match answer(&line, &node).await {
            Ok(result) => json!({"ok": true, "result": result}),
            Err(error) => json!({"ok": false, "error": error}),
        };
        if lines.send(answer.to_string()).await.is_err() {
            return;
        }
    }
}

/// Answer one request line.
pub async fn answer(line: &str, node: &NodeHandle) -> Result<Value, String> {
    let request: Value = if line.trim_start().starts_with('{') {
        serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?
    } else {
        json!({ "cmd": line.trim() })
    };
    let cmd = request
        .get("cmd")
        .and_then(Value::as_str)
        .ok_or("bad request: missing \"cmd\"")?;
    let shared = &node.shared;
    match cmd {
        "status" => {
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
                "rejections": shared.rejections.totals(),
                "sip": shared.proxy.get().map(|p| p.stats()),
            }))
        }
        "links" => serde_json::to_value(shared.link_rows()).map_err(|e| e.to_string()),
        "members" => {
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
                            "client_addr": m.client_addr.to_string(),
                            "pool": m.pool.as_ref().map(|p| p.as_str()),
                            "self": m.fqdn == shared.fqdn,
                        })
                    })
                    .collect(),
            ))
        }
        "rejections" => serde_json::to_value(shared.rejections.recent()).map_err(|e| e.to_string()),
        "topology" => {
            let report = node
                .membership
                .send(GetTopology)
                .await
                .map_err(|e| format!("membership unavailable: {e}"))??;
            serde_json::to_value(report).map_err(|e| e.to_string())
        }
        "publish" => {
            let document = request
                .get("document")
                .and_then(Value::as_str)
                .ok_or("publish: missing \"document\"")?;
            let outcome = node
                .node
                .send(OfferTopology {
                    document: document.to_owned(),
                    from: None,
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|r| r.to_string())?;
            serde_json::to_value(outcome).map_err(|e| e.to_string())
        }
        "reload" => {
            let report = node.node.send(Reload).await.map_err(|e| e.to_string())??;
            serde_json::to_value(report).map_err(|e| e.to_string())
        }
        "check" => {
            let days = request
                .get("days")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_CHECK_DAYS);
            Ok(check(shared, days))
        }
        "registrations" => {
            let Some(proxy) = shared.proxy.get() else {
                return Ok(json!([]));
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let rows = proxy.registrar.all(now).map_err(|e| e.to_string())?;
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
        "log-level" => {
            let hook = node
                .set_log_level
                .as_ref()
                .ok_or("this process cannot change its log level")?;
            match request.get("level").and_then(Value::as_str) {
                Some(level) => hook(level).map(|now| json!({ "level": now })),
                None => Err(
                    "log-level: missing \"level\" (e.g. \"info\", \"debug\", \"sipmesh_actors::proxy=trace\")".into(),
                ),
            }
        }
        "help" => Ok(json!(COMMANDS)),
        "fault" if node.faults => {
            let peer = request
                .get("panic_link")
                .and_then(Value::as_str)
                .ok_or("fault: missing \"panic_link\"")?;
            node.node
                .send(InjectPanic { peer: peer.to_owned() })
                .await
                .map_err(|e| e.to_string())??;
            Ok(json!({"panicked": peer}))
        }
        other => Err(format!("unknown command {other:?} (commands: {})", COMMANDS.join(", "))),
    }
}

/// The health check behind `ctl check`.
pub fn check(shared: &Shared, days: u64) -> Value {
    let horizon = time::OffsetDateTime::now_utc() + time::Duration::days(days as i64);
    let mut problems = Vec::new();
    let own = shared.tls.load().own.not_after;
    if own <= horizon {
        problems.push(format!(
            "this node's certificate expires {} (within {days} days)",
            crate::rfc3339(own)
        ));
    }
    let version = shared.topology.load().version;
    let links: Vec<_> = shared
        .links
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    for link in links {
        let (state, not_after, peer_version) = link.update(|i| (i.state, i.cert_not_after, i.peer_topology_version));
        if state != LinkState::Up {
            let state = serde_json::to_value(state).unwrap_or_default();
            problems.push(format!("peer {} is {}", link.peer, state.as_str().unwrap_or("not up")));
        }
        if let Some(t) = not_after.filter(|t| *t <= horizon) {
            problems.push(format!(
                "peer {}'s certificate expires {} (within {days} days)",
                link.peer,
                crate::rfc3339(t)
            ));
        }
        match peer_version {
            Some(v) if v < version => {
                problems.push(format!("member {} holds topology v{v}, behind v{version}", link.peer))
            }
            _ => {}
        }
    }
    json!({ "ok": problems.is_empty(), "days": days, "problems": problems })
}
