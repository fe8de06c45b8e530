//! Network plumbing shared by every door of a node.
//!
//! - [`accept`]: one bounded accept loop (permits, pause on error, counted refusals).

pub mod accept;
