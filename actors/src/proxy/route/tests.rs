//! Every routing outcome `tests/sip.rs` checks through sockets, checked here
//! as a pure function against a table-built view: fe1 is "us", fe2 and fe3
//! are members, bob's home is fe2, carol's is fe1 with her flow on fe3, dave
//! is a user with no registration; fe1's mesh address is 198.18.0.1:5071 and
//! fe2's 198.18.0.2:5071. Our flow tokens are `t<id>` for the open
//! flows 4, 5, 9, 33 and 34 (5 and 9 alice's); anything else is not ours.

use std::collections::HashMap;

use super::*;
use crate::sip::ParseError;

struct View {
    me: Fqdn,
    client: (std::net::Ipv4Addr, u16),
    members: Vec<Fqdn>,
    users: Vec<&'static str>,
    homes: HashMap<&'static str, Fqdn>,
    bindings: HashMap<&'static str, Vec<Binding>>,
    flows: Vec<FlowId>,
}

fn fqdn(s: &str) -> Fqdn {
    Fqdn::new(s).unwrap()
}

const CONTACT: &str = "sip:carol@127.0.0.1:5099;transport=tls";

fn binding(aor: &str, flow_node: &str, flow_id: u64) -> Binding {
    Binding {
        aor: aor.into(),
        contact: CONTACT.into(),
        expires_at: u64::MAX,
        flow_node: flow_node.into(),
        flow_id,
        call_id: "reg".into(),
        cseq: 1,
        updated_at: 0,
        q: 1000,
    }
}

fn view() -> View {
    View {
        me: fqdn("fe1.contoso.test"),
        client: (std::net::Ipv4Addr::LOCALHOST, 5061),
        members: ["fe1", "fe2", "fe3"]
            .iter()
            .map(|n| fqdn(&format!("{n}.contoso.test")))
            .collect(),
        users: vec!["alice", "bob", "carol", "dave"],
        homes: HashMap::from([
            ("sip:alice@contoso.test", fqdn("fe1.contoso.test")),
            ("sip:bob@contoso.test", fqdn("fe2.contoso.test")),
            ("sip:carol@contoso.test", fqdn("fe1.contoso.test")),
            ("sip:dave@contoso.test", fqdn("fe1.contoso.test")),
        ]),
        bindings: HashMap::from([
            (
                "sip:carol@contoso.test",
                vec![binding("sip:carol@contoso.test", "fe3.contoso.test", 77)],
            ),
            (
                "sip:alice@contoso.test",
                vec![binding("sip:alice@contoso.test", "fe1.contoso.test", 5)],
            ),
        ]),
        flows: vec![4, 5, 9, 33, 34],
    }
}

impl RoutingView for View {
    fn me(&self) -> &Fqdn {
        &self.me
    }
    fn domain(&self) -> &str {
        "contoso.test"
    }
    fn is_me(&self, host: &Host, port: Option<u16>) -> bool {
        match host {
            Host::Domain(d) => d == self.me.as_str(),
            Host::V4(ip) => {
                (*ip == self.client.0 && port.is_none_or(|p| p == self.client.1))
                    || (*ip == std::net::Ipv4Addr::new(198, 18, 0, 1) && port == Some(5071))
            }
            Host::V6(_) => false,
        }
    }
    fn member(&self, host: &Host, port: Option<u16>) -> Option<Fqdn> {
        match host {
            Host::Domain(d) => self.members.iter().find(|m| m.as_str() == d).cloned(),
            // fe2's mesh address, as its mesh-facing Record-Route names it.
            Host::V4(ip) if *ip == std::net::Ipv4Addr::new(198, 18, 0, 2) && port == Some(5071) => {
                Some(fqdn("fe2.contoso.test"))
            }
            _ => None,
        }
    }
    fn home_of(&self, aor: &str) -> Option<Fqdn> {
        self.homes.get(aor).cloned()
    }
    fn is_local_user(&self, user: &str) -> bool {
        self.users.contains(&user)
    }
    fn bindings(&self, aor: &str) -> Result<Vec<Binding>, SipReject> {
        Ok(self.bindings.get(aor).cloned().unwrap_or_default())
    }
    fn flow_token(&self, flow: FlowId) -> Option<String> {
        self.flows.contains(&flow).then(|| format!("t{flow}"))
    }
    fn flow_for_token(&self, token: &str) -> Result<FlowId, SipReject> {
        let id: FlowId = token
            .strip_prefix('t')
            .and_then(|n| n.parse().ok())
            .ok_or(SipReject::BadFlowToken)?;
        if self.flows.contains(&id) {
            Ok(id)
        } else {
            Err(SipReject::Unavailable)
        }
    }
    fn flow_partner(&self, _flow: FlowId) -> Option<String> {
        None
    }

    fn federation_route(&self, domain: &str) -> Result<NextHop, SipReject> {
        Err(SipReject::DomainNotAllowed(domain.to_owned()))
    }

    fn unseal(&self, _token: &str) -> Option<Vec<String>> {
        None
    }

    fn flow_identity(&self, flow: FlowId) -> Option<String> {
        // Flows 5 and 9 are alice's (9 is where the table's requests come
        // from), the others bob's.
        let user = if flow == 5 || flow == 9 { "alice" } else { "bob" };
        self.flows.contains(&flow).then(|| format!("sip:{user}@contoso.test"))
    }
    fn record_route_as(&self) -> RecordRouteAs<'_> {
        // fe1 as it names itself: its advertised client address and its mesh
        // address (is_me above knows both).
        RecordRouteAs {
            client: "127.0.0.1:5061",
            mesh: "198.18.0.1:5071",
            federation: None,
        }
    }
}

/// A request with the usual headers; `extra` lines go before Content-Length.
fn req(method: &str, uri: &str, extra: &[&str]) -> SipMessage {
    let to = if method == "REGISTER" {
        "sip:alice@contoso.test"
    } else {
        uri
    };
    let mut text = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bK-t1\r\n\
         From: <sip:alice@contoso.test>;tag=a1\r\nTo: <{to}>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n"
    );
    for line in extra {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    SipMessage::parse(Bytes::from(text)).unwrap()
}

use bytes::Bytes;

const FLOW: Source = Source::Flow(9);

fn route(msg: SipMessage) -> (Result<Routed, SipReject>, SipMessage) {
    route_from(&FLOW, msg)
}

fn route_from(source: &Source, mut msg: SipMessage) -> (Result<Routed, SipReject>, SipMessage) {
    let r = by_request(&mut msg, source, Some("sip:alice@contoso.test"), &view());
    (r, msg)
}

fn from_mesh() -> Source {
    Source::Mesh(fqdn("fe2.contoso.test"))
}

fn mesh(node: &str, route: MeshRoute) -> Result<Routed, SipReject> {
    Ok(Routed::Next(NextHop::Mesh(fqdn(node), route)))
}

fn fork(next: NextHop) -> Result<Routed, SipReject> {
    Ok(Routed::Fork(vec![Target {
        next,
        contact: CONTACT.into(),
        q: 1000,
    }]))
}

#[test]
fn request_uri_outcomes() {
    let home = MeshRoute::Home { flow: None };
    let cases: Vec<(&str, SipMessage, Result<Routed, SipReject>)> = vec![
        (
            "user homed elsewhere",
            req("MESSAGE", "sip:bob@contoso.test", &[]),
            mesh("fe2.contoso.test", home.clone()),
        ),
        (
            "user homed here, flow on fe3",
            req("MESSAGE", "sip:carol@contoso.test", &[]),
            fork(NextHop::Mesh(fqdn("fe3.contoso.test"), MeshRoute::Flow(77))),
        ),
        (
            "user homed here, flow here",
            req("INVITE", "sip:alice@contoso.test", &[]),
            fork(NextHop::Flow(5)),
        ),
        (
            "unknown user: 404",
            req("MESSAGE", "sip:nobody@contoso.test", &[]),
            Err(SipReject::NotFound),
        ),
        (
            "not registered: 480",
            req("MESSAGE", "sip:dave@contoso.test", &[]),
            Err(SipReject::Unavailable),
        ),
        (
            "foreign domain: 403",
            req("MESSAGE", "sip:bob@fabrikam.test", &[]),
            Err(SipReject::DomainNotAllowed("fabrikam.test".into())),
        ),
        (
            "OPTIONS to the domain",
            req("OPTIONS", "sip:contoso.test", &[]),
            Ok(Routed::Local(Local::Options)),
        ),
        (
            "OPTIONS to this node",
            req("OPTIONS", "sip:127.0.0.1:5061", &[]),
            Ok(Routed::Local(Local::Options)),
        ),
        (
            "OPTIONS to a member",
            req("OPTIONS", "sip:fe3.contoso.test", &[]),
            mesh("fe3.contoso.test", home.clone()),
        ),
        (
            "MESSAGE to the domain: 404",
            req("MESSAGE", "sip:contoso.test", &[]),
            Err(SipReject::NotFound),
        ),
    ];
    for (what, msg, want) in cases {
        assert_eq!(route(msg).0, want, "{what}");
    }
}

#[test]
fn a_user_with_several_devices_forks_to_each_highest_q_first() {
    let mut v = view();
    let mut phone = binding("sip:carol@contoso.test", "fe1.contoso.test", 3);
    phone.contact = "sip:carol@127.0.0.1:6000;transport=tls".into();
    phone.q = 500;
    let desk = binding("sip:carol@contoso.test", "fe3.contoso.test", 77);
    // The view hands bindings highest q first (the registrar sorts them).
    v.bindings.insert("sip:carol@contoso.test", vec![desk, phone]);
    let mut msg = req("MESSAGE", "sip:carol@contoso.test", &[]);
    let r = by_request(&mut msg, &FLOW, Some("sip:alice@contoso.test"), &v);
    assert_eq!(
        r,
        Ok(Routed::Fork(vec![
            Target {
                next: NextHop::Mesh(fqdn("fe3.contoso.test"), MeshRoute::Flow(77)),
                contact: CONTACT.into(),
                q: 1000
            },
            Target {
                next: NextHop::Flow(3),
                contact: "sip:carol@127.0.0.1:6000;transport=tls".into(),
                q: 500
            },
        ]))
    );
    // Routing leaves the Request-URI to each branch.
    match &msg.start {
        StartLine::Request { uri, .. } => assert_eq!(uri, "sip:carol@contoso.test"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn register_goes_to_the_home_of_the_to_aor() {
    // alice's home is fe1 (us): stored here, with the flow it came on.
    let (r, _) = route(req("REGISTER", "sip:contoso.test", &[]));
    assert_eq!(
        r,
        Ok(Routed::Local(Local::Register {
            flow_node: "fe1.contoso.test".into(),
            flow_id: 9
        }))
    );
    // Without an identity the home refuses it.
    let mut msg = req("REGISTER", "sip:contoso.test", &[]);
    assert_eq!(
        by_request(&mut msg, &FLOW, None, &view()),
        Err(SipReject::Forbidden("unauthenticated REGISTER".into()))
    );
    // bob registering from here goes to fe2 and names our flow.
    let text = "REGISTER sip:contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK-r\r\n\
                From: <sip:bob@contoso.test>;tag=b\r\nTo: <sip:bob@contoso.test>\r\nCall-ID: r\r\n\
                CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
    let mut msg = SipMessage::parse(Bytes::from(text)).unwrap();
    assert_eq!(
        by_request(&mut msg, &FLOW, Some("sip:bob@contoso.test"), &view()),
        mesh("fe2.contoso.test", MeshRoute::Home { flow: Some(9) })
    );
    // At the home, a relayed REGISTER keeps the relaying node's flow; one
    // without a flow is malformed.
    let peer = Source::Mesh(fqdn("fe3.contoso.test"));
    let mut msg = req("REGISTER", "sip:contoso.test", &[]);
    assert_eq!(
        at_home(&mut msg, &peer, Some("sip:alice@contoso.test"), Some(41), &view()),
        Ok(Routed::Local(Local::Register {
            flow_node: "fe3.contoso.test".into(),
            flow_id: 41
        }))
    );
    assert_eq!(
        at_home(&mut msg, &peer, Some("sip:alice@contoso.test"), None, &view()),
        Err(SipReject::BadRequest("REGISTER Without A Flow".into()))
    );
}

#[test]
fn route_sets_are_followed() {
    // From the mesh, our own entry is popped and its flow is where the request goes.
    let (r, msg) = route_from(
        &from_mesh(),
        req(
            "BYE",
            "sip:bob@127.0.0.1:5090",
            &["Route: <sip:fe1.contoso.test;lr;ob=t33>"],
        ),
    );
    assert_eq!(r, Ok(Routed::Next(NextHop::Flow(33))));
    assert_eq!(msg.routes().unwrap().len(), 0);
    // From a client, both ends here: its own entry, then the other flow's.
    let (r, msg) = route(req(
        "BYE",
        "sip:bob@127.0.0.1:5090",
        &["Route: <sip:fe1.contoso.test;lr;ob=t9>, <sip:fe1.contoso.test;lr;ob=t33>"],
    ));
    assert_eq!(r, Ok(Routed::Next(NextHop::Flow(33))));
    assert_eq!(msg.routes().unwrap().len(), 0);
    // Ours, then a member's: popped, then over the mesh along the dialog
    // (fe2's token is fe2's to check).
    let (r, msg) = route(req(
        "BYE",
        "sip:bob@127.0.0.1:5090",
        &["Route: <sip:fe1.contoso.test;lr;ob=t9>, <sip:fe2.contoso.test;lr;ob=anything>"],
    ));
    assert_eq!(r, mesh("fe2.contoso.test", MeshRoute::Dialog));
    assert_eq!(msg.routes().unwrap().len(), 1);
    // A route naming the client address counts as us.
    let (r, _) = route_from(
        &from_mesh(),
        req(
            "BYE",
            "sip:bob@contoso.test",
            &["Route: <sip:127.0.0.1:5061;lr;ob=t34>"],
        ),
    );
    assert_eq!(r, Ok(Routed::Next(NextHop::Flow(34))));
    // Our entry naming the flow the request came from: routed by Request-URI.
    let (r, _) = route(req(
        "BYE",
        "sip:bob@contoso.test",
        &["Route: <sip:fe1.contoso.test;lr;ob=t9>"],
    ));
    assert_eq!(r, mesh("fe2.contoso.test", MeshRoute::Home { flow: None }));
    // A preloaded route with the RFC 5626 `ob` flag (no token): popped, then the Request-URI.
    let (r, _) = route(req(
        "MESSAGE",
        "sip:bob@contoso.test",
        &["Route: <sip:fe1.contoso.test;lr;ob>"],
    ));
    assert_eq!(r, mesh("fe2.contoso.test", MeshRoute::Home { flow: None }));
    // A route to anywhere else is refused.
    let (r, _) = route(req("BYE", "sip:bob@contoso.test", &["Route: <sip:evil.example;lr>"]));
    assert_eq!(r, Err(SipReject::DomainNotAllowed("evil.example".into())));
}

#[test]
fn only_tokens_that_verify_are_honoured() {
    let mesh_src = from_mesh();
    let cases: Vec<(&str, &Source, &str, Result<Routed, SipReject>)> = vec![
        (
            "forged, from the mesh",
            &mesh_src,
            "<sip:fe1.contoso.test;lr;ob=x33>",
            Err(SipReject::BadFlowToken),
        ),
        (
            "forged, from a client",
            &FLOW,
            "<sip:fe1.contoso.test;lr;ob=33>",
            Err(SipReject::BadFlowToken),
        ),
        (
            "flow closed",
            &mesh_src,
            "<sip:fe1.contoso.test;lr;ob=t99>",
            Err(SipReject::Unavailable),
        ),
        // Genuine tokens, but none names the client's own flow: not its dialog.
        (
            "another client's flow",
            &FLOW,
            "<sip:fe1.contoso.test;lr;ob=t33>",
            Err(SipReject::BadFlowToken),
        ),
        (
            "another client's flow, then a member",
            &FLOW,
            "<sip:fe1.contoso.test;lr;ob=t33>, <sip:fe2.contoso.test;lr;ob=t12>",
            Err(SipReject::BadFlowToken),
        ),
        (
            "the same user's other flow (a new connection)",
            &FLOW,
            "<sip:fe1.contoso.test;lr;ob=t5>",
            Ok(Routed::Next(NextHop::Flow(5))),
        ),
        (
            "its own flow, then a forged one",
            &FLOW,
            "<sip:fe1.contoso.test;lr;ob=t9>, <sip:fe1.contoso.test;lr;ob=t9x>",
            Err(SipReject::BadFlowToken),
        ),
    ];
    for (what, source, routes, want) in cases {
        let route_line = format!("Route: {routes}");
        let (r, _) = route_from(source, req("BYE", "sip:bob@127.0.0.1:5090", &[route_line.as_str()]));
        assert_eq!(r, want, "{what}");
    }
}

#[test]
fn a_dialog_of_ours_is_recognised_by_the_flow_it_names() {
    let v = view();
    let with = |routes: &str| req("ACK", "sip:bob@127.0.0.1:5090", &[format!("Route: {routes}").as_str()]);
    let cases: Vec<(&str, SipMessage, FlowId, bool)> = vec![
        ("its own token", with("<sip:fe1.contoso.test;lr;ob=t9>"), 9, true),
        (
            "own token second of ours",
            with("<sip:fe1.contoso.test;lr;ob=t33>, <sip:fe1.contoso.test;lr;ob=t9>"),
            9,
            true,
        ),
        (
            "own token, then a member",
            with("<sip:127.0.0.1:5061;lr;ob=t9>, <sip:fe2.contoso.test;lr;ob=t12>"),
            9,
            true,
        ),
        (
            "another flow's token",
            with("<sip:fe1.contoso.test;lr;ob=t33>"),
            9,
            false,
        ),
        ("forged", with("<sip:fe1.contoso.test;lr;ob=9>"), 9, false),
        ("closed", with("<sip:fe1.contoso.test;lr;ob=t99>"), 99, false),
        ("no token", with("<sip:fe1.contoso.test;lr>"), 9, false),
        (
            "ours only after a member's",
            with("<sip:fe2.contoso.test;lr>, <sip:fe1.contoso.test;lr;ob=t9>"),
            9,
            false,
        ),
        ("no Route", req("ACK", "sip:bob@contoso.test", &[]), 9, false),
    ];
    for (what, msg, flow, want) in cases {
        assert_eq!(in_dialog_of(&msg, flow, &v), want, "{what}");
    }
}

#[test]
fn checks_before_authentication() {
    let v = view();
    let cases: Vec<(&str, SipMessage, Result<(), SipReject>)> = vec![
        ("ok", req("MESSAGE", "sip:bob@contoso.test", &[]), Ok(())),
        (
            "tel: 416",
            req("MESSAGE", "tel:+15551234", &[]),
            Err(SipReject::UnsupportedScheme),
        ),
        (
            "Max-Forwards 0: 483",
            req("MESSAGE", "sip:bob@contoso.test", &["Max-Forwards: 0"]),
            Err(SipReject::TooManyHops),
        ),
        (
            "OPTIONS to us at 0 is answered",
            req("OPTIONS", "sip:127.0.0.1:5061", &["Max-Forwards: 0"]),
            Ok(()),
        ),
        (
            "OPTIONS to a user at 0: 483",
            req("OPTIONS", "sip:bob@contoso.test", &["Max-Forwards: 0"]),
            Err(SipReject::TooManyHops),
        ),
        (
            "Proxy-Require: 420",
            req("MESSAGE", "sip:bob@contoso.test", &["Proxy-Require: foo, bar"]),
            Err(SipReject::BadExtension(vec!["foo".into(), "bar".into()])),
        ),
    ];
    for (what, msg, want) in cases {
        assert_eq!(check_request(&msg, &v), want, "{what}");
    }
    let bad = req("MESSAGE", "sip:bob@contoso.test", &["Max-Forwards: lots"]);
    assert!(matches!(
        check_request(&bad, &v),
        Err(SipReject::Malformed(ParseError::BadHeader { .. }))
    ));
}

fn record_routes(msg: &SipMessage) -> Vec<String> {
    msg.headers_named(HeaderName::RecordRoute)
        .map(|h| h.value_str().to_owned())
        .collect()
}

#[test]
fn dialog_creating_requests_are_record_routed_with_an_entry_per_side() {
    let to_bob = NextHop::Mesh(fqdn("fe2.contoso.test"), MeshRoute::Home { flow: None });
    // From a client to the mesh: the mesh-facing entry on top, the client's
    // (naming its flow) below.
    let mut m = req("INVITE", "sip:bob@contoso.test", &[]);
    record_route(&mut m, &FLOW, &to_bob, &view());
    assert_eq!(
        record_routes(&m),
        [
            "<sip:198.18.0.1:5071;lr>",
            "<sip:127.0.0.1:5061;transport=tls;lr;ob=t9>"
        ]
    );
    // From the mesh to a flow here: the callee's side on top.
    let mut m = req("SUBSCRIBE", "sip:bob@contoso.test", &[]);
    record_route(
        &mut m,
        &Source::Mesh(fqdn("fe2.contoso.test")),
        &NextHop::Flow(4),
        &view(),
    );
    assert_eq!(
        record_routes(&m),
        [
            "<sip:127.0.0.1:5061;transport=tls;lr;ob=t4>",
            "<sip:198.18.0.1:5071;lr>"
        ]
    );
    // Both ends here: both flows, the callee's on top; only addresses.
    let mut m = req("INVITE", "sip:bob@contoso.test", &[]);
    record_route(&mut m, &FLOW, &NextHop::Flow(4), &view());
    assert_eq!(
        record_routes(&m),
        [
            "<sip:127.0.0.1:5061;transport=tls;lr;ob=t4>",
            "<sip:127.0.0.1:5061;transport=tls;lr;ob=t9>"
        ]
    );
    // Transit between nodes, in-dialog requests and MESSAGE: nothing.
    for (mut m, source) in [
        (
            req("INVITE", "sip:bob@contoso.test", &[]),
            Source::Mesh(fqdn("fe3.contoso.test")),
        ),
        (req("MESSAGE", "sip:bob@contoso.test", &[]), FLOW),
    ] {
        record_route(&mut m, &source, &to_bob, &view());
        assert!(record_routes(&m).is_empty());
    }
    let text = "INVITE sip:bob@contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK-x\r\n\
                From: <sip:alice@contoso.test>;tag=a\r\nTo: <sip:bob@contoso.test>;tag=b\r\n\
                Call-ID: d\r\nCSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n";
    let mut reinvite = SipMessage::parse(Bytes::from(text)).unwrap();
    record_route(&mut reinvite, &FLOW, &to_bob, &view());
    assert!(record_routes(&reinvite).is_empty());
}

#[test]
fn double_record_route_sets_are_followed_across_the_mesh() {
    // bob's BYE as a phone sends it, the route set bob got in the INVITE
    // from fe1 (fe2 here plays bob's node): at fe2 the request would pop
    // fe2's entries; at fe1 (this view) it arrives from the mesh with fe1's
    // two entries left: mesh-facing, then the client-facing one naming
    // alice's flow 33.
    let peer = Source::Mesh(fqdn("fe2.contoso.test"));
    let mut msg = req(
        "BYE",
        "sip:alice@127.0.0.1:40000;transport=tls",
        &["Route: <sip:198.18.0.1:5071;lr>, <sip:127.0.0.1:5061;transport=tls;lr;ob=t33>"],
    );
    let r = by_request(&mut msg, &peer, None, &view());
    assert_eq!(r, Ok(Routed::Next(NextHop::Flow(33))));
    // alice's ACK, on her flow 33: fe1's entries popped, then fe2's mesh
    // entry names fe2.
    let mut msg = req(
        "ACK",
        "sip:bob@127.0.0.1:40002;transport=tls",
        &["Route: <sip:127.0.0.1:5061;transport=tls;lr;ob=t33>, <sip:198.18.0.1:5071;lr>, <sip:198.18.0.2:5071;lr>, <sip:127.0.0.1:5062;transport=tls;lr;ob=t4>"],
    );
    let r = by_request(&mut msg, &Source::Flow(33), None, &view());
    assert_eq!(r, mesh("fe2.contoso.test", MeshRoute::Dialog));
    assert_eq!(msg.routes().unwrap().len(), 2, "fe2's two entries are left for fe2");
}

#[test]
fn a_request_we_already_forwarded_is_a_loop() {
    let me = fqdn("fe1.contoso.test");
    let mut m = req("MESSAGE", "sip:bob@contoso.test", &[]);
    let hash = loop_hash(&m);
    assert_eq!(hash.len(), 16);
    assert!(!is_loop(&m, &me, &hash));
    m.push_header_front(Header::new(
        HeaderName::Via,
        &format!("SIP/2.0/TLS fe1.contoso.test;branch=z9hG4bK-y;sm={hash}"),
    ));
    assert!(is_loop(&m, &me, &hash));
    // Another node's Via with the same hash, or ours with another hash: no loop.
    assert!(!is_loop(&m, &fqdn("fe2.contoso.test"), &hash));
    assert!(!is_loop(&m, &me, "0000000000000000"));
    // The hash covers the Request-URI, Call-ID, From tag and CSeq.
    assert_ne!(loop_hash(&req("MESSAGE", "sip:carol@contoso.test", &[])), hash);
    assert_eq!(loop_hash(&req("MESSAGE", "sip:bob@contoso.test", &[])), hash);
}
