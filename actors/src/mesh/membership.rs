//! Membership: the trusted-server set, kept in the Store.
//!
//! At start the node takes the newer of the stored topology and the
//! configured topology file; a newer file is committed to the Store before it
//! takes effect, so a restart with no file (or with every peer down) still
//! holds the last trusted set.
//!
//! At run time a topology arrives as a signed document (published by an
//! operator, or replicated by a peer). [`Membership`] accepts it only when it
//! verifies against the configured admin key and carries a higher version;
//! it commits it to the Store first, then swaps the live set. Every refusal is
//! recorded with its reason (`bad-signature`, `stale-version`, `invalid`,
//! `static`).

use std::path::Path;
use std::sync::Arc;

use actix::prelude::*;
use sipmesh_state::{Fqdn, PublicKey, Store, Topology, TopologyDiff};

use super::status::Shared;
use crate::config::NodeConfig;
use crate::NodeError;

/// The topology a node starts with and the signed document it came from.
pub struct Initial {
    /// The trusted set.
    pub topology: Topology,
    /// Its signed document, when signed.
    pub document: Option<String>,
    /// The admin key, when configured.
    pub key: Option<PublicKey>,
}

fn read_file(path: &Path, key: Option<&PublicKey>) -> Result<(Topology, Option<String>), NodeError> {
    match key {
        None => Ok((Topology::from_file(path)?, None)),
        Some(key) => {
            let text = std::fs::read_to_string(path).map_err(|e| NodeError::TopologyFile {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            let signed = key.verify(&text).map_err(|e| NodeError::TopologyFile {
                path: path.to_owned(),
                message: format!("{}: {e}", e.reason()),
            })?;
            Ok((signed.topology, Some(signed.document)))
        }
    }
}

/// Decide the starting topology: the newer of the stored one and the file.
pub fn initial_topology(config: &NodeConfig, store: &Store) -> Result<Initial, NodeError> {
    let key = match &config.topology_public_key {
        Some(p) => Some(PublicKey::load(p).map_err(|e| NodeError::TopologyKey(e.to_string()))?),
        None => None,
    };
    let stored = store.current_topology()?;
    let stored_doc = store.signed_topology()?;
    let file = match &config.topology {
        Some(path) => Some(read_file(path, key.as_ref())?),
        None => None,
    };
    let (topology, document) = match (stored, file) {
        (None, None) => return Err(NodeError::NoTopology),
        (Some(s), None) => (s, stored_doc),
        (None, Some((f, doc))) => {
            store.put_topology_signed(&f, doc.as_deref())?;
            (f, doc)
        }
        (Some(s), Some((f, doc))) if f.version > s.version => {
            store.put_topology_signed(&f, doc.as_deref())?;
            tracing::info!(
                from = s.version,
                to = f.version,
                "topology file is newer than the store; applied"
            );
            (f, doc)
        }
        (Some(s), Some((f, _))) => {
            if f.version < s.version || f != s {
                tracing::warn!(
                    file_version = f.version,
                    stored_version = s.version,
                    "topology file is not newer than the stored topology; keeping the stored one"
                );
            }
            (s, stored_doc)
        }
    };
    if topology.member(config.fqdn.as_str()).is_none() {
        return Err(NodeError::NotAMember {
            fqdn: config.fqdn.to_string(),
            version: topology.version,
        });
    }
    Ok(Initial {
        topology,
        document,
        key,
    })
}

/// The membership actor.
pub struct Membership {
    store: Arc<Store>,
    shared: Arc<Shared>,
    /// The SIP domain this node serves (a topology naming it as a partner is refused).
    domain: String,
}

impl Membership {
    /// Wrap the store the node opened; `domain` is the SIP domain served.
    pub fn new(store: Arc<Store>, shared: Arc<Shared>, domain: String) -> Membership {
        Membership { store, shared, domain }
    }
}

impl Actor for Membership {
    type Context = Context<Self>;
}

/// A signed topology document offered by an operator or a peer.
#[derive(Message)]
#[rtype(result = "Result<Offered, Refused>")]
pub struct Offer {
    /// The signed document.
    pub document: String,
    /// `publish` or the peer's FQDN (for the refusal log).
    pub from: String,
}

/// What became of an accepted offer.
#[derive(Debug)]
pub enum Offered {
    /// A newer version, now committed and in effect.
    Applied {
        /// The set before.
        old: Arc<Topology>,
        /// The set now.
        new: Arc<Topology>,
    },
    /// The same document as the one in effect.
    Same(u64),
    /// A genuine but older document (the sender lags).
    Older {
        /// The offered version.
        offered: u64,
        /// The version in effect.
        current: u64,
    },
}

/// Why an offer was refused.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Refused {
    /// `bad-signature`, `stale-version`, `invalid` or `static`.
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

impl Handler<Offer> for Membership {
    type Result = Result<Offered, Refused>;

    fn handle(&mut self, msg: Offer, _ctx: &mut Context<Self>) -> Self::Result {
        let refuse = |reason: &'static str, detail: String| {
            self.shared.refuse_topology(&msg.from, reason, detail.clone());
            Err(Refused { reason, detail })
        };
        let Some(key) = &self.shared.topology_key else {
            return refuse(
                "static",
                "this node has no topology_public_key configured; its topology cannot change at run time".into(),
            );
        };
        let signed = match key.verify(&msg.document) {
            Ok(s) => s,
            Err(e) => return refuse(e.reason(), e.to_string()),
        };
        if let Some(problem) = signed.topology.federation.own_domain_problem(&self.domain) {
            return refuse("invalid", format!("v{}: {problem}", signed.topology.version));
        }
        let current = self.shared.topology.load_full();
        let offered = signed.topology.version;
        if offered < current.version {
            return Ok(Offered::Older {
                offered,
                current: current.version,
            });
        }
        if offered == current.version {
            if *current == signed.topology {
                return Ok(Offered::Same(offered));
            }
            return refuse(
                "stale-version",
                format!("v{offered} is already in effect with different content"),
            );
        }
        match self.store.put_topology_signed(&signed.topology, Some(&signed.document)) {
            Ok(()) => {}
            Err(sipmesh_state::StoreError::StaleVersion { current, offered }) => {
                return refuse(
                    "stale-version",
                    format!("offered v{offered}, the store holds v{current}"),
                );
            }
            Err(e) => return refuse("invalid", format!("store refused it: {e}")),
        }
        let new = Arc::new(signed.topology);
        self.shared.topology.store(new.clone());
        self.shared.topology_doc.store(Some(Arc::new(signed.document)));
        tracing::info!(from = %msg.from, old = current.version, new = new.version, "topology applied");
        self.shared.events.publish("topology", || {
            serde_json::json!({"applied": true, "from": msg.from.to_string(), "old": current.version, "version": new.version})
        });
        Ok(Offered::Applied { old: current, new })
    }
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
    /// Whether the topology in effect came signed.
    pub signed: bool,
    /// Whether run-time changes are possible (a topology key is configured).
    pub dynamic: bool,
    /// The topology in effect, as TOML.
    pub toml: String,
    /// Recently refused documents.
    pub refusals: Vec<super::status::TopologyRefusal>,
}

impl Handler<GetTopology> for Membership {
    type Result = Result<TopologyReport, String>;

    fn handle(&mut self, _msg: GetTopology, _ctx: &mut Context<Self>) -> Self::Result {
        let current = self.shared.topology.load();
        Ok(TopologyReport {
            version: current.version,
            history: self.store.topology_versions().map_err(|e| e.to_string())?,
            signed: self.shared.topology_doc.load().is_some(),
            dynamic: self.shared.topology_key.is_some(),
            toml: current.to_toml_string(),
            refusals: self
                .shared
                .topology_refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
        })
    }
}

/// A signed topology document offered by an operator (`from: None`) or a peer.
#[derive(Message)]
#[rtype(result = "Result<TopologyOutcome, Refused>")]
pub struct OfferTopology {
    /// The signed document.
    pub document: String,
    /// The peer it came from.
    pub from: Option<Fqdn>,
}

/// What an accepted offer did.
#[derive(Debug, Default, serde::Serialize)]
pub struct TopologyOutcome {
    /// Version of the offered document.
    pub offered: u64,
    /// Version in effect now.
    pub current: u64,
    /// Whether it was applied (newer than what we held).
    pub applied: bool,
    /// The membership change it made.
    pub diff: TopologyDiff,
}
