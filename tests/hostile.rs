//! Hostile load at both doors (issue 8, holes 6 to 8): strangers flooding the
//! mesh port, one host filling the client port, slow and large requests.
//! Each test runs real node processes on loopback with limits lowered in
//! node.toml, bounded loops and deadlines, and asserts exact counts, status
//! codes and RSS bounds.
//!
//! Second source IPs are other loopback addresses (all of 127.0.0.0/8 is
//! local): the test binds a socket to e.g. 127.0.0.2 before connecting.

mod common;
mod sip_ua;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    client_config, debug, eventually, hello_frame, kill_sipmesh_pid, pid_alive, poll_until, read_end, send, tail,
    tls_connect, try_debug, Cluster, ProcGuard, SingleNode, BIN, NODE_READY_DEADLINE, POLL,
};
use serde_json::Value;
use sip_ua::{ca_path, client_addr, password, text, Ua, DOMAIN, WAIT};
use sipmesh_actors::sip::HeaderName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const FE0: &str = "fe0.contoso.test";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// TCP from `from` (a loopback address) to `addr`.
async fn tcp_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    tokio::time::timeout(Duration::from_secs(3), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

/// Whether the node closed `s` within `deadline` (EOF or an error).
async fn closed_within<S: AsyncReadExt + Unpin>(s: &mut S, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // pongs and answers: keep reading
        }
    }
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

// ------------------------------------------------------------ hole 6: mesh

/// 1,100 plain TCP connects that send nothing (from 110 non-member IPs, 10
/// each) plus 100 that send a TLS record header and stall, against a node
/// whose mesh port has 64 permits: a member (fe0, played by the test from
/// 127.0.0.1, its topology address) still gets its link up, drops it, and
/// gets it up again within the heartbeat timeout. Today every stranger takes
/// a permit at accept and the member is refused `connection-limit`.
#[tokio::test]
async fn strangers_cannot_lock_a_member_out_of_the_mesh() {
    const MAX_CONNECTIONS: usize = 64;
    const HEARTBEAT_MS: u64 = 1_000;
    let b = SingleNode::builder()
        .timing(HEARTBEAT_MS, 1_000)
        .limits(5_000, MAX_CONNECTIONS);
    let cert = b.pki.issue_fqdn(FE0);
    let node = b.member(FE0).start();
    let config = client_config(&node.pki.ca_pem, Some(&cert));
    let heartbeat_timeout = Duration::from_millis(3 * HEARTBEAT_MS);

    // Strangers that start a handshake and stall: they take the general
    // permits (64 - 16 reserved), never the members' share.
    let mut stalled = Vec::new();
    for host in 1..=20u8 {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 2, host));
        for _ in 0..5 {
            if let Ok(mut s) = tcp_from(from, node.mesh_addr).await {
                let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
                stalled.push(s);
            }
        }
    }
    // Silent strangers: 10 connections from each of 110 addresses.
    let mut silent = Vec::new();
    for host in 1..=110u8 {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 1, host));
        for _ in 0..10 {
            if let Ok(s) = tcp_from(from, node.mesh_addr).await {
                silent.push(s);
            }
        }
    }
    assert!(silent.len() >= 1_000, "only {} silent connects", silent.len());

    // The member dials through the flood, twice.
    let up = || common::link(&node.debug_socket, FE0).filter(|l| l["state"] == "up");
    let mut tls = tls_connect(node.mesh_addr, &node.fqdn, config.clone())
        .await
        .expect("the member's handshake through the flood");
    send(&mut tls, &hello_frame(FE0)).await.expect("hello");
    assert!(
        matches!(
            read_end(&mut tls, Duration::from_secs(2)).await,
            common::ReadEnd::Data(_)
        ),
        "fe1 answers the member's hello"
    );
    let row = poll_until(heartbeat_timeout, POLL, up).expect("link up through the flood");
    assert_eq!(row["tls_version"], "TLSv1.3");
    drop(tls); // the link drops...
    eventually(Duration::from_secs(3), "the link seen down", || {
        common::link(&node.debug_socket, FE0).filter(|l| l["state"] != "up")
    });
    let redial = Instant::now();
    let mut tls = tls_connect(node.mesh_addr, &node.fqdn, config)
        .await
        .expect("the member's second handshake through the flood");
    send(&mut tls, &hello_frame(FE0)).await.expect("hello");
    poll_until(heartbeat_timeout, POLL, up).expect("link up again");
    assert!(
        redial.elapsed() < heartbeat_timeout,
        "up again after {:?}",
        redial.elapsed()
    );

    // Every stranger was turned away by reason, none got a permit from the
    // members' share; the silent ones at the latest at the hello deadline.
    let status = eventually(Duration::from_secs(5), "every silent stranger dropped", || {
        let s = debug(&node.debug_socket, "status");
        let r = &s["accept"]["mesh"]["refused"];
        let counted = ["source-limit", "pending-limit", "no-client-hello"]
            .iter()
            .map(|k| r[k].as_u64().unwrap_or(0))
            .sum::<u64>();
        (counted >= silent.len() as u64).then_some(s)
    });
    let refused = &status["accept"]["mesh"]["refused"];
    eprintln!("mesh refusals: {refused}");
    assert!(refused["pending-limit"].as_u64().unwrap() > 0, "{status}");
    assert!(refused["no-client-hello"].as_u64().unwrap() > 0, "{status}");
    // The stalled strangers got the general permits (64 - 16) and no more;
    // the member's two connections came out of the reserved ones.
    let general = (MAX_CONNECTIONS - MAX_CONNECTIONS / 4) as u64;
    assert_eq!(status["accept"]["mesh"]["accepted"], general + 2, "{status}");
    // At least the first 64 stalled ones reach the permit stage (later ones
    // may meet a full waiting room first): 16 or more found no permit.
    assert!(refused["connection-limit"].as_u64().unwrap() >= 16, "{status}");
    let totals = &status["rejections"];
    assert!(totals["connection-limit"].as_u64().unwrap() > 0, "{status}");
    assert!(totals["handshake"].as_u64().unwrap() > 0, "{status}");
    let records = common::rejections(&node.debug_socket);
    assert!(
        records
            .iter()
            .any(|r| r["reason"] == "handshake" && r["detail"].as_str().unwrap().contains("no TLS ClientHello")),
        "no no-ClientHello record"
    );
    assert!(
        records.iter().all(|r| r["presented_name"] != FE0),
        "the member was refused: {records:?}"
    );
    drop((silent, stalled, tls));
}

// ------------------------------------------------------------ client port

/// A 1-node `cluster up` (users alice, bob, carol, dave) whose node is
/// restarted with `keys` added to its `[sip]` section. Returns the cluster
/// and the node's PID.
fn client_node(keys: &[(&str, &str)]) -> (Cluster, i32) {
    let mut c = sip_ua::sip_cluster(1);
    let node = c.info.nodes[0].clone();
    let original = std::fs::read_to_string(&node.config).expect("read node.toml");
    let mut text = String::new();
    for line in original.lines() {
        if keys.iter().any(|(k, _)| line.starts_with(&format!("{k} = "))) {
            continue;
        }
        text.push_str(line);
        text.push('\n');
        if line == "[sip]" {
            for (k, v) in keys {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
    }
    std::fs::write(&node.config, text).expect("write node.toml");
    kill_sipmesh_pid(node.pid);
    eventually(Duration::from_secs(5), "the node gone", || {
        (!pid_alive(node.pid)).then_some(())
    });
    let log = c.tmp.path().join("restarted.log");
    let mut cmd = Command::new(BIN);
    cmd.args(["node", "run", "--config"]).arg(&node.config);
    let mut guard = ProcGuard::spawn("fe1 (restarted)", cmd, &log);
    let ready = poll_until(NODE_READY_DEADLINE, POLL, || {
        if let Some(status) = guard.try_wait() {
            panic!("the node exited ({status}):\n{}", tail(&log, 40));
        }
        try_debug(&node.debug_socket, "status").ok()
    });
    assert!(ready.is_some(), "restarted node not ready:\n{}", tail(&log, 40));
    let pid = guard.pid();
    c.extra.push(guard);
    (c, pid)
}

fn status(c: &Cluster) -> Value {
    c.debug(&common::fe(1), "status")
}

/// A raw TLS connection to the node's client port from `from`.
async fn raw_tls(c: &Cluster, from: Option<IpAddr>) -> sipmesh::ua::ClientStream {
    let addr = client_addr(c, &common::fe(1));
    let config = sipmesh::ua::client_config(&ca_path(c), None).expect("client config");
    sipmesh::ua::connect_from(from, addr, "127.0.0.1", config)
        .await
        .expect("TLS to the client port")
}

/// Hole 7: with the node's total lowered to 200 and 50 per IP, 300 TLS
/// connections from 127.0.0.1 get 50 through; alice from 127.0.0.2 still
/// connects and registers. Today the flood takes all 200 permits.
#[tokio::test]
async fn one_host_cannot_fill_the_client_port() {
    let (c, _pid) = client_node(&[
        ("max_client_connections", "200"),
        ("max_client_connections_per_ip", "50"),
    ]);
    let addr = client_addr(&c, &common::fe(1));
    let config = sipmesh::ua::client_config(&ca_path(&c), None).expect("client config");
    let mut flood = Vec::new();
    for _ in 0..300 {
        // A refused connection fails its handshake (or is closed at once).
        if let Ok(mut s) = sipmesh::ua::connect(addr, "127.0.0.1", config.clone()).await {
            if !closed_within(&mut s, Duration::from_millis(20)).await {
                flood.push(s);
            }
        }
    }
    assert_eq!(flood.len(), 50, "connections from 127.0.0.1 kept open");
    let mut alice = Ua::connect_from(ip("127.0.0.2"), addr, &ca_path(&c), "alice", &password(&c, "alice")).await;
    let ok = alice.register(600).await;
    assert_eq!(ok.status(), Some(200), "{}", text(&ok));
    let s = status(&c);
    assert_eq!(s["accept"]["client"]["refused"]["source-limit"], 250, "{s}");
    assert_eq!(s["accept"]["client"]["accepted"], 51, "{s}");
    drop(flood);
}

/// Hole 8, deadlines: a header sent one byte every 250 ms is closed at the
/// whole-message deadline (1.5 s), not kept alive by each byte; an
/// unauthenticated connection sending CRLF keep-alives is closed at its
/// lifetime (3 s); an authenticated one sending keep-alives stays open.
#[tokio::test]
async fn slow_and_unauthenticated_connections_meet_their_deadlines() {
    const MESSAGE_MS: u64 = 1_500;
    const LIFETIME_MS: u64 = 3_000;
    const SLACK: Duration = Duration::from_millis(1_500);
    let (c, _pid) = client_node(&[
        ("client_message_timeout_ms", "1500"),
        ("unauthenticated_lifetime_ms", "3000"),
    ]);
    let addr = client_addr(&c, &common::fe(1));
    let mut alice = Ua::connect(addr, &ca_path(&c), "alice", &password(&c, "alice")).await;
    assert_eq!(alice.register(600).await.status(), Some(200));

    // The slow header.
    let slow = raw_tls(&c, None).await;
    let started = Instant::now();
    let (mut slow_rd, mut slow_wr) = tokio::io::split(slow);
    let trickle = tokio::spawn(async move {
        let header = b"OPTIONS sip:fe1.contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bK-slow\r\n";
        for b in header.iter().cycle().take(200) {
            if slow_wr.write_all(&[*b]).await.is_err() || slow_wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    // The unauthenticated keep-alive sender.
    let pinger = raw_tls(&c, None).await;
    let opened = Instant::now();
    let (mut ping_rd, mut ping_wr) = tokio::io::split(pinger);
    let pings = tokio::spawn(async move {
        for _ in 0..40 {
            if ping_wr.write_all(b"\r\n\r\n").await.is_err() || ping_wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let slow_deadline = Duration::from_millis(MESSAGE_MS) + SLACK;
    assert!(
        closed_within(&mut slow_rd, slow_deadline).await,
        "slow header still open after {slow_deadline:?}"
    );
    let slow_closed = started.elapsed();
    assert!(
        slow_closed >= Duration::from_millis(MESSAGE_MS - 100),
        "closed after {slow_closed:?}, before the deadline"
    );
    let ping_deadline = Duration::from_millis(LIFETIME_MS) + SLACK;
    assert!(
        closed_within(&mut ping_rd, ping_deadline.saturating_sub(opened.elapsed())).await,
        "unauthenticated keep-alive connection still open after {ping_deadline:?}"
    );
    let ping_closed = opened.elapsed();
    assert!(
        ping_closed >= Duration::from_millis(LIFETIME_MS - 100),
        "closed after {ping_closed:?}, before the lifetime"
    );
    // alice, authenticated, is still served after both deadlines.
    alice.send_raw(b"\r\n\r\n").await;
    let again = alice.register(600).await;
    assert_eq!(again.status(), Some(200), "{}", text(&again));
    let s = status(&c);
    assert_eq!(s["accept"]["client"]["refused"]["message-deadline"], 1, "{s}");
    assert_eq!(s["accept"]["client"]["refused"]["unauthenticated-lifetime"], 1, "{s}");
    trickle.abort();
    pings.abort();
}

/// Hole 8, buffers: 300 connections each send one whole 128 KiB MESSAGE
/// (answered 407: they never authenticate), then announce another 128 KiB
/// body and send half of it. The node's RSS grows by what is still pending
/// (half a body, plus the TLS state), not by the large message before it
/// nor by what was announced. Today the framer reserves the announced
/// length, and the buffer that held the large message stays pinned.
#[tokio::test]
async fn half_sent_bodies_cost_what_arrived() {
    const CONNECTIONS: usize = 300;
    const ANNOUNCED: usize = 128 * 1024;
    const SENT: usize = ANNOUNCED / 2;
    let (c, pid) = client_node(&[
        ("max_client_connections_per_ip", "1000"),
        ("client_message_timeout_ms", "60000"),
        ("unauthenticated_lifetime_ms", "60000"),
    ]);
    let before = rss_kib(pid);
    let head = |n: u32| {
        format!(
            "MESSAGE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bK-half{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=1\r\nTo: <sip:bob@{DOMAIN}>\r\n\
             Call-ID: half@127.0.0.1\r\nCSeq: {n} MESSAGE\r\nContent-Length: {ANNOUNCED}\r\n\r\n"
        )
    };
    let body = vec![b'x'; ANNOUNCED];
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut s = raw_tls(&c, None).await;
        s.write_all(head(1).as_bytes()).await.expect("head");
        s.write_all(&body).await.expect("whole body");
        s.flush().await.expect("flush");
        // The node answers the whole one (407): it was read and decoded.
        let mut answer = [0u8; 12];
        tokio::time::timeout(WAIT, s.read_exact(&mut answer))
            .await
            .expect("an answer in time")
            .expect("read the answer");
        assert_eq!(&answer, b"SIP/2.0 407 ");
        s.write_all(head(2).as_bytes()).await.expect("head");
        s.write_all(&body[..SENT]).await.expect("half the body");
        s.flush().await.expect("flush");
        held.push(s);
    }
    // Let the node read everything, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let grown = after.saturating_sub(before);
    let per_connection = grown * 1024 / CONNECTIONS as u64;
    eprintln!("RSS {before} KiB -> {after} KiB: +{grown} KiB, {per_connection} bytes per connection");
    assert!(
        per_connection < BOUND_PER_HALF_BODY,
        "each half-sent body costs {per_connection} bytes (bound {BOUND_PER_HALF_BODY})"
    );
    let s = status(&c);
    assert_eq!(s["sip"]["flows"], CONNECTIONS as u64, "{s}");
    drop(held);
}

/// What one connection holding half of a 128 KiB body may cost the node:
/// the 64 KiB that arrived and as much again for its buffer's growth room,
/// the TLS session and the flow (measured ~120 KiB; 168 KiB before the
/// fix, when the announced length was reserved and the large message's
/// buffer stayed pinned).
const BOUND_PER_HALF_BODY: u64 = 128 * 1024;

/// Hole 8, transaction memory: alice sends 100 KiB MESSAGEs to bob, who
/// never answers; with 1.1 MB per user her 11th is refused 503 with
/// Retry-After while carol's still reaches bob. Today only a global count
/// (100,000 transactions) bounds it.
#[tokio::test]
async fn one_user_cannot_spend_every_transaction_byte() {
    const BODY: usize = 100 * 1024;
    let (c, _pid) = client_node(&[("max_transaction_bytes_per_user", "1100000")]);
    let addr = client_addr(&c, &common::fe(1));
    let ca = ca_path(&c);
    let ua = |user: &'static str| {
        let (ca, pw) = (ca.clone(), password(&c, user));
        async move {
            let mut u = Ua::connect(addr, &ca, user, &pw).await;
            assert_eq!(u.register(600).await.status(), Some(200), "{user} registers");
            u
        }
    };
    let mut bob = ua("bob").await;
    let mut alice = ua("alice").await;
    let mut carol = ua("carol").await;
    let body = vec![b'a'; BODY];
    let target = format!("sip:bob@{DOMAIN}");
    let mut sent = Vec::new();
    for _ in 0..11 {
        sent.push(alice.request("MESSAGE", &target, &[], &body).await);
    }
    let refused = alice.recv_response(WAIT).await;
    assert_eq!(refused.status(), Some(503), "{}", text(&refused));
    assert_eq!(
        refused.top_via().ok().and_then(|v| v.branch().map(str::to_owned)),
        Some(sent[10].branch.clone()),
        "the 11th is the one refused"
    );
    assert_eq!(
        sip_ua::reason(&refused),
        "Service Unavailable (too many pending bytes for this user)"
    );
    assert_eq!(sip_ua::hdr(&refused, HeaderName::RetryAfter), "5");
    // bob got alice's ten.
    for i in 0..10 {
        let m = bob.recv_request_method("MESSAGE", WAIT).await;
        assert_eq!(m.body.len(), BODY, "message {i}");
    }
    // carol still gets through to bob while alice's ten are pending.
    let from_carol = carol.request("MESSAGE", &target, &[], &body).await;
    let m = bob.recv_request_method("MESSAGE", WAIT).await;
    assert_eq!(m.call_id().ok(), Some(from_carol.call_id.as_str()));
    let s = status(&c);
    assert_eq!(s["sip"]["transaction_budget"]["refused_per_user"], 1, "{s}");
    // Once alice's transactions time out (408), her bytes are given back.
    for _ in 0..10 {
        let r = alice.recv_response(Duration::from_secs(10)).await;
        assert_eq!(r.status(), Some(408), "{}", text(&r));
    }
    let r = carol.recv_response(Duration::from_secs(10)).await;
    assert_eq!(r.status(), Some(408), "{}", text(&r));
    let s = eventually(Duration::from_secs(5), "every byte given back", || {
        let s = status(&c);
        (s["sip"]["server_transactions"] == 0).then_some(s)
    });
    assert_eq!(s["sip"]["transaction_budget"]["bytes"], 0, "{s}");
}

// ------------------------------------------------------------ all at once

/// RSS a node may grow by under the combined attack (it holds at most 100
/// connections from the flooding host, the strangers waiting for their
/// ClientHello deadline and the half bodies' buffers).
const HOSTILE_RSS_GROWTH_KIB: u64 = 96 * 1024;

/// A TLS connection to `addr` from `from`, or nothing (an attacker does not
/// care why it failed).
async fn attacker_tls(from: IpAddr, addr: SocketAddr, ca: &std::path::Path) -> Option<sipmesh::ua::ClientStream> {
    let config = sipmesh::ua::client_config(ca, None).ok()?;
    sipmesh::ua::connect_from(Some(from), addr, "127.0.0.1", config)
        .await
        .ok()
}

/// Every hole's attack at once against a 3-node cluster with its default
/// limits, for a bounded time, while alice (fe1) keeps re-registering and
/// messaging bob (fe3): every legitimate request gets its 200, every link
/// stays up without a restart, and no node's RSS grows by more than
/// [`HOSTILE_RSS_GROWTH_KIB`]. The attackers come from their own loopback
/// addresses (127.0.N.x), as on a real network.
#[tokio::test]
async fn everything_at_once_leaves_legitimate_traffic_alone() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let cluster = sip_ua::sip_cluster(3);
    let ca = ca_path(&cluster);
    let nodes = cluster.info.nodes.clone();
    let link_restarts = |c: &Cluster| -> Vec<u64> {
        nodes
            .iter()
            .flat_map(|n| {
                let rows = c.debug(&n.fqdn, "links");
                let rows = rows.as_array().expect("links").clone();
                for r in &rows {
                    assert_eq!(r["state"], "up", "{} sees {r}", n.fqdn);
                }
                rows.iter().map(common::restarts).collect::<Vec<_>>()
            })
            .collect()
    };
    let restarts_before = link_restarts(&cluster);
    let rss_before: Vec<u64> = nodes.iter().map(|n| rss_kib(n.pid)).collect();
    let fe1 = client_addr(&cluster, &common::fe(1));
    let mut alice = Ua::connect(fe1, &ca, "alice", &password(&cluster, "alice")).await;
    assert_eq!(alice.register(600).await.status(), Some(200));
    let mut bob = Ua::connect(
        client_addr(&cluster, &common::fe(3)),
        &ca,
        "bob",
        &password(&cluster, "bob"),
    )
    .await;
    assert_eq!(bob.register(600).await.status(), Some(200));

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut attacks = Vec::new();
    // Hole 6: silent TCP connects to every mesh port, 10 from each of 30 IPs.
    for n in &nodes {
        let mesh = n.mesh();
        for i in 0..30u8 {
            let stop = stop.clone();
            attacks.push(tokio::spawn(async move {
                let mut held = Vec::new();
                for _ in 0..10 {
                    if let Ok(s) = tcp_from(ip(&format!("127.0.6.{}", i + 1)), mesh).await {
                        held.push(s);
                    }
                }
                while !stop.load(Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
    }
    // Hole 7: 300 TLS connections from one host to fe1's client port.
    {
        let (stop, ca) = (stop.clone(), ca.clone());
        attacks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..300 {
                if let Some(s) = attacker_tls(ip("127.0.7.1"), fe1, &ca).await {
                    held.push(s);
                }
            }
            while !stop.load(Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // Hole 8: slow headers, and half-sent 128 KiB bodies, 20 of each.
    for i in 0..20u8 {
        let (slow_stop, slow_ca) = (stop.clone(), ca.clone());
        attacks.push(tokio::spawn(async move {
            let Some(mut s) = attacker_tls(ip(&format!("127.0.8.{}", i + 1)), fe1, &slow_ca).await else {
                return;
            };
            for b in b"REGISTER sip:contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS x".iter() {
                if slow_stop.load(Relaxed) || s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        }));
        let (half_stop, half_ca) = (stop.clone(), ca.clone());
        attacks.push(tokio::spawn(async move {
            let Some(mut s) = attacker_tls(ip(&format!("127.0.9.{}", i + 1)), fe1, &half_ca).await else {
                return;
            };
            let head = format!(
                "MESSAGE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.9.{n}:5999;branch=z9hG4bK-half{i}\r\n\
                 From: <sip:mallory@{DOMAIN}>;tag=m\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: half-{i}\r\n\
                 CSeq: 1 MESSAGE\r\nContent-Length: {}\r\n\r\n",
                128 * 1024,
                n = i + 1
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&vec![b'x'; 64 * 1024]).await;
            let _ = s.flush().await;
            while !half_stop.load(Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // Holes 1-5: pipelined wrong credentials, forged ACKs with a spoofed
    // P-Asserted-Identity, from a stranger that never authenticates.
    {
        let ca = ca.clone();
        attacks.push(tokio::spawn(async move {
            let Some(mut s) = attacker_tls(ip("127.0.10.1"), fe1, &ca).await else {
                return;
            };
            let mut burst = String::new();
            for round in 0..50 {
                burst.push_str(&format!(
                    "ACK sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.10.1:5999;branch=z9hG4bK-ack{round}\r\n\
                     From: <sip:alice@{DOMAIN}>;tag=f\r\nTo: <sip:bob@{DOMAIN}>;tag=b\r\nCall-ID: forged-{round}\r\n\
                     CSeq: 1 ACK\r\nP-Asserted-Identity: <sip:alice@{DOMAIN}>\r\nContent-Length: 0\r\n\r\n\
                     REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.10.1:5999;branch=z9hG4bK-reg{round}\r\n\
                     From: <sip:carol@{DOMAIN}>;tag=c\r\nTo: <sip:carol@{DOMAIN}>\r\nCall-ID: guess-{round}\r\n\
                     CSeq: {round} REGISTER\r\nAuthorization: Digest username=\"carol\", realm=\"{DOMAIN}\", \
                     nonce=\"x\", uri=\"sip:{DOMAIN}\", response=\"00\"\r\nContent-Length: 0\r\n\r\n"
                ));
            }
            let _ = s.write_all(burst.as_bytes()).await;
            let _ = s.flush().await;
            let mut sink = vec![0u8; 64 * 1024];
            let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut sink)).await;
        }));
    }

    // The legitimate traffic, 40 rounds (about 10 s): a MESSAGE to bob every
    // round, a re-REGISTER every 8th.
    let mut delivered = 0;
    for round in 0..40 {
        if round % 8 == 7 {
            let r = alice.register(600).await;
            assert_eq!(r.status(), Some(200), "re-REGISTER in round {round}: {}", text(&r));
        }
        let body = format!("round {round}");
        let sent = alice
            .request("MESSAGE", &format!("sip:bob@{DOMAIN}"), &[], body.as_bytes())
            .await;
        let got = bob.recv_request_method("MESSAGE", WAIT).await;
        assert_eq!(got.body.as_ref(), body.as_bytes(), "only alice's MESSAGEs reach bob");
        assert!(got.header(HeaderName::ProxyAuthorization).is_none(), "{}", text(&got));
        assert!(got.other_header("P-Asserted-Identity").is_none(), "{}", text(&got));
        bob.respond(&got, 200, "OK", &[], b"").await;
        let (_, fin) = alice.final_response(&sent, WAIT).await;
        assert_eq!(fin.status(), Some(200), "round {round}: {}", text(&fin));
        delivered += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(delivered, 40);
    stop.store(true, Relaxed);
    for a in attacks {
        let _ = tokio::time::timeout(Duration::from_secs(10), a).await;
    }
    // Nothing forged ever reached bob.
    bob.expect_silence(Duration::from_millis(300)).await;

    assert_eq!(
        link_restarts(&cluster),
        restarts_before,
        "every link up, none restarted"
    );
    for (n, before) in nodes.iter().zip(rss_before) {
        let after = rss_kib(n.pid);
        assert!(
            after.saturating_sub(before) < HOSTILE_RSS_GROWTH_KIB,
            "{} RSS {before} -> {after} KiB",
            n.fqdn
        );
    }
    // The attacks were seen and refused, by reason, at fe1: the flooding
    // host's 200 connections over its 100, the 50 forged ACKs (dropped, their
    // P-Asserted-Identity removed), the 50 guesses on a nonce never issued.
    let st = status(&cluster);
    assert_eq!(st["accept"]["client"]["refused"]["source-limit"], 200, "{st}");
    assert_eq!(st["sip"]["refusals"]["ack_unauthenticated"], 50, "{st}");
    assert_eq!(st["sip"]["identity_headers_removed"], 50, "{st}");
    assert_eq!(st["sip"]["auth"]["bad_nonce"], 50, "{st}");
    assert_eq!(st["sip"]["transactions"]["MESSAGE"]["200"], 40, "{st}");
    assert_eq!(st["sip"]["transaction_budget"]["bytes"], 0, "{st}");
}
