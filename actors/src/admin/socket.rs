//! The socket itself: bound 0600, a bounded number of clients, one request
//! line in and one JSON answer line out, idle clients dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::codec::{Framed, LinesCodec};

use super::{answer, NodeHandle};
use crate::NodeError;

/// Longest request line (DoS bound; the largest request is `publish`, a signed
/// topology of at most `MAX_SIGNED_DOC` bytes, JSON-escaped).
pub const MAX_DEBUG_LINE: usize = 4 * sipmesh_state::signed::MAX_SIGNED_DOC;
/// Simultaneous debug clients.
pub const MAX_DEBUG_CLIENTS: usize = 16;
/// A debug client silent for this long is disconnected.
pub const DEBUG_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

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
        if matches!(
            super::commands::Command::parse(&line, node.faults),
            Ok(super::commands::Command::Watch)
        ) {
            return watch(lines, &node).await;
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

/// Stream events to this client until it goes: a first line
/// `{"ok":true,"result":"watching"}`, then one `{"ok":true,"event":{...},"dropped":N}`
/// per event (`dropped`: events this watcher lost to a full queue so far).
async fn watch(mut lines: Framed<UnixStream, LinesCodec>, node: &NodeHandle) {
    let Some(mut sub) = node.shared.events.subscribe() else {
        let _ = lines
            .send(json!({"ok": false, "error": "too many watchers"}).to_string())
            .await;
        return;
    };
    if lines
        .send(json!({"ok": true, "result": "watching"}).to_string())
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            event = sub.rx.recv() => {
                let Some(event) = event else { return };
                let dropped = sub.dropped.load(std::sync::atomic::Ordering::Relaxed);
                let line = json!({"ok": true, "event": event, "dropped": dropped}).to_string();
                if lines.send(line).await.is_err() {
                    return;
                }
            }
            // Anything from the client, or its going, ends the watch.
            _ = lines.next() => return,
        }
    }
}
