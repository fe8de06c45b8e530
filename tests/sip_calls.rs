//! Calls between real phones through the mesh: Debian's baresip 1.0, one
//! process per phone, on a `cluster up --digest-algorithms MD5` cluster
//! (baresip 1.0's libre refuses a challenge list with SHA-256), everything
//! on loopback. What each phone sent and received is read from its SIP trace
//! (`baresip -s`) and asserted message by message for each Call-ID.
//!
//! Scenarios: a call across the mesh hung up by the caller; the reverse
//! direction; a call on one node hung up by the callee; hold and resume
//! (re-INVITEs); a CANCEL before answer; forking to two phones of bob on two
//! nodes (CANCEL with "Call completed elsewhere" to the loser, then a MESSAGE
//! that reaches both). Every call also checks that the Record-Route entries
//! the phones got are addresses (no name a phone would look up in DNS), that
//! the SDP offers and answers 127.0.0.1, and that RTP arrived at both phones.
//!
//! The phone helpers are in `tests/phone/mod.rs`. A test skips, printing
//! why, only when `baresip` is absent and CI is not set.

mod common;
mod phone;
mod sip_ua;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{fe, Cluster, DOMAIN};
use phone::{Answer, Phone, Traced};
use sip_ua::{ca_path, client_addr, password, text, Ua, WAIT};

/// The Reason of the CANCEL a fork's losing branch gets (RFC 3326).
const COMPLETED_ELSEWHERE: &str = "SIP;cause=200;text=\"Call completed elsewhere\"";
/// How long a call stays up after its ACK before it is hung up: longer than
/// a UAS's 2xx retransmission timers up to 2 s (T1 = 500 ms: 0.5 s, 1.5 s),
/// so a missing ACK would show as a second 200.
const TALK: Duration = Duration::from_secs(2);

/// A cluster for baresip and the WAV the phones send, or `None` (printed)
/// when baresip is not installed outside CI.
fn setup(test: &str, nodes: usize) -> Option<(Cluster, PathBuf)> {
    if phone::baresip().is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the call tests: scripts/test installs baresip"
        );
        eprintln!("SKIPPED {test}: no `baresip` binary in PATH (apt-get install baresip)");
        return None;
    }
    let cluster = Cluster::up_with_args(nodes, 200, 1000, &["--digest-algorithms", "MD5"], &[]);
    let wav = cluster.tmp.path().join("sine.wav");
    phone::write_sine_wav(&wav, phone::WAV_SECONDS);
    Some((cluster, wav))
}

fn mesh_addr(cluster: &Cluster, fqdn: &str) -> SocketAddr {
    cluster.node(fqdn).mesh()
}

/// `host:port` of every Record-Route entry `phone` received, asserting on
/// the way that each host is an IP address (a name would send the phone to
/// DNS) with a port, and that the client-facing entries say `transport=tls`.
fn route_set(phone: &Phone) -> Vec<String> {
    let entries = phone.received_record_routes();
    assert!(!entries.is_empty(), "{}: no Record-Route received", phone.name);
    entries
        .iter()
        .map(|rr| {
            let uri = rr
                .uri
                .as_ref()
                .unwrap_or_else(|| panic!("{}: Record-Route {:?} is no SIP URI", phone.name, rr.raw_uri));
            let ip = uri
                .host
                .ip()
                .unwrap_or_else(|| panic!("{}: Record-Route host is a name: {}", phone.name, rr.raw_uri));
            let port = uri
                .port
                .unwrap_or_else(|| panic!("{}: Record-Route without a port: {}", phone.name, rr.raw_uri));
            if rr.raw_uri.contains(";ob=") {
                assert!(rr.raw_uri.contains(";transport=tls"), "{}: {}", phone.name, rr.raw_uri);
            }
            SocketAddr::new(ip, port).to_string()
        })
        .collect()
}

/// The route set (`host:port`, in order) `phone` got for `call_id`: from
/// the 200 of its INVITE (caller) or from the initial INVITE (callee).
fn route_set_of_call(phone: &Phone, call_id: &str) -> Vec<String> {
    let first = phone
        .trace()
        .into_iter()
        .find(|t| {
            !t.sent
                && t.call_id() == call_id
                && (t.summary() == "200 INVITE"
                    || (t.summary() == "INVITE" && t.msg.to_hdr().is_ok_and(|to| to.tag().is_none())))
        })
        .unwrap_or_else(|| panic!("{}: no INVITE or 200 received for {call_id}", phone.name));
    first
        .msg
        .record_routes()
        .expect("Record-Route")
        .iter()
        .map(|rr| {
            let uri = rr.uri.as_ref().expect("SIP URI");
            SocketAddr::new(uri.host.ip().expect("an IP host"), uri.port.expect("a port")).to_string()
        })
        .collect()
}

/// The one message of `call_id` summarised `what` (e.g. `200 INVITE`) that
/// `phone` sent (`sent`) or received.
fn only(phone: &Phone, call_id: &str, sent: bool, what: &str) -> Traced {
    let mut found: Vec<Traced> = phone
        .trace()
        .into_iter()
        .filter(|t| t.sent == sent && t.call_id() == call_id && t.summary() == what)
        .collect();
    assert_eq!(found.len(), 1, "{}: exactly one {what} (sent={sent})", phone.name);
    found.remove(0)
}

/// Every `c=` line of an SDP body says 127.0.0.1.
fn assert_loopback_sdp(who: &str, t: &Traced) {
    let body = t.body();
    let c: Vec<&str> = body.lines().filter(|l| l.starts_with("c=")).collect();
    assert!(!c.is_empty(), "{who}: no c= line in\n{body}");
    assert!(
        c.iter().all(|l| l.trim() == "c=IN IP4 127.0.0.1"),
        "{who}: media off loopback:\n{body}"
    );
}

/// RTP arrived at both phones from the port the other one's SDP named, and
/// both report a non-zero audio bitrate each way.
fn assert_media(caller: &Phone, callee: &Phone, invite: &Traced, answer: &Traced) {
    assert_loopback_sdp(&caller.name, invite);
    assert_loopback_sdp(&callee.name, answer);
    let offer_port = invite.sdp_audio_port().expect("m=audio in the offer");
    let answer_port = answer.sdp_audio_port().expect("m=audio in the answer");
    for (p, from) in [(caller, answer_port), (callee, offer_port)] {
        let want: SocketAddr = SocketAddr::from(([127, 0, 0, 1], from));
        p.wait_until(&format!("RTP from {want}"), || p.rtp_sources().contains(&want));
        p.wait_until("audio bitrate > 0 both ways", || {
            p.last_audio_bitrates().is_some_and(|(tx, rx)| tx > 0 && rx > 0)
        });
    }
}

/// Which side ends an established call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HangUp {
    Caller,
    Callee,
}

/// `caller` dials `callee` (auto-answering), the call is established on
/// both sides with RTP both ways, then `who` hangs up. Asserts what each
/// phone sent and received for the call, message by message, and returns
/// its Call-ID.
fn call_and_hang_up(caller: &mut Phone, callee: &mut Phone, who: HangUp) -> String {
    let established = |p: &Phone| p.count("Call established");
    let (e_caller, e_callee) = (established(caller), established(callee));
    let invites_before = caller
        .trace()
        .iter()
        .filter(|t| t.sent && t.summary() == "INVITE")
        .count();
    caller.cmd(&format!("/dial {}", callee.aor));
    caller.wait_for("Call established", e_caller + 1);
    callee.wait_for("Call established", e_callee + 1);
    let invite = caller.initial_invite(invites_before, true);
    let call_id = invite.call_id().to_owned();
    let answer = only(callee, &call_id, true, "200 INVITE");
    assert_media(caller, callee, &invite, &answer);
    std::thread::sleep(TALK);

    let terminated = |p: &Phone| p.count(" terminated (duration");
    let (t_caller, t_callee) = (terminated(caller), terminated(callee));
    let (ender, other) = match who {
        HangUp::Caller => (&mut *caller, &mut *callee),
        HangUp::Callee => (&mut *callee, &mut *caller),
    };
    ender.cmd("/hangup");
    other.wait_until("the BYE's 200 sent", || {
        other.flow(&call_id, true).contains(&"200 BYE".to_owned())
    });
    ender.wait_until("the BYE's 200 received", || {
        ender.flow(&call_id, false).contains(&"200 BYE".to_owned())
    });
    caller.wait_for(" terminated (duration", t_caller + 1);
    callee.wait_for(" terminated (duration", t_callee + 1);

    let (caller_ends, callee_ends) = match who {
        HangUp::Caller => (("BYE", "200 BYE"), ("200 BYE", "BYE")),
        HangUp::Callee => (("200 BYE", "BYE"), ("BYE", "200 BYE")),
    };
    // Exactly one 100, 180 and 200 reach the caller; the callee gets
    // exactly one ACK and sends its 200 once (no retransmission for lack of
    // an ACK, over TALK after it).
    assert_eq!(
        caller.flow(&call_id, true),
        ["INVITE", "ACK", caller_ends.0],
        "{} sent",
        caller.name
    );
    assert_eq!(
        caller.flow(&call_id, false),
        ["100 INVITE", "180 INVITE", "200 INVITE", caller_ends.1],
        "{} received",
        caller.name
    );
    assert_eq!(
        callee.flow(&call_id, false),
        ["INVITE", "ACK", callee_ends.1],
        "{} received",
        callee.name
    );
    assert_eq!(
        callee.flow(&call_id, true),
        ["180 INVITE", "200 INVITE", callee_ends.0],
        "{} sent",
        callee.name
    );
    call_id
}

/// The route set alice's 200 carried for a call from fe1 to fe3: the
/// callee's node first, as each side can reach it (RFC 5658 double
/// Record-Route): fe3's client address, fe3's and fe1's mesh addresses,
/// fe1's client address.
fn assert_fe1_fe3_route_set(cluster: &Cluster, phone: &Phone, call_id: &str, callee_node: &str, caller_node: &str) {
    assert_eq!(
        route_set_of_call(phone, call_id),
        [
            client_addr(cluster, callee_node).to_string(),
            mesh_addr(cluster, callee_node).to_string(),
            mesh_addr(cluster, caller_node).to_string(),
            client_addr(cluster, caller_node).to_string(),
        ],
        "{}: route set",
        phone.name
    );
}

/// 1 and 7: alice on fe1 calls bob on fe3 (auto-answer); alice hangs up.
#[test]
fn a_call_across_the_mesh_caller_hangs_up() {
    let Some((cluster, wav)) = setup("a_call_across_the_mesh_caller_hangs_up", 3) else {
        return;
    };
    let mut alice = Phone::start(&cluster, "alice", "alice", &fe(1), Answer::Manual, &wav);
    let mut bob = Phone::start(&cluster, "bob", "bob", &fe(3), Answer::Auto, &wav);
    let call_id = call_and_hang_up(&mut alice, &mut bob, HangUp::Caller);
    alice.quit();
    bob.quit();
    assert_fe1_fe3_route_set(&cluster, &alice, &call_id, &fe(3), &fe(1));
    assert_fe1_fe3_route_set(&cluster, &bob, &call_id, &fe(3), &fe(1));
    route_set(&alice);
    route_set(&bob);
}

/// 2: the reverse direction: bob on fe3 calls alice on fe1 (auto-answer),
/// bob hangs up.
#[test]
fn a_call_across_the_mesh_the_other_way() {
    let Some((cluster, wav)) = setup("a_call_across_the_mesh_the_other_way", 3) else {
        return;
    };
    let mut alice = Phone::start(&cluster, "alice", "alice", &fe(1), Answer::Auto, &wav);
    let mut bob = Phone::start(&cluster, "bob", "bob", &fe(3), Answer::Manual, &wav);
    let call_id = call_and_hang_up(&mut bob, &mut alice, HangUp::Caller);
    alice.quit();
    bob.quit();
    assert_fe1_fe3_route_set(&cluster, &bob, &call_id, &fe(1), &fe(3));
    route_set(&alice);
}

/// 3: alice and bob both on fe2; bob (the callee) hangs up.
#[test]
fn a_call_on_one_node_callee_hangs_up() {
    let Some((cluster, wav)) = setup("a_call_on_one_node_callee_hangs_up", 3) else {
        return;
    };
    let mut alice = Phone::start(&cluster, "alice", "alice", &fe(2), Answer::Manual, &wav);
    let mut bob = Phone::start(&cluster, "bob", "bob", &fe(2), Answer::Auto, &wav);
    let call_id = call_and_hang_up(&mut alice, &mut bob, HangUp::Callee);
    alice.quit();
    bob.quit();
    // One node: its client-facing entry for each flow at both ends. Today
    // the node also adds its mesh entry for each flow in between (it pops
    // all four itself, so nothing leaves the node); only fe2's addresses.
    let (fe2, fe2_mesh) = (
        client_addr(&cluster, &fe(2)).to_string(),
        mesh_addr(&cluster, &fe(2)).to_string(),
    );
    let rs = route_set_of_call(&alice, &call_id);
    assert_eq!(rs.first(), Some(&fe2), "route set {rs:?}");
    assert_eq!(rs.last(), Some(&fe2), "route set {rs:?}");
    assert!(rs.iter().all(|a| *a == fe2 || *a == fe2_mesh), "route set {rs:?}");
    route_set(&bob);
}

/// 4: hold (re-INVITE a=sendonly) and resume (a=sendrecv) in the middle of
/// a call across the mesh; each completes with 200 and ACK.
#[test]
fn hold_and_resume_mid_call() {
    let Some((cluster, wav)) = setup("hold_and_resume_mid_call", 3) else {
        return;
    };
    let mut alice = Phone::start(&cluster, "alice", "alice", &fe(1), Answer::Manual, &wav);
    let mut bob = Phone::start(&cluster, "bob", "bob", &fe(3), Answer::Auto, &wav);
    alice.cmd(&format!("/dial {}", bob.aor));
    alice.wait_for("Call established", 1);
    bob.wait_for("Call established", 1);
    let call_id = alice.initial_invite(0, true).call_id().to_owned();
    let acks = |p: &Phone, sent| p.flow(&call_id, sent).iter().filter(|s| *s == "ACK").count();
    alice.cmd("/hold");
    bob.wait_until("the ACK of the hold", || acks(&bob, false) == 2);
    alice.cmd("/resume");
    bob.wait_until("the ACK of the resume", || acks(&bob, false) == 3);
    alice.cmd("/hangup");
    // After a re-INVITE baresip 1.0 reports the BYE as "session closed"
    // rather than "Call with .. terminated".
    bob.wait_until("the call closed", || {
        bob.count(" terminated (duration") + bob.count(": session closed") > 0
    });
    alice.wait_until("the BYE's 200", || {
        alice.flow(&call_id, false).contains(&"200 BYE".to_owned())
    });
    alice.quit();
    bob.quit();

    assert_eq!(
        alice.flow(&call_id, true),
        ["INVITE", "ACK", "INVITE", "ACK", "INVITE", "ACK", "BYE"],
        "alice sent"
    );
    assert_eq!(
        alice.flow(&call_id, false),
        [
            "100 INVITE",
            "180 INVITE",
            "200 INVITE",
            "100 INVITE",
            "200 INVITE",
            "100 INVITE",
            "200 INVITE",
            "200 BYE"
        ],
        "alice received"
    );
    assert_eq!(
        bob.flow(&call_id, false),
        ["INVITE", "ACK", "INVITE", "ACK", "INVITE", "ACK", "BYE"],
        "bob received"
    );
    assert_eq!(
        bob.flow(&call_id, true),
        ["180 INVITE", "200 INVITE", "200 INVITE", "200 INVITE", "200 BYE"],
        "bob sent"
    );
    let reinvites: Vec<Traced> = bob
        .trace()
        .into_iter()
        .filter(|t| !t.sent && t.call_id() == call_id && t.summary() == "INVITE")
        .collect();
    assert!(
        reinvites[1].body().contains("a=sendonly"),
        "hold:\n{}",
        reinvites[1].body()
    );
    assert!(
        reinvites[2].body().contains("a=sendrecv"),
        "resume:\n{}",
        reinvites[2].body()
    );
    // The re-INVITEs follow the route set: in-dialog, to bob's contact.
    for t in &reinvites[1..] {
        assert!(t.msg.to_hdr().is_ok_and(|to| to.tag().is_some()), "{}", text(&t.msg));
    }
}

/// 5: alice CANCELs before bob (not auto-answering) answers: alice gets
/// 487, bob gets the CANCEL and stops ringing.
#[test]
fn a_cancel_before_answer() {
    let Some((cluster, wav)) = setup("a_cancel_before_answer", 3) else {
        return;
    };
    let mut alice = Phone::start(&cluster, "alice", "alice", &fe(1), Answer::Manual, &wav);
    let mut bob = Phone::start(&cluster, "bob", "bob", &fe(3), Answer::Manual, &wav);
    alice.cmd(&format!("/dial {}", bob.aor));
    bob.wait_for("Incoming call from", 1);
    let call_id = alice.initial_invite(0, true).call_id().to_owned();
    alice.wait_until("180", || alice.flow(&call_id, false).contains(&"180 INVITE".to_owned()));
    alice.cmd("/hangup");
    alice.wait_until("487", || alice.flow(&call_id, false).contains(&"487 INVITE".to_owned()));
    bob.wait_until("the ACK of the 487", || {
        bob.flow(&call_id, false).contains(&"ACK".to_owned())
    });
    bob.wait_for("session closed", 1);
    let mark = bob.output().len();
    bob.cmd("/callstat");
    bob.wait_until("'(no active calls)' after /callstat", || {
        bob.output()[mark..].contains("(no active calls)")
    });
    alice.quit();
    bob.quit();

    assert_eq!(alice.flow(&call_id, true), ["INVITE", "CANCEL", "ACK"], "alice sent");
    assert_eq!(
        alice.flow(&call_id, false),
        ["100 INVITE", "180 INVITE", "200 CANCEL", "487 INVITE"],
        "alice received"
    );
    assert_eq!(bob.flow(&call_id, false), ["INVITE", "CANCEL", "ACK"], "bob received");
    assert_eq!(
        bob.flow(&call_id, true),
        ["180 INVITE", "200 CANCEL", "487 INVITE"],
        "bob sent"
    );
    assert_eq!(bob.count("Call established"), 0);
    route_set(&alice);
}

/// 6: bob on two phones, on fe2 (auto-answer) and fe3 (rings); alice on fe1
/// calls bob: both ring, the call is established with the fe2 phone and the
/// fe3 phone gets a CANCEL with "Call completed elsewhere" and stops
/// ringing. Then carol (the in-project UA on fe1) sends bob a MESSAGE that
/// both phones print.
#[tokio::test]
async fn forking_to_two_phones_of_bob() {
    let Some((cluster, wav)) = setup("forking_to_two_phones_of_bob", 3) else {
        return;
    };
    let mut alice = Phone::start(&cluster, "alice", "alice", &fe(1), Answer::Manual, &wav);
    let mut desk = Phone::start(&cluster, "bob-fe2", "bob", &fe(2), Answer::Auto, &wav);
    let mut mobile = Phone::start(&cluster, "bob-fe3", "bob", &fe(3), Answer::Manual, &wav);

    alice.cmd(&format!("/dial sip:bob@{DOMAIN}"));
    alice.wait_for("Call established", 1);
    desk.wait_for("Call established", 1);
    mobile.wait_for("Incoming call from", 1);
    mobile.wait_for("session closed", 1);
    let invite = alice.initial_invite(0, true);
    let call_id = invite.call_id().to_owned();
    mobile.wait_until("the ACK of the 487", || {
        mobile.flow(&call_id, false).contains(&"ACK".to_owned())
    });
    let answer = only(&desk, &call_id, true, "200 INVITE");
    assert_media(&alice, &desk, &invite, &answer);

    let cancel = only(&mobile, &call_id, false, "CANCEL");
    assert_eq!(
        cancel
            .msg
            .other_header("Reason")
            .map(|h| h.value_str().to_owned())
            .as_deref(),
        Some(COMPLETED_ELSEWHERE),
        "the losing phone's CANCEL:\n{}",
        text(&cancel.msg)
    );
    assert_eq!(
        mobile.flow(&call_id, false),
        ["INVITE", "CANCEL", "ACK"],
        "bob-fe3 received"
    );
    assert_eq!(
        mobile.flow(&call_id, true),
        ["180 INVITE", "200 CANCEL", "487 INVITE"],
        "bob-fe3 sent"
    );
    let mark = mobile.output().len();
    mobile.cmd("/callstat");
    mobile.wait_until("'(no active calls)' after /callstat", || {
        mobile.output()[mark..].contains("(no active calls)")
    });
    assert_eq!(desk.flow(&call_id, false), ["INVITE", "ACK"], "bob-fe2 received");
    assert_eq!(desk.flow(&call_id, true), ["180 INVITE", "200 INVITE"], "bob-fe2 sent");
    // Both phones rang, so alice got a 180 from each unless the fe3 one was
    // still on its way when the 200 settled the fork: one or two.
    let got = alice.flow(&call_id, false);
    let ringing = got.iter().filter(|s| *s == "180 INVITE").count();
    assert!((1..=2).contains(&ringing), "alice received {got:?}");
    assert_eq!(
        got.iter().filter(|s| *s == "200 INVITE").count(),
        1,
        "alice received {got:?}"
    );
    assert_eq!(alice.flow(&call_id, true), ["INVITE", "ACK"], "alice sent");

    alice.cmd("/hangup");
    desk.wait_for(" terminated (duration", 1);
    alice.wait_until("the BYE's 200", || {
        alice.flow(&call_id, false).contains(&"200 BYE".to_owned())
    });

    // A MESSAGE for bob reaches both phones.
    let ca = ca_path(&cluster);
    let mut carol = Ua::connect(
        client_addr(&cluster, &fe(1)),
        &ca,
        "carol",
        &password(&cluster, "carol"),
    )
    .await;
    let reg = carol.register(600).await;
    assert_eq!(reg.status(), Some(200), "{}", text(&reg));
    let body = "hello, both of bob's phones";
    let sent = carol
        .request(
            "MESSAGE",
            &format!("sip:bob@{DOMAIN}"),
            &["Content-Type: text/plain".to_owned()],
            body.as_bytes(),
        )
        .await;
    let (_, answer) = carol.final_response(&sent, WAIT).await;
    assert_eq!(answer.status(), Some(200), "{}", text(&answer));
    let msg_call_id = sent.call_id.clone();
    for p in [&desk, &mobile] {
        p.wait_for(body, 1);
        p.wait_until("its 200 for the MESSAGE", || !p.flow(&msg_call_id, true).is_empty());
    }
    alice.quit();
    desk.quit();
    mobile.quit();
    for p in [&desk, &mobile] {
        assert_eq!(p.flow(&msg_call_id, false), ["MESSAGE"], "{} received", p.name);
        assert_eq!(p.flow(&msg_call_id, true), ["200 MESSAGE"], "{} sent", p.name);
        assert_eq!(p.count(body), 2, "{}: traced once and printed once", p.name);
    }
    route_set(&alice);
    route_set(&desk);
    route_set(&mobile);
}
