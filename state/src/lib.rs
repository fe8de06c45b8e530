//! sipmesh state: domain types, topology validation and the embedded store.
//!
//! No async and no network: everything here is plain values and a local
//! database, so other crates (actors, binary) can test against it directly.
//!
//! # Layout
//!
//! - [`fqdn`]: [`Fqdn`], a validated lower-cased DNS name, and [`FqdnError`].
//! - [`topology`]: the trusted-server set: [`Role`], [`TrustedServer`],
//!   [`Topology`], parsing and validating the operator's TOML file
//!   ([`TopologyError`], [`TopologyIssue`]: every problem, not just the first).
//! - [`store`]: [`Store`], the redb-backed ACID store for the current
//!   topology, its version history and a small key/value area ([`StoreError`]).
//! - [`binding`]: registrar bindings ([`Binding`]).
//! - [`signed`]: Ed25519-signed topology documents and the admin key.

#![forbid(unsafe_code)]

pub mod binding;
pub mod federation;
pub mod fqdn;
pub mod signed;
pub mod store;
pub mod topology;

pub use binding::Binding;
pub use federation::{DomainVerdict, Federation, Partner, PartnerMode};
pub use fqdn::{Fqdn, FqdnError};
pub use signed::{AdminKey, PublicKey, SignedError, SignedTopology};
pub use store::{Store, StoreError};
pub use topology::{MeshAddr, Role, Topology, TopologyDiff, TopologyError, TopologyIssue, TrustedServer};
