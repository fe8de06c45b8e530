//! The memory a stranger can make the proxy hold: request bytes of live
//! server transactions, charged per payer (the authenticated user, else the
//! client flow) and in total, and refused with 503 beyond either bound
//! (`max_transaction_bytes_per_user`, `max_transaction_bytes`).

use std::collections::HashMap;
use std::sync::Arc;

use super::answer::SipReject;
use super::flows::FlowId;
use super::Source;
use crate::sip::SipMessage;

/// Users whose budget is back at zero are kept (their key is reused, so the
/// relay path allocates nothing) until there are more than this many.
pub const MAX_IDLE_PAYERS: usize = 4_096;
/// What a header costs besides its name and value (the header's own slot).
const HEADER_OVERHEAD: usize = 32;

/// Bytes a request holds in a server transaction: its body and headers as
/// received (counted without serializing it: this runs per request).
pub fn held_bytes(msg: &SipMessage) -> usize {
    msg.body.len()
        + msg
            .headers
            .iter()
            .map(|h| h.raw_name.len() + h.value.len() + HEADER_OVERHEAD)
            .sum::<usize>()
}

/// Who the bytes of a server transaction are charged to: the authenticated
/// user when there is one, else the client flow it came on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Payer {
    /// An authenticated AOR (the key shared with the budget's map).
    User(Arc<str>),
    /// An unauthenticated client flow.
    Flow(FlowId),
    /// Neither (a peer's request without an identity): the total only.
    Unattributed,
}

/// A server transaction's charge, given back when it is removed.
pub(super) struct Charge {
    payer: Payer,
    bytes: usize,
}

/// Request bytes held by live server transactions, per payer and in total
/// (the memory bound [`MAX_TRANSACTIONS`] alone does not give).
#[derive(Default)]
pub(super) struct Budget {
    total: usize,
    users: HashMap<Arc<str>, usize>,
    flows: HashMap<FlowId, usize>,
    /// Requests refused because their payer's budget was spent.
    refused_per_user: u64,
    /// Requests refused because the total budget was spent.
    refused_total: u64,
}

impl Budget {
    /// Charge `bytes` to the payer of a request from `source` by `identity`,
    /// or the refusal when a bound would be passed.
    pub(super) fn charge(
        &mut self,
        identity: Option<&str>,
        source: &Source,
        bytes: usize,
        per_user: usize,
        total: usize,
    ) -> Result<Charge, SipReject> {
        if self.total + bytes > total {
            self.refused_total += 1;
            return Err(SipReject::TransactionBudget { per_user: false });
        }
        let (payer, held) = match (identity, source) {
            (Some(id), _) => {
                if !self.users.contains_key(id) {
                    if self.users.len() >= MAX_IDLE_PAYERS {
                        self.users.retain(|_, held| *held > 0);
                    }
                    self.users.insert(Arc::from(id), 0);
                }
                let (key, held) = self.users.get_key_value(id).expect("inserted above");
                (Payer::User(key.clone()), *held)
            }
            (None, Source::Flow(id)) => (Payer::Flow(*id), self.flows.get(id).copied().unwrap_or(0)),
            (None, Source::Mesh(_)) => (Payer::Unattributed, 0),
        };
        if payer != Payer::Unattributed && held + bytes > per_user {
            self.refused_per_user += 1;
            return Err(SipReject::TransactionBudget { per_user: true });
        }
        match &payer {
            Payer::User(key) => *self.users.get_mut(key).expect("present") += bytes,
            Payer::Flow(id) => *self.flows.entry(*id).or_default() += bytes,
            Payer::Unattributed => {}
        }
        self.total += bytes;
        Ok(Charge { payer, bytes })
    }

    /// Give a charge back.
    pub(super) fn release(&mut self, charge: &Charge) {
        self.total -= charge.bytes;
        match &charge.payer {
            Payer::User(key) => {
                if let Some(held) = self.users.get_mut(key) {
                    *held -= charge.bytes;
                }
            }
            Payer::Flow(id) => {
                if let Some(held) = self.flows.get_mut(id) {
                    *held -= charge.bytes;
                    if *held == 0 {
                        self.flows.remove(id);
                    }
                }
            }
            Payer::Unattributed => {}
        }
    }

    /// Held bytes and refusals, for `status`.
    pub(super) fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "bytes": self.total,
            "refused_per_user": self.refused_per_user,
            "refused_total": self.refused_total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_and_total_bounds_and_release() {
        let mut b = Budget::default();
        let flow = Source::Flow(7);
        let alice = b.charge(Some("sip:alice@x"), &flow, 60, 100, 150).unwrap();
        // alice's own bound, while carol still gets through.
        assert_eq!(
            b.charge(Some("sip:alice@x"), &flow, 50, 100, 150).err(),
            Some(SipReject::TransactionBudget { per_user: true })
        );
        let carol = b.charge(Some("sip:carol@x"), &flow, 80, 100, 150).unwrap();
        // The node's total.
        assert_eq!(
            b.charge(None, &Source::Flow(8), 20, 100, 150).err(),
            Some(SipReject::TransactionBudget { per_user: false })
        );
        assert_eq!((b.refused_per_user, b.refused_total, b.total), (1, 1, 140));
        b.release(&alice);
        b.release(&carol);
        assert_eq!(b.total, 0);
        assert_eq!(b.users.get("sip:alice@x"), Some(&0), "the key is kept for reuse");
        // An unauthenticated flow is its own payer, and is forgotten at zero.
        let f = b.charge(None, &Source::Flow(8), 100, 100, 150).unwrap();
        assert!(b.charge(None, &Source::Flow(8), 1, 100, 150).is_err());
        b.release(&f);
        assert!(b.flows.is_empty());
    }
}
