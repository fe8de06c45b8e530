//! [`BindingWriter`]: the registrar's store writes, off the event loop.
//!
//! Every REGISTER changes an AOR's bindings. Committing each one to redb (an
//! fsync) on the node's only thread would stall the mesh behind the disk, so
//! the registrar updates its cache (authoritative for lookups) and queues the
//! new list here. One writer thread takes whatever is queued (up to
//! [`MAX_WRITE_BATCH`]), writes it in ONE transaction and commits once.
//!
//! - Order: one writer and a FIFO queue, so the lists of an AOR reach the
//!   store in the order the registrar produced them (the last one wins).
//! - Bound: the queue holds [`MAX_QUEUED_WRITES`]; when it is full the write
//!   is refused at once ([`QueueError::Full`]) and the REGISTER gets a 503.
//! - Durability: a 200 OK leaves once the binding is cached and queued; a
//!   crash can lose the last uncommitted batch (clients re-register).
//!   Dropping the writer commits what is queued before it returns.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use sipmesh_state::{Binding, Store};

use crate::net::throttle::{Throttle, LOG_INTERVAL};

/// Writes waiting for the writer (DoS and memory bound: each holds at most
/// `MAX_BINDINGS_PER_AOR` bindings; beyond it REGISTER is answered 503).
pub const MAX_QUEUED_WRITES: usize = 10_000;

/// Most writes in one transaction (bounds a commit's size and the time a
/// `ctl registrations` waits behind it).
pub const MAX_WRITE_BATCH: usize = 1_000;

enum Job {
    /// Replace the bindings of an AOR.
    Put(String, Vec<Binding>),
    /// Answer once everything queued before is committed (or failed).
    Sync(tokio::sync::oneshot::Sender<()>),
}

/// Why a write was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueError {
    /// [`MAX_QUEUED_WRITES`] are waiting.
    Full,
    /// The writer thread is gone.
    Stopped,
}

/// Counters of the writer (`ctl status` `sip.registrar`).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Writes queued and not yet committed.
    pub pending: AtomicU64,
    /// Writes committed.
    pub written: AtomicU64,
    /// Transactions committed (each one fsync).
    pub commits: AtomicU64,
    /// Transactions that failed (their writes stay in the cache only).
    pub failed_commits: AtomicU64,
    /// Writes refused because the queue was full.
    pub refused_full: AtomicU64,
}

/// The registrar's dedicated store writer.
pub struct BindingWriter {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<WriterStats>,
}

impl BindingWriter {
    /// Start the writer thread over `store` with a queue of `capacity`.
    pub fn spawn(store: Arc<Store>, capacity: usize) -> std::io::Result<BindingWriter> {
        let (tx, rx) = sync_channel(capacity);
        Self::start(store, tx, rx)
    }

    fn start(store: Arc<Store>, tx: SyncSender<Job>, rx: Receiver<Job>) -> std::io::Result<BindingWriter> {
        let stats = Arc::new(WriterStats::default());
        let s = stats.clone();
        let thread = std::thread::Builder::new()
            .name("registrar-writer".into())
            .spawn(move || run(&store, &rx, &s))?;
        Ok(BindingWriter {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// Queue the new bindings of `aor` (empty: remove it); never blocks.
    pub fn try_put(&self, aor: String, bindings: Vec<Binding>) -> Result<(), QueueError> {
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        let sent = self.send(Job::Put(aor, bindings));
        if sent.is_err() {
            self.stats.pending.fetch_sub(1, Ordering::Relaxed);
        }
        if sent == Err(QueueError::Full) {
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// A future that completes once every write queued before this call is
    /// committed (or has failed); never blocks the caller's thread.
    pub fn synced(&self) -> Result<impl Future<Output = ()>, QueueError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(Job::Sync(done))?;
        Ok(async move {
            let _ = wait.await;
        })
    }

    fn send(&self, job: Job) -> Result<(), QueueError> {
        let tx = self.tx.as_ref().ok_or(QueueError::Stopped)?;
        tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => QueueError::Full,
            TrySendError::Disconnected(_) => QueueError::Stopped,
        })
    }

    /// The counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }
}

impl Drop for BindingWriter {
    fn drop(&mut self) {
        // Closing the queue lets the thread commit what is left and stop.
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer loop: block for one job, take whatever else is queued (up to
/// a batch), commit the puts in one transaction, then answer the syncs.
fn run(store: &Store, rx: &Receiver<Job>, stats: &WriterStats) {
    let throttle = Throttle::new(LOG_INTERVAL);
    while let Ok(first) = rx.recv() {
        let mut puts = Vec::new();
        let mut syncs = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Put(aor, bindings) => puts.push((aor, bindings)),
                Job::Sync(done) => syncs.push(done),
            }
            if puts.len() < MAX_WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !puts.is_empty() {
            match store.put_bindings_batch(&puts) {
                Ok(()) => {
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    stats.written.fetch_add(puts.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = throttle.allow((), tokio::time::Instant::now()) {
                        tracing::error!(error = %e, writes = puts.len(), suppressed, "registrar store commit failed");
                    }
                }
            }
            stats.pending.fetch_sub(puts.len() as u64, Ordering::Relaxed);
        }
        for done in syncs {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(aor: &str, cseq: u32) -> Binding {
        Binding {
            aor: aor.into(),
            contact: format!("sip:{cseq}@127.0.0.1:5999;transport=tls"),
            expires_at: 2_000_000_000,
            flow_node: "fe1.contoso.test".into(),
            flow_id: 1,
            call_id: "c".into(),
            cseq,
            updated_at: 1,
            q: sipmesh_state::binding::Q_DEFAULT,
        }
    }

    fn store() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        (dir, store)
    }

    /// N writes queued while the writer is busy land in fewer than N
    /// commits, in order: the last list of each AOR is the one stored.
    #[test]
    fn queued_writes_are_batched_into_fewer_commits_in_order() {
        const N: u32 = 200;
        let (_dir, store) = store();
        let (tx, rx) = sync_channel(MAX_QUEUED_WRITES);
        // Queue everything before the writer runs (as while it is in a commit).
        for i in 0..N {
            let aor = format!("sip:u{}@contoso.test", i % 10);
            tx.try_send(Job::Put(aor.clone(), vec![binding(&aor, i)])).unwrap();
        }
        let writer = BindingWriter::start(store.clone(), tx, rx).unwrap();
        let stats = writer.stats.clone();
        drop(writer); // commits what is queued, then joins
        let commits = stats.commits.load(Ordering::Relaxed);
        assert!(
            commits >= 1 && commits < u64::from(N),
            "{commits} commits for {N} writes"
        );
        assert_eq!(commits, u64::from(N).div_ceil(MAX_WRITE_BATCH as u64));
        for k in 0..10 {
            let aor = format!("sip:u{k}@contoso.test");
            let last = (0..N).filter(|i| i % 10 == k).max().unwrap();
            assert_eq!(store.bindings(&aor).unwrap(), vec![binding(&aor, last)], "{aor}");
        }
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let (_dir, store) = store();
        let (tx, rx) = sync_channel(2);
        tx.try_send(Job::Put("a".into(), vec![])).unwrap();
        tx.try_send(Job::Put("b".into(), vec![])).unwrap();
        // Not started yet: the queue is full.
        let writer = BindingWriter {
            tx: Some(tx),
            thread: None,
            stats: Arc::default(),
        };
        assert_eq!(writer.try_put("c".into(), vec![]), Err(QueueError::Full));
        assert_eq!(writer.stats.refused_full.load(Ordering::Relaxed), 1);
        assert_eq!(writer.stats.pending.load(Ordering::Relaxed), 0);
        drop(rx);
        drop(store);
        assert_eq!(writer.try_put("d".into(), vec![]), Err(QueueError::Stopped));
    }

    #[tokio::test]
    async fn synced_waits_for_the_commit() {
        let (_dir, store) = store();
        let writer = BindingWriter::spawn(store.clone(), MAX_QUEUED_WRITES).unwrap();
        let aor = "sip:alice@contoso.test";
        writer.try_put(aor.into(), vec![binding(aor, 1)]).unwrap();
        writer.synced().unwrap().await;
        assert_eq!(store.bindings(aor).unwrap(), vec![binding(aor, 1)]);
        assert_eq!(writer.stats().pending.load(Ordering::Relaxed), 0);
        assert_eq!(writer.stats().written.load(Ordering::Relaxed), 1);
    }
}
