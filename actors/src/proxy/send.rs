//! Sending: to a client flow, to a peer over the mesh, answers of our own
//! (counted per method and status), and errors answered through
//! [`SipReject`].

use super::answer::SipReject;
use super::route::NextHop;
use super::{is_identity_header, server_key, to_tag, Origin, Proxy, Source, IDENTITY_HEADERS, SERVER};
use crate::mesh::status::SendError;
use crate::mesh::wire::{Frame, MeshRoute, SipMeta};
use crate::sip::{Header, HeaderName, Method, SipMessage};
use bytes::Bytes;
use sipmesh_state::Fqdn;

/// Whether the request asks that its sender's identity be withheld
/// (`Privacy: id`, RFC 3323/3325).
fn wants_privacy_id(msg: &SipMessage) -> bool {
    msg.headers
        .iter()
        .filter(|h| h.raw_name.eq_ignore_ascii_case(b"Privacy"))
        .flat_map(|h| h.value_str().split([';', ',']))
        .any(|v| v.trim().eq_ignore_ascii_case("id"))
}

impl Proxy {
    pub(super) fn send_to_source(&self, source: &Source, msg: &SipMessage) {
        match source {
            Source::Flow(id) => {
                if let Some(flow) = self.flows.get(*id) {
                    let bytes = match &flow.partner {
                        Some(_) => self.towards_partner(msg),
                        None => self.towards_client(msg, None),
                    };
                    if !flow.send(bytes) {
                        tracing::debug!(flow = id, "client queue full; response dropped");
                    }
                }
            }
            Source::Mesh(peer) => {
                let _ = self.send_mesh(peer, msg, None, MeshRoute::Response);
            }
        }
    }

    fn send_mesh(
        &self,
        peer: &Fqdn,
        msg: &SipMessage,
        origin: Option<&Origin>,
        route: MeshRoute,
    ) -> Result<(), SipReject> {
        let link = self
            .shared
            .link(peer.as_str())
            .ok_or_else(|| SipReject::PathDown(peer.to_string()))?;
        let frame = Frame::Sip {
            // Reuses the serialized buffer: no second copy.
            message: Vec::from(msg.to_bytes()),
            meta: SipMeta {
                identity: origin.and_then(|o| o.identity.clone()),
                ingress: origin.map_or_else(|| self.me().to_string(), |o| o.ingress.clone()),
                route,
            },
        };
        link.send_frame(frame).map_err(|e| match e {
            SendError::Down => SipReject::PathDown(peer.to_string()),
            SendError::Full => SipReject::Busy,
        })
    }

    pub(super) fn send_next(&self, next: &NextHop, msg: &SipMessage, origin: &Origin) -> Result<(), SipReject> {
        match next {
            NextHop::Partner(domain) => self.federation.send(domain, self.towards_partner(msg)),
            NextHop::Flow(id) => {
                let flow = self.flows.get(*id).ok_or(SipReject::Unavailable)?;
                let bytes = match &flow.partner {
                    Some(_) => self.towards_partner(msg),
                    None => self.towards_client(msg, Some(origin)),
                };
                if flow.send(bytes) {
                    Ok(())
                } else {
                    Err(SipReject::Busy)
                }
            }
            NextHop::Mesh(peer, route) => self.send_mesh(peer, msg, Some(origin), route.clone()),
        }
    }

    /// The bytes of `msg` for a client: no identity assertion leaves the
    /// trust domain, except ours (the identity the ingress node proved, from
    /// `origin`) on requests when `sip.assert_identity_to_clients` is set and
    /// the sender did not ask for `Privacy: id` (RFC 3325 §7).
    fn towards_client(&self, msg: &SipMessage, origin: Option<&Origin>) -> Bytes {
        let assert = origin
            .and_then(|o| o.identity.as_deref())
            .filter(|_| self.config.assert_identity_to_clients && msg.is_request() && !wants_privacy_id(msg));
        let foreign = msg.headers.iter().any(is_identity_header);
        if assert.is_none() && !foreign {
            return msg.to_bytes();
        }
        let mut out = msg.clone();
        self.strip_identity(&mut out);
        if let Some(identity) = assert {
            out.headers
                .push(Header::other(IDENTITY_HEADERS[0], &format!("<{identity}>")));
        }
        out.to_bytes()
    }

    /// Answer a request ourselves (and count it).
    pub(super) fn respond(&self, source: &Source, req: &SipMessage, code: u16, reason: &str, extra: Vec<Header>) {
        // A CANCEL shares the INVITE's key; its answer does not answer the INVITE.
        if code >= 200 && !matches!(req.method(), Some(Method::Ack | Method::Cancel)) {
            if let Some(key) = server_key(req) {
                self.set_final_status(&key, code, source);
            }
        }
        self.respond_outside_txn(source, req, code, reason, extra);
    }

    /// Answer (and count) a request without touching the server transaction
    /// of its key: for a merged request, whose key is another hop's.
    pub(super) fn respond_outside_txn(
        &self,
        source: &Source,
        req: &SipMessage,
        code: u16,
        reason: &str,
        extra: Vec<Header>,
    ) {
        if req.method() == Some(&Method::Ack) {
            return; // ACK is never answered
        }
        let tag = (code > 100 && req.to_hdr().ok().and_then(|t| t.tag().map(str::to_owned)).is_none()).then(to_tag);
        let mut resp = SipMessage::response_to(req, code, reason, tag.as_deref());
        resp.headers.extend(extra);
        resp.headers.push(Header::new(HeaderName::Server, SERVER));
        if code >= 200 {
            self.count_final(req, code);
        }
        self.send_to_source(source, &resp);
    }

    /// Answer a request with the status and headers of `why`.
    pub(super) fn reject(&self, source: &Source, req: &SipMessage, why: SipReject) {
        let (code, reason) = why.status();
        tracing::debug!(code, reason = %reason, cause = %why, "answering request with an error");
        if why == SipReject::BadFlowToken {
            self.refused(super::Refusal::BadFlowToken);
        }
        self.respond(source, req, code, &reason, why.headers());
        // A rejected INVITE's server transaction still absorbs the ACK.
        self.finish_server_txn(req, code, source);
    }

    /// Record how long `req` took to get its final response.
    pub(super) fn observe_duration(&self, req: &SipMessage, took: std::time::Duration) {
        let method = match req.method() {
            Some(Method::Other(_)) | None => "other".to_owned(),
            Some(m) => m.to_string(),
        };
        self.txn_duration
            .get_or_create(&vec![("method".to_owned(), method)])
            .observe(took.as_secs_f64());
    }

    pub(super) fn count_final(&self, req: &SipMessage, code: u16) {
        let method = req.method().map_or_else(|| "?".to_owned(), |m| m.to_string());
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *c.transactions.entry(method).or_default().entry(code).or_default() += 1;
    }
}
