//! Bounded polling: [`poll_until`], [`eventually`] and the deadlines the
//! harness waits with.

use std::time::{Duration, Instant};

/// Default poll interval of [`eventually`].
pub const POLL: Duration = Duration::from_millis(50);
/// How long a cluster gets to come fully up.
pub const CLUSTER_UP_DEADLINE: Duration = Duration::from_secs(15);
/// How long a single node gets to answer on its debug socket.
pub const NODE_READY_DEADLINE: Duration = Duration::from_secs(10);

/// Poll `f` every `every` until it returns `Some` or `deadline` passes.
pub fn poll_until<T>(deadline: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Poll `f` every 50 ms until it returns `Some`; panic naming `what` after `deadline`.
pub fn eventually<T>(deadline: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_until(deadline, POLL, f).unwrap_or_else(|| panic!("timed out after {deadline:?} waiting for {what}"))
}
