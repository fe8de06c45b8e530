//! sipmesh: a mesh of trusted SIP servers over mutual TLS (Lync-2013 trust model).
//!
//! # Layout
//!
//! - [`pki`]: a small file-based CA for labs and tests, one file per step (CA init,
//!   issue, revoke and CRL) plus the index, name checks, serials and atomic writes.
//! - [`bench`](mod@bench): `sipmesh bench relay|mesh`, load generation and measurements.
//! - [`cluster`]: `cluster up|down`, the local cluster and its `cluster.json`.
//! - [`listenfds`]: listening sockets handed to a node by `cluster up` or
//!   systemd socket activation (`LISTEN_FDS`, `LISTEN_FDNAMES` mesh/client).
//! - [`ctl`]: the debug-socket client behind `sipmesh ctl`, and its tables.
//! - [`topology`]: admin key files and diff display for `sipmesh topology`.
//! - [`ua`]: a minimal SIP-over-TLS client (TLS, framing, Digest REGISTER),
//!   shared by the bench and the end-to-end tests.

pub mod bench;
pub mod check;
pub mod cluster;
pub mod ctl;
pub mod listenfds;
pub mod pki;
pub mod topology;
pub mod ua;
