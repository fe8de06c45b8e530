//! `node run --log-format json`: one JSON object per line, and the lines
//! logged while a SIP request is handled carry its `call_id`, `method` and
//! `peer` (the `sip` span).

mod common;
mod sip_ua;

use std::time::Duration;

use common::{poll_until, SingleNode};
use serde_json::Value;
use sip_ua::Ua;

#[tokio::test]
async fn json_logs_carry_the_request_fields() {
    let node = SingleNode::builder()
        .arg("--log-format")
        .arg("json")
        .env("RUST_LOG", "debug")
        .start();
    let client: std::net::SocketAddr = node.debug("status")["client_addr"].as_str().unwrap().parse().unwrap();
    let mut ua = Ua::connect(client, &node.pki.ca_pem, "alice", "wrong").await;
    let sent = ua
        .request(
            "MESSAGE",
            "sip:bob@contoso.test",
            &["Content-Type: text/plain".into()],
            b"hi",
        )
        .await;
    let (_, fin) = ua.final_response(&sent, Duration::from_secs(5)).await;
    // No Digest users on this node: refused, with the reason.
    assert_eq!(
        (fin.status(), sip_ua::reason(&fin)),
        (
            Some(403),
            "Forbidden (no digest users configured; use a client certificate)".to_owned()
        ),
        "{}",
        sip_ua::text(&fin)
    );
    let call_id = sent.call_id.clone();
    let line = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        let text = std::fs::read_to_string(&node.log).ok()?;
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
            .collect();
        lines.into_iter().find(|v| v["span"]["call_id"] == call_id.as_str())
    })
    .unwrap_or_else(|| panic!("no line with call_id {call_id}:\n{}", common::tail(&node.log, 40)));
    assert_eq!(line["span"]["name"], "sip", "{line}");
    assert_eq!(line["span"]["method"], "MESSAGE", "{line}");
    assert_eq!(line["span"]["peer"], ua.local.to_string(), "{line}");
    assert!(
        line["level"].is_string() && line["target"].is_string() && line["timestamp"].is_string(),
        "{line}"
    );
    // The start line is JSON too, with its structured fields.
    let text = std::fs::read_to_string(&node.log).unwrap();
    let running = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "node running")
        .expect("a node running line");
    assert_eq!(running["fields"]["fqdn"], "fe1.contoso.test");
}
