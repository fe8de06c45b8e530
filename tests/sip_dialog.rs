//! Dialog state at the client door (issue 8, holes 2 and 5), end to end on a
//! 3-node cluster:
//!
//! - only an ACK/CANCEL that matches a transaction or a dialog this proxy
//!   record-routed skips authentication;
//! - the flow tokens in our Record-Route are MACed and bound to the flow: a
//!   token of another flow, a moved one or a forged one reaches nobody;
//! - P-Asserted-Identity / P-Preferred-Identity from clients are removed, and
//!   the identity the mesh carries is asserted to clients only when
//!   `sip.assert_identity_to_clients` says so.

mod common;
mod sip_ua;

use std::time::Duration;

use common::{fe, kill_sipmesh_pid, pid_alive, tail, ProcGuard};
use sip_ua::{aor, ca_path, client_addr, reason, registered, request_uri, sip_cluster, text, Dialog, Ua, WAIT};
use sipmesh_actors::proxy::home::home;
use sipmesh_actors::sip::{HeaderName, SipMessage};

/// How long "nothing arrives" is watched for.
const SILENCE: Duration = Duration::from_millis(500);

/// A connection to node `n` that never authenticates.
async fn stranger(cluster: &common::Cluster, n: usize) -> Ua {
    Ua::connect(
        client_addr(cluster, &fe(n)),
        &ca_path(cluster),
        "mallory",
        "no-password",
    )
    .await
}

const SDP: &str =
    "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n";

/// A request written by hand on `ua`'s connection: From alice (whoever
/// sends it), the given Route lines, an SDP body.
fn forged(ua: &Ua, method: &str, ruri: &str, routes: &[String]) -> Vec<u8> {
    let mut s = format!(
        "{method} {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n",
        via = ua.via(&sip_ua::new_branch())
    );
    for r in routes {
        s.push_str(&format!("Route: {r}\r\n"));
    }
    s.push_str(&format!(
        "From: <{alice}>;tag=forged\r\nTo: <{bob}>;tag=callee\r\nCall-ID: forged-{n:x}@127.0.0.1\r\n\
         CSeq: 1 {method}\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{SDP}",
        alice = aor("alice"),
        bob = aor("bob"),
        n = rand::random::<u64>(),
        len = SDP.len(),
    ));
    s.into_bytes()
}

/// The `sip` section of node `n`'s `status`.
fn sip_status(cluster: &common::Cluster, n: usize) -> serde_json::Value {
    cluster.debug(&fe(n), "status")["sip"].clone()
}

/// The `ob=` token of a Record-Route value `sip:HOST;lr;ob=TOKEN`.
fn ob(rr: &str) -> String {
    rr.split(';')
        .find_map(|p| p.strip_prefix("ob="))
        .unwrap_or_else(|| panic!("no ob= in {rr:?}"))
        .trim_end_matches('>')
        .to_owned()
}

/// The same token pointed at the next flow id: `N+1` for a bare number (the
/// old sequential ids), `ID+1` with the MAC kept for `ID-MAC`.
fn moved(token: &str) -> String {
    if let Ok(n) = token.parse::<u64>() {
        return (n + 1).to_string();
    }
    let (id, mac) = token
        .split_once('-')
        .unwrap_or_else(|| panic!("token {token:?} is neither N nor ID-MAC"));
    let id = u64::from_str_radix(id, 16).unwrap_or_else(|e| panic!("token id {id:?}: {e}"));
    format!("{:016x}-{mac}", id + 1)
}

/// Values of every header named `name` (case-insensitive), as received.
fn values_named(msg: &SipMessage, name: &str) -> Vec<String> {
    msg.headers
        .iter()
        .filter(|h| h.raw_name_str().eq_ignore_ascii_case(name))
        .map(|h| h.value_str().to_owned())
        .collect()
}

/// alice calls bob, bob answers, alice ACKs: the ACK reaches bob.
/// Returns bob's view of the INVITE (with its Record-Route).
async fn answered_call(alice: &mut Ua, bob: &mut Ua) -> SipMessage {
    let invite = alice
        .request(
            "INVITE",
            &aor("bob"),
            &["Content-Type: application/sdp".into()],
            SDP.as_bytes(),
        )
        .await;
    let inv = bob.recv_request_method("INVITE", WAIT).await;
    let contact = format!("Contact: <{}>", bob.contact_uri());
    bob.respond(&inv, 200, "OK", &[contact], b"").await;
    let (_, ok) = alice.final_response(&invite, WAIT).await;
    assert_eq!(ok.status(), Some(200), "{}", text(&ok));
    Dialog::uac(&invite, &ok).ack(alice).await;
    let ack = bob.recv_request_method("ACK", WAIT).await;
    assert_eq!(request_uri(&ack), bob.contact_uri(), "the real ACK is delivered");
    inv
}

/// The node number (1-based) of `user`'s home in a 3-node cluster.
fn home_node(user: &str) -> usize {
    let nodes = [fe(1), fe(2), fe(3)];
    let h = home(&aor(user), nodes.iter().map(String::as_str)).expect("a home");
    nodes.iter().position(|n| n == h).expect("a node") + 1
}

#[tokio::test]
async fn an_ack_from_an_unauthenticated_connection_is_not_delivered() {
    let cluster = sip_cluster(3);
    // bob connected to his home node, where an ACK for sip:bob@ is delivered
    // without crossing the mesh twice; alice and the other stranger elsewhere.
    let b = home_node("bob");
    let a = if b == 1 { 2 } else { 1 };
    let mut alice = registered(&cluster, "alice", a).await;
    let mut bob = registered(&cluster, "bob", b).await;

    for n in [b, a] {
        let mut mallory = stranger(&cluster, n).await;
        mallory.send_raw(&forged(&mallory, "ACK", &aor("bob"), &[])).await;
        bob.expect_silence(SILENCE).await;
        // An ACK is never answered, not even with a challenge.
        mallory.expect_silence(Duration::from_millis(100)).await;
        assert_eq!(
            sip_status(&cluster, n)["refusals"]["ack_unauthenticated"],
            1,
            "fe{n} counts the dropped ACK: {}",
            sip_status(&cluster, n)
        );
    }

    // The ACK of a real call still arrives.
    answered_call(&mut alice, &mut bob).await;
}

#[tokio::test]
async fn flow_tokens_of_other_flows_do_not_reach_them() {
    let cluster = sip_cluster(3);
    let mut alice = registered(&cluster, "alice", 1).await;
    let mut bob = registered(&cluster, "bob", 3).await;
    // carol's flow is opened right after bob's at fe3: the next id.
    let mut carol = registered(&cluster, "carol", 3).await;
    let inv = answered_call(&mut alice, &mut bob).await;
    let rr: Vec<String> = inv
        .record_routes()
        .expect("Record-Route")
        .into_iter()
        .map(|r| r.raw_uri)
        .collect();
    // fe3's client-facing entry (bob's flow) is on top.
    let fe3 = client_addr(&cluster, &fe(3));
    assert!(rr[0].starts_with(&format!("sip:{fe3};transport=tls;lr;ob=")), "{rr:?}");
    let bobs = ob(&rr[0]);
    let route = |token: &str| format!("<sip:{fe3};transport=tls;lr;ob={token}>");

    // A stranger at fe3: bob's exact token (from alice's dialog) and the next
    // flow's (carol's) reach nobody; the ACKs are dropped unanswered, the
    // MESSAGE is challenged like any unauthenticated request.
    let mut mallory = stranger(&cluster, 3).await;
    for token in [bobs.clone(), moved(&bobs)] {
        let ack = forged(&mallory, "ACK", &bob.contact_uri(), &[route(&token)]);
        mallory.send_raw(&ack).await;
        bob.expect_silence(SILENCE).await;
        carol.expect_silence(Duration::from_millis(100)).await;
        mallory.expect_silence(Duration::from_millis(100)).await;
    }
    mallory
        .send_raw(&forged(&mallory, "MESSAGE", &bob.contact_uri(), &[route(&bobs)]))
        .await;
    let r = mallory.recv_response(WAIT).await;
    assert_eq!(r.status(), Some(407), "{}", text(&r));
    bob.expect_silence(Duration::from_millis(200)).await;

    // carol is authenticated at fe3, but neither bob's token (not her flow)
    // nor a moved one is hers to use: 403, nothing delivered.
    for token in [bobs.clone(), moved(&bobs), format!("{bobs}0")] {
        let mut msg = carol.build_request("MESSAGE", &bob.contact_uri(), &aor("bob"), &[], b"hi");
        msg.msg
            .push_header_front(sipmesh_actors::sip::Header::new(HeaderName::Route, &route(&token)));
        carol.send(&msg.msg).await;
        let (_, r) = carol.final_response(&msg, WAIT).await;
        assert_eq!(
            (r.status(), reason(&r).as_str()),
            (Some(403), "Forbidden (invalid flow token)"),
            "token {token:?}: {}",
            text(&r)
        );
        bob.expect_silence(Duration::from_millis(200)).await;
    }
    let refusals = &sip_status(&cluster, 3)["refusals"];
    assert_eq!(refusals["ack_unauthenticated"], 2, "{refusals}");
    assert_eq!(refusals["bad_flow_token"], 3, "{refusals}");
}

#[tokio::test]
async fn identity_headers_from_clients_are_removed() {
    let cluster = sip_cluster(3);
    let mut carol = registered(&cluster, "carol", 1).await;
    let mut bob = registered(&cluster, "bob", 3).await;
    let sent = carol
        .request(
            "MESSAGE",
            &aor("bob"),
            &[
                format!("P-Asserted-Identity: <{}>", aor("alice")),
                format!("p-preferred-identity: <{}>", aor("alice")),
            ],
            b"it's alice, honest",
        )
        .await;
    let got = bob.recv_request_method("MESSAGE", WAIT).await;
    assert_eq!(
        values_named(&got, "P-Asserted-Identity"),
        Vec::<String>::new(),
        "{}",
        text(&got)
    );
    assert_eq!(
        values_named(&got, "P-Preferred-Identity"),
        Vec::<String>::new(),
        "{}",
        text(&got)
    );
    // A callee's claim in a response is removed as well.
    bob.respond(
        &got,
        200,
        "OK",
        &[format!("P-Asserted-Identity: <{}>", aor("alice"))],
        b"",
    )
    .await;
    let (_, ok) = carol.final_response(&sent, WAIT).await;
    assert_eq!(ok.status(), Some(200), "{}", text(&ok));
    assert_eq!(
        values_named(&ok, "P-Asserted-Identity"),
        Vec::<String>::new(),
        "{}",
        text(&ok)
    );
    assert_eq!(
        sip_status(&cluster, 1)["identity_headers_removed"],
        2,
        "{}",
        sip_status(&cluster, 1)
    );
    assert_eq!(
        sip_status(&cluster, 3)["identity_headers_removed"],
        1,
        "{}",
        sip_status(&cluster, 3)
    );
}

/// Restart node `n` with `key = value` in its `[sip]` section (replacing
/// the line `cluster up` wrote, or added).
fn restart_with(cluster: &mut common::Cluster, n: usize, key: &str, value: &str) {
    let info = cluster.node(&fe(n)).clone();
    kill_sipmesh_pid(info.pid);
    common::eventually(Duration::from_secs(5), "node dead", || {
        (!pid_alive(info.pid)).then_some(())
    });
    let toml = std::fs::read_to_string(&info.config).expect("node.toml");
    assert!(toml.contains("\n[sip]\n"), "{toml}");
    let line = format!("{key} = {value}");
    let toml = match toml.lines().find(|l| l.starts_with(&format!("{key} = "))) {
        Some(old) => toml.replacen(old, &line, 1),
        None => toml.replacen("\n[sip]\n", &format!("\n[sip]\n{line}\n"), 1),
    };
    std::fs::write(&info.config, toml).expect("write node.toml");
    let log = cluster.tmp.path().join(format!("fe{n}-restarted.log"));
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.args(["node", "run", "--config"]).arg(&info.config);
    let mut guard = ProcGuard::spawn(&format!("fe{n} (restarted)"), cmd, &log);
    let up = common::poll_until(common::CLUSTER_UP_DEADLINE, common::POLL, || {
        if let Some(status) = guard.try_wait() {
            panic!("restarted fe{n} exited ({status}):\n{}", tail(&log, 40));
        }
        let s = common::try_debug(&info.debug_socket, "status").ok()?;
        (s["links_up"].as_u64() == Some(cluster.info.nodes.len() as u64 - 1)).then_some(())
    });
    cluster.extra.push(guard);
    up.unwrap_or_else(|| panic!("restarted fe{n} not meshed:\n{}", tail(&log, 40)));
    cluster.wait_full_mesh(common::CLUSTER_UP_DEADLINE);
}

#[tokio::test]
async fn the_authenticated_identity_is_asserted_to_clients_when_configured() {
    let mut cluster = sip_cluster(3);
    // bob's node delivers: it asserts what the mesh says (carol), not what carol wrote.
    restart_with(&mut cluster, 3, "assert_identity_to_clients", "true");
    let mut carol = registered(&cluster, "carol", 1).await;
    let mut bob = registered(&cluster, "bob", 3).await;
    carol
        .request(
            "MESSAGE",
            &aor("bob"),
            &[format!("P-Asserted-Identity: <{}>", aor("alice"))],
            b"hi",
        )
        .await;
    let got = bob.recv_request_method("MESSAGE", WAIT).await;
    assert_eq!(
        values_named(&got, "P-Asserted-Identity"),
        [format!("<{}>", aor("carol"))],
        "{}",
        text(&got)
    );
}
