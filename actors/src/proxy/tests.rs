//! The proxy in process, without sockets: flows are channels, the node is
//! alone in its topology, and tokio's clock is paused so the transaction
//! timers (64×T1, Timer C, the ACK wait of a failed INVITE) are checked
//! exactly and at once, with no wall-clock sleep.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use sipmesh_state::{Fqdn, Role, Store, Topology, TrustedServer};
use tokio::sync::mpsc;

use super::COMPLETED_ELSEWHERE;
use super::*;
use crate::config::TlsPaths;
use crate::sip::StartLine;
use crate::trust::{TlsConfigs, TlsMaterial};

const FE1: &str = "fe1.contoso.test";

/// A CA and a node certificate for fe1, written as PEM files.
fn tls_files(dir: &std::path::Path) -> TlsPaths {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec![FE1.to_owned()]).unwrap();
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let paths = TlsPaths {
        cert: dir.join("fe1.pem"),
        key: dir.join("fe1.key"),
        ca: dir.join("ca.pem"),
        crls: vec![],
        crl_expired: Default::default(),
        keylog: None,
    };
    std::fs::write(&paths.cert, cert.pem()).unwrap();
    std::fs::write(&paths.key, key.serialize_pem()).unwrap();
    std::fs::write(&paths.ca, ca_cert.pem()).unwrap();
    paths
}

struct Node {
    proxy: Arc<Proxy>,
    timers: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.timers.abort();
    }
}

fn node(config: SipConfig) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let client_addr: SocketAddr = "127.0.0.1:5061".parse().unwrap();
    let topology = Arc::new(ArcSwap::from_pointee(Topology {
        version: 1,
        members: vec![TrustedServer {
            fqdn: Fqdn::new(FE1).unwrap(),
            role: Role::FrontEnd,
            mesh_addr: "127.0.0.1:5071".parse::<SocketAddr>().unwrap().into(),
            client_addr: Some(client_addr),
            pool: None,
            federation_addr: None,
            federation_fqdn: None,
        }],
        federation: Default::default(),
    }));
    let paths = tls_files(dir.path());
    let material = TlsMaterial::load(&paths, FE1).unwrap();
    let tls = TlsConfigs::build(&material, topology.clone()).unwrap();
    let shared = Arc::new(Shared {
        fqdn: Fqdn::new(FE1).unwrap(),
        role: Role::FrontEnd,
        started: Instant::now(),
        topology,
        tls: ArcSwap::from_pointee(tls),
        links: RwLock::new(BTreeMap::new()),
        rejections: Default::default(),
        mesh_addr: "127.0.0.1:5071".parse().unwrap(),
        topology_doc: Default::default(),
        topology_key: None,
        topology_refusals: Default::default(),
        tls_paths: paths,
        sni_paths: vec![],
        mesh_accept: Default::default(),
        client_accept: Default::default(),
        resolver: None,
        events: Default::default(),
        links_queries: Default::default(),
    });
    let store = Arc::new(Store::open(&dir.path().join("store.redb")).unwrap());
    let federation = Arc::new(crate::federation::Federation::inert(
        shared.topology.clone(),
        shared.events.clone(),
    ));
    let proxy = Arc::new(Proxy::new(shared, config, store, Some(client_addr), federation).unwrap());
    let timers = tokio::spawn(txn::drive_timers(Arc::downgrade(&proxy)));
    Node {
        proxy,
        timers,
        _dir: dir,
    }
}

/// A client connection whose identity a certificate proved.
struct Client {
    flow: Arc<Flow>,
    rx: mpsc::Receiver<Bytes>,
}

impl Client {
    fn open(proxy: &Proxy, user: &str) -> Client {
        let (tx, rx) = mpsc::channel(64);
        let remote = "127.0.0.1:40000".parse().unwrap();
        let flow = proxy.flows.open(tx, remote, Some(format!("sip:{user}@contoso.test")));
        Client { flow, rx }
    }

    /// A connection that proved no identity.
    fn stranger(proxy: &Proxy) -> Client {
        let (tx, rx) = mpsc::channel(64);
        let flow = proxy.flows.open(tx, "127.0.0.1:40009".parse().unwrap(), None);
        Client { flow, rx }
    }

    fn send(&self, proxy: &Proxy, text: &str) {
        proxy.from_client(&self.flow, SipMessage::parse(Bytes::from(text.to_owned())).unwrap());
    }

    /// Everything queued to this client so far, parsed.
    fn received(&mut self) -> Vec<SipMessage> {
        let mut out = Vec::new();
        while let Ok(b) = self.rx.try_recv() {
            out.push(SipMessage::parse(b).unwrap());
        }
        out
    }
}

fn status_line(m: &SipMessage) -> String {
    match &m.start {
        StartLine::Response { code, .. } => code.to_string(),
        StartLine::Request { method, .. } => method.to_string(),
    }
}

fn lines(ms: &[SipMessage]) -> Vec<String> {
    ms.iter().map(status_line).collect()
}

fn register(proxy: &Proxy, c: &mut Client, user: &str) {
    c.send(
        proxy,
        &format!(
            "REGISTER sip:contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bK-reg-{user}\r\n\
             From: <sip:{user}@contoso.test>;tag=r\r\nTo: <sip:{user}@contoso.test>\r\nCall-ID: reg-{user}\r\n\
             CSeq: 1 REGISTER\r\nContact: <sip:{user}@127.0.0.1:40000;transport=tls>\r\nExpires: 600\r\n\
             Content-Length: 0\r\n\r\n"
        ),
    );
    assert_eq!(lines(&c.received()), ["200"], "{user} registers");
}

fn invite(branch: &str) -> String {
    format!(
        "INVITE sip:bob@contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:40001;branch={branch}\r\n\
         From: <sip:alice@contoso.test>;tag=a\r\nTo: <sip:bob@contoso.test>\r\nCall-ID: {branch}\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:40001;transport=tls>\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A CANCEL or ACK (for a non-2xx) of [`invite`]`(branch)`: same Via, Call-ID, CSeq number.
fn hop(method: &str, branch: &str) -> String {
    format!(
        "{method} sip:bob@contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:40001;branch={branch}\r\n\
         From: <sip:alice@contoso.test>;tag=a\r\nTo: <sip:bob@contoso.test>;tag=b\r\nCall-ID: {branch}\r\n\
         CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Let the timer task run after the clock moved.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

fn live(proxy: &Proxy) -> (usize, usize) {
    proxy.txn_counts()
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_request_times_out_after_64_t1_with_408_and_a_cancel() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    let (mut alice, mut bob) = (Client::open(p, "alice"), Client::open(p, "bob"));
    register(p, &mut bob, "bob");
    alice.send(p, &invite("z9hG4bK-inv1"));
    assert_eq!(lines(&alice.received()), ["100"]);
    assert_eq!(lines(&bob.received()), ["INVITE"]);
    assert_eq!(live(p), (1, 1));
    let t1 = SipConfig::default().t1;
    // Just before 64×T1: still waiting.
    tokio::time::advance(64 * t1 - Duration::from_millis(1)).await;
    settle().await;
    assert!(alice.received().is_empty());
    // At 64×T1: 408 upstream, CANCEL downstream; the server transaction
    // then waits for alice's ACK of the 408, ACK_WAIT at most.
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(lines(&alice.received()), ["408"]);
    assert_eq!(lines(&bob.received()), ["CANCEL"]);
    assert_eq!(live(p), (1, 0));
    tokio::time::advance(ACK_WAIT).await;
    settle().await;
    assert_eq!(live(p), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_ringing_invite_waits_for_timer_c_instead() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    let (mut alice, mut bob) = (Client::open(p, "alice"), Client::open(p, "bob"));
    register(p, &mut bob, "bob");
    alice.send(p, &invite("z9hG4bK-inv2"));
    let forwarded = bob.received().pop().unwrap();
    // bob rings: 180 back along our Via.
    let ringing = SipMessage::response_to(&forwarded, 180, "Ringing", Some("b"));
    p.from_client(&bob.flow, ringing);
    assert_eq!(lines(&alice.received()), ["100", "180"]);
    let (t1, c) = (SipConfig::default().t1, SipConfig::default().invite_timeout);
    assert!(c > 64 * t1, "Timer C outlasts Timer B by default");
    tokio::time::advance(64 * t1).await;
    settle().await;
    assert!(alice.received().is_empty(), "Timer B no longer applies once ringing");
    tokio::time::advance(c - 64 * t1).await;
    settle().await;
    assert_eq!(lines(&alice.received()), ["408"]);
    assert_eq!(lines(&bob.received()), ["CANCEL"]);
    assert_eq!(live(p), (1, 0), "waiting for the ACK of the 408");
}

#[tokio::test(start_paused = true)]
async fn a_failed_invite_absorbs_its_ack_or_is_dropped_after_the_ack_wait() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    let (mut alice, mut bob) = (Client::open(p, "alice"), Client::open(p, "bob"));
    register(p, &mut bob, "bob");
    alice.send(p, &invite("z9hG4bK-inv3"));
    let forwarded = bob.received().pop().unwrap();
    p.from_client(
        &bob.flow,
        SipMessage::response_to(&forwarded, 486, "Busy Here", Some("b")),
    );
    assert_eq!(lines(&alice.received()), ["100", "486"]);
    // We ACKed the 486 downstream ourselves, hop by hop.
    assert_eq!(lines(&bob.received()), ["ACK"]);
    // The server transaction waits for alice's ACK...
    assert_eq!(live(p), (1, 0));
    tokio::time::advance(ACK_WAIT - Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(live(p), (1, 0));
    // ...and gives up at ACK_WAIT, answering nothing more.
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(live(p), (0, 0));
    assert!(alice.received().is_empty());
    assert!(bob.received().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_2xx_ends_the_transaction_and_its_retransmissions_pass_for_64_t1() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    let (mut alice, mut bob) = (Client::open(p, "alice"), Client::open(p, "bob"));
    register(p, &mut bob, "bob");
    alice.send(p, &invite("z9hG4bK-inv4"));
    let forwarded = bob.received().pop().unwrap();
    let ok = SipMessage::response_to(&forwarded, 200, "OK", Some("b"));
    p.from_client(&bob.flow, ok.clone());
    assert_eq!(lines(&alice.received()), ["100", "200"]);
    // No server transaction; the branch stays to pass retransmissions.
    assert_eq!(live(p), (0, 1));
    let t1 = SipConfig::default().t1;
    tokio::time::advance(32 * t1).await;
    settle().await;
    p.from_client(&bob.flow, ok.clone());
    assert_eq!(lines(&alice.received()), ["200"], "a retransmitted 2xx passes");
    tokio::time::advance(32 * t1).await;
    settle().await;
    assert_eq!(live(p), (0, 0));
    p.from_client(&bob.flow, ok);
    assert!(alice.received().is_empty(), "after 64xT1 it is stray");
    // Long after every timer would have fired: no 408, no CANCEL.
    tokio::time::advance(SipConfig::default().invite_timeout * 2).await;
    settle().await;
    assert!(alice.received().is_empty());
    assert!(bob.received().is_empty());
}

/// Register one device of `user` (its own contact and q-value).
fn register_device(proxy: &Proxy, c: &mut Client, user: &str, device: &str, q: &str) {
    c.send(
        proxy,
        &format!(
            "REGISTER sip:contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bK-reg-{device}\r\n\
             From: <sip:{user}@contoso.test>;tag=r\r\nTo: <sip:{user}@contoso.test>\r\nCall-ID: reg-{device}\r\n\
             CSeq: 1 REGISTER\r\nContact: <sip:{user}@{device}.invalid;transport=tls>;q={q}\r\nExpires: 600\r\n\
             Content-Length: 0\r\n\r\n"
        ),
    );
    let got = c.received();
    assert_eq!(lines(&got), ["200"], "{device} registers");
}

fn request_uri_of(m: &SipMessage) -> String {
    match &m.start {
        StartLine::Request { uri, .. } => uri.clone(),
        other => panic!("{other:?}"),
    }
}

/// bob on a desk phone and a mobile, both q=1.
fn two_devices(p: &Proxy) -> (Client, Client, Client) {
    let (alice, mut desk, mut mobile) = (Client::open(p, "alice"), Client::open(p, "bob"), Client::open(p, "bob"));
    register_device(p, &mut desk, "bob", "desk", "1.0");
    register_device(p, &mut mobile, "bob", "mobile", "1.0");
    (alice, desk, mobile)
}

#[tokio::test(start_paused = true)]
async fn every_device_rings_and_the_first_2xx_cancels_the_others() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    let (mut alice, mut desk, mut mobile) = two_devices(p);
    alice.send(p, &invite("z9hG4bK-fork1"));
    let at_desk = desk.received().pop().expect("the desk phone rings");
    let at_mobile = mobile.received().pop().expect("the mobile rings");
    assert_eq!(request_uri_of(&at_desk), "sip:bob@desk.invalid;transport=tls");
    assert_eq!(request_uri_of(&at_mobile), "sip:bob@mobile.invalid;transport=tls");
    assert_eq!(live(p), (1, 2));
    p.from_client(&desk.flow, SipMessage::response_to(&at_desk, 180, "Ringing", Some("d")));
    p.from_client(
        &mobile.flow,
        SipMessage::response_to(&at_mobile, 180, "Ringing", Some("m")),
    );
    p.from_client(&mobile.flow, SipMessage::response_to(&at_mobile, 200, "OK", Some("m")));
    assert_eq!(lines(&alice.received()), ["100", "180", "180", "200"]);
    let cancel = desk.received();
    assert_eq!(lines(&cancel), ["CANCEL"]);
    assert_eq!(
        cancel[0]
            .other_header("Reason")
            .map(|h| h.value_str().to_owned())
            .as_deref(),
        Some(COMPLETED_ELSEWHERE)
    );
    // The desk phone answers the CANCEL's INVITE with 487: absorbed.
    p.from_client(
        &desk.flow,
        SipMessage::response_to(&at_desk, 487, "Request Terminated", Some("d")),
    );
    assert!(alice.received().is_empty());
    assert_eq!(lines(&desk.received()), ["ACK"], "our hop-by-hop ACK of the 487");
    // A 2xx that crossed the CANCEL still reaches alice, so she can end it.
    p.from_client(&desk.flow, SipMessage::response_to(&at_desk, 200, "OK", Some("d2")));
    assert!(alice.received().is_empty(), "that branch already ended with 487");
}

#[tokio::test(start_paused = true)]
async fn a_late_2xx_from_another_branch_is_forwarded_too() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    let (mut alice, mut desk, mut mobile) = two_devices(p);
    alice.send(p, &invite("z9hG4bK-fork2"));
    let at_desk = desk.received().pop().unwrap();
    let at_mobile = mobile.received().pop().unwrap();
    p.from_client(&desk.flow, SipMessage::response_to(&at_desk, 200, "OK", Some("d")));
    p.from_client(&mobile.flow, SipMessage::response_to(&at_mobile, 200, "OK", Some("m")));
    let got = alice.received();
    assert_eq!(lines(&got), ["100", "200", "200"], "RFC 3261 §16.7 point 4");
    assert_ne!(got[1].to_hdr().unwrap().tag(), got[2].to_hdr().unwrap().tag());
    assert_eq!(lines(&mobile.received()), ["CANCEL"]);
}

#[tokio::test(start_paused = true)]
async fn when_every_branch_fails_the_best_response_goes_upstream() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    // 503 and 486: the 4xx wins.
    let (mut alice, mut desk, mut mobile) = two_devices(p);
    alice.send(p, &invite("z9hG4bK-fork3"));
    let at_desk = desk.received().pop().unwrap();
    let at_mobile = mobile.received().pop().unwrap();
    p.from_client(
        &desk.flow,
        SipMessage::response_to(&at_desk, 503, "Unavailable", Some("d")),
    );
    assert_eq!(lines(&alice.received()), ["100"], "one branch is still out");
    p.from_client(
        &mobile.flow,
        SipMessage::response_to(&at_mobile, 486, "Busy Here", Some("m")),
    );
    assert_eq!(lines(&alice.received()), ["486"]);
    // A 6xx ends the fork: the rest are CANCELled at once, and the 6xx wins
    // once they answered (RFC 3261 §16.7 point 5).
    alice.send(p, &invite("z9hG4bK-fork4"));
    let _ = alice.received();
    let at_desk = desk.received().pop().unwrap();
    let at_mobile = mobile.received().pop().unwrap();
    p.from_client(&desk.flow, SipMessage::response_to(&at_desk, 603, "Decline", Some("d")));
    assert_eq!(lines(&mobile.received()), ["CANCEL"]);
    assert!(alice.received().is_empty());
    p.from_client(
        &mobile.flow,
        SipMessage::response_to(&at_mobile, 487, "Request Terminated", Some("m")),
    );
    assert_eq!(lines(&alice.received()), ["603"]);
}

#[tokio::test(start_paused = true)]
async fn q_values_make_sequential_groups() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    let (mut alice, mut desk, mut mobile) = (Client::open(p, "alice"), Client::open(p, "bob"), Client::open(p, "bob"));
    register_device(p, &mut desk, "bob", "desk", "1.0");
    register_device(p, &mut mobile, "bob", "mobile", "0.5");
    alice.send(p, &invite("z9hG4bK-seq1"));
    let at_desk = desk.received().pop().expect("the q=1 group first");
    assert!(mobile.received().is_empty(), "the q=0.5 group waits");
    p.from_client(&desk.flow, SipMessage::response_to(&at_desk, 480, "Not Now", Some("d")));
    let at_mobile = mobile.received().pop().expect("then the q=0.5 group");
    assert_eq!(lines(&alice.received()), ["100"]);
    p.from_client(&mobile.flow, SipMessage::response_to(&at_mobile, 200, "OK", Some("m")));
    assert_eq!(lines(&alice.received()), ["200"]);
}

#[tokio::test(start_paused = true)]
async fn a_message_forks_and_the_first_answer_wins() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    let (mut alice, mut desk, mut mobile) = two_devices(p);
    alice.send(
        p,
        "MESSAGE sip:bob@contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:40001;branch=z9hG4bK-msg1\r\n\
         From: <sip:alice@contoso.test>;tag=a\r\nTo: <sip:bob@contoso.test>\r\nCall-ID: msg1\r\n\
         CSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
    );
    let at_desk = desk.received().pop().expect("desk gets it");
    let at_mobile = mobile.received().pop().expect("mobile gets it");
    assert_eq!(at_desk.body.as_ref(), b"hi");
    p.from_client(&mobile.flow, SipMessage::response_to(&at_mobile, 200, "OK", Some("m")));
    p.from_client(&desk.flow, SipMessage::response_to(&at_desk, 200, "OK", Some("d")));
    assert_eq!(lines(&alice.received()), ["200"], "one answer per request");
    assert!(desk.received().is_empty(), "a MESSAGE is never CANCELled");
    assert_eq!(live(p), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn only_the_hop_that_sent_an_invite_can_cancel_it() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    let (mut alice, mut bob, mut carol) = (
        Client::open(p, "alice"),
        Client::open(p, "bob"),
        Client::open(p, "carol"),
    );
    let mut stranger = Client::stranger(p);
    register(p, &mut bob, "bob");
    alice.send(p, &invite("z9hG4bK-inv5"));
    assert_eq!(lines(&alice.received()), ["100"]);
    assert_eq!(lines(&bob.received()), ["INVITE"]);
    // The same CANCEL from another connection matches nothing of that
    // connection: a stranger must authenticate like any request (here no
    // digest users: 403), an authenticated one gets 481 (when its From is
    // its own; claiming alice is the usual 403).
    stranger.send(p, &hop("CANCEL", "z9hG4bK-inv5"));
    assert_eq!(lines(&stranger.received()), ["403"]);
    carol.send(p, &hop("CANCEL", "z9hG4bK-inv5"));
    assert_eq!(lines(&carol.received()), ["403"]);
    carol.send(p, &hop("CANCEL", "z9hG4bK-inv5").replace("<sip:alice@", "<sip:carol@"));
    assert_eq!(lines(&carol.received()), ["481"]);
    assert!(bob.received().is_empty(), "the INVITE is not cancelled");
    assert_eq!(live(p), (1, 1));
    // From alice's own connection: 200, and the CANCEL goes downstream.
    alice.send(p, &hop("CANCEL", "z9hG4bK-inv5"));
    assert_eq!(lines(&alice.received()), ["200"]);
    assert_eq!(lines(&bob.received()), ["CANCEL"]);
}

/// A request from another connection with the key of a live transaction
/// (same branch and sent-by) is a merged request: 482 to it, while the
/// first one's transaction goes on untouched and still absorbs its own
/// retransmissions.
#[tokio::test(start_paused = true)]
async fn another_connections_request_with_a_live_key_is_a_merged_request() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    let (mut alice, mut bob, mut carol) = (
        Client::open(p, "alice"),
        Client::open(p, "bob"),
        Client::open(p, "carol"),
    );
    register(p, &mut bob, "bob");
    alice.send(p, &invite("z9hG4bK-inv9"));
    assert_eq!(lines(&alice.received()), ["100"]);
    assert_eq!(lines(&bob.received()), ["INVITE"]);
    carol.send(p, &invite("z9hG4bK-inv9").replace("<sip:alice@", "<sip:carol@"));
    let answer = carol.received();
    assert_eq!(lines(&answer), ["482"]);
    assert!(
        matches!(&answer[0].start, StartLine::Response { reason, .. } if reason == "Loop Detected (merged request)"),
        "{:?}",
        answer[0].start
    );
    assert!(bob.received().is_empty(), "carol's request is not forwarded");
    assert_eq!(live(p), (1, 1));
    // A stranger's copy is refused at the door (no Digest users here: 403)
    // and that answer does not answer alice's transaction either.
    let mut stranger = Client::stranger(p);
    stranger.send(p, &invite("z9hG4bK-inv9"));
    assert_eq!(lines(&stranger.received()), ["403"]);
    assert!(bob.received().is_empty());
    assert_eq!(live(p), (1, 1));
    // alice's retransmission is still absorbed, and her transaction lives.
    alice.send(p, &invite("z9hG4bK-inv9"));
    assert!(alice.received().is_empty() && bob.received().is_empty());
    assert_eq!(live(p), (1, 1));
    alice.send(p, &hop("CANCEL", "z9hG4bK-inv9"));
    assert_eq!(lines(&alice.received()), ["200"]);
    assert_eq!(lines(&bob.received()), ["CANCEL"]);
}

#[tokio::test(start_paused = true)]
async fn only_the_hop_that_sent_a_failed_invite_has_its_ack_absorbed() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    let (mut alice, mut bob) = (Client::open(p, "alice"), Client::open(p, "bob"));
    let mut stranger = Client::stranger(p);
    register(p, &mut bob, "bob");
    alice.send(p, &invite("z9hG4bK-inv6"));
    let forwarded = bob.received().pop().unwrap();
    p.from_client(
        &bob.flow,
        SipMessage::response_to(&forwarded, 486, "Busy Here", Some("b")),
    );
    assert_eq!(lines(&alice.received()), ["100", "486"]);
    assert_eq!(lines(&bob.received()), ["ACK"]);
    // A stranger's copy of the ACK: dropped unanswered, counted, absorbs nothing.
    stranger.send(p, &hop("ACK", "z9hG4bK-inv6"));
    assert!(stranger.received().is_empty());
    assert!(bob.received().is_empty());
    assert_eq!(live(p), (1, 0));
    assert_eq!(p.stats()["refusals"]["ack_unauthenticated"], 1);
    // alice's ACK is the one the transaction waits for.
    alice.send(p, &hop("ACK", "z9hG4bK-inv6"));
    assert_eq!(live(p), (0, 0));
    assert!(alice.received().is_empty());
    assert!(bob.received().is_empty());
}

fn identity_values(m: &SipMessage) -> Vec<String> {
    m.headers
        .iter()
        .filter(|h| {
            IDENTITY_HEADERS
                .iter()
                .any(|n| h.raw_name_str().eq_ignore_ascii_case(n))
        })
        .map(|h| format!("{}: {}", h.raw_name_str(), h.value_str()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn identity_is_asserted_to_clients_only_when_configured_and_not_withheld() {
    let message = |extra: &str| {
        format!(
            "MESSAGE sip:bob@contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:40001;branch=z9hG4bK-m{}\r\n\
             From: <sip:alice@contoso.test>;tag=a\r\nTo: <sip:bob@contoso.test>\r\nCall-ID: m\r\nCSeq: 1 MESSAGE\r\n\
             P-Asserted-Identity: <sip:dave@contoso.test>\r\n{extra}Content-Length: 0\r\n\r\n",
            extra.len()
        )
    };
    for (assert, extra, want) in [
        (false, "", vec![]),
        (
            true,
            "",
            vec!["P-Asserted-Identity: <sip:alice@contoso.test>".to_owned()],
        ),
        (true, "Privacy: header;id\r\n", vec![]),
    ] {
        let n = node(SipConfig {
            assert_identity_to_clients: assert,
            ..SipConfig::default()
        });
        let p = &n.proxy;
        let (alice, mut bob) = (Client::open(p, "alice"), Client::open(p, "bob"));
        register(p, &mut bob, "bob");
        alice.send(p, &message(extra));
        let got = bob.received();
        assert_eq!(lines(&got), ["MESSAGE"]);
        assert_eq!(identity_values(&got[0]), want, "assert={assert} {extra:?}");
        assert_eq!(p.stats()["identity_headers_removed"], 1);
    }
}

/// A CANCEL we pass on keeps its Reason: the node holding a forked branch's
/// flow gets the forking node's "Call completed elsewhere" CANCEL over the
/// mesh and must not drop the Reason on the way to the phone (seen with
/// baresip: the losing phone's CANCEL had none).
#[tokio::test(start_paused = true)]
async fn a_cancel_passes_its_reason_on_to_the_branches() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    let (mut alice, mut bob) = (Client::open(p, "alice"), Client::open(p, "bob"));
    register(p, &mut bob, "bob");
    alice.send(p, &invite("z9hG4bK-cancel-reason"));
    assert_eq!(lines(&alice.received()), ["100"]);
    assert_eq!(lines(&bob.received()), ["INVITE"]);
    alice.send(
        p,
        &format!(
            "CANCEL sip:bob@contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:40001;branch=z9hG4bK-cancel-reason\r\n\
             From: <sip:alice@contoso.test>;tag=a\r\nTo: <sip:bob@contoso.test>\r\nCall-ID: z9hG4bK-cancel-reason\r\n\
             CSeq: 1 CANCEL\r\nReason: {COMPLETED_ELSEWHERE}\r\nContent-Length: 0\r\n\r\n"
        ),
    );
    assert_eq!(lines(&alice.received()), ["200"], "the CANCEL is answered hop by hop");
    let cancel = bob.received();
    assert_eq!(lines(&cancel), ["CANCEL"]);
    assert_eq!(
        cancel[0]
            .other_header("Reason")
            .map(|h| h.value_str().to_owned())
            .as_deref(),
        Some(COMPLETED_ELSEWHERE)
    );
}

mod auth;
