//! The registrar: REGISTER at an AOR's home node, bindings in the redb Store.
//!
//! Add, refresh, remove (`Expires: 0`, or `Contact: *` with `Expires: 0`) and
//! fetch (no Contact). Expiries shorter than the minimum get 423 with
//! Min-Expires; longer ones are shortened to the maximum. Bindings survive a
//! restart of the home node until they expire.
//!
//! The in-memory cache is authoritative for lookups; the store is written
//! off the event loop by [`writer::BindingWriter`] (batched commits, the
//! order of an AOR's writes kept). The 200 OK leaves once the bindings are
//! cached and queued; a full queue answers 503.

pub mod writer;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::net::throttle::{Throttle, LOG_INTERVAL};
use sipmesh_state::binding::{parse_q, Q_DEFAULT};
use sipmesh_state::{Binding, Store, StoreError};
use writer::{BindingWriter, QueueError, MAX_QUEUED_WRITES};

use super::answer::SipReject;
use crate::clock::now_secs;
use crate::sip::{Contacts, Header, HeaderName, SipMessage};

/// Most contacts kept per AOR (DoS bound: a client cannot grow the store).
pub const MAX_BINDINGS_PER_AOR: usize = 16;

/// The registrar of one node.
pub struct Registrar {
    store: Arc<Store>,
    min_expires: u32,
    max_expires: u32,
    /// Cache of the bindings, authoritative for lookups (the store may lag
    /// it by the writes still queued): lookups are on the hot path of every
    /// request for an AOR; the store is read once per AOR.
    cache: std::sync::Mutex<std::collections::HashMap<String, Vec<Binding>>>,
    /// The store's writer thread (None if it could not start: REGISTER
    /// then gets 503).
    writer: Option<BindingWriter>,
    /// Logs of refused writes, at most once a second per cause.
    refused_log: Throttle<QueueError>,
}

/// Most AORs cached from store reads (DoS bound; beyond it lookups read the
/// store). AORs written here are always cached, whatever the size: only an
/// authenticated user registers, and only its own AOR, so they are bounded
/// by the users (and certificates) this node accepts, and a written AOR
/// must stay cached until its write is committed.
pub const MAX_CACHED_AORS: usize = 100_000;

impl Registrar {
    /// A registrar over `store`.
    pub fn new(store: Arc<Store>, min_expires: u32, max_expires: u32) -> Registrar {
        let writer = BindingWriter::spawn(store.clone(), MAX_QUEUED_WRITES)
            .map_err(
                |e| tracing::error!(error = %e, "cannot start the registrar's store writer; REGISTER will get 503"),
            )
            .ok();
        Registrar {
            store,
            min_expires,
            max_expires,
            cache: Default::default(),
            writer,
            refused_log: Throttle::new(LOG_INTERVAL),
        }
    }

    /// Apply a REGISTER from `identity` whose client is on `flow_id` at
    /// `flow_node`; returns the Contact headers of the 200 OK.
    pub fn register(
        &self,
        msg: &SipMessage,
        identity: &str,
        flow_node: &str,
        flow_id: u64,
    ) -> Result<Vec<Header>, SipReject> {
        let to = msg.to_hdr().map_err(SipReject::Malformed)?;
        let aor = to
            .uri
            .as_ref()
            .map(|u| u.aor())
            .ok_or_else(|| SipReject::BadRequest("Bad To".into()))?;
        if aor != identity {
            return Err(SipReject::Forbidden(format!("{identity} may not register {aor}")));
        }
        let now = now_secs();
        let call_id = msg.call_id().map_err(SipReject::Malformed)?.to_owned();
        let cseq = msg.cseq().map_err(SipReject::Malformed)?.seq;
        let header_expires = msg.expires().map_err(SipReject::Malformed)?;
        let store_err = |e: StoreError| {
            tracing::error!(error = %e, "registrar store failure");
            SipReject::Busy
        };
        let mut bindings: Vec<Binding> = self
            .cached(&aor)
            .map_err(store_err)?
            .into_iter()
            .filter(|b| b.expires_at > now)
            .collect();
        match msg.contacts().map_err(SipReject::Malformed)? {
            Contacts::Star => {
                if header_expires != Some(0) {
                    return Err(SipReject::BadRequest("Invalid Star Contact (needs Expires: 0)".into()));
                }
                bindings.clear();
            }
            Contacts::List(list) => {
                for contact in list {
                    let uri = contact.raw_uri.clone();
                    let requested = match contact.param("expires") {
                        Some(Some(v)) => v
                            .parse::<u32>()
                            .map_err(|_| SipReject::BadRequest("Bad Contact Expires".into()))?,
                        Some(None) => return Err(SipReject::BadRequest("Bad Contact Expires".into())),
                        None => header_expires.unwrap_or(self.max_expires),
                    };
                    if requested == 0 {
                        bindings.retain(|b| b.contact != uri);
                        continue;
                    }
                    if requested < self.min_expires {
                        return Err(SipReject::IntervalTooBrief(self.min_expires));
                    }
                    let granted = requested.min(self.max_expires);
                    let q = match contact.param("q") {
                        None => Q_DEFAULT,
                        Some(v) => v
                            .and_then(parse_q)
                            .ok_or_else(|| SipReject::BadRequest("Bad Contact q".into()))?,
                    };
                    if let Some(old) = bindings.iter().find(|b| b.contact == uri) {
                        if old.call_id == call_id && old.cseq >= cseq {
                            return Err(SipReject::BadRequest("Out Of Order REGISTER".into()));
                        }
                    }
                    bindings.retain(|b| b.contact != uri);
                    if bindings.len() >= MAX_BINDINGS_PER_AOR {
                        // Replace the oldest rather than refusing a fresh device.
                        bindings.sort_by_key(|b| b.updated_at);
                        bindings.remove(0);
                    }
                    bindings.push(Binding {
                        aor: aor.clone(),
                        contact: uri,
                        expires_at: now + u64::from(granted),
                        flow_node: flow_node.to_owned(),
                        flow_id,
                        call_id: call_id.clone(),
                        cseq,
                        updated_at: now,
                        q,
                    });
                }
            }
        }
        self.write(&aor, &bindings)?;
        tracing::info!(aor = %aor, bindings = bindings.len(), flow_node, flow_id, "registration updated");
        Ok(bindings
            .iter()
            .map(|b| {
                Header::new(
                    HeaderName::Contact,
                    &format!("<{}>;expires={}", b.contact, b.expires_in(now)),
                )
            })
            .collect())
    }

    /// The bindings to deliver to: every live one, highest q first, the most
    /// recently refreshed first among equal q (RFC 3261 §16.6: the proxy forks
    /// to all of them, group by group).
    pub fn lookup(&self, aor: &str, now: u64) -> Result<Vec<Binding>, StoreError> {
        let pick = |list: &[Binding]| {
            let mut live: Vec<Binding> = list.iter().filter(|b| b.expires_at > now).cloned().collect();
            live.sort_by(|a, b| b.q.cmp(&a.q).then(b.updated_at.cmp(&a.updated_at)));
            live
        };
        // Hot path: pick under the lock instead of cloning the AOR's whole list.
        if let Some(list) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(aor) {
            return Ok(pick(list));
        }
        Ok(pick(&self.cached(aor)?))
    }

    fn cached(&self, aor: &str) -> Result<Vec<Binding>, StoreError> {
        if let Some(b) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(aor) {
            return Ok(b.clone());
        }
        let stored = self.store.bindings(aor)?;
        self.remember(aor, stored.clone());
        Ok(stored)
    }

    /// Queue the new bindings of `aor` for the store and cache them, under
    /// the cache lock so cache and queue see the same order. Not queued
    /// (full, or no writer): 503, and the cache keeps the old bindings.
    fn write(&self, aor: &str, bindings: &[Binding]) -> Result<(), SipReject> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let queued = match &self.writer {
            Some(w) => w.try_put(aor.to_owned(), bindings.to_vec()),
            None => Err(QueueError::Stopped),
        };
        if let Err(e) = queued {
            if let Some(suppressed) = self.refused_log.allow(e, tokio::time::Instant::now()) {
                tracing::warn!(aor = %aor, reason = ?e, suppressed, "registrar write queue refused a REGISTER (503)");
            }
            return Err(SipReject::Busy);
        }
        cache.insert(aor.to_owned(), bindings.to_vec());
        Ok(())
    }

    /// Writer counters for `status` (`sip.registrar`).
    pub fn stats(&self) -> serde_json::Value {
        let Some(w) = &self.writer else {
            return serde_json::json!({ "writer": "stopped" });
        };
        let s = w.stats();
        serde_json::json!({
            "pending_writes": s.pending.load(Ordering::Relaxed),
            "written": s.written.load(Ordering::Relaxed),
            "commits": s.commits.load(Ordering::Relaxed),
            "failed_commits": s.failed_commits.load(Ordering::Relaxed),
            "refused_queue_full": s.refused_full.load(Ordering::Relaxed),
        })
    }

    fn remember(&self, aor: &str, bindings: Vec<Binding>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_AORS && !cache.contains_key(aor) {
            return;
        }
        cache.insert(aor.to_owned(), bindings);
    }

    /// Wait (without blocking the thread) until every write queued before
    /// the call is committed (or has failed).
    pub async fn committed(&self) -> Result<(), String> {
        let synced = match &self.writer {
            Some(w) => w.synced().map_err(|e| format!("registrar writer: {e:?}"))?,
            None => return Err("registrar writer is not running".into()),
        };
        synced.await;
        Ok(())
    }

    /// Every live binding stored here, once the writes queued before the
    /// call are committed (so what it lists is on disk).
    pub async fn all_committed(&self, now: u64) -> Result<Vec<Binding>, String> {
        self.committed().await?;
        self.all(now).map_err(|e| e.to_string())
    }

    /// Every live binding in the store (not yet the queued writes).
    pub fn all(&self, now: u64) -> Result<Vec<Binding>, StoreError> {
        Ok(self
            .store
            .all_bindings()?
            .into_iter()
            .filter(|b| b.expires_at > now)
            .collect())
    }
}
