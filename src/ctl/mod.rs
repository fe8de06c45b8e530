//! `sipmesh ctl`: a client for the node's debug socket.
//!
//! Sends one request line, reads one answer line. `--json` prints the
//! `result` for scripts; otherwise a table for people.
//!
//! Inside:
//! - [`request`], [`command`]: connect, send a request, read the answer
//!   (bounded by [`CTL_TIMEOUT`] and [`MAX_ANSWER`]); [`CtlError`] says why not.
//! - [`render`] (`render.rs`): the tables and text people see per command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

mod render;

pub use render::render;

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

/// Connect to `socket`; the stream and a maker of protocol errors naming it.
fn connect(socket: &Path) -> Result<(UnixStream, impl Fn(String) -> CtlError), CtlError> {
    let path = socket.display().to_string();
    let stream = UnixStream::connect(socket).map_err(|cause| CtlError::Connect {
        path: path.clone(),
        cause,
    })?;
    Ok((stream, move |message: String| CtlError::Protocol {
        path: path.clone(),
        message,
    }))
}

/// Send `request` (a JSON object) and return the `result` value.
pub fn request(socket: &Path, request: &Value) -> Result<Value, CtlError> {
    let (mut stream, proto) = connect(socket)?;
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

/// Longest event line read from `watch` (DoS bound, like [`MAX_ANSWER`]).
pub const MAX_EVENT_LINE: usize = 64 * 1024;

/// `watch`: print events as they come (one line each: JSON with `json`,
/// `AT KIND key=value ...` otherwise) until the node goes or `out` fails.
pub fn watch(socket: &Path, json: bool, out: &mut impl Write) -> Result<(), CtlError> {
    let (mut stream, proto) = connect(socket)?;
    stream
        .write_all(b"{\"cmd\":\"watch\"}\n")
        .map_err(|e| proto(e.to_string()))?;
    let mut reader = BufReader::new(stream);
    let mut first = true;
    loop {
        let mut line = String::new();
        let n = std::io::Read::take(&mut reader, MAX_EVENT_LINE as u64)
            .read_line(&mut line)
            .map_err(|e| proto(e.to_string()))?;
        if n == 0 {
            return Ok(()); // the node went away
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| proto(format!("bad event line: {e}")))?;
        if v["ok"] != Value::Bool(true) {
            return Err(CtlError::Node(
                v["error"].as_str().unwrap_or("unknown error").to_owned(),
            ));
        }
        if first {
            first = false;
            continue; // {"result":"watching"}
        }
        let text = if json {
            let mut e = v["event"].clone();
            e["dropped"] = v["dropped"].clone();
            e.to_string()
        } else {
            render::event(&v["event"], v["dropped"].as_u64().unwrap_or(0))
        };
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            return Ok(());
        }
    }
}

/// Send a bare command.
pub fn command(socket: &Path, cmd: &str) -> Result<Value, CtlError> {
    request(socket, &json!({ "cmd": cmd }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
