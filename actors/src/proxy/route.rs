//! Routing as a pure function: a request and a [`RoutingView`] of the node
//! (who we are, the topology, live links, users, bindings) give the next hop,
//! a local answer, or a [`SipReject`]. No sockets, no clocks, no locks: the
//! proxy supplies the view, and the tests below supply a table.
//!
//! - [`check_request`]: RFC 3261 §16.3 checks before authentication (416,
//!   483, 420).
//! - [`by_request`]: the Route set (loose routing: pop our own entries,
//!   remembering the flow of the last), then the Request-URI (REGISTER to the
//!   AOR's home, requests for the domain or a node, users to their home).
//! - [`at_home`]: at the home node: REGISTER is stored here, a user's request
//!   forks to every binding ([`Target`]), wherever its flow is.
//! - [`record_route`], [`loop_hash`], [`is_loop`]: what the proxy adds to a
//!   forwarded request.
//! - [`in_dialog_of`]: whether a request's Route set is one this node
//!   record-routed for the flow it came on (what lets an ACK for a 2xx skip
//!   authentication).
//!
//! Flow tokens (`ob=` in our entries) are minted and checked by the view
//! ([`RoutingView::flow_token`], [`RoutingView::flow_for_token`]); only
//! tokens that verify are honoured, and a client may use tokens only when
//! one of them names its own connection.

use sipmesh_state::{Binding, Fqdn};

use super::answer::SipReject;
use super::flows::FlowId;
use super::home::fnv1a;
use super::Source;
use crate::federation::FedRefusal;
use crate::mesh::wire::MeshRoute;
use crate::sip::{Header, HeaderName, Host, Method, SipMessage, SipUri, StartLine};

/// Where a request goes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// A client connection on this node.
    Flow(FlowId),
    /// A peer node, with what it should do with the request.
    Mesh(Fqdn, MeshRoute),
    /// A partner organisation's edge (this node is the federation edge).
    Partner(String),
}

/// A request this node answers itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Local {
    /// Store a REGISTER here (this node is the AOR's home); the client's
    /// connection is flow `flow_id` at `flow_node`.
    Register {
        /// The node holding the client's connection.
        flow_node: String,
        /// Its flow there.
        flow_id: FlowId,
    },
    /// OPTIONS addressed to this node or the domain.
    Options,
}

/// One destination of a forked request (RFC 3261 §16.6): a registered
/// contact and where its flow is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Where the flow of the contact is.
    pub next: NextHop,
    /// The Request-URI for this branch: the registered contact.
    pub contact: String,
    /// Its q-value in thousandths: higher groups are tried first.
    pub q: u16,
}

/// The outcome of routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routed {
    /// Forward, Request-URI unchanged.
    Next(NextHop),
    /// At the target's home: fork to every registered contact, highest q
    /// first (never empty).
    Fork(Vec<Target>),
    /// Answer here.
    Local(Local),
}

/// What routing needs to know about the node, read-only.
pub trait RoutingView {
    /// This node.
    fn me(&self) -> &Fqdn;
    /// The SIP domain served.
    fn domain(&self) -> &str;
    /// Whether `host:port` addresses this node (its FQDN or its client address).
    fn is_me(&self, host: &Host, port: Option<u16>) -> bool;
    /// The topology member `host:port` names (its FQDN, or its mesh
    /// address as put in a mesh-facing Record-Route), if any.
    fn member(&self, host: &Host, port: Option<u16>) -> Option<Fqdn>;
    /// The home node of `aor` among the up front-ends.
    fn home_of(&self, aor: &str) -> Option<Fqdn>;
    /// Whether `user` is a user of the domain.
    fn is_local_user(&self, user: &str) -> bool;
    /// The live bindings of `aor` (this node is its home), highest q first.
    fn bindings(&self, aor: &str) -> Result<Vec<Binding>, SipReject>;
    /// The token naming the open flow `flow` in our Record-Route (`None`: it closed).
    fn flow_token(&self, flow: FlowId) -> Option<String>;
    /// The flow named by a token from a Route entry of ours: `Unavailable`
    /// when that flow is gone, `BadFlowToken` when the token is not ours.
    fn flow_for_token(&self, token: &str) -> Result<FlowId, SipReject>;
    /// What this node puts in Record-Route.
    fn record_route_as(&self) -> RecordRouteAs<'_>;
    /// The identity the open flow `flow` proved, if any.
    fn flow_identity(&self, flow: FlowId) -> Option<String>;
    /// The partner domain of `flow` when it is a partner edge's connection.
    fn flow_partner(&self, flow: FlowId) -> Option<String>;
    /// Where a request for the foreign `domain` goes: the partner's edge
    /// (from the federation edge), the edge (from other nodes), or a refusal
    /// (blocked, no partner, no edge up).
    fn federation_route(&self, domain: &str) -> Result<NextHop, SipReject>;
    /// The Record-Route entries a sealed token of ours hides (`None`: not ours).
    fn unseal(&self, token: &str) -> Option<Vec<String>>;
}

/// The `ob=` flow token of a Route/Record-Route URI (`ob` alone is the RFC
/// 5626 flag a client may preload, not a token).
fn token_of(uri: &SipUri) -> Option<&str> {
    uri.param("ob").flatten()
}

fn request_uri(msg: &SipMessage) -> Result<SipUri, SipReject> {
    match &msg.start {
        StartLine::Request { uri, .. } => SipUri::parse(uri).map_err(SipReject::Malformed),
        StartLine::Response { .. } => Err(SipReject::BadRequest("Not A Request".into())),
    }
}

fn is_domain(view: &impl RoutingView, host: &Host) -> bool {
    matches!(host, Host::Domain(d) if d == view.domain())
}

/// RFC 3261 §16.3 validation that comes before authentication: URI scheme,
/// Max-Forwards, Proxy-Require.
pub fn check_request(msg: &SipMessage, view: &impl RoutingView) -> Result<(), SipReject> {
    if let StartLine::Request { uri, .. } = &msg.start {
        let scheme = uri.split(':').next().unwrap_or("").to_ascii_lowercase();
        if scheme != "sip" && scheme != "sips" {
            return Err(SipReject::UnsupportedScheme);
        }
    }
    if msg.max_forwards().map_err(SipReject::Malformed)? == Some(0) {
        // Only an OPTIONS addressed to this node itself may still be answered.
        let to_me = request_uri(msg)
            .is_ok_and(|u| u.user.is_none() && (view.is_me(&u.host, u.port) || is_domain(view, &u.host)));
        if !(to_me && msg.method() == Some(&Method::Options)) {
            return Err(SipReject::TooManyHops);
        }
    }
    let required: Vec<String> = msg
        .values(HeaderName::ProxyRequire)
        .into_iter()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if !required.is_empty() {
        return Err(SipReject::BadExtension(required));
    }
    Ok(())
}

/// The next hop of a request from its Route set and Request-URI; pops the
/// Route entries that name this node.
pub fn by_request(
    msg: &mut SipMessage,
    source: &Source,
    identity: Option<&str>,
    view: &impl RoutingView,
) -> Result<Routed, SipReject> {
    // Loose routing: pop our own entries, remembering the flow of the last
    // one. A client may use flow tokens only when one of them names its own
    // connection: that is what a dialog we record-routed for it looks like.
    let client = match source {
        Source::Flow(f) => Some(*f),
        Source::Mesh(_) => None,
    };
    let mut popped_flow = None;
    // A partner named by our partner-facing entry, and whether internal
    // entries came out of a sealed token (a partner may name internal nodes
    // only that way).
    let partner = client.and_then(|f| view.flow_partner(f));
    let mut popped_partner: Option<String> = None;
    let mut unsealed = false;
    let mut tokens = false;
    let mut own_named = false;
    let foreign_tokens = |tokens: bool, own_named: bool| client.is_some() && tokens && !own_named;
    loop {
        let routes = msg.routes().map_err(SipReject::Malformed)?;
        let Some(top) = routes.first() else { break };
        let Some(uri) = &top.uri else {
            return Err(SipReject::BadRequest("Bad Route".into()));
        };
        if view.is_me(&uri.host, uri.port) {
            // Our partner-facing entry: it names the partner, and may hide
            // the internal entries that follow it (sealed, `ih=`).
            if let Some(domain) = uri.param("fed").flatten() {
                if partner.as_deref() != Some(domain) {
                    popped_partner = Some(domain.to_owned());
                }
            }
            if let Some(sealed) = uri.param("ih").flatten() {
                let hidden = view.unseal(sealed).ok_or(SipReject::BadFlowToken)?;
                msg.remove_first(HeaderName::Route);
                for entry in hidden.iter().rev() {
                    msg.push_header_front(Header::new(HeaderName::Route, entry));
                }
                unsealed = true;
                continue;
            }
            // Our client-facing entry names a flow; our mesh-facing one none.
            if let Some(token) = token_of(uri) {
                let flow = view.flow_for_token(token)?;
                tokens = true;
                // Its own connection, or another of the same user (a phone
                // may send in-dialog requests on a new connection; it then
                // authenticates first).
                own_named |= client == Some(flow)
                    || (client.is_some() && identity.is_some() && view.flow_identity(flow).as_deref() == identity);
                popped_flow = Some(flow);
            }
            msg.remove_first(HeaderName::Route);
            continue;
        }
        if foreign_tokens(tokens, own_named) {
            return Err(SipReject::BadFlowToken);
        }
        if let Some(member) = view.member(&uri.host, uri.port) {
            if partner.is_some() && !unsealed {
                return Err(SipReject::Federation(FedRefusal::RouteNotAllowed));
            }
            return Ok(Routed::Next(NextHop::Mesh(member, MeshRoute::Dialog)));
        }
        if let Some(domain) = popped_partner {
            // The rest of the route set is the partner's.
            return Ok(Routed::Next(NextHop::Partner(domain)));
        }
        return Err(SipReject::DomainNotAllowed(uri.host.to_string()));
    }
    if let Some(domain) = popped_partner {
        return Ok(Routed::Next(NextHop::Partner(domain)));
    }
    if foreign_tokens(tokens, own_named) {
        return Err(SipReject::BadFlowToken);
    }
    if let Some(flow) = popped_flow {
        // The last entry we popped names the flow on our side of the dialog.
        if client != Some(flow) {
            return Ok(Routed::Next(NextHop::Flow(flow)));
        }
    }
    let ruri = request_uri(msg)?;
    if msg.method() == Some(&Method::Register) {
        // Bindings live at the home of the AOR being registered (To).
        let aor = msg
            .to_hdr()
            .ok()
            .and_then(|t| t.uri.map(|u| u.aor()))
            .ok_or(SipReject::BadRequest("Bad To".into()))?;
        let home = view.home_of(&aor).ok_or(SipReject::Unavailable)?;
        if &home == view.me() {
            return at_home(msg, source, identity, None, view);
        }
        let flow = match source {
            Source::Flow(f) => Some(*f),
            Source::Mesh(_) => None,
        };
        return Ok(Routed::Next(NextHop::Mesh(home, MeshRoute::Home { flow })));
    }
    if ruri.user.is_none() {
        if view.is_me(&ruri.host, ruri.port) || is_domain(view, &ruri.host) {
            return at_home(msg, source, identity, None, view);
        }
        if let Some(member) = view.member(&ruri.host, ruri.port) {
            return Ok(Routed::Next(NextHop::Mesh(member, MeshRoute::Home { flow: None })));
        }
    }
    if !is_domain(view, &ruri.host) {
        if partner.is_some() {
            // No transit between partners.
            return Err(SipReject::Federation(FedRefusal::NotOurDomain));
        }
        return match &ruri.host {
            Host::Domain(d) => view.federation_route(d).map(Routed::Next),
            _ => Err(SipReject::DomainNotAllowed(ruri.host.to_string())),
        };
    }
    if !view.is_local_user(ruri.user.as_deref().unwrap_or_default()) {
        return Err(SipReject::NotFound);
    }
    let home = view.home_of(&ruri.aor()).ok_or(SipReject::Unavailable)?;
    if &home == view.me() {
        return at_home(msg, source, identity, None, view);
    }
    Ok(Routed::Next(NextHop::Mesh(home, MeshRoute::Home { flow: None })))
}

/// This node is the home of the request's target (or the request is for the
/// node or the domain itself). `register_flow`: the flow a relayed REGISTER
/// came in on at the relaying node. A user's request forks to its bindings.
pub fn at_home(
    msg: &mut SipMessage,
    source: &Source,
    identity: Option<&str>,
    register_flow: Option<FlowId>,
    view: &impl RoutingView,
) -> Result<Routed, SipReject> {
    let ruri = request_uri(msg)?;
    let method = msg.method().cloned().unwrap_or(Method::Other("?".into()));
    if method == Method::Register {
        let (flow_node, flow_id) = match (source, register_flow) {
            (Source::Flow(f), _) => (view.me().to_string(), *f),
            (Source::Mesh(peer), Some(f)) => (peer.to_string(), f),
            (Source::Mesh(_), None) => return Err(SipReject::BadRequest("REGISTER Without A Flow".into())),
        };
        if identity.is_none() {
            return Err(SipReject::Forbidden("unauthenticated REGISTER".into()));
        }
        return Ok(Routed::Local(Local::Register { flow_node, flow_id }));
    }
    let Some(user) = ruri.user.as_deref() else {
        return match method {
            Method::Options => Ok(Routed::Local(Local::Options)),
            _ => Err(SipReject::NotFound),
        };
    };
    if !is_domain(view, &ruri.host) {
        return Err(SipReject::DomainNotAllowed(ruri.host.to_string()));
    }
    if !view.is_local_user(user) {
        return Err(SipReject::NotFound);
    }
    let bindings = view.bindings(&ruri.aor())?;
    if bindings.is_empty() {
        return Err(SipReject::Unavailable);
    }
    let targets = bindings
        .into_iter()
        .filter_map(|b| {
            let next = if b.flow_node == view.me().as_str() {
                NextHop::Flow(b.flow_id)
            } else {
                NextHop::Mesh(Fqdn::new(&b.flow_node).ok()?, MeshRoute::Flow(b.flow_id))
            };
            Some(Target {
                next,
                contact: b.contact,
                q: b.q,
            })
        })
        .collect::<Vec<_>>();
    if targets.is_empty() {
        return Err(SipReject::Unavailable);
    }
    Ok(Routed::Fork(targets))
}

/// What this node puts in Record-Route: each side gets an entry it can
/// reach (double Record-Route, RFC 5658).
#[derive(Clone, Copy, Debug)]
pub struct RecordRouteAs<'a> {
    /// Towards clients: the advertised `HOST:PORT` of the client port.
    pub client: &'a str,
    /// Towards peers: the node's mesh address from the topology (an address,
    /// so a phone's route set never holds a name it would try to resolve).
    pub mesh: &'a str,
    /// Towards partners (a federation edge only): `FEDERATION_FQDN:PORT`.
    pub federation: Option<&'a str>,
}

impl RecordRouteAs<'_> {
    /// The entry facing a client, naming its flow by a token (RFC 5626 `ob`).
    pub fn client_entry(&self, token: &str) -> String {
        format!("<sip:{};transport=tls;lr;ob={token}>", self.client)
    }

    /// The entry facing the mesh.
    pub fn mesh_entry(&self) -> String {
        format!("<sip:{};lr>", self.mesh)
    }

    /// The entry facing a partner, naming it (`None` off a federation edge).
    pub fn partner_entry(&self, domain: &str) -> Option<String> {
        Some(format!("<sip:{};transport=tls;lr;fed={domain}>", self.federation?))
    }
}

/// Record-Route a dialog-creating request (INVITE or SUBSCRIBE outside a
/// dialog) at the nodes holding the flows: an entry for each side of this
/// node the request crosses, the outgoing side's on top. A client side names
/// its flow; two client sides (both ends here) give two client entries.
pub fn record_route(msg: &mut SipMessage, source: &Source, next: &NextHop, view: &impl RoutingView) {
    let dialog_creating = matches!(msg.method(), Some(Method::Invite | Method::Subscribe))
        && msg.to_hdr().ok().is_some_and(|t| t.tag().is_none());
    if !dialog_creating {
        return;
    }
    let incoming = match source {
        Source::Flow(f) => Some(record_route_entry(view, *f)),
        Source::Mesh(_) => None,
    };
    let outgoing = match next {
        NextHop::Flow(f) => Some(record_route_entry(view, *f)),
        NextHop::Partner(d) => Some(view.record_route_as().partner_entry(d)),
        NextHop::Mesh(..) => None,
    };
    if incoming.is_none() && outgoing.is_none() {
        return; // transit between nodes (e.g. the home): not in the dialog
    }
    // Pushed to the front: the incoming side's first, so the outgoing side's
    // ends up on top. A flow that closed meanwhile gets no entry.
    for entry in [incoming, outgoing] {
        let entry = match entry {
            Some(Some(client)) => client,
            Some(None) => continue,
            None => view.record_route_as().mesh_entry(),
        };
        msg.push_header_front(Header::new(HeaderName::RecordRoute, &entry));
    }
}

/// Our Record-Route entry naming `flow`: the one place its form is written.
/// `None` when the flow closed (the request then fails to reach it anyway).
fn record_route_entry(view: &impl RoutingView, flow: FlowId) -> Option<String> {
    if let Some(domain) = view.flow_partner(flow) {
        return view.record_route_as().partner_entry(&domain);
    }
    Some(view.record_route_as().client_entry(&view.flow_token(flow)?))
}

/// Whether `msg` is within a dialog this node record-routed for `flow`: of
/// the Route entries at the top that name this node, one carries a token of
/// ours that verifies for `flow`. Read only; [`by_request`] pops them later.
pub fn in_dialog_of(msg: &SipMessage, flow: FlowId, view: &impl RoutingView) -> bool {
    let Ok(routes) = msg.routes() else { return false };
    routes
        .iter()
        .map_while(|r| r.uri.as_ref().filter(|u| view.is_me(&u.host, u.port)))
        .filter_map(token_of)
        .any(|token| view.flow_for_token(token) == Ok(flow))
}

/// Hash for loop detection over what identifies the request at this hop
/// (only ever compared by the node that computed it).
pub fn loop_hash(msg: &SipMessage) -> String {
    let uri = match &msg.start {
        StartLine::Request { uri, .. } => uri.as_str(),
        StartLine::Response { .. } => "",
    };
    let from_tag = msg
        .from_hdr()
        .ok()
        .and_then(|f| f.tag().map(str::to_owned))
        .unwrap_or_default();
    let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
    let call_id = msg.call_id().unwrap_or("");
    let h = fnv1a(&[
        uri.as_bytes(),
        call_id.as_bytes(),
        from_tag.as_bytes(),
        &cseq.to_be_bytes(),
    ]);
    format!("{h:016x}")
}

/// Whether this node already forwarded the request unchanged (a Via of ours
/// carries the same loop hash).
pub fn is_loop(msg: &SipMessage, me: &Fqdn, hash: &str) -> bool {
    // A loop needs `sm=HASH` in one of the Vias: when no Via value holds the
    // hash at all (nearly every request), skip parsing every Via.
    let mentioned = msg
        .headers
        .iter()
        .any(|h| h.name == HeaderName::Via && h.value_str().contains(hash));
    if !hash.is_empty() && !mentioned {
        return false;
    }
    msg.vias().is_ok_and(|vias| {
        vias.iter()
            .any(|v| v.host == me.as_str() && v.param("sm") == Some(Some(hash)))
    })
}

#[cfg(test)]
mod tests;
