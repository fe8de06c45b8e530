//! The rejection matrix: one live node (`fe1.contoso.test`), built by hand
//! with its own CA, CRL and topology; each case dials its mesh port as a TLS
//! client (or is dialled by it) and checks the exact recorded reason.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use serde_json::Value;
use sipmesh::pki::{IssueOptions, Issued};
use sipmesh_actors::wire::{encode_to_vec, Frame, PROTOCOL_VERSION};
use time::OffsetDateTime;

const TOPOLOGY_PEERS: [&str; 2] = ["fe0.contoso.test", "fe2.contoso.test"];

/// fe1 with members fe0 (lower: may dial fe1) and fe2 (higher: fe1 dials it,
/// nothing listens there, so it never produces a rejection record).
fn node_with(prepare: impl FnOnce(&Pki)) -> SingleNode {
    let b = SingleNode::builder();
    prepare(&b.pki);
    let mut b = b;
    for m in TOPOLOGY_PEERS {
        b = b.member(m);
    }
    b.start()
}

/// Dial the node as a TLS client with `config`, send a hello claiming
/// `hello_fqdn`, read once; the read must end the connection. Then the newest
/// rejection must be `(reason, presented_name, "inbound")` and no link to
/// `link_name` may be up.
async fn expect_inbound_refusal(
    node: &SingleNode,
    config: Arc<rustls::ClientConfig>,
    hello_fqdn: &str,
    reason: &str,
    presented_name: Option<&str>,
    link_name: &str,
) {
    let before = rejections(&node.debug_socket).len();
    let end = match tls_connect(node.mesh_addr, &node.fqdn, config).await {
        // TLS 1.3: the server judges our certificate after our Finished, so
        // the refusal normally shows up on the first read.
        Ok(mut tls) => {
            let sent = send(&mut tls, &hello_frame(hello_fqdn)).await;
            let end = read_end(&mut tls, Duration::from_secs(2)).await;
            eprintln!("{reason}: hello write {sent:?}, read {end:?}");
            end
        }
        Err(e) => ReadEnd::Error(format!("handshake: {e}")),
    };
    assert!(end.closed(), "{reason}: the node did not close the connection: {end:?}");

    let newest = newest_rejection_after(&node.debug_socket, before);
    assert_eq!(newest["reason"], reason, "{newest}");
    match presented_name {
        Some(n) => assert_eq!(newest["presented_name"], n, "{newest}"),
        None => assert_eq!(newest["presented_name"], Value::Null, "{newest}"),
    }
    assert_eq!(newest["direction"], "inbound", "{newest}");
    let all = rejections(&node.debug_socket);
    assert_eq!(all.len(), before + 1, "exactly one new record: {all:?}");

    if let Some(l) = link(&node.debug_socket, link_name) {
        assert_ne!(
            l["state"], "up",
            "link to {link_name} is up after a refused connection: {l}"
        );
    }
    let status = node.debug("status");
    assert_eq!(status["links_up"], 0, "{status}");
    assert!(pid_alive(node.proc.pid()), "node died");
}

/// A connection presenting `cert` (named `name`, and claiming it in the
/// hello) is refused with `reason`, the refusal naming `name`.
async fn expect_cert_refused(node: &SingleNode, cert: &Issued, name: &str, reason: &str) {
    let config = client_config(&node.pki.ca_pem, Some(cert));
    expect_inbound_refusal(node, config, name, reason, Some(name), name).await;
}

#[tokio::test]
async fn no_client_cert() {
    let node = node_with(|_| {});
    let config = client_config(&node.pki.ca_pem, None);
    expect_inbound_refusal(
        &node,
        config,
        "fe0.contoso.test",
        "no-client-cert",
        None,
        "fe0.contoso.test",
    )
    .await;
}

#[tokio::test]
async fn unknown_ca() {
    let node = node_with(|_| {});
    let other = tempfile::tempdir().expect("tempdir");
    let other_ca = Pki::init(other.path(), "some other CA");
    let cert = other_ca.issue_fqdn("fe2.contoso.test");
    expect_cert_refused(&node, &cert, "fe2.contoso.test", "unknown-ca").await;
}

#[tokio::test]
async fn expired() {
    let node = node_with(|_| {});
    let cert = node.pki.issue(&IssueOptions {
        not_after: Some(OffsetDateTime::now_utc() - time::Duration::minutes(10)),
        ..IssueOptions::new("fe0.contoso.test")
    });
    expect_cert_refused(&node, &cert, "fe0.contoso.test", "expired").await;
}

#[tokio::test]
async fn not_yet_valid_counts_as_expired() {
    let node = node_with(|_| {});
    let now = OffsetDateTime::now_utc();
    let cert = node.pki.issue(&IssueOptions {
        not_before: Some(now + time::Duration::days(1)),
        not_after: Some(now + time::Duration::days(30)),
        ..IssueOptions::new("fe0.contoso.test")
    });
    expect_cert_refused(&node, &cert, "fe0.contoso.test", "expired").await;
}

#[tokio::test]
async fn revoked() {
    let mut revoked: Option<Issued> = None;
    let node = node_with(|pki| {
        let cert = pki.issue_fqdn("fe0.contoso.test");
        pki.revoke(&cert);
        revoked = Some(cert);
    });
    let cert = revoked.expect("issued");
    expect_cert_refused(&node, &cert, "fe0.contoso.test", "revoked").await;
}

#[tokio::test]
async fn not_in_topology() {
    let node = node_with(|_| {});
    let cert = node.pki.issue_fqdn("stranger.contoso.test");
    expect_cert_refused(&node, &cert, "stranger.contoso.test", "not-in-topology").await;
}

#[tokio::test]
async fn bad_eku() {
    let node = node_with(|_| {});
    let cert = node.pki.issue(&IssueOptions {
        client_auth: false,
        ..IssueOptions::new("fe0.contoso.test")
    });
    expect_cert_refused(&node, &cert, "fe0.contoso.test", "bad-eku").await;
}

#[tokio::test]
async fn name_mismatch_inbound() {
    let node = node_with(|_| {});
    // A valid certificate of member fe0, but the hello claims fe2.
    let cert = node.pki.issue_fqdn("fe0.contoso.test");
    let config = client_config(&node.pki.ca_pem, Some(&cert));
    expect_inbound_refusal(
        &node,
        config,
        "fe2.contoso.test",
        "name-mismatch",
        Some("fe0.contoso.test"),
        "fe2.contoso.test",
    )
    .await;
    assert_ne!(
        link(&node.debug_socket, "fe0.contoso.test").expect("fe0 row")["state"],
        "up"
    );
}

/// Sanity check of the harness: a valid member certificate with a truthful
/// hello is accepted (so the refusals above are about the certificate).
#[tokio::test]
async fn valid_member_is_accepted() {
    let node = node_with(|_| {});
    let cert = node.pki.issue_fqdn("fe0.contoso.test");
    let config = client_config(&node.pki.ca_pem, Some(&cert));
    let mut tls = tls_connect(node.mesh_addr, &node.fqdn, config)
        .await
        .expect("handshake");
    send(&mut tls, &hello_frame("fe0.contoso.test"))
        .await
        .expect("send hello");
    // The node answers with its own hello.
    let end = read_end(&mut tls, Duration::from_secs(2)).await;
    let ReadEnd::Data(bytes) = &end else {
        panic!("expected the node's hello, got {end:?}")
    };
    assert!(bytes.len() > 4, "{bytes:?}");
    let l = eventually(Duration::from_secs(2), "fe0 link up", || {
        link(&node.debug_socket, "fe0.contoso.test").filter(|l| l["state"] == "up")
    });
    assert_eq!(l["tls_version"], "TLSv1.3");
    assert!(
        rejections(&node.debug_socket).is_empty(),
        "{:?}",
        rejections(&node.debug_socket)
    );
}

/// A TLS server on 127.0.0.1 presenting `cert` and answering a hello with a
/// hello for `hello_fqdn`; stopped and joined on drop.
struct ImpostorListener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    handshakes_ok: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl ImpostorListener {
    fn start(cert: &Issued, hello_fqdn: &str) -> ImpostorListener {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(load_certs(&cert.cert_path), load_key(&cert.key_path))
            .expect("server cert");
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let handshakes_ok = Arc::new(AtomicUsize::new(0));
        let hello = hello_frame(hello_fqdn);
        let thread = {
            let (stop, accepted, handshakes_ok) = (stop.clone(), accepted.clone(), handshakes_ok.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let tcp = match listener.accept() {
                        Ok((tcp, _)) => tcp,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let _ = tcp.set_nonblocking(false);
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = tcp.set_write_timeout(Some(Duration::from_secs(2)));
                    let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                        continue;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let mut ok = true;
                    while tls.conn.is_handshaking() {
                        if tls.conn.complete_io(&mut tls.sock).is_err() {
                            ok = false;
                            break;
                        }
                    }
                    if !ok {
                        continue;
                    }
                    handshakes_ok.fetch_add(1, Ordering::Relaxed);
                    // Only reached if the dialer accepted our certificate:
                    // read its hello, answer with the impostor's.
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 512];
                    let _ = tls.read(&mut buf);
                    let _ = tls.write_all(&hello);
                    let _ = tls.flush();
                    let _ = tls.read(&mut buf);
                }
            })
        };
        ImpostorListener {
            addr,
            stop,
            accepted,
            handshakes_ok,
            thread: Some(thread),
        }
    }
}

impl Drop for ImpostorListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn name_mismatch_outbound() {
    // fe9 is a member at an address where an impostor presents a valid
    // certificate of fe2. fe1 < fe9, so fe1 dials it and must refuse it.
    let b = SingleNode::builder();
    let impostor_cert = b.pki.issue_fqdn("fe2.contoso.test");
    let impostor = ImpostorListener::start(&impostor_cert, "fe2.contoso.test");
    let node = b.member_at("fe9.contoso.test", impostor.addr).start();

    let newest = eventually(Duration::from_secs(5), "an outbound rejection", || {
        rejections(&node.debug_socket).last().cloned()
    });
    assert_eq!(newest["reason"], "name-mismatch", "{newest}");
    assert_eq!(newest["direction"], "outbound", "{newest}");
    assert_eq!(newest["presented_name"], "fe2.contoso.test", "{newest}");
    assert_eq!(newest["remote_addr"], impostor.addr.to_string(), "{newest}");
    assert!(
        impostor.accepted.load(Ordering::Relaxed) >= 1,
        "the node never dialled fe9"
    );

    // Sample a few times: the link never comes up, every record is the same refusal.
    for _ in 0..5 {
        let l = link(&node.debug_socket, "fe9.contoso.test").expect("fe9 link row");
        assert_ne!(l["state"], "up", "{l}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for r in rejections(&node.debug_socket) {
        assert_eq!(
            (&r["reason"], &r["direction"], &r["presented_name"]),
            (
                &Value::from("name-mismatch"),
                &Value::from("outbound"),
                &Value::from("fe2.contoso.test")
            ),
            "{r}"
        );
    }
    assert_eq!(
        impostor.handshakes_ok.load(Ordering::Relaxed),
        0,
        "the node completed a TLS handshake with a server whose certificate names fe2, not fe9"
    );
}

#[tokio::test]
async fn wrong_protocol_version() {
    let node = node_with(|_| {});
    let cert = node.pki.issue_fqdn("fe0.contoso.test");
    let config = client_config(&node.pki.ca_pem, Some(&cert));
    let before = rejections(&node.debug_socket).len();
    let mut tls = tls_connect(node.mesh_addr, &node.fqdn, config)
        .await
        .expect("handshake");
    send(&mut tls, &hello_frame_with("fe0.contoso.test", PROTOCOL_VERSION + 98))
        .await
        .expect("send hello");
    let end = read_end(&mut tls, Duration::from_secs(2)).await;
    assert!(end.closed(), "{end:?}");
    let newest = newest_rejection_after(&node.debug_socket, before);
    assert_eq!(newest["reason"], "protocol", "{newest}");
    assert_eq!(newest["presented_name"], "fe0.contoso.test", "{newest}");
    assert_eq!(newest["direction"], "inbound", "{newest}");
    assert_ne!(
        link(&node.debug_socket, "fe0.contoso.test").expect("fe0 row")["state"],
        "up"
    );
}

/// fe2 > fe1, so fe2 must not dial fe1: the node answers with exactly one
/// goaway frame ("wrong-direction") and closes.
#[tokio::test]
async fn wrong_direction_gets_goaway() {
    let node = node_with(|_| {});
    let cert = node.pki.issue_fqdn("fe2.contoso.test");
    let config = client_config(&node.pki.ca_pem, Some(&cert));
    let before = rejections(&node.debug_socket).len();
    let mut tls = tls_connect(node.mesh_addr, &node.fqdn, config)
        .await
        .expect("handshake");
    send(&mut tls, &hello_frame("fe2.contoso.test"))
        .await
        .expect("send hello");
    let mut got = Vec::new();
    loop {
        match read_end(&mut tls, Duration::from_secs(2)).await {
            ReadEnd::Data(d) => got.extend(d),
            end @ (ReadEnd::Eof | ReadEnd::Error(_)) => {
                eprintln!("wrong-direction: ended with {end:?}");
                break;
            }
            ReadEnd::Timeout => panic!("node kept the wrong-direction connection open; got {got:?}"),
        }
    }
    let goaway = encode_to_vec(&Frame::Goaway {
        reason: "wrong-direction".into(),
    })
    .expect("encode");
    assert_eq!(got, goaway, "exactly one goaway frame");
    let newest = newest_rejection_after(&node.debug_socket, before);
    assert_eq!(newest["reason"], "protocol", "{newest}");
    assert_eq!(newest["presented_name"], "fe2.contoso.test", "{newest}");
    assert_eq!(newest["direction"], "inbound", "{newest}");
}

/// No TLS at all on the mesh port (a SIP request in clear text).
#[tokio::test]
async fn plaintext_is_a_handshake_failure() {
    let node = node_with(|_| {});
    let before = rejections(&node.debug_socket).len();
    let mut tcp = tokio::net::TcpStream::connect(node.mesh_addr).await.expect("connect");
    send(
        &mut tcp,
        b"OPTIONS sip:fe1.contoso.test SIP/2.0\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .expect("send");
    let mut got = Vec::new();
    loop {
        match read_end(&mut tcp, Duration::from_secs(2)).await {
            ReadEnd::Data(d) => got.extend(d),
            ReadEnd::Eof | ReadEnd::Error(_) => break,
            ReadEnd::Timeout => panic!("node kept a plaintext connection open; got {got:?}"),
        }
    }
    // At most a TLS alert record (content type 21), never anything else.
    assert!(
        got.is_empty() || got[0] == 21,
        "non-alert bytes in answer to plaintext: {got:?}"
    );
    let newest = newest_rejection_after(&node.debug_socket, before);
    assert_eq!(newest["reason"], "handshake", "{newest}");
    assert_eq!(newest["presented_name"], Value::Null, "{newest}");
    assert_eq!(newest["direction"], "inbound", "{newest}");
}

/// With max_connections = 2, two connections that start a TLS handshake (a
/// record header) and stall use up the bound: a third is refused at once
/// (`connection-limit`); the stalled ones are dropped at the handshake
/// deadline (`handshake`), after which connections are accepted again. A
/// connection that sends nothing never takes a permit (see tests/hostile.rs).
#[tokio::test]
async fn connection_limit_and_handshake_timeout() {
    const HANDSHAKE_MS: u64 = 800;
    let b = SingleNode::builder().limits(HANDSHAKE_MS, 2);
    let cert = b.pki.issue_fqdn("fe0.contoso.test");
    let node = b.member("fe0.contoso.test").member("fe2.contoso.test").start();
    let config = client_config(&node.pki.ca_pem, Some(&cert));

    // A TLS handshake record header, then nothing.
    const RECORD_HEADER: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00];
    let stalled = || async {
        let mut s = tokio::net::TcpStream::connect(node.mesh_addr).await.expect("connect");
        send(&mut s, RECORD_HEADER).await.expect("record header");
        s
    };
    let mut idle1 = stalled().await;
    let mut idle2 = stalled().await;
    let opened = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await; // let the node accept both
    let mut third = stalled().await;
    let end = read_end(&mut third, Duration::from_millis(500)).await;
    assert!(
        matches!(end, ReadEnd::Eof | ReadEnd::Error(_)),
        "third connection not refused at once: {end:?}"
    );
    let records = rejections(&node.debug_socket);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["reason"], "connection-limit", "{}", records[0]);
    assert_eq!(records[0]["presented_name"], Value::Null, "{}", records[0]);
    assert_eq!(records[0]["direction"], "inbound", "{}", records[0]);

    for (name, s) in [("idle 1", &mut idle1), ("idle 2", &mut idle2)] {
        let end = read_end(s, Duration::from_millis(HANDSHAKE_MS + 1_000)).await;
        assert!(end.closed(), "{name}: not closed at the handshake deadline: {end:?}");
    }
    let closed_after = opened.elapsed();
    assert!(
        closed_after >= Duration::from_millis(HANDSHAKE_MS - 100),
        "idle connections closed after {closed_after:?}, before the {HANDSHAKE_MS} ms deadline"
    );
    let records = eventually(Duration::from_secs(2), "two handshake records", || {
        let r = rejections(&node.debug_socket);
        (r.len() == 3).then_some(r)
    });
    for r in &records[1..] {
        assert_eq!(r["reason"], "handshake", "{r}");
        assert_eq!(r["presented_name"], Value::Null, "{r}");
    }

    // Permits are back: a real member is accepted and answered with a hello.
    let mut tls = tls_connect(node.mesh_addr, &node.fqdn, config)
        .await
        .expect("handshake");
    send(&mut tls, &hello_frame("fe0.contoso.test")).await.expect("hello");
    let end = read_end(&mut tls, Duration::from_secs(2)).await;
    let ReadEnd::Data(bytes) = &end else {
        panic!("expected the node's hello after permits were released, got {end:?}")
    };
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    let frame = sipmesh_actors::wire::decode(&mut buf)
        .expect("decode")
        .expect("whole frame");
    let Frame::Hello(h) = frame else {
        panic!("expected hello, got {frame:?}")
    };
    assert_eq!(
        (h.fqdn.as_str(), h.protocol, h.topology_version),
        ("fe1.contoso.test", PROTOCOL_VERSION, 1)
    );
}
