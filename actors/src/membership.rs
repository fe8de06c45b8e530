//! Membership: the trusted-server set, kept in the Store.
//!
//! At start the node takes the newer of the stored topology and the
//! configured topology file; a newer file is committed to the Store before it
//! takes effect, so a restart with no file (or with peers down) still holds
//! the last trusted set. The actor answers questions about the set and its
//! history; later versions arrive through it too.

use std::sync::Arc;

use actix::prelude::*;
use sipmesh_state::{Store, Topology};

use crate::config::NodeConfig;
use crate::status::Shared;
use crate::NodeError;

/// Decide the starting topology: the newer of the stored one and the file.
pub fn initial_topology(config: &NodeConfig, store: &Store) -> Result<Topology, NodeError> {
    let stored = store.current_topology()?;
    let file = match &config.topology {
        Some(path) => Some(Topology::from_file(path)?),
        None => None,
    };
    let topology = match (stored, file) {
        (None, None) => return Err(NodeError::NoTopology),
        (Some(s), None) => s,
        (None, Some(f)) => {
            store.put_topology(&f)?;
            f
        }
        (Some(s), Some(f)) if f.version > s.version => {
            store.put_topology(&f)?;
            tracing::info!(
                from = s.version,
                to = f.version,
                "topology file is newer than the store; applied"
            );
            f
        }
        (Some(s), Some(f)) => {
            if f.version < s.version || f != s {
                tracing::warn!(
                    file_version = f.version,
                    stored_version = s.version,
                    "topology file is not newer than the stored topology; keeping the stored one"
                );
            }
            s
        }
    };
    if topology.member(config.fqdn.as_str()).is_none() {
        return Err(NodeError::NotAMember {
            fqdn: config.fqdn.to_string(),
            version: topology.version,
        });
    }
    Ok(topology)
}

/// The membership actor.
pub struct Membership {
    store: Store,
    shared: Arc<Shared>,
}

impl Membership {
    /// Wrap the store the node opened.
    pub fn new(store: Store, shared: Arc<Shared>) -> Membership {
        Membership { store, shared }
    }
}

impl Actor for Membership {
    type Context = Context<Self>;
}

/// The current topology and the versions held in the Store.
#[derive(Message)]
#[rtype(result = "Result<TopologyReport, String>")]
pub struct GetTopology;

/// Answer to [`GetTopology`].
#[derive(Debug, serde::Serialize)]
pub struct TopologyReport {
    /// The version in effect.
    pub version: u64,
    /// All versions in the Store, ascending.
    pub history: Vec<u64>,
    /// The topology in effect, as TOML.
    pub toml: String,
}

impl Handler<GetTopology> for Membership {
    type Result = Result<TopologyReport, String>;

    fn handle(&mut self, _msg: GetTopology, _ctx: &mut Context<Self>) -> Self::Result {
        let current = self.shared.topology.load();
        Ok(TopologyReport {
            version: current.version,
            history: self.store.topology_versions().map_err(|e| e.to_string())?,
            toml: current.to_toml_string(),
        })
    }
}
