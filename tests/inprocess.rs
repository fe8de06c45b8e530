//! Link timers of in-process nodes on a paused clock: the redial backoff and
//! the heartbeat timeout, each checked at exact virtual instants, with no
//! wall-clock sleep (see `common/inprocess.rs`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::inprocess::{paused_system, spin, spin_until, ClockHold, Plan};
use sipmesh_actors::config::MeshTiming;

const FE0: &str = "fe0.contoso.test";
const FE1: &str = "fe1.contoso.test";
const FE2: &str = "fe2.contoso.test";

/// Yields that give a node every chance to act on what it already has.
const SETTLE: usize = 200;

fn timing(heartbeat_ms: u64, backoff_cap_ms: u64) -> MeshTiming {
    MeshTiming {
        heartbeat_interval: Duration::from_millis(heartbeat_ms),
        heartbeat_timeout: Duration::from_millis(3 * heartbeat_ms),
        backoff_cap: Duration::from_millis(backoff_cap_ms),
        handshake_timeout: Duration::from_secs(5),
        max_connections: 64,
        member_reserved_connections: 16,
        ..MeshTiming::default()
    }
}

#[test]
fn redials_back_off_doubling_with_jitter_up_to_the_cap() {
    // fe1 dials fe2 (the lower FQDN dials); "fe2" is a listener of the test
    // that accepts and drops each connection, so every dial fails.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    const DIALS: usize = 6;
    let count = accepted.clone();
    let acceptor = std::thread::spawn(move || {
        for conn in peer.incoming().take(DIALS) {
            drop(conn);
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    let cap_ms = 400;
    let plan = Plan::new(&[FE1], &[(FE2, Some(peer_addr))], timing(60_000, cap_ms));
    paused_system().block_on(async move {
        let hold = ClockHold::new();
        let nodes = plan.start().await;
        spin_until("the first dial", || accepted.load(Ordering::SeqCst) == 1).await;
        for failures in 1..DIALS as u64 {
            // The link waits: state backoff, the wait shown in `links`.
            let mut row = nodes.link(0, FE2).await;
            while !(row["state"] == "backoff" && row["restarts"] == failures && row["redial_in_ms"].is_u64()) {
                spin(SETTLE).await;
                row = nodes.link(0, FE2).await;
            }
            let wait = row["redial_in_ms"].as_u64().unwrap();
            let ceiling = (100u64 << (failures - 1)).min(cap_ms);
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "after {failures} failures the wait is {wait} ms, not within [{}, {ceiling}]",
                ceiling / 2
            );
            assert!(
                row["last_error"].as_str().unwrap().contains(&peer_addr.to_string()),
                "{row}"
            );
            // Nothing before the wait is over...
            tokio::time::advance(Duration::from_millis(wait.saturating_sub(1))).await;
            spin(SETTLE).await;
            assert_eq!(accepted.load(Ordering::SeqCst) as u64, failures, "no early redial");
            // ...and the next dial right after it.
            tokio::time::advance(Duration::from_millis(2)).await;
            spin_until("the next dial", || {
                accepted.load(Ordering::SeqCst) as u64 == failures + 1
            })
            .await;
        }
        drop(hold);
        nodes.stop().await;
    });
    acceptor.join().unwrap();
}

#[test]
fn a_silent_peer_is_declared_down_after_the_heartbeat_timeout() {
    use common::{client_config, hello_frame, send, tls_connect};
    use tokio::io::AsyncReadExt;

    // fe0 is played by the test: it dials fe1 (lower FQDN dials), says hello
    // and then never sends another frame, not even a pong.
    let heartbeat_ms = 1_000;
    let plan = Plan::new(&[FE1], &[(FE0, None)], timing(heartbeat_ms, 1_000));
    let fe0 = plan.issue(FE0);
    let config = client_config(&plan.pki.ca_pem, Some(&fe0));
    let fe1_mesh = plan.nodes[0].mesh_addr;
    paused_system().block_on(async move {
        let hold = ClockHold::new();
        let nodes = plan.start().await;
        let mut tls = tls_connect(fe1_mesh, FE1, config).await.expect("fe0 dials fe1");
        send(&mut tls, &hello_frame(FE0)).await.expect("hello");
        let mut first = [0u8; 1];
        tls.read_exact(&mut first).await.expect("fe1 answers with its hello");
        let mut row = nodes.link(0, FE0).await;
        while row["state"] != "up" {
            spin(SETTLE).await;
            row = nodes.link(0, FE0).await;
        }
        // Heartbeats every second; down once silent for more than 3 s: still
        // up at 3 s (silent for exactly the timeout)...
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(heartbeat_ms)).await;
            spin(SETTLE).await;
        }
        assert_eq!(nodes.link(0, FE0).await["state"], "up");
        // ...down at the next heartbeat, 4 s after the last frame.
        tokio::time::advance(Duration::from_millis(heartbeat_ms)).await;
        let mut row = nodes.link(0, FE0).await;
        while row["state"] == "up" {
            spin(SETTLE).await;
            row = nodes.link(0, FE0).await;
        }
        assert_eq!(row["state"], "down");
        assert_eq!(
            row["last_error"], "no frame from peer for 4000 ms (heartbeat timeout)",
            "{row}"
        );
        drop(tls);
        drop(hold);
        nodes.stop().await;
    });
}
