//! Refusals counted by reason, logged at most once per interval per reason.
//!
//! A stranger can trigger a refusal as often as it likes (a wrong password,
//! a connection over the limit); one `warn!` each would let it fill the disk
//! and drown the log. [`Throttle`] decides whether an event of a reason is
//! logged now and how many were suppressed since the last one logged;
//! [`Refusals`] counts every refusal by reason (for `ctl status`) and
//! throttles its log line; [`refused!`](crate::refused) is the call site:
//!
//! ```ignore
//! crate::refused!(self.refusals, ClientRefusal::DigestFailure, remote = %addr, "digest authentication failed");
//! ```
//!
//! Time is tokio's clock, so tests run it paused.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// At most one log line per reason per this interval (the rest are counted
/// and reported as `suppressed` on the next line).
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// A reason with a stable text form (the key in `ctl status`).
pub trait Reason: Copy + Ord + Hash {
    /// The stable text form.
    fn as_str(self) -> &'static str;
}

/// Once per interval per key. Keys must come from a small fixed set (an
/// enum of reasons): the map keeps one entry per key ever seen.
#[derive(Debug)]
pub struct Throttle<K> {
    interval: Duration,
    last: Mutex<HashMap<K, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    logged_at: Instant,
    suppressed: u64,
}

impl<K: Hash + Eq> Throttle<K> {
    /// A throttle letting one event per key through every `interval`.
    pub fn new(interval: Duration) -> Throttle<K> {
        Throttle {
            interval,
            last: Mutex::default(),
        }
    }

    /// An event of `key` at `now`: `Some(suppressed)` when it should be
    /// logged (with the number of events held back since the last one
    /// logged), `None` when it should not.
    pub fn allow(&self, key: K, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(&key) {
            Some(w) if now.saturating_duration_since(w.logged_at) < self.interval => {
                w.suppressed += 1;
                None
            }
            Some(w) => {
                let suppressed = w.suppressed;
                *w = Window {
                    logged_at: now,
                    suppressed: 0,
                };
                Some(suppressed)
            }
            None => {
                last.insert(
                    key,
                    Window {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

/// Refusals of one door: counted by reason, logged through a [`Throttle`].
#[derive(Debug)]
pub struct Refusals<R> {
    counts: Mutex<BTreeMap<R, u64>>,
    throttle: Throttle<R>,
}

impl<R: Reason> Default for Refusals<R> {
    fn default() -> Self {
        Refusals {
            counts: Mutex::default(),
            throttle: Throttle::new(LOG_INTERVAL),
        }
    }
}

impl<R: Reason> Refusals<R> {
    /// Count one refusal; `Some(suppressed)` when it should be logged now.
    pub fn refuse(&self, reason: R) -> Option<u64> {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
        self.throttle.allow(reason, Instant::now())
    }

    /// Totals by reason since start.
    pub fn totals(&self) -> BTreeMap<&'static str, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(r, n)| (r.as_str(), *n))
            .collect()
    }
}

/// Count a refusal in a [`Refusals`] and `warn!` it, at most once per
/// [`LOG_INTERVAL`] per reason, with fields `reason` and `suppressed` added.
#[macro_export]
macro_rules! refused {
    ($refusals:expr, $reason:expr, $($field:tt)+) => {{
        let reason = $reason;
        if let Some(suppressed) = $refusals.refuse(reason) {
            ::tracing::warn!(
                reason = $crate::net::throttle::Reason::as_str(reason),
                suppressed,
                $($field)+
            );
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    enum R {
        A,
        B,
    }

    impl Reason for R {
        fn as_str(self) -> &'static str {
            match self {
                R::A => "a",
                R::B => "b",
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn once_per_interval_per_key_with_the_suppressed_count() {
        let t = Throttle::new(LOG_INTERVAL);
        let start = Instant::now();
        assert_eq!(t.allow(R::A, start), Some(0));
        for _ in 0..5 {
            assert_eq!(t.allow(R::A, start + Duration::from_millis(999)), None);
        }
        // Another key has its own window.
        assert_eq!(t.allow(R::B, start + Duration::from_millis(10)), Some(0));
        assert_eq!(t.allow(R::A, start + LOG_INTERVAL), Some(5));
        assert_eq!(t.allow(R::A, start + LOG_INTERVAL), None);
        assert_eq!(t.allow(R::A, start + 3 * LOG_INTERVAL), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_count_everything_and_log_once_a_second() {
        let r = Refusals::<R>::default();
        let logged = (0..100).filter(|_| r.refuse(R::A).is_some()).count();
        assert_eq!(logged, 1);
        assert_eq!(r.refuse(R::B), Some(0));
        tokio::time::advance(LOG_INTERVAL).await;
        assert_eq!(r.refuse(R::A), Some(99));
        assert_eq!(r.totals(), BTreeMap::from([("a", 101), ("b", 1)]));
        // The macro compiles against a Refusals and counts through it.
        crate::refused!(r, R::B, n = 1, "test refusal");
        assert_eq!(r.totals()["b"], 2);
    }
}
