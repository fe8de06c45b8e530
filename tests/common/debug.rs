//! One request on a node's debug socket ([`try_debug`], [`debug()`]) and the
//! readers built on it: [`links`], [`link`], [`rejections`],
//! [`newest_rejection_after`], [`restarts`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::poll::eventually;

/// One request on a debug socket; `Ok(result)` or `Err(error text)` (transport
/// errors included, so it can be polled before the socket exists).
pub fn try_debug(socket: &Path, cmd: &str) -> Result<Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    if line.is_empty() {
        return Err("debug socket closed without an answer".into());
    }
    let answer: Value = serde_json::from_str(&line).map_err(|e| format!("bad answer {line:?}: {e}"))?;
    match answer.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(answer.get("result").cloned().unwrap_or(Value::Null)),
        Some(false) => Err(format!(
            "ok:false: {}",
            answer.get("error").and_then(Value::as_str).unwrap_or("<no error text>")
        )),
        None => Err(format!("answer without \"ok\": {line}")),
    }
}

/// One request on a debug socket; the `result`. Panics on `ok:false` with its error.
pub fn debug(socket: &Path, cmd: &str) -> Value {
    try_debug(socket, cmd).unwrap_or_else(|e| panic!("debug {cmd:?} on {}: {e}", socket.display()))
}

/// The `links` rows of a node.
pub fn links(socket: &Path) -> Vec<Value> {
    as_array(debug(socket, "links"), "links")
}

/// The `links` row for `peer`, if any.
pub fn link(socket: &Path, peer: &str) -> Option<Value> {
    links(socket).into_iter().find(|l| l["peer"] == peer)
}

/// The `rejections` records of a node, oldest first.
pub fn rejections(socket: &Path) -> Vec<Value> {
    as_array(debug(socket, "rejections"), "rejections")
}

fn as_array(v: Value, what: &str) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        other => panic!("{what}: expected a JSON array, got {other}"),
    }
}

/// Wait until the node logged more than `before` rejections; the newest one.
pub fn newest_rejection_after(socket: &Path, before: usize) -> Value {
    eventually(Duration::from_secs(3), "a new rejection record", || {
        let r = rejections(socket);
        (r.len() > before).then(|| r.last().cloned().expect("non-empty"))
    })
}

/// A link's `restarts` counter.
pub fn restarts(row: &Value) -> u64 {
    row["restarts"]
        .as_u64()
        .unwrap_or_else(|| panic!("link row without numeric restarts: {row}"))
}
