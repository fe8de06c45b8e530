//! The mesh: MTLS links between the trusted servers of the topology.
//!
//! - [`wire`]: sans-IO frame codec (length-prefixed postcard frames).
//! - [`handshake`]: the framed stream, the hello exchange, [`Established`].
//! - [`listener`]: the mesh accept loop (trust checks, identity rules).
//! - [`link`]: `PeerLink`, the supervised actor owning one peer's link.
//! - [`node`]: `NodeActor`, which supervises the links.
//! - [`membership`]: the trusted-server set and its Store.
//! - [`status`]: the shared read-mostly view (links, topology, rejections).
//!
//! Dependencies point one way: `listener` and `link` share `handshake`; a link
//! talks to its node through a `Recipient`, and hands SIP to a [`SipSink`]
//! given at construction, so the mesh knows nothing of the proxy.

pub mod handshake;
pub mod link;
pub mod listener;
pub mod membership;
pub mod node;
pub mod status;
pub mod wire;

pub use handshake::Established;

use sipmesh_state::Fqdn;

/// Where SIP messages relayed by peers go (the proxy).
pub trait SipSink: Send + Sync {
    /// A SIP message `peer` relayed, with what its ingress node asserted.
    fn relayed(&self, peer: &Fqdn, message: Vec<u8>, meta: wire::SipMeta);
}
