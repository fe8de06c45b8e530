//! Network plumbing shared by every door of a node.
//!
//! - [`accept`]: one bounded accept loop (permits, pause on error, counted refusals).
//! - [`dns`]: resolving member names and partner edges (hickory-resolver).
//! - [`throttle`]: refusals counted by reason, logged at most once a second per reason.

pub mod accept;
pub mod dns;
pub mod throttle;
