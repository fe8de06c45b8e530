//! Client flows: the TLS connections of SIP clients held by this node.
//!
//! A flow is the unit the registrar remembers ("deliver to flow 17 at fe1")
//! and the identity a connection authenticated as (Lync's model: once a
//! connection is trusted, requests on it are not re-challenged).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Identifier of a flow, unique within one run of a node.
pub type FlowId = u64;

/// Messages queued towards one client (backpressure bound: a client that does
/// not read gets 503s for new messages instead of growing memory).
pub const FLOW_QUEUE: usize = 256;

/// One client connection.
#[derive(Debug)]
pub struct Flow {
    /// Its id.
    pub id: FlowId,
    /// Bytes to write to the client.
    pub tx: mpsc::Sender<Bytes>,
    /// The client's address.
    pub remote: SocketAddr,
    /// The AOR proven by a TLS client certificate, if any.
    pub cert_identity: Option<String>,
    /// The AOR proven by Digest on this connection, if any.
    pub digest_identity: Mutex<Option<String>>,
}

impl Flow {
    /// The identity this connection has proven (certificate first).
    pub fn identity(&self) -> Option<String> {
        self.cert_identity
            .clone()
            .or_else(|| self.digest_identity.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Queue bytes to the client; false when the queue is full or the flow closed.
    pub fn send(&self, bytes: Bytes) -> bool {
        self.tx.try_send(bytes).is_ok()
    }
}

/// The flows of this node.
#[derive(Debug)]
pub struct Flows {
    map: RwLock<HashMap<FlowId, Arc<Flow>>>,
    next: AtomicU64,
}

impl Default for Flows {
    fn default() -> Self {
        // A random base so ids persisted in bindings are not reused by the
        // next run of the node.
        Flows {
            map: RwLock::default(),
            next: AtomicU64::new(rand::random::<u64>() >> 16),
        }
    }
}

impl Flows {
    /// Register a new connection.
    pub fn open(&self, tx: mpsc::Sender<Bytes>, remote: SocketAddr, cert_identity: Option<String>) -> Arc<Flow> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let flow = Arc::new(Flow {
            id,
            tx,
            remote,
            cert_identity,
            digest_identity: Mutex::new(None),
        });
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, flow.clone());
        flow
    }

    /// Forget a closed connection.
    pub fn close(&self, id: FlowId) {
        self.map.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// The flow `id`, if still open.
    pub fn get(&self, id: FlowId) -> Option<Arc<Flow>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Number of open flows.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
