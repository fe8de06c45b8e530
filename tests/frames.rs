//! Malformed frames on an authenticated mesh connection: the node closes that
//! connection, records a `protocol` rejection, and its real links are untouched.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn malformed_frames_close_only_that_connection() {
    let c = Cluster::up(3, 200, 1_000);
    let (fe1, fe2, fe3) = (fe(1), fe(2), fe(3));
    let target = c.node(&fe3).clone();

    // A genuine fe1 certificate from the cluster's CA (so TLS and the trust
    // checks pass and only the framing is wrong).
    let certs = tempfile::tempdir().expect("tempdir");
    let pki = Pki::existing(&c.info.ca_dir, &c.info.ca, certs.path());
    let cert = pki.issue_fqdn(&fe1);
    let config = client_config(&c.info.ca, Some(&cert));

    let links_before: Vec<(String, u64)> = links(&target.debug_socket)
        .iter()
        .map(|l| (l["peer"].as_str().expect("peer").to_owned(), restarts(l)))
        .collect();
    assert_eq!(links_before.len(), 2, "{links_before:?}");

    let mut truncated = vec![0, 0, 0, 100];
    truncated.extend_from_slice(&[7u8; 10]);
    let cases: [(&str, Vec<u8>, bool); 3] = [
        // 4 GiB announced: far over MAX_FRAME_LEN, refused before allocating.
        ("length prefix FF FF FF FF", vec![0xFF, 0xFF, 0xFF, 0xFF], false),
        ("100-byte frame cut after 10 bytes", truncated, true),
        ("garbage postcard (variant 99)", vec![0, 0, 0, 3, 99, 1, 2], false),
    ];

    for (name, bytes, close_write) in cases {
        let before = rejections(&target.debug_socket).len();
        let mut tls = tls_connect(target.mesh(), &fe3, config.clone())
            .await
            .unwrap_or_else(|e| panic!("{name}: handshake with fe3: {e}"));
        send(&mut tls, &bytes)
            .await
            .unwrap_or_else(|e| panic!("{name}: write: {e}"));
        if close_write {
            tls.shutdown().await.unwrap_or_else(|e| panic!("{name}: shutdown: {e}"));
        }
        let end = read_end(&mut tls, Duration::from_secs(2)).await;
        assert!(
            end.closed(),
            "{name}: fe3 did not close the connection within 2 s: {end:?}"
        );

        let newest = newest_rejection_after(&target.debug_socket, before);
        eprintln!("{name}: read {end:?}; rejection {newest}");
        assert_eq!(newest["reason"], "protocol", "{name}: {newest}");
        assert_eq!(newest["presented_name"], fe1.as_str(), "{name}: {newest}");
        assert_eq!(newest["direction"], "inbound", "{name}: {newest}");

        for (peer, restarts_before) in &links_before {
            let l = c.link(&fe3, peer);
            assert_eq!(l["state"], "up", "{name}: fe3 -> {peer}: {l}");
            assert_eq!(restarts(&l), *restarts_before, "{name}: fe3 -> {peer} restarted: {l}");
        }
        assert!(pid_alive(target.pid), "{name}: fe3 died");
    }

    // The peers' view of fe3 is unchanged as well.
    for peer in [&fe1, &fe2] {
        assert_eq!(c.link(peer, &fe3)["state"], "up", "{peer} -> fe3");
    }
    let status = debug(&target.debug_socket, "status");
    assert_eq!(status["links_up"], 2, "{status}");
}
