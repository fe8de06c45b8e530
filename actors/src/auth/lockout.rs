//! Lockout: failed Digest attempts per source address and per user, with
//! exponential backoff, so a client cannot guess passwords at line rate.
//!
//! Inside: [`Lockout`], one key kind's failure counts and locks (bounded,
//! oldest forgotten first); [`Backoff`], the lock durations; [`Lockouts`],
//! the pair the proxy consults (by source, by user) and [`source_key`].
//!
//! The proxy asks [`Lockouts::locked`] BEFORE verifying anything: while a
//! source or a user is locked every attempt is refused unverified, the right
//! password included (otherwise the lock only hides which guess was right).
//! Each verified failure counts, one by one, so pipelined guesses stop at
//! the limit.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most keys one [`Lockout`] keeps (DoS bound: each distinct source an
/// attacker brings costs an entry of ~100 bytes; 10 000 is about 1 MB and far
/// more than the sources with recent failures a node legitimately sees).
pub const MAX_TRACKED: usize = 10_000;

/// Failures are forgotten after this long without a new one (or after the
/// last lock ended): a client that mistyped once is not held to it forever.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// A user is locked after this many times the per-source limit of failures
/// from all sources together: a single source is stopped by its own lock
/// well before, so one stranger cannot lock a user out cheaply, while a
/// guessing campaign spread over many sources still is.
pub const USER_LIMIT_FACTOR: u32 = 4;

/// How long locks last: `base` for a key's first lock, doubling with each
/// further lock of the same key, at most `cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first lock.
    pub base: Duration,
    /// The longest lock.
    pub cap: Duration,
}

impl Backoff {
    /// The lock after `previous` earlier locks of the same key.
    pub fn lock_for(&self, previous: u32) -> Duration {
        let factor = 1u32.checked_shl(previous.min(31)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).unwrap_or(self.cap).min(self.cap)
    }
}

#[derive(Debug)]
struct Entry {
    /// Failures since the last lock ended (or since the first failure).
    failures: u32,
    /// Locks so far; the next lasts `Backoff::lock_for(locks)`.
    locks: u32,
    locked_until: Option<Instant>,
    /// When the entry may be forgotten, and its place in `order`.
    order_key: (Instant, u64),
}

/// Consecutive failures and locks for one kind of key.
#[derive(Debug)]
pub struct Lockout<K> {
    limit: u32,
    backoff: Backoff,
    entries: HashMap<K, Entry>,
    /// Keys by the time they may be forgotten, soonest first.
    order: BTreeMap<(Instant, u64), K>,
    seq: u64,
}

impl<K: Clone + Eq + Hash> Lockout<K> {
    /// Lock a key at its `limit`-th failure (a limit of 0 is taken as 1).
    pub fn new(limit: u32, backoff: Backoff) -> Self {
        Lockout {
            limit: limit.max(1),
            backoff,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            seq: 0,
        }
    }

    /// How long `key` stays locked from `now`, if it is.
    pub fn locked(&self, key: &K, now: Instant) -> Option<Duration> {
        let until = self.entries.get(key)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// A verified failure for `key` at `now`: `Some(lock)` when this failure
    /// locks it (the limit is reached).
    pub fn fail(&mut self, key: &K, now: Instant) -> Option<Duration> {
        self.expire(now);
        let (limit, backoff) = (self.limit, self.backoff);
        if !self.entries.contains_key(key) && self.entries.len() >= MAX_TRACKED {
            if let Some((_, oldest)) = self.order.pop_first() {
                self.entries.remove(&oldest);
            }
        }
        let e = self.entries.entry(key.clone()).or_insert(Entry {
            failures: 0,
            locks: 0,
            locked_until: None,
            order_key: (now, 0),
        });
        self.order.remove(&e.order_key);
        if e.locked_until.is_some_and(|t| t <= now) {
            // The last lock is over: a new round of `limit` attempts.
            e.locked_until = None;
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        let mut locked = None;
        if e.locked_until.is_none() && e.failures >= limit {
            let d = backoff.lock_for(e.locks);
            e.locks = e.locks.saturating_add(1);
            e.locked_until = Some(now + d);
            locked = Some(d);
        }
        self.seq += 1;
        let forget_at = e.locked_until.unwrap_or(now) + FAILURE_WINDOW;
        e.order_key = (forget_at, self.seq);
        self.order.insert(e.order_key, key.clone());
        locked
    }

    /// A success for `key`: its failure count starts over. Its lock history
    /// stays (it decays with [`FAILURE_WINDOW`]), so interleaving successes
    /// does not reset the backoff.
    pub fn succeed(&mut self, key: &K) {
        if let Some(e) = self.entries.get_mut(key) {
            e.failures = 0;
        }
    }

    /// Keys currently locked at `now`.
    pub fn locked_count(&self, now: Instant) -> usize {
        self.entries
            .values()
            .filter(|e| e.locked_until.is_some_and(|t| t > now))
            .count()
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(entry) = self.order.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.entries.remove(&key);
        }
    }
}

/// The source a failure is charged to: the IPv4 address, or the /64 of an
/// IPv6 address (one host usually holds a whole /64, so counting single
/// IPv6 addresses would give it 2^64 fresh starts).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Who is locked and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locked {
    /// The source address, for this long.
    Source(Duration),
    /// The user, for this long.
    User(Duration),
}

impl Locked {
    /// How long until the lock ends.
    pub fn remaining(self) -> Duration {
        match self {
            Locked::Source(d) | Locked::User(d) => d,
        }
    }
}

/// The proxy's two lockouts: by source (the retry limit) and by known user
/// (the retry limit × [`USER_LIMIT_FACTOR`]); unknown user names are charged
/// to the source only, so inventing names costs the attacker, not memory.
#[derive(Debug)]
pub struct Lockouts {
    /// By [`source_key`].
    pub sources: Lockout<IpAddr>,
    /// By user name (known users only).
    pub users: Lockout<String>,
}

impl Lockouts {
    /// Lock a source at its `limit`-th failure, a user at `limit` × [`USER_LIMIT_FACTOR`].
    pub fn new(limit: u32, backoff: Backoff) -> Self {
        Lockouts {
            sources: Lockout::new(limit, backoff),
            users: Lockout::new(limit.saturating_mul(USER_LIMIT_FACTOR), backoff),
        }
    }

    /// Whether `source` (or `user`, when known) is locked at `now`.
    pub fn locked(&self, source: IpAddr, user: Option<&str>, now: Instant) -> Option<Locked> {
        if let Some(d) = self.sources.locked(&source_key(source), now) {
            return Some(Locked::Source(d));
        }
        let d = self.users.locked(&user?.to_owned(), now)?;
        Some(Locked::User(d))
    }

    /// A verified failure from `source`, for `known_user` when the name
    /// exists: `Some` when it locks the source or the user.
    pub fn fail(&mut self, source: IpAddr, known_user: Option<&str>, now: Instant) -> Option<Locked> {
        let by_source = self.sources.fail(&source_key(source), now).map(Locked::Source);
        let by_user = known_user.and_then(|u| self.users.fail(&u.to_owned(), now).map(Locked::User));
        by_source.or(by_user)
    }

    /// A success from `source` as `user`.
    pub fn succeed(&mut self, source: IpAddr, user: &str) {
        self.sources.succeed(&source_key(source));
        self.users.succeed(&user.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(10),
        cap: Duration::from_secs(60),
    };

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let d: Vec<u64> = (0..6).map(|n| BACKOFF.lock_for(n).as_secs()).collect();
        assert_eq!(d, [10, 20, 40, 60, 60, 60]);
        assert_eq!(BACKOFF.lock_for(u32::MAX), BACKOFF.cap);
        let huge = Backoff {
            base: Duration::MAX,
            cap: Duration::from_secs(5),
        };
        assert_eq!(huge.lock_for(3), Duration::from_secs(5));
    }

    #[test]
    fn locks_at_the_limit_then_refuses_until_the_lock_ends() {
        let mut t = Lockout::new(3, BACKOFF);
        let t0 = Instant::now();
        assert_eq!(t.fail(&"k", t0), None);
        assert_eq!(t.fail(&"k", t0), None);
        assert_eq!(t.locked(&"k", t0), None);
        assert_eq!(t.fail(&"k", t0), Some(10 * S));
        assert_eq!(t.locked(&"k", t0 + 9 * S), Some(S));
        assert_eq!(t.locked(&"k", t0 + 10 * S), None);
        assert_eq!(t.locked_count(t0), 1);
        // After the lock: another round of three, locked twice as long.
        let t1 = t0 + 10 * S;
        assert_eq!(t.fail(&"k", t1), None);
        assert_eq!(t.fail(&"k", t1), None);
        assert_eq!(t.fail(&"k", t1), Some(20 * S));
        // A success resets the count, not the backoff.
        let t2 = t1 + 20 * S;
        t.succeed(&"k");
        assert_eq!(t.fail(&"k", t2), None);
        assert_eq!(t.fail(&"k", t2), None);
        assert_eq!(t.fail(&"k", t2), Some(40 * S));
        // Quiet for the window after the lock: forgotten, back to the base.
        let t3 = t2 + 40 * S + FAILURE_WINDOW;
        assert_eq!(t.fail(&"k", t3), None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.fail(&"k", t3), None);
        assert_eq!(t.fail(&"k", t3), Some(10 * S));
    }

    #[test]
    fn is_bounded() {
        let mut t = Lockout::new(2, BACKOFF);
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED + 5 {
            assert_eq!(t.fail(&i, t0 + Duration::from_millis(i as u64)), None);
        }
        assert_eq!(t.len(), MAX_TRACKED);
        assert_eq!(t.order.len(), MAX_TRACKED);
        let later = t0 + 20 * S;
        // The five oldest were forgotten: 4 starts over (and pushes out 5);
        // 6 is still counted.
        assert_eq!(t.fail(&4, later), None);
        assert_eq!(t.fail(&6, later), Some(10 * S));
        assert_eq!(t.len(), MAX_TRACKED);
    }

    #[test]
    fn users_lock_later_than_sources_and_ipv6_counts_per_64() {
        let mut l = Lockouts::new(2, BACKOFF);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(l.fail(a, Some("alice"), t0), None);
        assert_eq!(l.fail(b, Some("alice"), t0), Some(Locked::Source(10 * S)), "same /64");
        assert_eq!(l.locked(a, None, t0), Some(Locked::Source(10 * S)));
        // Other sources fail for alice until the user limit (2 × 4).
        for i in 3..8u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            assert_eq!(l.fail(ip, Some("alice"), t0), None, "failure {i}");
        }
        let c = IpAddr::from([10, 0, 0, 99]);
        assert_eq!(l.fail(c, Some("alice"), t0), Some(Locked::User(10 * S)));
        assert_eq!(
            l.locked(IpAddr::from([192, 0, 2, 1]), Some("alice"), t0),
            Some(Locked::User(10 * S))
        );
        assert_eq!(l.locked(IpAddr::from([192, 0, 2, 1]), Some("bob"), t0), None);
        assert_eq!(
            source_key("::ffff:192.0.2.7".parse().unwrap()),
            IpAddr::from([192, 0, 2, 7])
        );
    }
}
