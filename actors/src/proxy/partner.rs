//! The federation door of the proxy: what comes in from a partner's edge
//! ([`Proxy::from_partner`]) and what leaves towards one
//! ([`Proxy::towards_partner`]). The same rules as the client door:
//!
//! - claims from outside go: identity assertions, our federation mark and
//!   credentials are removed from what a partner sends; the mark
//!   (`P-Sipmesh-Partner: DOMAIN`, the domain the partner's certificate
//!   proved) is then added by us alone;
//! - a partner speaks only for its own domain (From) and only to ours
//!   (Request-URI), within its rate, and may not register;
//! - nothing internal leaves: towards a partner only our own Via goes out
//!   (named by the federation FQDN; the internal Vias stay in the client
//!   transaction and are put back on the response), and the internal
//!   Record-Route entries travel sealed in our partner-facing entry
//!   (`ih=`, AES-GCM under a key of this run), opened again when the partner
//!   uses the route set.

use std::sync::Arc;

use bytes::Bytes;

use super::answer::SipReject;
use super::flows::Flow;
use super::{authn, is_identity_header, route, Origin, Proxy, Source};
use crate::federation::{FedRefusal, FEDERATION_MARK};
use crate::sip::{Header, HeaderName, Host, Method, SipMessage};
use sipmesh_state::DomainVerdict;

/// Remove our federation mark (only our edge writes it).
pub(super) fn strip_mark(msg: &mut SipMessage) {
    msg.headers.retain(|h| !is_mark(h));
}

/// Whether `h` is our federation mark.
pub(super) fn is_mark(h: &Header) -> bool {
    h.name == HeaderName::Other && h.raw_name.eq_ignore_ascii_case(FEDERATION_MARK.as_bytes())
}

/// The entries of the Record-Route headers, in order, as written.
fn record_route_entries(msg: &SipMessage) -> Vec<String> {
    let mut out = Vec::new();
    for h in msg.headers_named(HeaderName::RecordRoute) {
        let v = h.value_str();
        let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
        for (i, c) in v.char_indices() {
            match c {
                '"' => quoted = !quoted,
                '<' if !quoted => depth += 1,
                '>' if !quoted => depth -= 1,
                ',' if !quoted && depth == 0 => {
                    out.push(v[start..i].trim().to_owned());
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.push(v[start..].trim().to_owned());
    }
    out.retain(|e| !e.is_empty());
    out
}

fn set_record_routes(msg: &mut SipMessage, entries: &[String]) {
    let at = msg
        .headers
        .iter()
        .position(|h| h.name == HeaderName::RecordRoute)
        .unwrap_or(msg.headers.len());
    msg.headers.retain(|h| h.name != HeaderName::RecordRoute);
    let at = at.min(msg.headers.len());
    for (i, e) in entries.iter().enumerate() {
        msg.headers.insert(at + i, Header::new(HeaderName::RecordRoute, e));
    }
}

/// `entry` with `;ih=TOKEN` added to its URI.
fn with_sealed(entry: &str, token: &str) -> String {
    match entry.strip_suffix('>') {
        Some(inner) => format!("{inner};ih={token}>"),
        None => format!("{entry};ih={token}"),
    }
}

impl Proxy {
    /// Whether `entry` is our partner-facing Record-Route entry.
    fn is_partner_entry(&self, entry: &str) -> bool {
        self.federation_host
            .as_deref()
            .is_some_and(|h| entry.starts_with(&format!("<sip:{h};")) && entry.contains(";fed="))
    }

    /// The bytes of `msg` for a partner's edge.
    pub(super) fn towards_partner(&self, msg: &SipMessage) -> Bytes {
        let mut out = msg.clone();
        self.strip_identity(&mut out);
        strip_mark(&mut out);
        out.headers
            .retain(|h| !matches!(h.name, HeaderName::Authorization | HeaderName::ProxyAuthorization));
        let entries = record_route_entries(&out);
        if out.is_request() {
            // Our Via alone, named by the federation FQDN.
            if let (Some(top), Some(host)) = (out.remove_first(HeaderName::Via), &self.federation_host) {
                out.headers.retain(|h| h.name != HeaderName::Via);
                let ours = top
                    .value_str()
                    .replacen(&format!(" {};", self.me()), &format!(" {host};"), 1);
                out.push_header_front(Header::new(HeaderName::Via, &ours));
            }
            // Ours on top, the internal entries below it: sealed into ours.
            if entries.len() > 1 && self.is_partner_entry(&entries[0]) {
                let token = self.federation.seal(&entries[1..]);
                set_record_routes(&mut out, &[with_sealed(&entries[0], &token)]);
            }
        } else if let Some(i) = entries.iter().position(|e| self.is_partner_entry(e)) {
            // A response going back to a partner: the internal entries are
            // above ours; sealed in the order a partner's request crosses them.
            if i > 0 {
                let inward: Vec<String> = entries[..i].iter().rev().cloned().collect();
                let token = self.federation.seal(&inward);
                let mut kept = vec![with_sealed(&entries[i], &token)];
                kept.extend_from_slice(&entries[i + 1..]);
                set_record_routes(&mut out, &kept);
            }
        }
        debug_assert!(!out.headers.iter().any(is_identity_header));
        out.to_bytes()
    }

    /// A response from a partner to a request we sent it: the internal Vias
    /// (kept in the client transaction) and Record-Route entries come back.
    fn restore_from_partner(&self, resp: &mut SipMessage) {
        let branch = resp.top_via().ok().and_then(|v| v.branch().map(str::to_owned));
        let forwarded_vias: Option<Vec<Header>> = branch.and_then(|b| {
            self.txns()
                .client
                .get(&b)
                .map(|ct| ct.hop.forwarded.headers_named(HeaderName::Via).cloned().collect())
        });
        match forwarded_vias {
            Some(vias) => {
                resp.headers.retain(|h| h.name != HeaderName::Via);
                for v in vias.into_iter().rev() {
                    resp.headers.insert(0, v);
                }
            }
            None => return, // not ours: on_response drops it
        }
        let entries = record_route_entries(resp);
        if let Some(i) = entries
            .iter()
            .position(|e| self.is_partner_entry(e) && e.contains(";ih="))
        {
            let entry = &entries[i];
            let (plain, token) = match entry.rsplit_once(";ih=") {
                Some((head, tail)) => (format!("{head}>"), tail.trim_end_matches('>').to_owned()),
                None => return,
            };
            let Some(hidden) = self.federation.unseal(&token) else {
                return;
            };
            let mut restored = entries[..i].to_vec();
            restored.push(plain);
            restored.extend(hidden);
            restored.extend_from_slice(&entries[i + 1..]);
            set_record_routes(resp, &restored);
        }
    }

    fn partner_refused(&self, source: &Source, domain: &str, msg: &SipMessage, why: FedRefusal) {
        self.federation.refused(Some(domain), why.as_str(), "request refused");
        if msg.method() != Some(&Method::Ack) {
            self.reject(source, msg, SipReject::Federation(why));
        }
    }

    /// A message from a partner edge's connection.
    pub fn from_partner(&self, flow: &Arc<Flow>, mut msg: SipMessage) {
        let Some(domain) = flow.partner.clone() else { return };
        let _span = tracing::debug_span!("sip", call_id = msg.call_id().unwrap_or(""), method = %super::MethodOf(&msg), partner = %domain, peer = %flow.remote).entered();
        tracing::debug!("from a partner");
        self.strip_claims(&mut msg);
        if !msg.is_request() {
            self.restore_from_partner(&mut msg);
            return self.on_response(msg);
        }
        let _ = authn::take_credentials(&mut msg);
        self.count_request(&msg);
        let source = Source::Flow(flow.id);
        let method = msg.method().cloned().unwrap_or(Method::Other("?".into()));
        let origin = Origin {
            identity: None,
            ingress: self.me().to_string(),
        };
        if method == Method::Cancel && self.has_server_txn_from(&msg, &source) {
            return self.on_cancel(msg, source);
        }
        if method == Method::Ack && self.ack_matches(&msg, &source) {
            return self.on_ack(msg, source, origin);
        }
        if !self.federation.admit(&domain) {
            return self.partner_refused(&source, &domain, &msg, FedRefusal::RateLimited);
        }
        if let Err(why) = route::check_request(&msg, self) {
            return self.reject(&source, &msg, why);
        }
        if method == Method::Register {
            return self.partner_refused(&source, &domain, &msg, FedRefusal::Register);
        }
        // A partner speaks for its own domain only.
        let from_domain = msg.from_hdr().ok().and_then(|f| f.uri).map(|u| match u.host {
            Host::Domain(d) => d.to_ascii_lowercase(),
            other => other.to_string(),
        });
        let topology = self.shared.topology.load();
        match from_domain.as_deref() {
            Some(d) if matches!(topology.federation.verdict(d), DomainVerdict::Blocked) => {
                return self.partner_refused(&source, &domain, &msg, FedRefusal::BlockedDomain)
            }
            Some(d) if d == domain => {}
            _ => return self.partner_refused(&source, &domain, &msg, FedRefusal::FromDomainMismatch),
        }
        drop(topology);
        // Outside a dialog of ours, only requests for our domain come in
        // (route.rs refuses the rest as `not-our-domain`, no transit).
        msg.headers.push(Header::other(FEDERATION_MARK, &domain));
        match method {
            Method::Ack => self.on_ack(msg, source, origin),
            Method::Cancel => self.on_cancel(msg, source),
            _ => self.route(msg, source, origin, None),
        }
    }
}
