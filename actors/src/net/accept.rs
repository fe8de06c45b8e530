//! One bounded accept loop for the mesh and client ports.
//!
//! Each accepted connection takes a permit from a semaphore of `limit`
//! permits, moved into its task and released when the task ends
//! (mini-redis `server.rs`). When none is left the connection is closed at
//! once and the refusal is counted and reported to the caller. A failed
//! `accept` (e.g. out of file descriptors) pauses the loop instead of spinning.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Pause after a failed `accept` so the loop does not spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Counters of one accept loop.
#[derive(Debug, Default)]
pub struct AcceptStats {
    /// Connections accepted and handed to a task.
    pub accepted: AtomicU64,
    /// Connections closed at once because every permit was taken.
    pub refused: AtomicU64,
}

/// Accept connections from `listener` until the task is dropped; at most
/// `limit` are handled at once by `handle`, on tasks of their own.
/// `refused` is told about each connection turned away for the limit.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    what: &'static str,
    limit: usize,
    stats: Arc<AcceptStats>,
    refused: impl Fn(SocketAddr),
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit) -> F,
    F: Future<Output = ()> + 'static,
{
    let permits = Arc::new(Semaphore::new(limit));
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            refused(remote);
            continue; // dropping the stream closes it
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        actix_rt::spawn(handle(tcp, remote, permit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::AsyncReadExt;

    #[actix_rt::test]
    async fn connections_over_the_limit_are_closed_and_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(AcceptStats::default());
        let refused_from = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (s, r, h) = (stats.clone(), refused_from.clone(), held.clone());
        let task = actix_rt::spawn(accept_loop(
            listener,
            "test",
            2,
            s,
            move |remote| r.lock().unwrap().push(remote),
            move |tcp, _remote, permit| {
                // Hold the connection and its permit until the test ends.
                h.lock().unwrap().push((tcp, permit));
                async {}
            },
        ));
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        // The third is closed by the server: EOF.
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut byte))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 2);
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        assert_eq!(refused_from.lock().unwrap().as_slice(), &[third.local_addr().unwrap()]);
        // A released permit admits the next connection.
        held.lock().unwrap().pop();
        let _fourth = TcpStream::connect(addr).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while stats.accepted.load(Ordering::Relaxed) < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 3);
        task.abort();
        drop(clients);
    }
}
