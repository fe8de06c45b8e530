//! Client flows: the TLS connections of SIP clients held by this node.
//!
//! A flow is the unit the registrar remembers ("deliver to flow 17 at fe1")
//! and the identity a connection authenticated as (Lync's model: once a
//! connection is trusted, requests on it are not re-challenged).
//!
//! Flow tokens: what this node writes as `ob=` in its Record-Route so that
//! in-dialog requests find the flow again. A token is the flow id and an
//! HMAC-SHA256 (node secret) over that id and the flow's own random key, so it
//! cannot be guessed, pointed at another flow, or used once its flow closed.
//! The secret is made at start and kept in memory only: a restarted node
//! refuses the tokens of its previous run (those dialogs were on connections
//! that died with it anyway).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;

/// Identifier of a flow, unique within one run of a node.
pub type FlowId = u64;

/// Messages queued towards one client (backpressure bound: a client that does
/// not read gets 503s for new messages instead of growing memory).
pub const FLOW_QUEUE: usize = 256;

/// Bytes of the HMAC kept in a flow token: 128 bits, far beyond what can be
/// guessed online, and short enough for a Record-Route.
pub const FLOW_TOKEN_MAC_LEN: usize = 16;

/// What a flow token presented in a Route says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    /// Ours, for this live flow.
    Flow(FlowId),
    /// Well formed, but no flow with that id is open (closed, or never was):
    /// without its key the MAC cannot be checked, and nothing is delivered.
    Gone,
    /// Not a token of ours: malformed, or the MAC does not match (forged,
    /// moved to another flow id, or from a previous run of the node).
    Forged,
}

type HmacSha256 = Hmac<Sha256>;

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
    /// A partner's edge: the partner domain its certificate proved.
    pub partner: Option<String>,
    /// This flow's own random key, bound into its tokens.
    key: [u8; 16],
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
    /// Signs flow tokens; made at start, never stored.
    secret: [u8; 32],
}

impl Default for Flows {
    fn default() -> Self {
        // A random base so ids persisted in bindings are not reused by the
        // next run of the node.
        Flows {
            map: RwLock::default(),
            next: AtomicU64::new(rand::random::<u64>() >> 16),
            secret: rand::random(),
        }
    }
}

impl Flows {
    /// Register a partner edge's connection (either direction).
    pub fn open_partner(&self, tx: mpsc::Sender<Bytes>, remote: SocketAddr, domain: &str) -> Arc<Flow> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let flow = Arc::new(Flow {
            id,
            tx,
            remote,
            cert_identity: None,
            digest_identity: Mutex::new(None),
            partner: Some(domain.to_owned()),
            key: rand::random(),
        });
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, flow.clone());
        flow
    }

    /// Register a new connection.
    pub fn open(&self, tx: mpsc::Sender<Bytes>, remote: SocketAddr, cert_identity: Option<String>) -> Arc<Flow> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let flow = Arc::new(Flow {
            id,
            tx,
            remote,
            cert_identity,
            digest_identity: Mutex::new(None),
            partner: None,
            key: rand::random(),
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

    /// The token naming `flow` in a Record-Route: `ID-MAC` in hex.
    pub fn token(&self, flow: &Flow) -> String {
        let mut s = format!("{:016x}-", flow.id);
        for b in self.mac(flow) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Check a token from a Route against the open flows (MAC compared in
    /// constant time).
    pub fn check_token(&self, token: &str) -> TokenCheck {
        let Some((id, mac)) = token.split_once('-') else {
            return TokenCheck::Forged;
        };
        let (Some(id), Some(mac)) = (parse_id(id), parse_mac(mac)) else {
            return TokenCheck::Forged;
        };
        let Some(flow) = self.get(id) else {
            return TokenCheck::Gone;
        };
        let want = self.mac(&flow);
        // Constant time: no early exit on the first differing byte.
        if want.iter().zip(&mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0 {
            TokenCheck::Flow(id)
        } else {
            TokenCheck::Forged
        }
    }

    fn mac(&self, flow: &Flow) -> [u8; FLOW_TOKEN_MAC_LEN] {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts any key length");
        mac.update(b"sipmesh flow token v1\0");
        mac.update(&flow.id.to_be_bytes());
        mac.update(&flow.key);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; FLOW_TOKEN_MAC_LEN];
        out.copy_from_slice(&full[..FLOW_TOKEN_MAC_LEN]);
        out
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

/// Only the exact form [`Flows::token`] writes (lower-case hex) is ours.
fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_id(s: &str) -> Option<FlowId> {
    lower_hex(s, 16).then(|| u64::from_str_radix(s, 16).ok()).flatten()
}

fn parse_mac(s: &str) -> Option<[u8; FLOW_TOKEN_MAC_LEN]> {
    if !lower_hex(s, 2 * FLOW_TOKEN_MAC_LEN) {
        return None;
    }
    let mut out = [0u8; FLOW_TOKEN_MAC_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(flows: &Flows) -> Arc<Flow> {
        let (tx, _rx) = mpsc::channel(1);
        flows.open(tx, "127.0.0.1:40000".parse().unwrap(), None)
    }

    #[test]
    fn tokens_verify_only_for_their_own_live_flow() {
        let flows = Flows::default();
        let (a, b) = (open(&flows), open(&flows));
        let ta = flows.token(&a);
        assert_eq!(ta.len(), 16 + 1 + 2 * FLOW_TOKEN_MAC_LEN, "{ta}");
        assert_eq!(flows.check_token(&ta), TokenCheck::Flow(a.id));
        assert_eq!(flows.check_token(&flows.token(&b)), TokenCheck::Flow(b.id));
        // Moved: a's MAC with b's id.
        let (_, mac) = ta.split_once('-').unwrap();
        assert_eq!(flows.check_token(&format!("{:016x}-{mac}", b.id)), TokenCheck::Forged);
        // One bit of the MAC flipped, truncated, upper-cased, bare ids.
        let mut flipped = ta.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            flipped.as_str(),
            &ta[..ta.len() - 2],
            &ta.to_uppercase(),
            &a.id.to_string(),
            "",
            "-",
        ] {
            assert_eq!(flows.check_token(bad), TokenCheck::Forged, "{bad:?}");
        }
        // Another node (or a restart): another secret, same id and key.
        let other = Flows::default();
        let (tx, _rx) = mpsc::channel(1);
        let twin = Flow {
            id: b.id,
            tx,
            remote: b.remote,
            cert_identity: None,
            digest_identity: Mutex::new(None),
            partner: None,
            key: b.key,
        };
        assert_eq!(flows.check_token(&other.token(&twin)), TokenCheck::Forged);
        // Closed: the token names no flow any more.
        flows.close(a.id);
        assert_eq!(flows.check_token(&ta), TokenCheck::Gone);
    }
}
