//! SIP end to end: a 3-node cluster (`cluster up --t1-ms 50`), user agents
//! speaking SIP over real TLS to the nodes' client ports (`sip_ua`), exact
//! status codes and bytes asserted on the wire.
//!
//! Unless said otherwise alice registers at fe1 and bob at fe3, so every
//! request crosses the mesh (fe1 → the AOR's home → fe3).

mod common;
mod sip_ua;

use std::time::{Duration, Instant};

use common::{fe, kill_sipmesh_pid, pid_alive, tail, ProcGuard};
use sip_ua::{
    aor, ca_path, client_addr, cseq, find_registration, first_line, hdr, password, reason, registration, request_uri,
    sip_cluster, text, Dialog, Ua, DOMAIN, WAIT,
};
use sipmesh::pki::IssueOptions;
use sipmesh_actors::proxy::home::home;
use sipmesh_actors::sip::{Header, HeaderName, SipMessage};

/// `user` connected to node `n` and registered (asserting 401 then 200).
async fn registered(cluster: &common::Cluster, user: &str, n: usize) -> Ua {
    let mut ua = Ua::connect(
        client_addr(cluster, &fe(n)),
        &ca_path(cluster),
        user,
        &password(cluster, user),
    )
    .await;
    let challenge = ua.send_register(600, None).await;
    assert_eq!(challenge.status(), Some(401), "{}", text(&challenge));
    assert_eq!(reason(&challenge), "Unauthorized");
    let algs: Vec<String> = challenge
        .headers_named(HeaderName::WwwAuthenticate)
        .map(|h| sip_ua::challenge_param(h.value_str(), "algorithm").unwrap_or_default())
        .collect();
    // MD5 first for clients that answer only the first challenge (see SipConfig::digest_algorithms).
    assert_eq!(algs, ["MD5", "SHA-256"], "{}", text(&challenge));
    let creds = ua.credentials_for(&challenge, "REGISTER", &password(cluster, user));
    let ok = ua.send_register(600, Some(creds)).await;
    assert_eq!(ok.status(), Some(200), "{user} REGISTER at fe{n}: {}", text(&ok));
    let contacts: Vec<String> = ok
        .headers_named(HeaderName::Contact)
        .map(|h| h.value_str().to_owned())
        .collect();
    assert_eq!(contacts.len(), 1, "{}", text(&ok));
    let want = format!("<{}>;expires=", ua.contact_uri());
    assert!(
        contacts[0].starts_with(&want),
        "Contact {:?} should start with {want:?}",
        contacts[0]
    );
    let expires: u32 = contacts[0][want.len()..].parse().expect("numeric expires");
    assert!((598..=600).contains(&expires), "expires={expires}");
    ua
}

/// A 3-node cluster with alice registered at fe1 and bob at fe3.
async fn alice_and_bob() -> (common::Cluster, Ua, Ua) {
    let cluster = sip_cluster(3);
    let alice = registered(&cluster, "alice", 1).await;
    let bob = registered(&cluster, "bob", 3).await;
    (cluster, alice, bob)
}

/// ~1 KB: UTF-8, CRLFs (including an empty line) and every byte 1..=255.
fn tricky_body() -> Vec<u8> {
    let mut b = "Grüße aus Zürich — ½ ☎ 日本語 🚀\r\nline two\r\n\r\nafter an empty line\n"
        .as_bytes()
        .to_vec();
    while b.len() < 1024 {
        b.extend(1u8..=255);
    }
    b.truncate(1100);
    assert!(!b.contains(&0));
    b
}

const SDP_OFFER: &str = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
const SDP_ANSWER: &str = "v=0\r\no=bob 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 51372 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

#[tokio::test]
async fn message_body_arrives_byte_identical_across_nodes() {
    let (_cluster, mut alice, mut bob) = alice_and_bob().await;
    let body = tricky_body();
    let sent = alice
        .request(
            "MESSAGE",
            &aor("bob"),
            &[
                "Content-Type: application/octet-stream".into(),
                "X-Opaque: kept  as-is".into(),
            ],
            &body,
        )
        .await;

    let got = bob.recv_request(WAIT).await;
    assert_eq!(got.method().map(|m| m.as_str()), Some("MESSAGE"), "{}", text(&got));
    assert_eq!(request_uri(&got), bob.contact_uri(), "retargeted to bob's contact");
    assert_eq!(got.body.as_ref(), body.as_slice(), "body must be byte-identical");
    assert_eq!(hdr(&got, HeaderName::ContentLength), body.len().to_string());
    assert_eq!(hdr(&got, HeaderName::ContentType), "application/octet-stream");
    assert_eq!(
        got.other_header("X-Opaque").map(|h| h.value_str().to_owned()),
        Some("kept  as-is".to_owned()),
        "unknown headers pass unchanged"
    );
    assert_eq!(got.call_id().ok(), Some(sent.call_id.as_str()));
    assert_eq!(
        got.from_hdr().ok().and_then(|f| f.uri.map(|u| u.aor())),
        Some(aor("alice"))
    );
    // Our Via at the bottom, one Via per node above it.
    let vias = got.vias().expect("vias");
    assert_eq!(vias.last().and_then(|v| v.branch()), Some(sent.branch.as_str()));
    assert!(vias.len() >= 3, "fe1, (home), fe3 and alice: {vias:?}");
    assert_eq!(vias[0].host, fe(3), "delivered by fe3");

    bob.respond(&got, 200, "OK", &[], b"").await;
    let (provisional, fin) = alice.final_response(&sent, WAIT).await;
    assert!(provisional.is_empty(), "no 1xx for MESSAGE: {provisional:?}");
    assert_eq!(fin.status(), Some(200), "{}", text(&fin));
    assert_eq!(fin.vias().expect("vias").len(), 1, "only alice's Via is left");
    alice.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn invite_ringing_answer_ack_bye_across_nodes() {
    let (cluster, mut alice, mut bob) = alice_and_bob().await;
    let invite = alice
        .request(
            "INVITE",
            &aor("bob"),
            &["Content-Type: application/sdp".into()],
            SDP_OFFER.as_bytes(),
        )
        .await;

    // bob: the INVITE, record-routed by fe3 (bob's flow) and fe1 (alice's flow).
    let inv = bob.recv_request_method("INVITE", WAIT).await;
    assert_eq!(request_uri(&inv), bob.contact_uri());
    assert_eq!(inv.body.as_ref(), SDP_OFFER.as_bytes());
    let rr: Vec<String> = inv
        .record_routes()
        .expect("Record-Route")
        .into_iter()
        .map(|r| r.raw_uri)
        .collect();
    // Each node faces each side with an entry that side can reach: fe3 its
    // client port (bob's flow) and its mesh address, fe1 its mesh address and
    // its client port (alice's flow). Addresses only: a phone resolves nothing.
    let node = |n: usize| {
        cluster
            .info
            .nodes
            .iter()
            .find(|i| i.fqdn == fe(n))
            .expect("node")
            .clone()
    };
    assert_eq!(rr.len(), 4, "double Record-Route of fe3 and fe1: {rr:?}");
    assert!(
        rr[0].starts_with(&format!("sip:{};transport=tls;lr;ob=", node(3).client_addr)),
        "{rr:?}"
    );
    assert_eq!(rr[1], format!("sip:{};lr", node(3).mesh_addr), "{rr:?}");
    assert_eq!(rr[2], format!("sip:{};lr", node(1).mesh_addr), "{rr:?}");
    assert!(
        rr[3].starts_with(&format!("sip:{};transport=tls;lr;ob=", node(1).client_addr)),
        "{rr:?}"
    );
    let mut bob_dialog = Dialog::uas(&inv);
    assert_eq!(bob_dialog.remote_target, alice.contact_uri());

    let contact = format!("Contact: <{}>", bob.contact_uri());
    bob.respond(&inv, 180, "Ringing", std::slice::from_ref(&contact), b"")
        .await;
    bob.respond(
        &inv,
        200,
        "OK",
        &[contact.clone(), "Content-Type: application/sdp".into()],
        SDP_ANSWER.as_bytes(),
    )
    .await;

    // alice: 100 (fe1, hop by hop), 180, 200.
    let (provisional, ok) = alice.final_response(&invite, WAIT).await;
    let codes: Vec<u16> = provisional.iter().filter_map(SipMessage::status).collect();
    assert_eq!(
        codes,
        [100, 180],
        "{:?}",
        provisional.iter().map(first_line).collect::<Vec<_>>()
    );
    let trying = &provisional[0];
    assert_eq!(trying.vias().expect("vias").len(), 1);
    assert!(
        trying.to_hdr().expect("To").tag().is_none(),
        "100 Trying carries no To tag"
    );
    assert!(
        hdr(trying, HeaderName::Server).starts_with("sipmesh/"),
        "{}",
        text(trying)
    );
    assert_eq!(ok.status(), Some(200), "{}", text(&ok));
    assert_eq!(ok.body.as_ref(), SDP_ANSWER.as_bytes());
    assert_eq!(
        ok.to_hdr().expect("To").tag().map(str::to_owned),
        Some(sip_ua::local_tag_for(&inv)),
        "bob's tag reaches alice"
    );
    let mut alice_dialog = Dialog::uac(&invite, &ok);
    assert_eq!(alice_dialog.remote_target, bob.contact_uri());
    assert_eq!(alice_dialog.route_set.len(), 4, "{:?}", alice_dialog.route_set);
    assert!(alice_dialog.route_set[0].starts_with(&format!("<sip:{};transport=tls;lr;", node(1).client_addr)));

    // ACK and BYE along the route set.
    alice_dialog.ack(&mut alice).await;
    let ack = bob.recv_request_method("ACK", WAIT).await;
    assert_eq!(cseq(&ack), (invite.cseq, "ACK".to_owned()));
    assert_eq!(request_uri(&ack), bob.contact_uri());
    assert!(ack.header(HeaderName::Route).is_none(), "{}", text(&ack));

    let bye = alice_dialog.send_request(&mut alice, "BYE").await;
    let got = bob.recv_request_method("BYE", WAIT).await;
    assert!(
        got.header(HeaderName::Route).is_none(),
        "the nodes consume their Route entries:\n{}",
        text(&got)
    );
    assert_eq!(request_uri(&got), bob.contact_uri());
    assert_eq!(cseq(&got), (invite.cseq + 1, "BYE".to_owned()));
    assert_eq!(got.call_id().ok(), Some(invite.call_id.as_str()));
    bob.respond(&got, 200, "OK", &[], b"").await;
    let (_, bye_ok) = alice.final_response(&bye, WAIT).await;
    assert_eq!(bye_ok.status(), Some(200), "{}", text(&bye_ok));

    // bob can also send in the dialog; check his route set reaches alice.
    let bob_bye = bob_dialog.send_request(&mut bob, "INFO").await;
    let info = alice.recv_request_method("INFO", WAIT).await;
    assert!(info.header(HeaderName::Route).is_none(), "{}", text(&info));
    assert_eq!(request_uri(&info), alice.contact_uri());
    alice.respond(&info, 200, "OK", &[], b"").await;
    let (_, info_ok) = bob.final_response(&bob_bye, WAIT).await;
    assert_eq!(info_ok.status(), Some(200), "{}", text(&info_ok));
}

/// In-dialog requests go where the route set says, the way a phone sends
/// them (RFC 3261 §12.2.1.1): to the first Route entry's address, here over a
/// new TLS connection of the same user (a phone may keep its flow or open
/// another, which authenticates first). The entries name only addresses, and
/// the flow tokens deliver to the other side's connection whichever of the
/// user's connections the request comes in on.
#[tokio::test]
async fn in_dialog_requests_follow_the_route_set_on_new_connections() {
    let (cluster, mut alice, mut bob) = alice_and_bob().await;
    let invite = alice.request("INVITE", &aor("bob"), &[], b"").await;
    let inv = bob.recv_request_method("INVITE", WAIT).await;
    for r in inv.record_routes().expect("Record-Route") {
        let uri = sipmesh_actors::sip::SipUri::parse(&r.raw_uri).expect("Record-Route URI");
        assert!(uri.host.ip().is_some(), "a name in the route set: {}", r.raw_uri);
    }
    let mut bob_dialog = Dialog::uas(&inv);
    let contact = format!("Contact: <{}>", bob.contact_uri());
    bob.respond(&inv, 200, "OK", std::slice::from_ref(&contact), b"").await;
    let (_, ok) = alice.final_response(&invite, WAIT).await;
    assert_eq!(ok.status(), Some(200), "{}", text(&ok));
    let mut alice_dialog = Dialog::uac(&invite, &ok);
    assert_eq!(alice_dialog.first_hop(), client_addr(&cluster, &fe(1)));
    assert_eq!(bob_dialog.first_hop(), client_addr(&cluster, &fe(3)));

    // alice's ACK on her flow (an ACK cannot be challenged, so a phone sends
    // it where it is known), her BYE from a second connection to her first hop.
    let ca = ca_path(&cluster);
    alice_dialog.ack(&mut alice).await;
    let mut alice2 = Ua::connect(alice_dialog.first_hop(), &ca, "alice", &password(&cluster, "alice")).await;
    let ack = bob.recv_request_method("ACK", WAIT).await;
    assert_eq!(cseq(&ack), (invite.cseq, "ACK".to_owned()));
    bob.expect_silence(Duration::from_millis(300)).await;

    let bye = alice_dialog.send_request(&mut alice2, "BYE").await;
    let (_, challenge) = alice2.final_response(&bye, WAIT).await;
    assert_eq!(
        challenge.status(),
        Some(407),
        "a new connection proves who it is: {}",
        text(&challenge)
    );
    let creds = alice2.credentials_for_uri(&challenge, "BYE", &bob.contact_uri());
    let mut with_creds = alice_dialog.request(&alice2, "BYE", alice_dialog.local_cseq + 1, b"");
    alice_dialog.local_cseq += 1;
    with_creds
        .msg
        .push_header_front(Header::new(HeaderName::ProxyAuthorization, &creds));
    alice2.send(&with_creds.msg).await;
    let got = bob.recv_request_method("BYE", WAIT).await;
    assert!(got.header(HeaderName::Route).is_none(), "{}", text(&got));
    bob.respond(&got, 200, "OK", &[], b"").await;
    let (_, bye_ok) = alice2.final_response(&with_creds, WAIT).await;
    assert_eq!(bye_ok.status(), Some(200), "{}", text(&bye_ok));

    // bob, from a second connection to his first hop, reaches alice's first flow.
    let mut bob2 = Ua::connect(bob_dialog.first_hop(), &ca, "bob", &password(&cluster, "bob")).await;
    let info = bob_dialog.send_request(&mut bob2, "INFO").await;
    let (_, challenge) = bob2.final_response(&info, WAIT).await;
    assert_eq!(challenge.status(), Some(407), "{}", text(&challenge));
    let creds = bob2.credentials_for_uri(&challenge, "INFO", &alice.contact_uri());
    bob_dialog.local_cseq += 1;
    let mut with_creds = bob_dialog.request(&bob2, "INFO", bob_dialog.local_cseq, b"");
    with_creds
        .msg
        .push_header_front(Header::new(HeaderName::ProxyAuthorization, &creds));
    bob2.send(&with_creds.msg).await;
    let got = alice.recv_request_method("INFO", WAIT).await;
    assert_eq!(request_uri(&got), alice.contact_uri());
    alice.respond(&got, 200, "OK", &[], b"").await;
    let (_, r) = bob2.final_response(&with_creds, WAIT).await;
    assert_eq!(r.status(), Some(200), "{}", text(&r));
}

#[tokio::test]
async fn cancel_before_answer_gives_200_and_487() {
    let (cluster, mut alice, mut bob) = alice_and_bob().await;
    let invite = alice
        .request(
            "INVITE",
            &aor("bob"),
            &["Content-Type: application/sdp".into()],
            SDP_OFFER.as_bytes(),
        )
        .await;
    let inv = bob.recv_request_method("INVITE", WAIT).await;
    bob.respond(
        &inv,
        180,
        "Ringing",
        &[format!("Contact: <{}>", bob.contact_uri())],
        b"",
    )
    .await;
    let ringing = alice.recv_matching(WAIT, "180", |m| m.status() == Some(180)).await;
    assert_eq!(cseq(&ringing), (invite.cseq, "INVITE".to_owned()));

    alice.cancel(&invite).await;
    let cancel_ok = alice.recv_response_to(&invite.branch, "CANCEL", WAIT).await;
    assert_eq!(cancel_ok.status(), Some(200), "{}", text(&cancel_ok));
    assert_eq!(cseq(&cancel_ok), (invite.cseq, "CANCEL".to_owned()));

    // bob: CANCEL (answered 200), then the INVITE answered 487.
    let cancel = bob.recv_request_method("CANCEL", WAIT).await;
    assert_eq!(cseq(&cancel), (invite.cseq, "CANCEL".to_owned()));
    assert_eq!(
        cancel.top_via().expect("Via").branch(),
        inv.top_via().expect("Via").branch(),
        "CANCEL matches the INVITE's transaction at bob"
    );
    bob.respond(&cancel, 200, "OK", &[], b"").await;
    bob.respond(&inv, 487, "Request Terminated", &[], b"").await;

    let mut terminated = None;
    let deadline = Instant::now() + WAIT;
    while terminated.is_none() && Instant::now() < deadline {
        match alice.recv(deadline.saturating_duration_since(Instant::now())).await {
            Some(r) if cseq(&r) == (invite.cseq, "INVITE".to_owned()) && r.status().unwrap_or(0) >= 200 => {
                terminated = Some(r)
            }
            Some(other) => eprintln!("alice, waiting for the 487, read: {}", first_line(&other)),
            None => break,
        }
    }
    let Some(terminated) = &terminated else {
        let counters: Vec<String> = cluster
            .info
            .nodes
            .iter()
            .map(|n| format!("{}: {}", n.fqdn, cluster.debug(&n.fqdn, "status")["sip"]))
            .collect();
        panic!(
            "alice got no final response to the INVITE within {WAIT:?} after bob's 487; node SIP counters:\n{}",
            counters.join("\n")
        );
    };
    assert_eq!(terminated.status(), Some(487), "{}", text(terminated));
    alice.ack_failure(&invite, terminated).await;

    // The proxy at bob's side ACKs the 487 hop by hop.
    let ack = bob.recv_request_method("ACK", WAIT).await;
    assert_eq!(cseq(&ack), (invite.cseq, "ACK".to_owned()));
    assert_eq!(
        ack.top_via().expect("Via").branch(),
        inv.top_via().expect("Via").branch(),
        "ACK for a non-2xx has the INVITE's branch"
    );
    // Nothing else: no second CANCEL answer, no stray 487, no ACK leaking to bob twice.
    alice.expect_silence(Duration::from_millis(500)).await;
    bob.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn not_found_unavailable_and_too_many_hops() {
    let (_cluster, mut alice, mut bob) = alice_and_bob().await;

    let nobody = alice
        .request("MESSAGE", &aor("nobody"), &["Content-Type: text/plain".into()], b"hi")
        .await;
    let (_, r) = alice.final_response(&nobody, WAIT).await;
    assert_eq!(
        (r.status(), reason(&r).as_str()),
        (Some(404), "Not Found"),
        "{}",
        text(&r)
    );

    let carol = alice
        .request("MESSAGE", &aor("carol"), &["Content-Type: text/plain".into()], b"hi")
        .await;
    let (_, r) = alice.final_response(&carol, WAIT).await;
    assert_eq!(
        (r.status(), reason(&r).as_str()),
        (Some(480), "Temporarily Unavailable"),
        "{}",
        text(&r)
    );

    let mut hop = alice.build_request(
        "MESSAGE",
        &aor("bob"),
        &aor("bob"),
        &["Content-Type: text/plain".into()],
        b"hi",
    );
    hop.msg.set_header(Header::new(HeaderName::MaxForwards, "0"));
    alice.send(&hop.msg).await;
    let (_, r) = alice.final_response(&hop, WAIT).await;
    assert_eq!(
        (r.status(), reason(&r).as_str()),
        (Some(483), "Too Many Hops"),
        "{}",
        text(&r)
    );

    bob.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn unanswered_message_times_out_with_408() {
    let (cluster, mut alice, mut bob) = alice_and_bob().await;
    let sent = alice
        .request("MESSAGE", &aor("bob"), &["Content-Type: text/plain".into()], b"anyone?")
        .await;
    let start = Instant::now();
    let got = bob.recv_request_method("MESSAGE", WAIT).await;
    assert_eq!(got.body.as_ref(), b"anyone?");
    // bob never answers.
    let (_, r) = alice.final_response(&sent, Duration::from_secs(6)).await;
    let took = start.elapsed();
    assert_eq!(
        (r.status(), reason(&r).as_str()),
        (Some(408), "Request Timeout"),
        "{}",
        text(&r)
    );
    let timeout = Duration::from_millis(64 * sip_ua::T1_MS);
    assert!(
        took >= timeout - Duration::from_millis(100) && took < Duration::from_secs(4),
        "408 after {took:?}; 64*T1 = {timeout:?}"
    );
    // Exactly one final answer.
    alice.expect_silence(Duration::from_millis(500)).await;
    let status = cluster.debug(&fe(1), "status");
    assert_eq!(
        status["sip"]["transactions"]["MESSAGE"]["408"], 1,
        "fe1 counts one MESSAGE 408: {status}"
    );
}

#[tokio::test]
async fn flow_node_down_gives_503_with_retry_after() {
    let cluster = sip_cluster(3);
    let mut alice = registered(&cluster, "alice", 1).await;
    // The callee's flow is on fe3; its home must be elsewhere, or losing fe3
    // moves the home and the answer is 480 (no binding at the new home).
    let nodes = [fe(1), fe(2), fe(3)];
    let callee = ["bob", "carol", "dave"]
        .into_iter()
        .find(|u| home(&aor(u), nodes.iter().map(String::as_str)) != Some(fe(3).as_str()))
        .expect("a user whose home is not fe3");
    let _callee_ua = registered(&cluster, callee, 3).await;
    let (home_node, row) = find_registration(&cluster, &aor(callee));
    assert_eq!(row["flow_node"], fe(3), "{row}");
    assert_ne!(home_node, fe(3));
    eprintln!("callee {callee}: home {home_node}, flow on fe3");

    let fe3 = cluster.node(&fe(3)).clone();
    kill_sipmesh_pid(fe3.pid);
    common::eventually(Duration::from_secs(5), "fe3 dead", || {
        (!pid_alive(fe3.pid)).then_some(())
    });
    for n in [fe(1), home_node.clone()] {
        common::eventually(Duration::from_secs(5), &format!("{n} sees fe3's link not up"), || {
            (cluster.link(&n, &fe(3))["state"] != "up").then_some(())
        });
    }

    let sent = alice
        .request("MESSAGE", &aor(callee), &["Content-Type: text/plain".into()], b"hello?")
        .await;
    let (_, r) = alice.final_response(&sent, WAIT).await;
    assert_eq!(
        (r.status(), reason(&r).as_str()),
        (Some(503), "Service Unavailable"),
        "{}",
        text(&r)
    );
    assert_eq!(hdr(&r, HeaderName::RetryAfter), "5");
}

#[tokio::test]
async fn wrong_password_is_challenged_then_forbidden() {
    let cluster = sip_cluster(3);
    let mut carol = Ua::connect(client_addr(&cluster, &fe(1)), &ca_path(&cluster), "carol", "wrong").await;
    let mut last = carol.send_register(600, None).await;
    assert_eq!(last.status(), Some(401), "{}", text(&last));
    let mut codes = Vec::new();
    for _ in 0..3 {
        let creds = carol.credentials_for(&last, "REGISTER", "not-the-password");
        last = carol.send_register(600, Some(creds)).await;
        codes.push(last.status().unwrap_or(0));
        if last.status() == Some(401) {
            assert!(last.header(HeaderName::WwwAuthenticate).is_some(), "{}", text(&last));
        }
    }
    assert_eq!(codes, [401, 401, 403], "limit of 3 failures; last:\n{}", text(&last));
    assert_eq!(reason(&last), "Forbidden (too many failed authentication attempts)");
    assert!(last.header(HeaderName::WwwAuthenticate).is_none());
    assert!(registration(&cluster, &find_home(&cluster, "carol"), &aor("carol")).is_none());
}

fn find_home(cluster: &common::Cluster, user: &str) -> String {
    let nodes: Vec<String> = cluster.info.nodes.iter().map(|n| n.fqdn.clone()).collect();
    home(&aor(user), nodes.iter().map(String::as_str))
        .expect("a home")
        .to_owned()
}

#[tokio::test]
async fn spoofed_from_is_forbidden() {
    let (_cluster, mut alice, mut bob) = alice_and_bob().await;
    let mut spoof = alice.build_request(
        "MESSAGE",
        &aor("carol"),
        &aor("carol"),
        &["Content-Type: text/plain".into()],
        b"it's bob, honest",
    );
    spoof
        .msg
        .set_header(Header::new(HeaderName::From, &format!("<{}>;tag=spoof1", aor("bob"))));
    alice.send(&spoof.msg).await;
    let (_, r) = alice.final_response(&spoof, WAIT).await;
    assert_eq!(r.status(), Some(403), "{}", text(&r));
    assert_eq!(
        reason(&r),
        "Forbidden (From does not match the authenticated identity sip:alice@contoso.test)"
    );
    bob.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn client_certificate_authenticates_without_challenge() {
    let (cluster, _alice, mut bob) = alice_and_bob().await;
    let out = cluster.tmp.path().join("dave-cert");
    let cert = sipmesh::pki::issue(
        &cluster.info.ca_dir,
        &IssueOptions {
            fqdn: "dave-phone.contoso.test".into(),
            uris: vec![aor("dave")],
            ..IssueOptions::new("dave-phone.contoso.test")
        },
        &out,
    )
    .expect("issue dave's certificate");
    let mut dave = Ua::connect_with_cert(client_addr(&cluster, &fe(2)), &ca_path(&cluster), "dave", &cert).await;
    let r = dave.send_register(600, None).await;
    assert_eq!(r.status(), Some(200), "no challenge for a certificate: {}", text(&r));
    assert!(hdr(&r, HeaderName::Contact).starts_with(&format!("<{}>", dave.contact_uri())));
    let (_, row) = find_registration(&cluster, &aor("dave"));
    assert_eq!(row["flow_node"], fe(2), "{row}");

    let sent = dave
        .request(
            "MESSAGE",
            &aor("bob"),
            &["Content-Type: text/plain".into()],
            b"from dave",
        )
        .await;
    let got = bob.recv_request_method("MESSAGE", WAIT).await;
    assert_eq!(got.body.as_ref(), b"from dave");
    assert_eq!(
        got.from_hdr().ok().and_then(|f| f.uri.map(|u| u.aor())),
        Some(aor("dave"))
    );
    bob.respond(&got, 200, "OK", &[], b"").await;
    let (prov, fin) = dave.final_response(&sent, WAIT).await;
    assert!(prov.is_empty());
    assert_eq!(fin.status(), Some(200), "{}", text(&fin));

    // The certificate names dave: claiming alice is refused.
    let mut spoof = dave.build_request("MESSAGE", &aor("bob"), &aor("bob"), &[], b"x");
    spoof
        .msg
        .set_header(Header::new(HeaderName::From, &format!("<{}>;tag=s2", aor("alice"))));
    dave.send(&spoof.msg).await;
    let (_, r) = dave.final_response(&spoof, WAIT).await;
    assert_eq!(r.status(), Some(403), "{}", text(&r));
}

#[tokio::test]
async fn registration_survives_a_restart_of_the_home_node() {
    let (mut cluster, _alice, bob) = alice_and_bob().await;
    let (home_node, before) = find_registration(&cluster, &aor("bob"));
    assert_eq!(before["contact"], bob.contact_uri(), "{before}");
    let info = cluster.node(&home_node).clone();
    eprintln!("bob's home is {home_node}");

    kill_sipmesh_pid(info.pid);
    common::eventually(Duration::from_secs(5), "home node dead", || {
        (!pid_alive(info.pid)).then_some(())
    });
    let log = cluster.tmp.path().join("restarted-home.log");
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(["node", "run", "--config"]).arg(&info.config);
    cluster
        .extra
        .push(ProcGuard::spawn(&format!("{home_node} (restarted)"), cmd, &log));
    let row = common::poll_until(common::NODE_READY_DEADLINE, common::POLL, || {
        common::try_debug(&info.debug_socket, "registrations")
            .ok()
            .and_then(|v| v.as_array().cloned())
            .and_then(|rows| rows.into_iter().find(|r| r["aor"] == aor("bob")))
    })
    .unwrap_or_else(|| panic!("restarted {home_node} does not list bob:\n{}", tail(&log, 40)));
    assert_eq!(row["contact"], bob.contact_uri(), "{row}");
    assert_eq!(row["flow_node"], fe(3), "{row}");
    let left = row["expires_in"].as_u64().expect("expires_in");
    assert!(left > 0 && left <= 600, "expires_in={left}");
}

#[tokio::test]
async fn options_to_the_node_itself() {
    let (_cluster, mut alice, _bob) = alice_and_bob().await;
    let target = format!("sip:{}", fe(1));
    let sent = alice.request("OPTIONS", &target, &[], b"").await;
    let (_, r) = alice.final_response(&sent, WAIT).await;
    assert_eq!(r.status(), Some(200), "{}", text(&r));
    assert_eq!(hdr(&r, HeaderName::Allow), sipmesh_actors::proxy::ALLOW);
    assert_eq!(r.body.len(), 0);
}

#[tokio::test]
async fn malformed_request_gets_400_and_the_connection_survives() {
    let cluster = sip_cluster(3);
    let mut ua = Ua::connect(
        client_addr(&cluster, &fe(1)),
        &ca_path(&cluster),
        "alice",
        &password(&cluster, "alice"),
    )
    .await;
    let branch = sip_ua::new_branch();
    let bad = format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: <{a}>;tag=1\r\nTo: <{a}>\r\n\
         CSeq: 1 REGISTER\r\nContact: <{c}>\r\nContent-Length: 0\r\n\r\n",
        ua.via(&branch),
        a = aor("alice"),
        c = ua.contact_uri(),
    );
    ua.send_raw(bad.as_bytes()).await;
    let r = ua.recv_response(WAIT).await;
    assert_eq!(
        (r.status(), reason(&r).as_str()),
        (Some(400), "Missing Call-ID"),
        "{}",
        text(&r)
    );
    assert_eq!(r.top_via().expect("Via").branch(), Some(branch.as_str()));
    assert!(
        r.header(HeaderName::CallId).is_none(),
        "no Call-ID to copy: {}",
        text(&r)
    );
    assert_eq!(
        ua.invalid,
        ["missing Call-ID header"],
        "the answer itself lacks Call-ID"
    );
    let ok = ua.register(600).await;
    assert_eq!(ok.status(), Some(200), "same connection still works: {}", text(&ok));
    assert!(!ua.is_closed());
}

/// Soft state heals: when an AOR's home node leaves, requests for it get 480
/// (the new home holds no binding) until the client re-registers over its
/// still-open connection; the REGISTER lands at the new home and delivery
/// works again.
#[tokio::test]
async fn re_registration_moves_a_binding_to_the_new_home() {
    let cluster = sip_cluster(3);
    let nodes = [fe(1), fe(2), fe(3)];
    // A callee homed away from fe1 (the caller's node) and connected to the
    // third node, so losing its home leaves both ends of the call alive.
    let (callee, home_n) = ["bob", "carol", "dave"]
        .into_iter()
        .find_map(|u| {
            let h = home(&aor(u), nodes.iter().map(String::as_str))?;
            (h != fe(1)).then(|| (u, nodes.iter().position(|n| n == h).unwrap() + 1))
        })
        .expect("a user homed away from fe1");
    let flow_n = 5 - home_n; // the node that is neither fe1 nor the home
    let mut alice = registered(&cluster, "alice", 1).await;
    let mut callee_ua = registered(&cluster, callee, flow_n).await;
    assert!(registration(&cluster, &fe(home_n), &aor(callee)).is_some());

    let old_home = cluster.node(&fe(home_n)).clone();
    kill_sipmesh_pid(old_home.pid);
    for n in [fe(1), fe(flow_n)] {
        common::eventually(
            Duration::from_secs(5),
            &format!("{n} sees the old home's link not up"),
            || (cluster.link(&n, &fe(home_n))["state"] != "up").then_some(()),
        );
    }
    let new_home = home(&aor(callee), [fe(1).as_str(), fe(flow_n).as_str()])
        .expect("a new home")
        .to_owned();

    let sent = alice
        .request(
            "MESSAGE",
            &aor(callee),
            &["Content-Type: text/plain".into()],
            b"anyone?",
        )
        .await;
    let (_, r) = alice.final_response(&sent, WAIT).await;
    assert_eq!(r.status(), Some(480), "{}", text(&r));

    let again = callee_ua.register(600).await;
    assert_eq!(again.status(), Some(200), "{}", text(&again));
    let row = registration(&cluster, &new_home, &aor(callee)).expect("binding at the new home");
    assert_eq!(row["flow_node"], fe(flow_n), "{row}");

    let sent = alice
        .request(
            "MESSAGE",
            &aor(callee),
            &["Content-Type: text/plain".into()],
            b"there you are",
        )
        .await;
    let got = callee_ua.recv_request_method("MESSAGE", WAIT).await;
    assert_eq!(&got.body[..], b"there you are");
    callee_ua.respond(&got, 200, "OK", &[], b"").await;
    let (_, r) = alice.final_response(&sent, WAIT).await;
    assert_eq!(r.status(), Some(200), "{}", text(&r));
}

/// The registrar: add a second contact, fetch, shorten an over-long expiry,
/// refuse a too-short one with 423 + Min-Expires, remove one contact, refuse
/// `*` without `Expires: 0`, then remove all with `*`.
#[tokio::test]
async fn registrar_add_fetch_remove_and_limits() {
    let cluster = sip_cluster(3);
    let mut alice = registered(&cluster, "alice", 1).await;
    let home_node = find_home(&cluster, "alice");
    let contacts =
        |r: &SipMessage| -> Vec<String> { r.values(HeaderName::Contact).iter().map(|v| v.to_string()).collect() };
    let desk = "<sip:alice@127.0.0.2:5061;transport=tls>";

    let r = alice
        .register_with(Some("<sip:alice@127.0.0.3:5061;transport=tls>;expires=30"), None)
        .await;
    assert_eq!(
        (r.status(), reason(&r).as_str()),
        (Some(423), "Interval Too Brief"),
        "{}",
        text(&r)
    );
    assert_eq!(hdr(&r, HeaderName::MinExpires), "60");

    let r = alice.register_with(Some(desk), Some("7200")).await;
    assert_eq!(r.status(), Some(200), "{}", text(&r));
    let listed = contacts(&r);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed
            .iter()
            .any(|c| c == &format!("{desk};expires=3600") || c == &format!("{desk};expires=3599")),
        "max_expires caps 7200 to 3600: {listed:?}"
    );

    let r = alice.register_with(None, None).await;
    assert_eq!(r.status(), Some(200), "{}", text(&r));
    assert_eq!(contacts(&r).len(), 2, "fetch lists both: {}", text(&r));
    let rows = cluster.debug(&home_node, "registrations");
    assert_eq!(
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|b| b["aor"] == aor("alice"))
            .count(),
        2
    );

    let r = alice.register_with(Some(desk), Some("0")).await;
    assert_eq!(r.status(), Some(200), "{}", text(&r));
    let left = contacts(&r);
    assert_eq!(left.len(), 1, "{}", text(&r));
    let expires: u32 = left[0]
        .strip_prefix(&format!("<{}>;expires=", alice.contact_uri()))
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("only the original contact is left: {left:?}"));
    // Registered for 600 s a moment ago (a second may have ticked since).
    assert!((598..=600).contains(&expires), "{left:?}");

    let r = alice.register_with(Some("*"), Some("300")).await;
    assert_eq!(r.status(), Some(400), "{}", text(&r));
    assert_eq!(reason(&r), "Invalid Star Contact (needs Expires: 0)");

    let r = alice.register_with(Some("*"), Some("0")).await;
    assert_eq!(r.status(), Some(200), "{}", text(&r));
    assert!(contacts(&r).is_empty(), "{}", text(&r));
    assert!(registration(&cluster, &home_node, &aor("alice")).is_none());
}

/// SUBSCRIBE creates a record-routed dialog whose NOTIFY crosses the mesh
/// back along the route set; an unknown method is proxied like any non-INVITE.
#[tokio::test]
async fn subscribe_notify_and_unknown_methods_cross_the_mesh() {
    let (_cluster, mut alice, mut bob) = alice_and_bob().await;

    let foo = alice
        .request("FOO", &aor("bob"), &["X-Custom: kept as is".into()], b"")
        .await;
    let got = bob.recv_request_method("FOO", WAIT).await;
    assert_eq!(request_uri(&got), bob.contact_uri());
    assert_eq!(got.other_header("X-Custom").map(|h| h.value_str()), Some("kept as is"));
    assert!(
        got.record_routes().expect("Record-Route").is_empty(),
        "FOO is not dialog-creating"
    );
    bob.respond(&got, 200, "OK", &[], b"").await;
    let (_, r) = alice.final_response(&foo, WAIT).await;
    assert_eq!(r.status(), Some(200), "{}", text(&r));

    let sub = alice
        .request(
            "SUBSCRIBE",
            &aor("bob"),
            &["Event: presence".into(), "Expires: 600".into()],
            b"",
        )
        .await;
    let got = bob.recv_request_method("SUBSCRIBE", WAIT).await;
    assert_eq!(got.record_routes().expect("Record-Route").len(), 4, "{}", text(&got));
    let mut bob_dialog = Dialog::uas(&got);
    let contact = format!("Contact: <{}>", bob.contact_uri());
    bob.respond(&got, 200, "OK", &[contact, "Expires: 600".into()], b"")
        .await;
    let (_, ok) = alice.final_response(&sub, WAIT).await;
    assert_eq!(ok.status(), Some(200), "{}", text(&ok));

    let notify = bob_dialog.send_request(&mut bob, "NOTIFY").await;
    let got = alice.recv_request_method("NOTIFY", WAIT).await;
    assert_eq!(request_uri(&got), alice.contact_uri());
    assert!(
        got.routes().expect("Route").is_empty(),
        "every Route consumed: {}",
        text(&got)
    );
    assert_eq!(got.call_id().unwrap(), sub.call_id);
    alice.respond(&got, 200, "OK", &[], b"").await;
    let (_, r) = bob.final_response(&notify, WAIT).await;
    assert_eq!(r.status(), Some(200), "{}", text(&r));
}

/// Sequential forking by q-value through the mesh (RFC 3261 §16.6 step
/// 11): bob's desk phone (q=1, fe3) rings first; only when it declines
/// does his mobile (q=0.5, fe2) ring and take the call.
#[tokio::test]
async fn q_values_ring_bobs_devices_in_turn() {
    let cluster = sip_cluster(3);
    let mut alice = sip_ua::registered(&cluster, "alice", 1).await;
    let mut desk = sip_ua::registered(&cluster, "bob", 3).await;
    let mut mobile = sip_ua::registered(&cluster, "bob", 2).await;
    let lower = format!("<{}>;q=0.5", mobile.contact_uri());
    let r = mobile.register_with(Some(&lower), Some("600")).await;
    assert_eq!(r.status(), Some(200), "{}", text(&r));

    let invite = alice.request("INVITE", &aor("bob"), &[], b"").await;
    let at_desk = desk.recv_request_method("INVITE", WAIT).await;
    assert_eq!(request_uri(&at_desk), desk.contact_uri());
    mobile.expect_silence(Duration::from_millis(300)).await;
    desk.respond(&at_desk, 480, "Temporarily Unavailable", &[], b"").await;
    let at_mobile = mobile.recv_request_method("INVITE", WAIT).await;
    assert_eq!(request_uri(&at_mobile), mobile.contact_uri());
    let contact = format!("Contact: <{}>", mobile.contact_uri());
    mobile.respond(&at_mobile, 200, "OK", &[contact], b"").await;
    let (provisional, ok) = alice.final_response(&invite, WAIT).await;
    assert_eq!(ok.status(), Some(200), "{}", text(&ok));
    assert_eq!(
        provisional.iter().filter_map(SipMessage::status).collect::<Vec<_>>(),
        [100],
        "the desk's 480 never reaches alice"
    );
    // The desk got the hop-by-hop ACK of its 480, and nothing else.
    assert_eq!(
        desk.recv_request_method("ACK", WAIT)
            .await
            .method()
            .map(|m| m.to_string())
            .as_deref(),
        Some("ACK")
    );
    desk.expect_silence(Duration::from_millis(300)).await;
}

/// `GET /metrics` of a node, the body.
fn scrape(cluster: &common::Cluster, fqdn: &str) -> String {
    use std::io::{Read, Write};
    let addr = cluster.node(fqdn).metrics_addr.clone().expect("metrics_addr");
    let mut tcp = std::net::TcpStream::connect(addr.as_str()).unwrap();
    write!(tcp, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[tokio::test]
async fn transaction_durations_and_registrations_show_in_the_metrics() {
    let (cluster, mut alice, mut bob) = alice_and_bob().await;
    let sent = alice
        .request("MESSAGE", &aor("bob"), &["Content-Type: text/plain".into()], b"timed")
        .await;
    let got = bob.recv_request_method("MESSAGE", WAIT).await;
    bob.respond(&got, 200, "OK", &[], b"").await;
    let (_, r) = alice.final_response(&sent, WAIT).await;
    assert_eq!(r.status(), Some(200), "{}", text(&r));
    // alice's node and bob's node each held one MESSAGE transaction.
    for fqdn in [fe(1), fe(3)] {
        let body = scrape(&cluster, &fqdn);
        assert!(
            body.contains("# TYPE sipmesh_sip_transaction_duration_seconds histogram"),
            "{body}"
        );
        assert!(
            body.contains("sipmesh_sip_transaction_duration_seconds_count{method=\"MESSAGE\"} 1\n"),
            "{fqdn}:\n{body}"
        );
        assert!(
            body.contains("sipmesh_sip_transaction_duration_seconds_bucket{le=\"+Inf\",method=\"MESSAGE\"} 1\n"),
            "{fqdn}:\n{body}"
        );
    }
    // Two bindings, each stored once at its home; no queue is holding or dropping.
    let mut bindings = 0;
    for n in 1..=3 {
        let body = scrape(&cluster, &fe(n));
        let line = body
            .lines()
            .find(|l| l.starts_with("sipmesh_registrations "))
            .unwrap_or_else(|| panic!("fe{n}: no sipmesh_registrations:\n{body}"));
        bindings += line.rsplit(' ').next().unwrap().parse::<u64>().unwrap();
        for peer in (1..=3).filter(|p| *p != n).map(fe) {
            assert!(
                body.contains(&format!("sipmesh_link_queue_depth{{peer=\"{peer}\"}} 0\n")),
                "{body}"
            );
            assert!(
                body.contains(&format!("sipmesh_link_queue_drops_total{{peer=\"{peer}\"}} 0\n")),
                "{body}"
            );
        }
        assert!(body.contains("sipmesh_registrar_queue_drops_total 0\n"), "{body}");
    }
    assert_eq!(bindings, 2);
}
