//! Network plumbing shared by every door of a node.
//!
//! - [`accept`]: one bounded accept loop (permits, pause on error, counted refusals).
//! - [`offload`]: TLS handshakes on a pool of their own, off the routing thread.
//! - [`dns`]: resolving member names and partner edges (hickory-resolver).
//! - [`throttle`]: refusals counted by reason, logged at most once a second per reason.

pub mod accept;
pub mod dns;
pub mod offload;
pub mod throttle;
