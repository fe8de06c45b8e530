//! Transactions: the server transactions (requests we received and have not
//! finished answering) and client transactions (the branches we forwarded),
//! in one table with one timer queue.
//!
//! A request at its target's home forks (RFC 3261 §16.6): one client
//! transaction per registered contact, highest q-value group first; what the
//! responses of the branches lead to is in `fork.rs`.
//!
//! Timers (64×T1 for a branch, Timer C once an INVITE rings, 64×T1 of 2xx
//! retransmissions after an INVITE's 2xx, the wait for the ACK of a failed
//! INVITE) live in a single `DelayQueue` driven by one task
//! ([`drive_timers`]), not a task per timer. A timer's key is kept in its
//! transaction and removed with it, in the same critical section that pops an
//! expired timer, so a stale key never survives.
//!
//! Also here: ACK (absorbed by a failed INVITE's server transaction, or
//! routed end to end for a 2xx) and CANCEL (answered hop by hop, then sent
//! down every live branch).

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::Weak;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::time::{delay_queue, DelayQueue};

use super::answer::SipReject;
use super::budget::{held_bytes, Budget, Charge};
use super::fork::After;
use super::route::{self, NextHop, Routed, Target};
use super::{branch, server_key, to_tag, Origin, Proxy, Source, DEFAULT_MAX_FORWARDS};
use crate::sip::{Header, HeaderName, Method, SipMessage, StartLine};

/// How long a server transaction that sent a non-2xx final to an INVITE
/// waits for the ACK (Timer H = 64*T1 is for unreliable transports; on TLS the
/// ACK follows at once).
pub const ACK_WAIT: Duration = Duration::from_secs(5);

/// Largest number of live transactions (DoS bound; each holds a message).
pub const MAX_TRANSACTIONS: usize = 100_000;

/// Most branches one request forks to (DoS bound; a registrar keeps at most
/// `registrar::MAX_BINDINGS_PER_AOR` contacts per AOR anyway).
pub const MAX_BRANCHES: usize = 16;
pub(super) struct ServerTxn {
    pub(super) source: Source,
    pub(super) request: SipMessage,
    pub(super) final_status: Option<u16>,
    /// When the request arrived (the transaction duration histogram).
    pub(super) started: std::time::Instant,
    pub(super) expire: Option<delay_queue::Key>,
    /// The request bytes charged to its payer, given back on removal.
    charge: Option<Charge>,
    /// Branches without a final response yet.
    pub(super) live: Vec<String>,
    /// Groups of targets not tried yet (lower q first to last).
    pub(super) later: Vec<Vec<Target>>,
    /// The best non-2xx final response so far.
    pub(super) best: Option<SipMessage>,
    /// A 2xx went upstream, or the request was CANCELled: no new branches.
    pub(super) settled: bool,
    /// What the branches of later q groups are built from (with `request`);
    /// `None` when the first group is the only one.
    pub(super) fork: Option<ForkBase>,
}

/// Who a later group's branches are from, and the loop hash of our Via.
pub(super) struct ForkBase {
    pub(super) origin: Origin,
    pub(super) hash: String,
}

/// One group of branches to start, and what they are built from.
pub(super) struct Group {
    pub(super) targets: Vec<Target>,
    /// The request as routed (moved into the last branch, cloned for the others).
    pub(super) base: SipMessage,
    pub(super) source: Source,
    pub(super) origin: Origin,
    pub(super) hash: String,
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
    pub(super) server_key: String,
    /// Where responses go when the server transaction is already gone (a
    /// late 2xx from another branch).
    pub(super) source: Source,
    pub(super) hop: Hop,
    pub(super) provisional: bool,
    /// A 2xx arrived: the branch only forwards its retransmissions now.
    pub(super) accepted: bool,
    pub(super) timer: Option<delay_queue::Key>,
}

pub(super) enum Timer {
    /// A branch got no final response in time, or its 2xx retransmission
    /// window ended (by branch).
    Client(String),
    /// A failed INVITE's server transaction stops waiting for the ACK (by key).
    Expire(String),
}

/// Every transaction of the proxy and their timers.
#[derive(Default)]
pub(super) struct Transactions {
    pub(super) server: HashMap<String, ServerTxn>,
    pub(super) client: HashMap<String, ClientTxn>,
    pub(super) timers: DelayQueue<Timer>,
    pub(super) budget: Budget,
}

/// What an expired timer leaves to do outside the table's lock: a branch
/// that timed out waiting for its final response.
type Fired = Option<ClientTxn>;

impl Transactions {
    pub(super) fn remove_server(&mut self, key: &str) -> Option<ServerTxn> {
        let st = self.server.remove(key)?;
        if let Some(k) = &st.expire {
            self.timers.try_remove(k);
        }
        if let Some(c) = &st.charge {
            self.budget.release(c);
        }
        Some(st)
    }

    pub(super) fn remove_client(&mut self, branch: &str) -> Option<ClientTxn> {
        let ct = self.client.remove(branch)?;
        if let Some(k) = &ct.timer {
            self.timers.try_remove(k);
        }
        Some(ct)
    }

    fn fire(&mut self, timer: Timer) -> Fired {
        match timer {
            Timer::Client(branch) => {
                let ct = self.client.remove(&branch)?;
                // The end of a 2xx retransmission window: nothing to do.
                (!ct.accepted).then_some(ct)
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
        if let Some(ct) = fired {
            proxy.on_timeout(ct);
        }
    }
}

impl Proxy {
    /// Whether a server transaction with this key is live (a retransmission).
    pub(super) fn server_txn_from(&self, key: &str, source: &Source) -> Option<bool> {
        self.txns().server.get(key).map(|st| st.source == *source)
    }

    /// Whether `msg` (a CANCEL) shares the key of a live server transaction
    /// that came from the same hop: RFC 3261 §22.1 accepts a CANCEL only
    /// from the hop that sent the request, so it needs no credentials.
    pub(super) fn has_server_txn_from(&self, msg: &SipMessage, source: &Source) -> bool {
        server_key(msg).is_some_and(|key| self.txns().server.get(&key).is_some_and(|st| st.source == *source))
    }

    /// Whether `msg` (an ACK) is the ACK of a failed INVITE's server
    /// transaction started by the same hop.
    pub(super) fn ack_matches(&self, msg: &SipMessage, source: &Source) -> bool {
        server_key(msg).is_some_and(|key| {
            self.txns()
                .server
                .get(&key)
                .is_some_and(|st| st.source == *source && st.final_status.is_some_and(|c| c >= 300))
        })
    }

    /// Record that the server transaction `key` sent a final `code`.
    pub(super) fn set_final_status(&self, key: &str, code: u16, source: &Source) {
        // Only the hop that opened a transaction can answer it: another
        // connection's request that copies its branch and sent-by (refused at
        // the door before the merged-request check) must not end it.
        if let Some(st) = self.txns().server.get_mut(key).filter(|st| st.source == *source) {
            if st.final_status.is_none() {
                self.observe_duration(&st.request, st.started.elapsed());
            }
            st.final_status = Some(code);
        }
    }

    /// Open the server transaction of a request and send it to its targets:
    /// `Next` as it is, `Fork` one branch per contact of the highest q group.
    pub(super) fn forward(
        &self,
        msg: SipMessage,
        key: String,
        source: Source,
        routed: Routed,
        origin: Origin,
        hash: String,
    ) {
        let mut groups: Vec<Vec<Target>> = match routed {
            Routed::Fork(mut targets) => {
                targets.truncate(MAX_BRANCHES);
                let mut groups: Vec<Vec<Target>> = Vec::new();
                for t in targets {
                    match groups.last_mut() {
                        Some(g) if g[0].q == t.q => g.push(t),
                        _ => groups.push(vec![t]),
                    }
                }
                groups
            }
            Routed::Next(next) => vec![vec![Target {
                next,
                contact: String::new(),
                q: 0,
            }]],
            Routed::Local(_) => return,
        };
        let Some(first) = (!groups.is_empty()).then(|| groups.remove(0)) else {
            return self.reject(&source, &msg, SipReject::Unavailable);
        };
        groups.reverse(); // popped from the end: lower q last
        let groups_empty = groups.is_empty();
        // Who pays for the bytes held: the authenticated user, else a
        // partner as a whole (all its connections together), else the flow.
        let partner_payer = match (&origin.identity, &source) {
            (None, Source::Flow(f)) => self
                .flows
                .get(*f)
                .and_then(|flow| flow.partner.as_ref().map(|d| format!("partner:{d}"))),
            _ => None,
        };
        let payer = origin.identity.as_deref().or(partner_payer.as_deref());
        {
            let mut t = self.txns();
            if t.server.len() >= MAX_TRANSACTIONS {
                drop(t);
                return self.reject(&source, &msg, SipReject::Busy);
            }
            let charge = t.budget.charge(
                payer,
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
                    final_status: None,
                    expire: None,
                    live: Vec::new(),
                    later: groups,
                    best: None,
                    settled: false,
                    // Only later groups need these again: one request, one copy.
                    fork: (!groups_empty).then(|| ForkBase {
                        origin: origin.clone(),
                        hash: hash.clone(),
                    }),
                    charge: Some(charge),
                    started: std::time::Instant::now(),
                },
            );
        }
        if msg.method() == Some(&Method::Invite) {
            self.respond(&source, &msg, 100, "Trying", vec![]);
        }
        let group = Group {
            targets: first,
            base: msg,
            source,
            origin,
            hash,
        };
        self.start_group(&key, group);
    }

    /// Send one branch per target; a target that cannot be reached counts
    /// as that branch's failure.
    pub(super) fn start_group(&self, key: &str, group: Group) {
        let Group {
            targets,
            base,
            source,
            origin,
            hash,
        } = group;
        let last = targets.len().saturating_sub(1);
        let (mut base, mut origin) = (Some(base), Some(origin));
        let mut failed = Vec::new();
        for (i, target) in targets.into_iter().enumerate() {
            // The last branch takes the request itself: one branch, no copy.
            let (mut msg, origin) = if i == last {
                (base.take().expect("taken once, by the last branch"), origin.take())
            } else {
                (base.clone().expect("present until the last branch"), origin.clone())
            };
            let origin = origin.expect("present until the last branch");
            if !target.contact.is_empty() {
                if let StartLine::Request { uri, .. } = &mut msg.start {
                    uri.clone_from(&target.contact);
                }
            }
            route::record_route(&mut msg, &source, &target.next, self);
            let b = branch();
            msg.push_header_front(Header::new(
                HeaderName::Via,
                &format!("SIP/2.0/TLS {};branch={b};sm={hash}", self.me()),
            ));
            if let Err(why) = self.send_next(&target.next, &msg, &origin) {
                msg.remove_first(HeaderName::Via);
                let (code, reason) = why.status();
                let mut resp = SipMessage::response_to(&msg, code, &reason, Some(&to_tag()));
                resp.headers.extend(why.headers());
                failed.push(resp);
                continue;
            }
            let invite = msg.method() == Some(&Method::Invite);
            let mut t = self.txns();
            let Some(st) = t.server.get_mut(key) else { return };
            if st.settled && invite {
                // CANCELled or answered meanwhile: this branch must not ring.
                drop(t);
                self.send_cancel(
                    &Hop {
                        forwarded: msg,
                        next: target.next,
                        origin,
                    },
                    None,
                );
                continue;
            }
            st.live.push(b.clone());
            let timer = t.timers.insert(Timer::Client(b.clone()), 64 * self.config.t1);
            t.client.insert(
                b,
                ClientTxn {
                    server_key: key.to_owned(),
                    source: source.clone(),
                    hop: Hop {
                        forwarded: msg,
                        next: target.next,
                        origin,
                    },
                    provisional: false,
                    accepted: false,
                    timer: Some(timer),
                },
            );
        }
        // Decided once, after every branch of the group left (or failed to).
        let mut after = After::Nothing;
        for resp in failed {
            after = self.branch_failed(key, None, resp);
        }
        self.after(key, after);
    }

    fn on_timeout(&self, ct: ClientTxn) {
        tracing::info!(method = ?ct.hop.forwarded.method(), "transaction timed out");
        if ct.hop.forwarded.method() == Some(&Method::Invite) {
            self.send_cancel(&ct.hop, None);
        }
        let (code, reason) = SipReject::Timeout.status();
        let mut resp = SipMessage::response_to(&ct.hop.forwarded, code, &reason, Some(&to_tag()));
        resp.remove_first(HeaderName::Via);
        let b = ct
            .hop
            .forwarded
            .top_via()
            .ok()
            .and_then(|v| v.branch().map(str::to_owned));
        let after = self.branch_failed(&ct.server_key, b.as_deref(), resp);
        self.after(&ct.server_key, after);
    }

    pub(super) fn send_cancel(&self, hop: &Hop, reason: Option<&str>) {
        // CANCEL keeps the INVITE's To (RFC 3261 §9.1).
        let mut extra: Vec<Header> = hop.forwarded.header(HeaderName::To).cloned().into_iter().collect();
        if let Some(r) = reason {
            extra.push(Header::other("Reason", r));
        }
        self.send_hop_request(hop, Method::Cancel, extra);
    }

    /// A hop-by-hop request (CANCEL, or ACK for a non-2xx) for the INVITE of
    /// `hop`: same Request-URI, Call-ID, From, Route and CSeq number, the
    /// INVITE's top Via (ours) only, no body; `extra` (To, Reason) appended.
    pub(super) fn send_hop_request(&self, hop: &Hop, method: Method, extra: Vec<Header>) {
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
        req.headers.extend(extra);
        req.headers
            .push(Header::new(HeaderName::CSeq, &format!("{seq} {method}")));
        req.body = Bytes::new();
        let _ = self.send_next(&hop.next, &req, &hop.origin);
    }

    /// The server transaction of `req` answered `code`: keep a failed
    /// INVITE's to absorb the ACK (for [`ACK_WAIT`] at most), drop the rest.
    pub(super) fn finish_server_txn(&self, req: &SipMessage, code: u16, source: &Source) {
        if matches!(req.method(), Some(Method::Cancel | Method::Ack)) {
            return; // they share the INVITE's key but are not the INVITE
        }
        let Some(key) = server_key(req) else { return };
        let invite_failed = req.method() == Some(&Method::Invite) && code >= 300;
        let mut t = self.txns();
        if t.server.get(&key).is_some_and(|st| st.source != *source) {
            return; // another hop's transaction: a merged request ends nothing
        }
        if invite_failed {
            let expire = Some(t.timers.insert(Timer::Expire(key.clone()), ACK_WAIT));
            let previous = match t.server.get_mut(&key) {
                Some(st) => {
                    st.final_status = Some(code);
                    st.fork = None;
                    std::mem::replace(&mut st.expire, expire)
                }
                None => {
                    t.server.insert(
                        key,
                        ServerTxn {
                            source: source.clone(),
                            request: req.clone(),
                            final_status: Some(code),
                            expire,
                            live: Vec::new(),
                            later: Vec::new(),
                            best: None,
                            settled: true,
                            fork: None,
                            charge: None,
                            started: std::time::Instant::now(),
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

    /// An ACK: absorbed by a failed INVITE's server transaction (from the
    /// same hop), or (for a 2xx) routed end to end like any in-dialog request.
    pub(super) fn on_ack(&self, mut msg: SipMessage, source: Source, origin: Origin) {
        if let Some(key) = server_key(&msg) {
            let mut t = self.txns();
            if t.server
                .get(&key)
                .is_some_and(|st| st.source == source && st.final_status.is_some_and(|c| c >= 300))
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
            Err(SipReject::BadFlowToken) => return self.refused(super::Refusal::BadFlowToken),
            Ok(_) | Err(_) => return,
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
    /// own (with its Reason) down every live branch (no group is started
    /// after it); 481 otherwise.
    pub(super) fn on_cancel(&self, msg: SipMessage, source: Source) {
        let Some(key) = server_key(&msg) else { return };
        let found = {
            let mut guard = self.txns();
            let t = &mut *guard;
            t.server.get_mut(&key).filter(|st| st.source == source).map(|st| {
                let pending = st.final_status.is_none();
                if pending {
                    st.settled = true;
                    st.later.clear();
                }
                let hops: Vec<Hop> = if pending {
                    st.live
                        .iter()
                        .filter_map(|b| t.client.get(b).map(|c| c.hop.clone()))
                        .collect()
                } else {
                    Vec::new()
                };
                hops
            })
        };
        let Some(hops) = found else {
            return self.reject(&source, &msg, SipReject::NoTransaction);
        };
        self.respond(&source, &msg, 200, "OK", vec![]);
        // Our CANCEL carries the Reason of the one we got (RFC 3326), so a
        // phone a fork CANCELled from another node still learns "Call
        // completed elsewhere".
        let reason = msg.other_header("Reason").map(|h| h.value_str().to_owned());
        for hop in &hops {
            self.send_cancel(hop, reason.as_deref());
        }
    }

    /// Live transactions, for `status`.
    pub(super) fn txn_counts(&self) -> (usize, usize) {
        let t = self.txns();
        (t.server.len(), t.client.len())
    }
}
