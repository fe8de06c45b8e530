//! Registrar bindings (location records).
//!
//! A binding ties an address of record to one contact, with an absolute
//! expiry, and remembers which node holds the client's TLS connection (the
//! flow) so requests for the AOR can be delivered over it.

use serde::{Deserialize, Serialize};

/// One registered contact of an AOR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// Address of record, normalised (`sip:alice@contoso.test`).
    pub aor: String,
    /// The Contact URI as registered.
    pub contact: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// FQDN of the node holding the client's connection.
    pub flow_node: String,
    /// Flow id at that node.
    pub flow_id: u64,
    /// Call-ID of the REGISTER that made or refreshed it.
    pub call_id: String,
    /// CSeq number of that REGISTER.
    pub cseq: u32,
    /// When it was last refreshed, seconds since the Unix epoch.
    pub updated_at: u64,
}

impl Binding {
    /// Seconds left at `now` (0 when expired).
    pub fn expires_in(&self, now: u64) -> u64 {
        self.expires_at.saturating_sub(now)
    }
}
