//! Transactions: the server transactions (requests we received and have not
//! finished answering) and client transactions (the branches we forwarded),
//! in one table with one timer queue.
//!
//! A request at its target's home forks (RFC 3261 §16.6-16.7): one client
//! transaction per registered contact, highest q-value group first. Every
//! provisional response passes upstream; the first 2xx goes upstream and the
//! other branches of an INVITE are CANCELled with a Reason (RFC 3326); later
//! 2xx from other branches are still forwarded so the caller can end them;
//! when every branch failed, the next q group is tried, and when none is left
//! the best response goes upstream ([`rank`]; a 6xx ends the fork at once).
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

/// The Reason of the CANCEL sent to the other branches once one answered
/// (RFC 3326).
pub const COMPLETED_ELSEWHERE: &str = "SIP;cause=200;text=\"Call completed elsewhere\"";

pub(super) struct ServerTxn {
    pub(super) source: Source,
    pub(super) request: SipMessage,
    pub(super) final_status: Option<u16>,
    expire: Option<delay_queue::Key>,
    /// Branches without a final response yet.
    live: Vec<String>,
    /// Groups of targets not tried yet (lower q first to last).
    later: Vec<Vec<Target>>,
    /// The best non-2xx final response so far.
    best: Option<SipMessage>,
    /// A 2xx went upstream, or the request was CANCELled: no new branches.
    settled: bool,
    /// What each new branch is built from.
    fork: Option<ForkBase>,
}

/// The request as routed, before per-branch changes, to start later groups.
struct ForkBase {
    msg: SipMessage,
    origin: Origin,
    hash: String,
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
    /// Where responses go when the server transaction is already gone (a
    /// late 2xx from another branch).
    source: Source,
    hop: Hop,
    provisional: bool,
    /// A 2xx arrived: the branch only forwards its retransmissions now.
    accepted: bool,
    timer: Option<delay_queue::Key>,
}

enum Timer {
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
    timers: DelayQueue<Timer>,
}

/// What an expired timer leaves to do outside the table's lock: a branch
/// that timed out waiting for its final response.
type Fired = Option<ClientTxn>;

/// Preference of a final response when no branch succeeded (RFC 3261
/// §16.7 point 6): lower is better. 6xx first, then 3xx, 4xx, 5xx.
pub fn rank(code: u16) -> u16 {
    match code {
        600..=699 => 0,
        c => c / 100,
    }
}

impl Transactions {
    fn remove_server(&mut self, key: &str) -> Option<ServerTxn> {
        let st = self.server.remove(key)?;
        if let Some(k) = &st.expire {
            self.timers.try_remove(k);
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
                let ct = self.client.remove(&branch)?;
                // The end of a 2xx retransmission window: nothing to do.
                (!ct.accepted).then_some(ct)
            }
            Timer::Expire(key) => {
                // Its key fired: nothing left to remove from the queue.
                self.server.remove(&key);
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

/// What a final response of one branch leads to, decided under the lock.
enum After {
    /// Nothing more (absorbed, or other branches still pending).
    Nothing,
    /// Start the next q group.
    NextGroup,
    /// Every branch failed: the best response goes upstream.
    Best(Box<(Source, SipMessage, SipMessage)>),
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
        {
            let mut t = self.txns();
            if t.server.len() >= MAX_TRANSACTIONS {
                drop(t);
                return self.reject(&source, &msg, SipReject::Busy);
            }
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
                    fork: Some(ForkBase {
                        msg: msg.clone(),
                        origin,
                        hash,
                    }),
                },
            );
        }
        if msg.method() == Some(&Method::Invite) {
            self.respond(&source, &msg, 100, "Trying", vec![]);
        }
        self.start_group(&key, first);
    }

    /// Send one branch per target; a target that cannot be reached counts
    /// as that branch's failure.
    fn start_group(&self, key: &str, group: Vec<Target>) {
        let Some((source, base, origin, hash)) = self.txns().server.get(key).and_then(|st| {
            let f = st.fork.as_ref()?;
            Some((st.source.clone(), f.msg.clone(), f.origin.clone(), f.hash.clone()))
        }) else {
            return;
        };
        let mut failed = Vec::new();
        for target in group {
            let mut msg = base.clone();
            if !target.contact.is_empty() {
                if let StartLine::Request { uri, .. } = &mut msg.start {
                    uri.clone_from(&target.contact);
                }
            }
            route::record_route(&mut msg, &source, &target.next, &self.record_route_as());
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
                        origin: origin.clone(),
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
                        origin: origin.clone(),
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

    /// A branch ended without success (`branch`: None when it never left).
    /// Decides, under the lock, what follows.
    fn branch_failed(&self, key: &str, branch: Option<&str>, resp: SipMessage) -> After {
        let code = resp.status().unwrap_or(500);
        let mut guard = self.txns();
        let t = &mut *guard;
        let Some(st) = t.server.get_mut(key) else {
            return After::Nothing;
        };
        if let Some(b) = branch {
            st.live.retain(|x| x != b);
        }
        if st.final_status.is_some() {
            return After::Nothing; // a 2xx (or our own answer) went upstream
        }
        if st
            .best
            .as_ref()
            .is_none_or(|best| rank(code) < rank(best.status().unwrap_or(500)))
        {
            st.best = Some(resp);
        }
        let invite = st.request.method() == Some(&Method::Invite);
        if (600..700).contains(&code) && !st.settled {
            // A 6xx ends the fork: no new group, the others are CANCELled.
            st.settled = true;
            st.later.clear();
            let others: Vec<String> = st.live.clone();
            let hops: Vec<Hop> = others
                .iter()
                .filter_map(|b| t.client.get(b).map(|c| c.hop.clone()))
                .collect();
            drop(guard);
            if invite {
                for h in &hops {
                    self.send_cancel(h, None);
                }
            }
            guard = self.txns();
        }
        let t = &mut *guard;
        let Some(st) = t.server.get_mut(key) else {
            return After::Nothing;
        };
        if !st.live.is_empty() {
            return After::Nothing;
        }
        if !st.settled && !st.later.is_empty() {
            return After::NextGroup;
        }
        let best = st.best.clone().expect("a branch failed");
        After::Best(Box::new((st.source.clone(), st.request.clone(), best)))
    }

    fn after(&self, key: &str, after: After) {
        match after {
            After::Nothing => {}
            After::NextGroup => {
                let group = self.txns().server.get_mut(key).and_then(|st| st.later.pop());
                if let Some(g) = group {
                    self.start_group(key, g);
                }
            }
            After::Best(best) => {
                let (source, request, best) = *best;
                // `best` carries the upstream Vias: ours was taken off when it
                // arrived, or never on it when we made it.
                let code = best.status().unwrap_or(500);
                if let Some(key) = server_key(&request) {
                    self.set_final_status(&key, code);
                }
                self.send_to_source(&source, &best);
                self.count_final(&request, code);
                self.finish_server_txn(&request, code);
            }
        }
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

    fn send_cancel(&self, hop: &Hop, reason: Option<&str>) {
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
    fn send_hop_request(&self, hop: &Hop, method: Method, extra: Vec<Header>) {
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
                    st.fork = None;
                    std::mem::replace(&mut st.expire, expire)
                }
                None => {
                    t.server.insert(
                        key,
                        ServerTxn {
                            source: Source::Mesh(self.me().clone()),
                            request: req.clone(),
                            final_status: Some(code),
                            expire,
                            live: Vec::new(),
                            later: Vec::new(),
                            best: None,
                            settled: true,
                            fork: None,
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

    /// A response from downstream: match it to its branch by our Via's
    /// branch and pass it upstream as the fork rules say.
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
        if code < 200 {
            return self.on_provisional(&b, code, resp);
        }
        if code < 300 {
            return self.on_success(&b, code, resp);
        }
        let Some(ct) = self.txns().remove_client(&b) else {
            tracing::debug!(branch = %b, code, "stray response; dropped");
            return;
        };
        if ct.hop.forwarded.method() == Some(&Method::Invite) {
            // ACK a non-2xx final downstream (hop by hop, RFC 3261 §17.1.1.3);
            // it carries the To of the response (with the callee's tag).
            let to = resp.header(HeaderName::To).cloned().into_iter().collect();
            self.send_hop_request(&ct.hop, Method::Ack, to);
        }
        let after = self.branch_failed(&ct.server_key, Some(&b), resp);
        self.after(&ct.server_key, after);
    }

    fn on_provisional(&self, b: &str, code: u16, resp: SipMessage) {
        let source = {
            let mut guard = self.txns();
            let t = &mut *guard;
            let Some(ct) = t.client.get_mut(b) else { return };
            if !ct.provisional && ct.hop.forwarded.method() == Some(&Method::Invite) {
                ct.provisional = true;
                // Timer C replaces Timer B once the INVITE is ringing.
                if let Some(k) = ct.timer {
                    t.timers.reset(&k, self.config.invite_timeout);
                }
            }
            if code == 100 {
                return; // hop by hop
            }
            let Some(st) = t.server.get(&ct.server_key) else { return };
            if st.final_status.is_some() {
                return;
            }
            st.source.clone()
        };
        self.send_to_source(&source, &resp);
    }

    fn on_success(&self, b: &str, code: u16, resp: SipMessage) {
        let (source, first, request, others) = {
            let mut guard = self.txns();
            let t = &mut *guard;
            let Some(ct) = t.client.get_mut(b) else {
                tracing::debug!(branch = %b, code, "stray 2xx; dropped");
                return;
            };
            let invite = ct.hop.forwarded.method() == Some(&Method::Invite);
            let source = ct.source.clone();
            if ct.accepted {
                // A retransmission of this branch's 2xx: the caller's ACK has
                // not reached the callee yet; pass it on.
                drop(guard);
                return self.send_to_source(&source, &resp);
            }
            let server_key = ct.server_key.clone();
            if invite {
                // Stay for 64*T1 to pass the 2xx's retransmissions upstream.
                ct.accepted = true;
                if let Some(k) = ct.timer {
                    t.timers.reset(&k, 64 * self.config.t1);
                }
            } else {
                t.remove_client(b);
            }
            let Some(st) = t.server.get_mut(&server_key) else {
                // A later 2xx from another branch: forwarded so the caller can
                // end that dialog (RFC 3261 §16.7 point 4); a non-INVITE's is absorbed.
                drop(guard);
                if invite {
                    self.send_to_source(&source, &resp);
                }
                return;
            };
            st.live.retain(|x| x != b);
            let first = st.final_status.is_none();
            if !first && !invite {
                return;
            }
            st.final_status.get_or_insert(code);
            st.settled = true;
            st.later.clear();
            let others: Vec<Hop> = if invite {
                st.live
                    .drain(..)
                    .filter_map(|o| t.client.get(&o).map(|c| c.hop.clone()))
                    .collect()
            } else {
                st.live.clear();
                Vec::new()
            };
            (source, first, st.request.clone(), others)
        };
        for hop in &others {
            self.send_cancel(hop, Some(COMPLETED_ELSEWHERE));
        }
        self.send_to_source(&source, &resp);
        if first {
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
            t.server.get_mut(&key).map(|st| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_response_ranks_6xx_then_lowest_class() {
        let mut codes = [503, 486, 302, 404, 600, 408];
        codes.sort_by_key(|c| rank(*c));
        assert_eq!(codes[0], 600);
        assert_eq!(codes[1], 302);
        assert_eq!(rank(486), rank(404));
        assert!(rank(486) < rank(503));
    }
}
