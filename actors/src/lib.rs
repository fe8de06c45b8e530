//! sipmesh node runtime.
//!
//! # Layout
//! - [`server`]: [`run`], the composition root (listeners, config, shutdown).
//! - [`config`]: the node's `node.toml`.
//! - [`net`]: the bounded accept loop every door uses.
//! - [`mesh`]: MTLS links: frame codec, handshake, listener, `PeerLink`,
//!   `NodeActor`, membership, the shared status view.
//! - [`trust`]: PEM material, the trust policy and mesh verifier, rustls
//!   configs, rejection reasons.
//! - [`sip`]: sans-IO SIP codec.
//! - [`auth`]: SIP Digest authentication and the users file.
//! - [`proxy`]: the message actors: client listener, routing, transactions,
//!   registrar.
//! - [`admin`]: the Unix debug socket and its commands.
//! - [`clock`]: wall-clock helpers.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod events;
pub mod federation;
pub mod mesh;
pub mod net;
pub mod proxy;
pub mod server;
pub mod sip;
pub mod trust;

pub use config::NodeConfig;
pub use mesh::wire;
pub use server::{run, Hooks, Listeners};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The store could not be used.
    #[error("store: {0}")]
    Store(#[from] sipmesh_state::StoreError),
    /// The topology file is invalid.
    #[error("topology: {0}")]
    Topology(#[from] sipmesh_state::TopologyError),
    /// The topology file could not be read or does not verify.
    #[error("topology file {path}: {message}")]
    TopologyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The topology public key could not be loaded.
    #[error("topology_public_key {0}")]
    TopologyKey(String),
    /// Nothing to trust.
    #[error("no topology: the store holds none and no topology file is configured")]
    NoTopology,
    /// This node is not in its own trusted set.
    #[error("this node ({fqdn}) is not a member of topology v{version}")]
    NotAMember {
        /// Our fqdn.
        fqdn: String,
        /// The topology version checked.
        version: u64,
    },
    /// TLS material unusable.
    #[error(transparent)]
    Tls(#[from] trust::TlsError),
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {cause}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        cause: std::io::Error,
    },
    /// The SIP service could not be set up (users file, ...).
    #[error("sip: {0}")]
    Sip(String),
    /// The debug socket could not be created.
    #[error("debug socket {path}: {message}")]
    DebugSocket {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Format a timestamp as RFC 3339 (UTC), the form used on the debug socket.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
