//! Lockout: consecutive Digest failures per key, so a proxy can answer 403
//! after the retry limit instead of letting a client guess passwords forever.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Most (key) entries a [`FailureTracker`] keeps (DoS bound: each distinct
/// source/user pair an attacker invents costs memory; 10 000 short strings is
/// well under a few MB, and real clients with pending failures are far fewer).
pub const MAX_TRACKED: usize = 10_000;

/// Counts consecutive failures per key (the caller's connection-or-source
/// plus user name) so the proxy can answer 403 after `limit` failures.
/// Bounded: at most [`MAX_TRACKED`] entries (oldest evicted); an entry
/// expires `window` after its last failure.
#[derive(Debug)]
pub struct FailureTracker {
    limit: u32,
    window: Duration,
    entries: HashMap<String, TrackEntry>,
    /// Entries by last failure time, oldest first (for expiry and eviction).
    order: BTreeMap<(Instant, u64), String>,
    seq: u64,
}

#[derive(Debug)]
struct TrackEntry {
    count: u32,
    order_key: (Instant, u64),
}

impl FailureTracker {
    /// A tracker answering "limit reached" from the `limit`-th consecutive
    /// failure within `window` of each other.
    pub fn new(limit: u32, window: Duration) -> Self {
        FailureTracker {
            limit,
            window,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            seq: 0,
        }
    }

    /// Record a failure for `key` at `now`; `true` = the limit is reached:
    /// answer 403.
    pub fn fail(&mut self, key: &str, now: Instant) -> bool {
        self.expire(now);
        self.seq += 1;
        let order_key = (now, self.seq);
        let count = if let Some(e) = self.entries.get_mut(key) {
            self.order.remove(&e.order_key);
            e.count = e.count.saturating_add(1);
            e.order_key = order_key;
            e.count
        } else {
            if self.entries.len() >= MAX_TRACKED {
                if let Some((_, oldest)) = self.order.pop_first() {
                    self.entries.remove(&oldest);
                }
            }
            self.entries.insert(key.to_owned(), TrackEntry { count: 1, order_key });
            1
        };
        self.order.insert(order_key, key.to_owned());
        count >= self.limit
    }

    /// A success for `key`: forget its failures.
    pub fn succeed(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.order.remove(&e.order_key);
        }
    }

    /// Consecutive failures currently counted for `key`.
    pub fn failures(&self, key: &str, now: Instant) -> u32 {
        match self.entries.get(key) {
            Some(e) if !self.expired(e.order_key.0, now) => e.count,
            _ => 0,
        }
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expired(&self, last: Instant, now: Instant) -> bool {
        now.saturating_duration_since(last) >= self.window
    }

    fn expire(&mut self, now: Instant) {
        let window = self.window;
        while let Some(entry) = self.order.first_entry() {
            if now.saturating_duration_since(entry.key().0) < window {
                break;
            }
            let key = entry.remove();
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_limit_on_nth_failure() {
        let mut t = FailureTracker::new(3, Duration::from_secs(60));
        let now = Instant::now();
        assert!(!t.fail("10.0.0.1|alice", now));
        assert!(!t.fail("10.0.0.1|alice", now));
        assert!(!t.fail("10.0.0.2|alice", now));
        assert!(t.fail("10.0.0.1|alice", now));
        assert!(t.fail("10.0.0.1|alice", now));
        assert_eq!(t.failures("10.0.0.1|alice", now), 4);
        assert_eq!(t.failures("10.0.0.2|alice", now), 1);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn tracker_success_resets() {
        let mut t = FailureTracker::new(2, Duration::from_secs(60));
        let now = Instant::now();
        assert!(!t.fail("k", now));
        t.succeed("k");
        assert!(t.is_empty());
        assert!(!t.fail("k", now));
        assert!(t.fail("k", now));
        t.succeed("k");
        assert!(!t.fail("k", now));
        t.succeed("absent");
    }

    #[test]
    fn tracker_window_expires() {
        let mut t = FailureTracker::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(!t.fail("k", t0));
        // Within the window of the last failure: counts.
        assert!(t.fail("k", t0 + Duration::from_secs(59)));
        // A failure-free window later: starts over.
        assert_eq!(t.failures("k", t0 + Duration::from_secs(119)), 0);
        assert!(!t.fail("k", t0 + Duration::from_secs(119)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn tracker_is_bounded() {
        let mut t = FailureTracker::new(2, Duration::from_secs(3600));
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED + 5 {
            assert!(!t.fail(&format!("k{i}"), t0 + Duration::from_millis(i as u64)));
        }
        assert_eq!(t.len(), MAX_TRACKED);
        assert_eq!(t.order.len(), MAX_TRACKED);
        let later = t0 + Duration::from_secs(20);
        // The five oldest were evicted; the next oldest is still counted.
        assert_eq!(t.failures("k4", later), 0);
        assert_eq!(t.failures("k5", later), 1);
        // Refreshing an entry moves it to the back: k5 survives the next eviction.
        assert!(t.fail("k5", later));
        assert!(!t.fail("new", later));
        assert_eq!(t.failures("k5", later), 2);
        assert_eq!(t.failures("k6", later), 0);
        assert_eq!(t.len(), MAX_TRACKED);
    }
}
