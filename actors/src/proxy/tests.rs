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
            mesh_addr: "127.0.0.1:5071".parse().unwrap(),
            client_addr,
            pool: None,
        }],
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
    });
    let store = Arc::new(Store::open(&dir.path().join("store.redb")).unwrap());
    let proxy = Arc::new(Proxy::new(shared, config, store, client_addr).unwrap());
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
    // At 64×T1: 408 upstream, CANCEL downstream, nothing left.
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(lines(&alice.received()), ["408"]);
    assert_eq!(lines(&bob.received()), ["CANCEL"]);
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
    assert_eq!(live(p), (0, 0));
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
async fn a_final_response_cancels_the_timer() {
    let n = node(SipConfig::default());
    let p = &n.proxy;
    let (mut alice, mut bob) = (Client::open(p, "alice"), Client::open(p, "bob"));
    register(p, &mut bob, "bob");
    alice.send(p, &invite("z9hG4bK-inv4"));
    let forwarded = bob.received().pop().unwrap();
    p.from_client(&bob.flow, SipMessage::response_to(&forwarded, 200, "OK", Some("b")));
    assert_eq!(lines(&alice.received()), ["100", "200"]);
    assert_eq!(live(p), (0, 0));
    // Long after every timer would have fired: no 408 shows up.
    tokio::time::advance(SipConfig::default().invite_timeout * 2).await;
    settle().await;
    assert!(alice.received().is_empty());
    assert!(bob.received().is_empty());
}
