//! Transactions: the server transactions (requests we received and have not
//! finished answering) and client transactions (requests we forwarded), in
//! one table with one timer queue.
//!
//! Timers (64×T1 for a forwarded request, Timer C once an INVITE rings, the
//! wait for the ACK of a failed INVITE) live in a single `DelayQueue` driven
//! by one task ([`drive_timers`]), not a task per timer. A timer's key is
//! kept in its transaction and removed with it, in the same critical
//! section that pops an expired timer, so a stale key never survives.
//!
//! Also here: what the proxy does with responses (back by Via), with ACK
//! (absorbed by a failed INVITE's server transaction, or routed end to end
//! for a 2xx) and with CANCEL (answered hop by hop, then sent downstream).

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::time::{delay_queue, DelayQueue};

use super::answer::SipReject;
use super::flows::FlowId;
use super::route::{self, NextHop, Routed};
use super::{branch, server_key, Origin, Proxy, Source, DEFAULT_MAX_FORWARDS};
use crate::sip::{Header, HeaderName, Method, SipMessage, StartLine};

/// How long a server transaction that sent a non-2xx final to an INVITE
/// waits for the ACK (Timer H = 64*T1 is for unreliable transports; on TLS the
/// ACK follows at once).
pub const ACK_WAIT: Duration = Duration::from_secs(5);

/// Largest number of live transactions (DoS bound; each holds a message).
pub const MAX_TRANSACTIONS: usize = 100_000;
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
    fn release(&mut self, charge: &Charge) {
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

pub(super) struct ServerTxn {
    pub(super) source: Source,
    pub(super) request: SipMessage,
    pub(super) client_branch: Option<String>,
    pub(super) final_status: Option<u16>,
    expire: Option<delay_queue::Key>,
    charge: Option<Charge>,
}

/// What a hop-by-hop request (CANCEL, ACK for a non-2xx) for a forwarded
/// INVITE needs.
#[derive(Clone)]
pub(super) struct Hop {
    pub(super) forwarded: SipMessage,
    pub(super) next: NextHop,
    pub(super) origin: Origin,
}

pub(super) struct ClientTxn {
    server_key: String,
    hop: Hop,
    provisional: bool,
    timer: Option<delay_queue::Key>,
}

enum Timer {
    /// A forwarded request got no final response in time (by branch).
    Client(String),
    /// A failed INVITE's server transaction stops waiting for the ACK (by key).
    Expire(String),
}

/// Every transaction of the proxy and their timers.
#[derive(Default)]
pub(super) struct Transactions {
    pub(super) server: HashMap<String, ServerTxn>,
    pub(super) client: HashMap<String, ClientTxn>,
    timers: DelayQueue<Timer>,
    pub(super) budget: Budget,
}

/// What an expired timer leaves to do outside the table's lock: a timed-out
/// client transaction and the server transaction it served.
type Fired = Option<(ClientTxn, Option<ServerTxn>)>;

impl Transactions {
    fn remove_server(&mut self, key: &str) -> Option<ServerTxn> {
        let st = self.server.remove(key)?;
        if let Some(k) = &st.expire {
            self.timers.try_remove(k);
        }
        if let Some(c) = &st.charge {
            self.budget.release(c);
        }
        Some(st)
    }

    fn remove_client(&mut self, branch: &str) -> Option<ClientTxn> {
        let ct = self.client.remove(branch)?;
        if let Some(k) = &ct.timer {
            self.timers.try_remove(k);
        }
        Some(ct)
    }

    fn fire(&mut self, timer: Timer) -> Fired {
        match timer {
            Timer::Client(branch) => {
                let client = self.client.remove(&branch)?;
                let server = self.remove_server(&client.server_key);
                Some((client, server))
            }
            Timer::Expire(key) => {
                // Its key fired: nothing left to remove from the queue.
                if let Some(c) = self.server.remove(&key).and_then(|st| st.charge) {
                    self.budget.release(&c);
                }
                None
            }
        }
    }
}

/// Run the proxy's timers until the proxy is gone (or the task is aborted).
pub async fn drive_timers(proxy: Weak<Proxy>) {
    loop {
        let fired = poll_fn(|cx| {
            let Some(p) = proxy.upgrade() else {
                return Poll::Ready(None);
            };
            let mut t = p.txns();
            match t.timers.poll_expired(cx) {
                Poll::Ready(Some(expired)) => {
                    let fired = t.fire(expired.into_inner());
                    drop(t);
                    Poll::Ready(Some((p, fired)))
                }
                // Empty or not due: the queue woke us on the next insert.
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let Some((proxy, fired)) = fired else { return };
        if let Some((client, server)) = fired {
            proxy.on_timeout(client, server);
        }
    }
}

impl Proxy {
    /// Whether a server transaction with this key is live (a retransmission).
    pub(super) fn has_server_txn(&self, key: &str) -> bool {
        self.txns().server.contains_key(key)
    }

    /// Record that the server transaction `key` sent a final `code`.
    pub(super) fn set_final_status(&self, key: &str, code: u16) {
        if let Some(st) = self.txns().server.get_mut(key) {
            st.final_status = Some(code);
        }
    }

    /// Open the transactions of a request and send it to `next`.
    pub(super) fn forward(
        &self,
        mut msg: SipMessage,
        key: String,
        source: Source,
        next: NextHop,
        origin: Origin,
        hash: String,
    ) {
        let method = msg.method().cloned().unwrap_or(Method::Other("?".into()));
        let b = branch();
        {
            let mut t = self.txns();
            if t.server.len() >= MAX_TRANSACTIONS {
                drop(t);
                return self.reject(&source, &msg, SipReject::Busy);
            }
            let charge = t.budget.charge(
                origin.identity.as_deref(),
                &source,
                held_bytes(&msg),
                self.config.max_transaction_bytes_per_user,
                self.config.max_transaction_bytes,
            );
            let charge = match charge {
                Ok(c) => c,
                Err(why) => {
                    drop(t);
                    return self.reject(&source, &msg, why);
                }
            };
            t.server.insert(
                key.clone(),
                ServerTxn {
                    source: source.clone(),
                    request: msg.clone(),
                    client_branch: Some(b.clone()),
                    final_status: None,
                    expire: None,
                    charge: Some(charge),
                },
            );
        }
        if method == Method::Invite {
            self.respond(&source, &msg, 100, "Trying", vec![]);
        }
        msg.push_header_front(Header::new(
            HeaderName::Via,
            &format!("SIP/2.0/TLS {};branch={b};sm={hash}", self.me()),
        ));
        if let Err(why) = self.send_next(&next, &msg, &origin) {
            self.txns().remove_server(&key);
            msg.remove_first(HeaderName::Via);
            return self.reject(&source, &msg, why);
        }
        let mut t = self.txns();
        let timer = t.timers.insert(Timer::Client(b.clone()), 64 * self.config.t1);
        t.client.insert(
            b,
            ClientTxn {
                server_key: key,
                hop: Hop {
                    forwarded: msg,
                    next,
                    origin,
                },
                provisional: false,
                timer: Some(timer),
            },
        );
    }

    fn on_timeout(&self, client: ClientTxn, server: Option<ServerTxn>) {
        tracing::info!(method = ?client.hop.forwarded.method(), "transaction timed out");
        if client.hop.forwarded.method() == Some(&Method::Invite) {
            self.send_cancel(&client.hop);
        }
        if let Some(st) = server.filter(|st| st.final_status.is_none()) {
            let (code, reason) = SipReject::Timeout.status();
            self.respond(&st.source, &st.request, code, &reason, vec![]);
        }
    }

    fn send_cancel(&self, hop: &Hop) {
        // CANCEL keeps the INVITE's To (RFC 3261 §9.1).
        let to = hop.forwarded.header(HeaderName::To).cloned();
        self.send_hop_request(hop, Method::Cancel, to);
    }

    /// A hop-by-hop request (CANCEL, or ACK for a non-2xx) for the INVITE of
    /// `hop`: same Request-URI, Call-ID, From, Route and CSeq number, the
    /// INVITE's top Via (ours) only, no body.
    fn send_hop_request(&self, hop: &Hop, method: Method, to: Option<Header>) {
        let mut req = hop.forwarded.clone();
        let seq = hop.forwarded.cseq().map(|c| c.seq).unwrap_or(1);
        if let StartLine::Request { uri, .. } = &hop.forwarded.start {
            req.start = StartLine::Request {
                method: method.clone(),
                uri: uri.clone(),
            };
        }
        let top = hop.forwarded.headers_named(HeaderName::Via).next().cloned();
        req.headers.retain(|h| {
            matches!(
                h.name,
                HeaderName::From | HeaderName::CallId | HeaderName::Route | HeaderName::MaxForwards
            )
        });
        if let Some(v) = top {
            // Keep only the first value of a possibly comma-joined Via.
            let first = v.value_str().split(',').next().unwrap_or("").trim().to_owned();
            req.headers.insert(0, Header::new(HeaderName::Via, &first));
        }
        req.headers.extend(to);
        req.headers
            .push(Header::new(HeaderName::CSeq, &format!("{seq} {method}")));
        req.body = Bytes::new();
        let _ = self.send_next(&hop.next, &req, &hop.origin);
    }

    /// The server transaction of `req` answered `code`: keep a failed
    /// INVITE's to absorb the ACK (for [`ACK_WAIT`] at most), drop the rest.
    pub(super) fn finish_server_txn(&self, req: &SipMessage, code: u16) {
        if matches!(req.method(), Some(Method::Cancel | Method::Ack)) {
            return; // they share the INVITE's key but are not the INVITE
        }
        let Some(key) = server_key(req) else { return };
        let invite_failed = req.method() == Some(&Method::Invite) && code >= 300;
        let mut t = self.txns();
        if invite_failed {
            let expire = Some(t.timers.insert(Timer::Expire(key.clone()), ACK_WAIT));
            let previous = match t.server.get_mut(&key) {
                Some(st) => {
                    st.final_status = Some(code);
                    std::mem::replace(&mut st.expire, expire)
                }
                None => {
                    t.server.insert(
                        key,
                        ServerTxn {
                            source: Source::Mesh(self.me().clone()),
                            request: req.clone(),
                            client_branch: None,
                            final_status: Some(code),
                            expire,
                            charge: None,
                        },
                    );
                    None
                }
            };
            if let Some(k) = previous {
                t.timers.try_remove(&k);
            }
        } else if code >= 200 {
            t.remove_server(&key);
        }
    }

    /// A response from downstream: match it to its client transaction by our
    /// Via's branch and pass it upstream.
    pub(super) fn on_response(&self, mut resp: SipMessage) {
        let Ok(via) = resp.top_via() else { return };
        if via.host != self.me().as_str() {
            tracing::debug!(via = %via, "response not for us; dropped");
            return;
        }
        let Some(b) = via.branch().map(str::to_owned) else {
            return;
        };
        if resp.cseq().is_ok_and(|c| c.method == Method::Cancel) {
            // We answered the CANCEL upstream ourselves; its downstream answer
            // shares the INVITE's branch and must not be taken for the INVITE's.
            return;
        }
        let code = resp.status().unwrap_or(0);
        resp.remove_first(HeaderName::Via);
        let (source, request, ack_for_failure) = {
            let mut t = self.txns();
            let Some(ct) = t.client.get_mut(&b) else {
                tracing::debug!(branch = %b, code, "stray response; dropped");
                return;
            };
            if code < 200 {
                if !ct.provisional && ct.hop.forwarded.method() == Some(&Method::Invite) {
                    ct.provisional = true;
                    // Timer C replaces Timer B once the INVITE is ringing.
                    let key = ct.timer;
                    if let Some(k) = key {
                        t.timers.reset(&k, self.config.invite_timeout);
                    }
                }
                if code == 100 {
                    return; // hop by hop
                }
                let Some(ct) = t.client.get(&b) else { return };
                let Some(st) = t.server.get(&ct.server_key) else { return };
                (st.source.clone(), st.request.clone(), None)
            } else {
                let ct = t.remove_client(&b).expect("present above");
                let Some(st) = t.server.get_mut(&ct.server_key) else {
                    return;
                };
                if st.final_status.is_some() {
                    return; // already answered (e.g. 408)
                }
                st.final_status = Some(code);
                let invite = ct.hop.forwarded.method() == Some(&Method::Invite);
                let ack = (invite && code >= 300).then_some(ct.hop);
                (st.source.clone(), st.request.clone(), ack)
            }
        };
        if let Some(hop) = ack_for_failure {
            // ACK a non-2xx final downstream (hop by hop, RFC 3261 §17.1.1.3);
            // it carries the To of the response (with the callee's tag).
            self.send_hop_request(&hop, Method::Ack, resp.header(HeaderName::To).cloned());
        }
        self.send_to_source(&source, &resp);
        if code >= 200 {
            self.count_final(&request, code);
            self.finish_server_txn(&request, code);
        }
    }

    /// An ACK: absorbed by a failed INVITE's server transaction, or (for a
    /// 2xx) routed end to end like any in-dialog request.
    pub(super) fn on_ack(&self, mut msg: SipMessage, source: Source, origin: Origin) {
        if let Some(key) = server_key(&msg) {
            let mut t = self.txns();
            if t.server
                .get(&key)
                .is_some_and(|st| st.final_status.is_some_and(|c| c >= 300))
            {
                t.remove_server(&key);
                return;
            }
        }
        let mf = msg.max_forwards().ok().flatten().unwrap_or(DEFAULT_MAX_FORWARDS);
        if mf == 0 {
            return;
        }
        let next = match route::by_request(&mut msg, &source, origin.identity.as_deref(), self) {
            Ok(Routed::Next(n)) => n,
            Ok(Routed::Local(_)) | Err(_) => return,
        };
        msg.set_header(Header::new(HeaderName::MaxForwards, &(mf - 1).to_string()));
        msg.push_header_front(Header::new(
            HeaderName::Via,
            &format!("SIP/2.0/TLS {};branch={}", self.me(), branch()),
        ));
        if let Err(e) = self.send_next(&next, &msg, &origin) {
            tracing::debug!(error = %e, "ACK not forwarded");
        }
    }

    /// A CANCEL: 200 here when it matches a live INVITE, then a CANCEL of our
    /// own downstream; 481 otherwise.
    pub(super) fn on_cancel(&self, msg: SipMessage, source: Source) {
        let Some(key) = server_key(&msg) else { return };
        let found = self
            .txns()
            .server
            .get(&key)
            .map(|st| (st.final_status, st.client_branch.clone()));
        let Some((final_status, client_branch)) = found else {
            return self.reject(&source, &msg, SipReject::NoTransaction);
        };
        self.respond(&source, &msg, 200, "OK", vec![]);
        if final_status.is_some() {
            return;
        }
        let hop = client_branch.and_then(|b| self.txns().client.get(&b).map(|ct| ct.hop.clone()));
        if let Some(hop) = hop {
            self.send_cancel(&hop);
        }
    }

    /// Live transactions, for `status`.
    pub(super) fn txn_counts(&self) -> (usize, usize) {
        let t = self.txns();
        (t.server.len(), t.client.len())
    }
}

#[cfg(test)]
mod budget_tests {
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
