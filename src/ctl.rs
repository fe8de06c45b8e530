//! `sipmesh ctl`: a client for the node's debug socket.
//!
//! Sends one request line, reads one answer line. `--json` prints the
//! `result` for scripts; otherwise a table for people.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde_json::{json, Value};

/// How long ctl waits for an answer.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer line accepted (DoS bound against a misbehaving socket).
pub const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// Why a ctl call failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Socket unreachable.
    #[error("cannot reach debug socket {path}: {cause}")]
    Connect {
        /// The socket.
        path: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// I/O or protocol trouble after connecting.
    #[error("debug socket {path}: {message}")]
    Protocol {
        /// The socket.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The node answered with an error.
    #[error("{0}")]
    Node(String),
}

/// Send `request` (a JSON object) and return the `result` value.
pub fn request(socket: &Path, request: &Value) -> Result<Value, CtlError> {
    let path = socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|cause| CtlError::Connect {
        path: path.clone(),
        cause,
    })?;
    let proto = |message: String| CtlError::Protocol {
        path: path.clone(),
        message,
    };
    stream
        .set_read_timeout(Some(CTL_TIMEOUT))
        .map_err(|e| proto(e.to_string()))?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(|e| proto(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(stream, MAX_ANSWER))
        .read_line(&mut line)
        .map_err(|e| proto(e.to_string()))?;
    if line.is_empty() {
        return Err(proto("connection closed without an answer".into()));
    }
    let answer: Value = serde_json::from_str(&line).map_err(|e| proto(format!("bad answer: {e}")))?;
    if answer["ok"] == Value::Bool(true) {
        Ok(answer["result"].clone())
    } else {
        Err(CtlError::Node(
            answer["error"].as_str().unwrap_or("unknown error").to_owned(),
        ))
    }
}

/// Send a bare command.
pub fn command(socket: &Path, cmd: &str) -> Result<Value, CtlError> {
    request(socket, &json!({ "cmd": cmd }))
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    t
}

/// Render a result for people.
pub fn render(cmd: &str, result: &Value) -> String {
    let rows = result.as_array().cloned().unwrap_or_default();
    match cmd {
        "links" => {
            let mut t = table(&[
                "PEER",
                "STATE",
                "RTT ms",
                "SINCE",
                "RESTARTS",
                "TLS",
                "FRAMES in/out",
                "BYTES in/out",
                "CERT NOT AFTER",
                "LAST ERROR",
            ]);
            for r in rows {
                t.add_row(vec![
                    text(&r["peer"]),
                    text(&r["state"]),
                    text(&r["rtt_ms"]),
                    text(&r["since"]),
                    text(&r["restarts"]),
                    format!("{} {}", text(&r["tls_version"]), text(&r["cipher"])),
                    format!("{}/{}", text(&r["frames_in"]), text(&r["frames_out"])),
                    format!("{}/{}", text(&r["bytes_in"]), text(&r["bytes_out"])),
                    text(&r["cert_not_after"]),
                    text(&r["last_error"]),
                ]);
            }
            t.to_string()
        }
        "members" => {
            let mut t = table(&["FQDN", "ROLE", "MESH", "CLIENT", "POOL", "TOPOLOGY", ""]);
            for r in rows {
                let me = if r["self"] == Value::Bool(true) {
                    "(this node)"
                } else {
                    ""
                };
                t.add_row(vec![
                    text(&r["fqdn"]),
                    text(&r["role"]),
                    text(&r["mesh_addr"]),
                    text(&r["client_addr"]),
                    text(&r["pool"]),
                    match (&r["topology_version"], r["up_to_date"] == Value::Bool(true)) {
                        (Value::Null, _) => "unknown".to_owned(),
                        (v, true) => format!("v{v}"),
                        (v, false) => format!("v{v} (lags)"),
                    },
                    me.to_owned(),
                ]);
            }
            t.to_string()
        }
        "rejections" => {
            if rows.is_empty() {
                return "no rejections".into();
            }
            let mut t = table(&["AT", "REMOTE", "DIR", "REASON", "PRESENTED NAME", "DETAIL"]);
            for r in rows {
                t.add_row(vec![
                    text(&r["at"]),
                    text(&r["remote_addr"]),
                    text(&r["direction"]),
                    text(&r["reason"]),
                    text(&r["presented_name"]),
                    text(&r["detail"]),
                ]);
            }
            t.to_string()
        }
        "check" => {
            let problems = result["problems"].as_array().cloned().unwrap_or_default();
            if problems.is_empty() {
                format!(
                    "OK: no certificate expires within {} days, every peer is up and current",
                    text(&result["days"])
                )
            } else {
                let mut out = format!("{} problem(s):\n", problems.len());
                for p in problems {
                    out += &format!("  - {}\n", text(&p));
                }
                out.trim_end().to_owned()
            }
        }
        "registrations" => {
            if rows.is_empty() {
                return "no registrations stored at this node".into();
            }
            let mut t = table(&["AOR", "CONTACT", "HOME", "FLOW NODE", "FLOW", "EXPIRES IN s"]);
            for r in rows {
                t.add_row(vec![
                    text(&r["aor"]),
                    text(&r["contact"]),
                    text(&r["home_node"]),
                    text(&r["flow_node"]),
                    text(&r["flow_id"]),
                    text(&r["expires_in"]),
                ]);
            }
            t.to_string()
        }
        "topology" => format!(
            "# topology v{} (versions in store: {})\n{}",
            text(&result["version"]),
            text(&result["history"]),
            result["toml"].as_str().unwrap_or("")
        ),
        _ => match result {
            Value::Object(map) => {
                let mut t = table(&["FIELD", "VALUE"]);
                for (k, v) in map {
                    t.add_row(vec![k.clone(), text(v)]);
                }
                t.to_string()
            }
            other => serde_json::to_string_pretty(other).unwrap_or_default(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_table_shows_every_column() {
        let rows = json!([{"peer":"fe2.contoso.test","state":"up","rtt_ms":0.25,"since":"2026-11-30T03:00:00Z",
            "restarts":1,"tls_version":"TLSv1.3","cipher":"TLS13_AES_256_GCM_SHA384","frames_in":5,"frames_out":6,
            "bytes_in":50,"bytes_out":60,"cert_not_after":"2027-11-30T03:00:00Z","last_error":null}]);
        let out = render("links", &rows);
        for want in [
            "fe2.contoso.test",
            "up",
            "0.25",
            "TLSv1.3 TLS13_AES_256_GCM_SHA384",
            "5/6",
            "50/60",
            "2027-11-30T03:00:00Z",
        ] {
            assert!(out.contains(want), "missing {want} in\n{out}");
        }
    }

    #[test]
    fn unreachable_socket_names_the_path() {
        let err = command(Path::new("/nonexistent/sipmesh.sock"), "status").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot reach debug socket /nonexistent/sipmesh.sock:"),
            "{err}"
        );
    }
}
