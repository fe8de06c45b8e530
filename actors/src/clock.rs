//! Wall-clock time for the few places that need it on the wire or in the
//! store (nonce timestamps, binding expiry).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (UTC); 0, not a panic, if the system clock
/// reads before 1970.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
