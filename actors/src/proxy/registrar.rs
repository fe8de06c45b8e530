//! The registrar: REGISTER at an AOR's home node, bindings in the redb Store.
//!
//! Add, refresh, remove (`Expires: 0`, or `Contact: *` with `Expires: 0`) and
//! fetch (no Contact). Expiries shorter than the minimum get 423 with
//! Min-Expires; longer ones are shortened to the maximum. Bindings survive a
//! restart of the home node until they expire.

use std::sync::Arc;

use sipmesh_state::binding::{parse_q, Q_DEFAULT};
use sipmesh_state::{Binding, Store, StoreError};

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
    /// Write-through cache of the store's bindings: lookups are on the hot
    /// path of every request for an AOR; the store is read once per AOR.
    cache: std::sync::Mutex<std::collections::HashMap<String, Vec<Binding>>>,
}

/// Most AORs cached (DoS bound; beyond it lookups read the store).
pub const MAX_CACHED_AORS: usize = 100_000;

impl Registrar {
    /// A registrar over `store`.
    pub fn new(store: Arc<Store>, min_expires: u32, max_expires: u32) -> Registrar {
        Registrar {
            store,
            min_expires,
            max_expires,
            cache: Default::default(),
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
        // Committed before the 200 OK leaves.
        self.store.put_bindings(&aor, &bindings).map_err(store_err)?;
        self.remember(&aor, bindings.clone());
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

    fn remember(&self, aor: &str, bindings: Vec<Binding>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_AORS && !cache.contains_key(aor) {
            return;
        }
        cache.insert(aor.to_owned(), bindings);
    }

    /// Every live binding stored here.
    pub fn all(&self, now: u64) -> Result<Vec<Binding>, StoreError> {
        Ok(self
            .store
            .all_bindings()?
            .into_iter()
            .filter(|b| b.expires_at > now)
            .collect())
    }
}
