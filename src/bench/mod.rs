//! `sipmesh bench`: measurements an operator can run on their own machine.
//!
//! - `relay` (`relay.rs`): a 2-node cluster; a sender registered at node A
//!   sends MESSAGEs at a fixed rate to a responder registered at node B (so
//!   every transaction crosses A → MTLS → B and back). Reports latency
//!   percentiles, answered/failed counts, and the CPU each node spent per
//!   transaction (from `/proc/PID/task/*/schedstat`), next to the design targets.
//! - `compare` (`compare.rs`, `kamailio.rs`): the same load through a
//!   Kamailio chain and a sipmesh chain, one after the other, side by side.
//! - `load.rs`: the generator both use (open loop, HDR histogram, CPU of
//!   whole process trees); its clients are [`crate::ua`] connections.
//! - `handshake` (`handshake.rs`): new TLS and mutual-TLS connections per
//!   second into a node's ports and into Kamailio's, with the server CPU
//!   per handshake; survives Kamailio dying under it.
//! - `storm` (`storm.rs`): N clients connect and REGISTER with Digest at
//!   once while relayed traffic runs through the node they hit.
//! - `mesh` (`mesh.rs`): time from starting N node processes to a full mesh,
//!   and the memory an idle link costs.
//!
//! Load is open-loop (paced by the clock, not by answers), bounded in count
//! and time, and only ever sent to the cluster it starts on 127.0.0.1.

mod compare;
mod handshake;
pub mod kamailio;
mod load;
mod mesh;
mod relay;
mod storm;

pub use compare::{compare, render_compare, svg, CompareOptions, CompareReport};
pub use handshake::{handshake, render_handshake, HandshakeOptions, HandshakeReport, MAX_PARALLEL};
pub use load::parse_rates;
pub use mesh::{mesh, render_mesh, MeshReport, SETTLE};
pub use relay::{
    relay, render_relay, RelayOptions, RelayReport, DRAIN, MAX_DURATION, MAX_TRANSACTIONS, TARGET_P99_MS,
    TARGET_RELAY_US,
};

pub use storm::{render_storm, storm_bench, StormOptions, StormReport, MAX_STORM_CLIENTS};

use crate::cluster::UpOptions;

/// The cluster a bench starts: `cluster up` defaults.
fn cluster_options(nodes: usize) -> UpOptions {
    UpOptions {
        nodes: Some(nodes),
        dir: None,
        domain: "contoso.test".into(),
        heartbeat_ms: sipmesh_actors::config::DEFAULT_HEARTBEAT_MS,
        backoff_cap_ms: 1000,
        t1_ms: sipmesh_actors::config::DEFAULT_T1_MS,
        digest_algorithms: None,
        edge: false,
        federation_dns: None,
        mesh_dns: None,
        keylog: false,
        load_users: 0,
    }
}
