//! The RFC 4475-style torture corpus (`tests/data/torture/`) sent to a live
//! node's SIP client port over TLS: each invalid message gets exactly the
//! status its file name says, each valid request gets an answer that is not a
//! parse error, and connections whose framing stays sound keep working.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{client_config, tls_connect, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Messages whose framing cannot be trusted: the node answers, then closes.
const CLOSES: &[&str] = &["ncl.", "mcl01.", "bigbody.", "longline.", "manyhdrs."];

/// Statuses that mean "the parser refused it".
const PARSE_ERRORS: &[u16] = &[400, 413, 505, 513];

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/torture");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sip"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read corpus file"))
        })
        .collect()
}

/// Expected status from the file name: `x.invalid-400.sip` → Some(400).
fn expected(name: &str) -> Option<u16> {
    name.split(".invalid-")
        .nth(1)
        .and_then(|r| r.trim_end_matches(".sip").parse().ok())
}

/// Read status lines until `deadline`; returns every status seen.
async fn statuses<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, wait: Duration) -> (Vec<u16>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut closed = false;
    let end = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(end, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                // One complete answer is enough (provisional 100s are followed by more).
                let text = String::from_utf8_lossy(&buf);
                if text.starts_with("SIP/2.0 ") && !text.starts_with("SIP/2.0 100") && text.contains("\r\n\r\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let codes = text
        .split("\r\n")
        .filter_map(|l| l.strip_prefix("SIP/2.0 "))
        .filter_map(|l| l.get(..3)?.parse().ok())
        .collect();
    (codes, closed)
}

#[tokio::test(flavor = "current_thread")]
async fn torture_corpus_against_a_live_node() {
    let cluster = Cluster::up(1, 500, 1000);
    let node = &cluster.info.nodes[0];
    let addr = node.client_addr.parse().expect("client addr");
    let config = client_config(&cluster.info.ca, None);
    let corpus = corpus();
    assert!(corpus.len() >= 40, "corpus has {} files", corpus.len());
    let mut checked = 0;
    for (name, bytes) in corpus {
        let is_request = !bytes.starts_with(b"SIP/2.0 ");
        let is_ack = bytes.starts_with(b"ACK ");
        let stream_incomplete = name.starts_with("clerr."); // Content-Length beyond the bytes sent
        let mut tls = tls_connect(addr, &node.fqdn, config.clone()).await.expect("connect");
        tls.write_all(&bytes).await.expect("send");
        tls.flush().await.expect("flush");
        let wait = if is_request && !is_ack && !stream_incomplete {
            Duration::from_millis(1500)
        } else {
            Duration::from_millis(300)
        };
        let (codes, closed) = statuses(&mut tls, wait).await;
        match expected(&name) {
            // A node never answers a response, however broken.
            Some(_) if !is_request => assert!(codes.is_empty(), "{name}: a response was answered: {codes:?}"),
            Some(_) if stream_incomplete => {
                // On a stream the message is just incomplete: no answer yet, connection open.
                assert!(
                    codes.is_empty(),
                    "{name}: answered {codes:?} before the body was complete"
                );
                assert!(!closed, "{name}: connection closed while waiting for the body");
            }
            Some(want) => {
                assert_eq!(codes.first(), Some(&want), "{name}: expected {want}, got {codes:?}");
            }
            None if is_request && !is_ack => {
                let first = codes.first().copied();
                assert!(first.is_some(), "{name}: no answer to a valid request");
                assert!(
                    !PARSE_ERRORS.contains(&first.unwrap()),
                    "{name}: a valid message was refused as malformed ({codes:?})"
                );
                // What the proxy itself must answer (RFC 3261 §16.3); every
                // other valid request from this unauthenticated connection is challenged.
                let want: &[u16] = match name.split('.').next().unwrap() {
                    "bext01" => &[420],
                    "unkscm" | "novelsc" => &[416],
                    "zeromf" => &[483],
                    _ => &[401, 407],
                };
                assert!(
                    want.contains(&first.unwrap()),
                    "{name}: expected one of {want:?}, got {codes:?}"
                );
            }
            None => assert!(codes.is_empty(), "{name}: a response or ACK was answered: {codes:?}"),
        }
        checked += 1;
        if CLOSES.iter().any(|p| name.starts_with(p)) {
            let (more, closed) = statuses(&mut tls, Duration::from_millis(1500)).await;
            assert!(
                closed && more.is_empty(),
                "{name}: connection not closed after an unframeable message"
            );
            continue;
        }
        // Where the framing is sound the same connection still serves a request.
        if !closed && !stream_incomplete {
            let options = format!(
                "OPTIONS sip:{} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-live-{checked}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:alice@contoso.test>;tag=t{checked}\r\nTo: <sip:{}>\r\n\
                 Call-ID: live-{checked}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                node.fqdn, node.fqdn
            );
            tls.write_all(options.as_bytes()).await.expect("send options");
            let (codes, _) = statuses(&mut tls, Duration::from_millis(1500)).await;
            assert!(
                codes.iter().any(|c| !PARSE_ERRORS.contains(c)),
                "{name}: the connection no longer serves requests ({codes:?})"
            );
        }
    }
    assert!(checked >= 40);
    let status = cluster.debug(&node.fqdn, "status");
    assert_eq!(status["links_total"], 0);
}
