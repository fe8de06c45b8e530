//! The responses of a forked request (RFC 3261 §16.7): every provisional
//! passes upstream; the first 2xx goes upstream and the other INVITE branches
//! are CANCELled with a Reason (RFC 3326); later 2xx from other branches are
//! still forwarded so the caller can end them; when every branch of a group
//! failed the next q group is tried, and when none is left the best response
//! goes upstream ([`rank`]; a 6xx ends the fork).

use super::txn::{Group, Hop};
use super::{server_key, Proxy, Source};
use crate::sip::{HeaderName, Method, SipMessage};

/// The Reason of the CANCEL sent to the other branches once one answered
/// (RFC 3326).
pub const COMPLETED_ELSEWHERE: &str = "SIP;cause=200;text=\"Call completed elsewhere\"";

/// Preference of a final response when no branch succeeded (RFC 3261
/// §16.7 point 6): lower is better. 6xx first, then 3xx, 4xx, 5xx.
pub fn rank(code: u16) -> u16 {
    match code {
        600..=699 => 0,
        c => c / 100,
    }
}

/// What a final response of one branch leads to, decided under the lock.
pub(super) enum After {
    /// Nothing more (absorbed, or other branches still pending).
    Nothing,
    /// Start the next q group.
    NextGroup,
    /// Every branch failed: the best response goes upstream.
    Best(Box<(Source, SipMessage, SipMessage)>),
}

impl Proxy {
    /// A branch ended without success (`branch`: None when it never left).
    /// Decides, under the lock, what follows.
    pub(super) fn branch_failed(&self, key: &str, branch: Option<&str>, resp: SipMessage) -> After {
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

    pub(super) fn after(&self, key: &str, after: After) {
        match after {
            After::Nothing => {}
            After::NextGroup => {
                let group = self.txns().server.get_mut(key).and_then(|st| {
                    let targets = st.later.pop()?;
                    let f = st.fork.as_ref()?;
                    Some(Group {
                        targets,
                        base: st.request.clone(),
                        source: st.source.clone(),
                        origin: f.origin.clone(),
                        hash: f.hash.clone(),
                    })
                });
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
                    self.set_final_status(&key, code, &source);
                }
                self.send_to_source(&source, &best);
                self.count_final(&request, code);
                self.finish_server_txn(&request, code, &source);
            }
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
        let (source, ended, others) = {
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
            if first {
                self.observe_duration(&st.request, st.started.elapsed());
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
            // The first 2xx ends the server transaction (as `finish_server_txn`
            // does for any 2xx), here under the same lock and with its key in
            // hand: no second parse of the request's Via, no copy of it.
            let ended = if first { t.remove_server(&server_key) } else { None };
            (source, ended, others)
        };
        for hop in &others {
            self.send_cancel(hop, Some(COMPLETED_ELSEWHERE));
        }
        self.send_to_source(&source, &resp);
        if let Some(st) = ended {
            self.count_final(&st.request, code);
        }
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
