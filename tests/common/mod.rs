//! Shared harness for the multi-node integration tests.
//!
//! Every integration test binary compiles `mod common;` on its own and uses
//! only part of it, hence the `dead_code` allowance. Layout:
//!
//! - `cluster.rs`: [`Cluster`], `sipmesh cluster up` in a tempdir, waited for
//!   until its mesh is fully up.
//! - `single_node.rs`: [`SingleNode`], one hand-built node (own CA, topology,
//!   node.toml) for the rejection matrix.
//! - `debug.rs`: [`try_debug`] / [`debug()`], one request on a node's debug
//!   socket, and the readers built on it.
//! - `poll.rs`: [`eventually`] / [`poll_until`], bounded polling, and the deadlines.
//! - `proc.rs`: [`ProcGuard`], [`free_addr`], the `/proc` helpers
//!   ([`established_between`]).
//! - `inprocess.rs`: nodes inside the test's own actix System, handed
//!   listeners bound on port 0, on a paused clock for timer tests.
//! - `tls.rs`: tokio-rustls client helpers for tests that speak to a mesh
//!   port, and the CA directory helper [`Pki`].
//!
//! Every process a test starts is owned by a guard that SIGKILLs and reaps it
//! on drop, panics included. Everything is re-exported here, so tests keep
//! `use common::*` or `common::name`.
#![allow(dead_code)]

mod cluster;
mod debug;
pub mod inprocess;
mod poll;
mod proc;
mod single_node;
mod tls;

// Like `dead_code` above: a test binary that uses nothing of a module would
// otherwise warn about its re-export.
#[allow(unused_imports)]
pub use self::{cluster::*, debug::*, poll::*, proc::*, single_node::*, tls::*};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sipmesh");
/// Domain of `cluster up` and of the hand-built nodes.
pub const DOMAIN: &str = "contoso.test";

/// `feN.contoso.test`.
pub fn fe(n: usize) -> String {
    format!("fe{n}.{DOMAIN}")
}
