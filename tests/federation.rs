//! Federation between two organisations, each a local cluster started with
//! `cluster up --nodes 1 --edge` (contoso.test and fabrikam.test, separate
//! internal and external CAs), made partners with `cluster federate`:
//! MESSAGE both ways between users on the front-ends, what crosses the
//! boundary, and the refusals at the federation door.

#![allow(dead_code)]

mod common;
mod federation_org;
mod sip_ua;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{debug, poll_until, tail, try_debug, ProcGuard, BIN};
use serde_json::Value;
use sip_ua::{hdr, text, Ua};
use sipmesh::pki::Issued;
use sipmesh_actors::sip::{HeaderName, SipMessage};

use federation_org::{issue, message, republish, republish_to, Org, UP, WAIT};

/// Both organisations up and federated; every node knows the partner.
fn federated(parent: &Path) -> (Org, Org) {
    let a = Org::up(parent, "contoso.test");
    let b = Org::up(parent, "fabrikam.test");
    let out = Command::new(BIN)
        .args(["cluster", "federate", "--dir"])
        .arg(&a.dir)
        .arg("--dir")
        .arg(&b.dir)
        .output()
        .expect("cluster federate");
    assert!(
        out.status.success(),
        "cluster federate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("contoso.test: topology v2 names fabrikam.test as a partner"),
        "{stdout}"
    );
    for org in [&a, &b] {
        for s in org.sockets() {
            poll_until(UP, Duration::from_millis(50), || {
                (debug(&s, "federation")["partners"].as_array().map(Vec::len) == Some(1)).then_some(())
            })
            .unwrap_or_else(|| panic!("{}: partner never replicated to {}", org.domain, s.display()));
        }
    }
    (a, b)
}

fn assert_nothing_internal(msg: &SipMessage, org: &str) {
    let all = text(msg);
    for internal in [format!("fe1.{org}"), format!("edge1.{org}")] {
        assert!(
            !all.contains(&internal),
            "internal name {internal} crossed the boundary:\n{all}"
        );
    }
    // Of the sender's side only its edge's Via, by its public name; the
    // sending client's and the internal nodes' stayed behind.
    let vias: Vec<&str> = msg.headers_named(HeaderName::Via).map(|h| h.value_str()).collect();
    let theirs: Vec<&&str> = vias
        .iter()
        .filter(|v| v.contains(org) || v.contains("127.0.0.1"))
        .collect();
    assert_eq!(theirs.len(), 1, "{all}");
    assert!(theirs[0].starts_with(&format!("SIP/2.0/TLS sip.{org}:")), "{all}");
    assert!(msg.headers_named(HeaderName::RecordRoute).next().is_none(), "{all}");
    assert!(
        !all.to_ascii_lowercase().contains("authorization:"),
        "credentials crossed:\n{all}"
    );
    assert!(!all.contains("P-Asserted-Identity"), "assertion crossed:\n{all}");
}

#[tokio::test]
async fn message_both_ways_between_two_organisations() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = federated(tmp.path());
    let mut alice = a.registered("alice").await;
    let mut bob = b.registered("bob").await;

    let body = b"hello fabrikam \x00\xff bytes";
    let (got, fin) = message(&mut alice, &mut bob, body).await;
    assert_eq!(fin.status(), Some(200), "{}", text(&fin));
    assert_eq!(&got.body[..], body, "body byte-identical");
    assert_eq!(
        hdr(&got, HeaderName::From).split(';').next().unwrap(),
        "<sip:alice@contoso.test>"
    );
    let mark: Vec<_> = got
        .headers
        .iter()
        .filter(|h| h.raw_name.eq_ignore_ascii_case(b"P-Sipmesh-Partner"))
        .collect();
    assert_eq!(mark.len(), 1, "one mark, from fabrikam's edge:\n{}", text(&got));
    assert_eq!(mark[0].value_str(), "contoso.test");
    assert_nothing_internal(&got, "contoso.test");

    let (back, fin) = message(&mut bob, &mut alice, b"hello contoso").await;
    assert_eq!(fin.status(), Some(200), "{}", text(&fin));
    assert_eq!(&back.body[..], b"hello contoso");
    assert_nothing_internal(&back, "fabrikam.test");

    let rows = a.federation()["partners"].clone();
    assert_eq!(rows[0]["domain"], "fabrikam.test");
    assert_eq!(rows[0]["state"], "up");
    assert_eq!(rows[0]["requests_out"], 1);
    assert_eq!(rows[0]["requests_in"], 1);

    // `check` warns about federation certificates within its horizon: the
    // edge certificates are issued for 365 days.
    let request = serde_json::json!({"cmd": "check", "days": 400}).to_string();
    let check = debug(&a.edge_socket(), &request);
    let problems: Vec<&str> = check["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("this edge's external certificate expires")),
        "{check}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("partner fabrikam.test's edge certificate expires")),
        "{check}"
    );
    let request = serde_json::json!({"cmd": "check", "days": 30}).to_string();
    let check = debug(&a.edge_socket(), &request);
    assert_eq!(check["ok"], true, "{check}");

    // Not a partner: refused with the rule's reason.
    let sent = alice
        .request(
            "MESSAGE",
            "sip:carol@northwind.test",
            &["Content-Type: text/plain".into()],
            b"x",
        )
        .await;
    let (_, fin) = alice.final_response(&sent, WAIT).await;
    assert_eq!(
        (fin.status(), sip_ua::reason(&fin)),
        (Some(403), "Domain Not Allowed".to_owned())
    );
}

/// A fake partner edge: TLS to `org`'s federation listener presenting `cert`.
async fn partner_ua(org: &Org, cert: &Issued, user: &str, domain: &str) -> Ua {
    Ua::connect_with_cert(org.federation_addr(), &org.federation_ca(), user, cert)
        .await
        .in_domain(domain)
}

#[tokio::test]
async fn the_federation_door_refuses_strangers_impostors_and_spoofed_domains() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = federated(tmp.path());
    let mut alice = a.registered("alice").await;

    // fabrikam's real external CA, the right name: accepted; From must be fabrikam's.
    let good = issue(&b.federation_ca_dir(), "sip.fabrikam.test", &tmp.path().join("good"));
    let mut partner = partner_ua(&a, &good, "mallory", "evil.test").await;
    let sent = partner
        .request(
            "MESSAGE",
            "sip:alice@contoso.test",
            &["Content-Type: text/plain".into()],
            b"spoof",
        )
        .await;
    let (_, fin) = partner.final_response(&sent, WAIT).await;
    assert_eq!(fin.status(), Some(403), "{}", text(&fin));
    assert_eq!(sip_ua::reason(&fin), "Forbidden (federation: from-domain-mismatch)");
    // Transit to a third domain through us: refused.
    let mut partner = partner.in_domain("fabrikam.test");
    let sent = partner
        .request(
            "MESSAGE",
            "sip:someone@northwind.test",
            &["Content-Type: text/plain".into()],
            b"relay",
        )
        .await;
    let (_, fin) = partner.final_response(&sent, WAIT).await;
    assert_eq!(sip_ua::reason(&fin), "Forbidden (federation: not-our-domain)");
    // A forged internal assertion and mark are stripped; ours is added.
    let sent = partner
        .request(
            "MESSAGE",
            "sip:alice@contoso.test",
            &[
                "Content-Type: text/plain".into(),
                "P-Asserted-Identity: <sip:ceo@contoso.test>".into(),
                "P-Sipmesh-Partner: contoso.test".into(),
            ],
            b"ok",
        )
        .await;
    let got = alice.recv_request_method("MESSAGE", WAIT).await;
    alice.respond(&got, 200, "OK", &[], b"").await;
    let (_, fin) = partner.final_response(&sent, WAIT).await;
    assert_eq!(fin.status(), Some(200));
    assert!(!text(&got).contains("sip:ceo@contoso.test"), "{}", text(&got));
    let marks: Vec<&str> = got
        .headers
        .iter()
        .filter(|h| h.raw_name.eq_ignore_ascii_case(b"P-Sipmesh-Partner"))
        .map(|h| h.value_str())
        .collect();
    assert_eq!(marks, vec!["fabrikam.test"]);
    alice.expect_silence(Duration::from_millis(300)).await;

    // A certificate from fabrikam's CA naming another edge, and one from a
    // CA nobody trusts: refused in the handshake, nothing delivered.
    let wrong = issue(&b.federation_ca_dir(), "other.fabrikam.test", &tmp.path().join("wrong"));
    let rogue_ca = tmp.path().join("rogue-ca");
    sipmesh::pki::init_ca(&rogue_ca, "Rogue Root").unwrap();
    let rogue = issue(&rogue_ca, "sip.fabrikam.test", &tmp.path().join("rogue"));
    for cert in [&wrong, &rogue] {
        let mut ua = partner_ua(&a, cert, "mallory", "fabrikam.test").await;
        let _ = ua
            .request(
                "MESSAGE",
                "sip:alice@contoso.test",
                &["Content-Type: text/plain".into()],
                b"no",
            )
            .await;
        assert!(
            ua.recv(Duration::from_secs(2)).await.is_none(),
            "an impostor got an answer"
        );
    }
    alice.expect_silence(Duration::from_millis(300)).await;
    let fed = a.federation();
    assert_eq!(fed["strangers"]["name-mismatch"], 1, "{fed}");
    assert_eq!(fed["strangers"]["unknown-ca"], 1, "{fed}");
    let refusals = &fed["partners"][0]["refusals"];
    assert_eq!(refusals["from-domain-mismatch"], 1, "{fed}");
    let rejections = debug(&a.edge_socket(), "rejections");
    let reasons: Vec<&str> = rejections
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"name-mismatch") && reasons.contains(&"unknown-ca"),
        "{rejections}"
    );

    // Our own domain as a partner is refused by every node that serves it.
    use sipmesh_state::{signed, AdminKey, Topology};
    let doc = std::fs::read_to_string(a.info["topology"].as_str().unwrap()).unwrap();
    let mut t = Topology::from_toml_str(signed::unsigned_content(&doc)).unwrap();
    t.version += 1;
    let mut own = t.federation.partners[0].clone();
    own.domain = "contoso.test".into();
    t.federation.partners.push(own);
    let key = AdminKey::load(Path::new(a.info["topology_key"].as_str().unwrap())).unwrap();
    let request = serde_json::json!({"cmd": "publish", "document": key.sign(&t.to_toml_string())}).to_string();
    let err = try_debug(&a.edge_socket(), &request).unwrap_err();
    assert!(
        err.contains(&format!(
            "invalid: v{}: partner #2 (contoso.test) is this node's own SIP domain",
            t.version
        )),
        "{err}"
    );
    assert_eq!(debug(&a.edge_socket(), "topology")["version"], t.version - 1);
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

fn record_routes(msg: &SipMessage) -> Vec<String> {
    msg.record_routes().unwrap().into_iter().map(|na| na.raw_uri).collect()
}

/// `caller` calls `callee` across the boundary, the callee answers, the
/// caller ACKs, the callee hangs up: every request of the dialog arrives.
/// Returns the INVITE as the callee saw it and the 200 as the caller saw it.
async fn call_and_hang_up(caller: &mut Ua, callee: &mut Ua) -> (SipMessage, SipMessage) {
    let target = callee.aor.clone();
    let invite = caller
        .request(
            "INVITE",
            &target,
            &["Content-Type: application/sdp".into()],
            SDP.as_bytes(),
        )
        .await;
    let inv = callee.recv_request_method("INVITE", WAIT).await;
    assert_eq!(&inv.body[..], SDP.as_bytes());
    let contact = format!("Contact: <{}>", callee.contact_uri());
    callee.respond(&inv, 200, "OK", &[contact], b"").await;
    let (_, ok) = caller.final_response(&invite, WAIT).await;
    assert_eq!(ok.status(), Some(200), "{}", text(&ok));
    sip_ua::Dialog::uac(&invite, &ok).ack(caller).await;
    let ack = callee.recv_request_method("ACK", WAIT).await;
    assert_eq!(sip_ua::request_uri(&ack), callee.contact_uri(), "{}", text(&ack));
    // The callee hangs up through the route set it got in the INVITE.
    let mut dialog = sip_ua::Dialog::uas(&inv);
    let bye = dialog.send_request(callee, "BYE").await;
    let got = caller.recv_request_method("BYE", WAIT).await;
    assert_eq!(sip_ua::request_uri(&got), caller.contact_uri(), "{}", text(&got));
    caller.respond(&got, 200, "OK", &[], b"").await;
    let (_, fin) = callee.final_response(&bye, WAIT).await;
    assert_eq!(fin.status(), Some(200), "BYE answered: {}", text(&fin));
    (inv, ok)
}

#[tokio::test]
async fn invite_dialogs_cross_the_boundary_both_ways_with_internal_routes_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = federated(tmp.path());
    let mut alice = a.registered("alice").await;
    let mut bob = b.registered("bob").await;

    let (inv, ok) = call_and_hang_up(&mut alice, &mut bob).await;
    // bob's INVITE: contoso is one sealed entry, named by its public name.
    let rr = record_routes(&inv);
    let host = |e: &str| e.split(';').next().unwrap_or_default().to_owned();
    let contoso: Vec<&String> = rr.iter().filter(|e| host(e).contains("contoso")).collect();
    assert_eq!(contoso.len(), 1, "{rr:?}");
    assert!(
        contoso[0].starts_with("sip:sip.contoso.test:") && contoso[0].contains(";ih="),
        "{rr:?}"
    );
    assert_eq!(
        rr.last(),
        Some(contoso[0]),
        "contoso's entry is the first recorded: {rr:?}"
    );
    assert!(!text(&inv).contains("fe1.contoso.test") && !text(&inv).contains("edge1.contoso.test"));
    // alice's 200: fabrikam is one sealed entry on top, then contoso's own
    // four (edge towards fabrikam, edge and fe1 on the mesh, fe1 towards alice).
    let rr = record_routes(&ok);
    assert_eq!(rr.len(), 5, "{rr:?}");
    assert!(
        rr[0].starts_with("sip:sip.fabrikam.test:") && rr[0].contains(";ih="),
        "{rr:?}"
    );
    assert!(
        rr[1].starts_with("sip:sip.contoso.test:") && rr[1].contains(";fed=fabrikam.test"),
        "{rr:?}"
    );
    assert!(
        !rr.iter()
            .skip(1)
            .any(|e| e.contains("fabrikam.test") && !e.contains("fed=")),
        "{rr:?}"
    );

    // And the other way: bob calls alice, alice hangs up.
    let (inv, _) = call_and_hang_up(&mut bob, &mut alice).await;
    let fab: Vec<String> = record_routes(&inv)
        .into_iter()
        .filter(|e| host(e).contains("fabrikam"))
        .collect();
    assert_eq!(fab.len(), 1, "{fab:?}");
    assert!(fab[0].starts_with("sip:sip.fabrikam.test:"), "{fab:?}");
    let rows = a.federation()["partners"].clone();
    // Out: the first call's INVITE and ACK, the second call's BYE (alice
    // hung up); in: the first call's BYE, the second call's INVITE and ACK.
    assert_eq!(rows[0]["requests_out"], 3, "{rows}");
    assert_eq!(rows[0]["requests_in"], 3, "{rows}");
}

#[tokio::test]
async fn blocked_domains_and_partner_rates_are_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = federated(tmp.path());
    republish(&a, |t| {
        t.federation.blocked_domains = vec!["blocked.test".into()];
        t.federation.partners[0].max_rate = Some(5);
    });
    let mut alice = a.registered("alice").await;

    // Outbound to a blocked domain, and inbound from one.
    let sent = alice
        .request(
            "MESSAGE",
            "sip:x@blocked.test",
            &["Content-Type: text/plain".into()],
            b"x",
        )
        .await;
    let (_, fin) = alice.final_response(&sent, WAIT).await;
    assert_eq!(
        (fin.status(), sip_ua::reason(&fin)),
        (Some(403), "Forbidden (federation: blocked-domain)".to_owned())
    );
    let cert = issue(&b.federation_ca_dir(), "sip.fabrikam.test", &tmp.path().join("edge"));
    let mut partner = partner_ua(&a, &cert, "eve", "blocked.test").await;
    let sent = partner
        .request(
            "MESSAGE",
            "sip:alice@contoso.test",
            &["Content-Type: text/plain".into()],
            b"x",
        )
        .await;
    let (_, fin) = partner.final_response(&sent, WAIT).await;
    assert_eq!(sip_ua::reason(&fin), "Forbidden (federation: blocked-domain)");
    alice.expect_silence(Duration::from_millis(200)).await;

    // 20 requests at once against max_rate = 5: the bucket holds 5, the rest
    // get 503 with Retry-After until it refills.
    let mut partner = partner.in_domain("fabrikam.test");
    let mut sent = Vec::new();
    for i in 0..20 {
        let body = format!("burst {i}");
        sent.push(
            partner
                .request(
                    "MESSAGE",
                    "sip:alice@contoso.test",
                    &["Content-Type: text/plain".into()],
                    body.as_bytes(),
                )
                .await,
        );
    }
    let mut delivered = 0;
    while let Some(m) = alice.recv(Duration::from_millis(500)).await {
        if m.method().map(|m| m.as_str()) == Some("MESSAGE") {
            alice.respond(&m, 200, "OK", &[], b"").await;
            delivered += 1;
        }
    }
    let (mut ok, mut limited) = (0, 0);
    for s in &sent {
        let (_, fin) = partner.final_response(s, WAIT).await;
        match fin.status() {
            Some(200) => ok += 1,
            Some(503) => {
                assert_eq!(sip_ua::reason(&fin), "Service Unavailable (federation: rate-limited)");
                assert_eq!(hdr(&fin, HeaderName::RetryAfter), "1");
                limited += 1;
            }
            other => panic!("unexpected {other:?}: {}", text(&fin)),
        }
    }
    assert_eq!(ok + limited, 20);
    assert_eq!(ok, delivered, "every 200 is a delivered request");
    assert!(ok >= 5, "the bucket starts full: {ok} answered");
    assert!(limited >= 1, "20 requests at once exceed 5/s: {ok} answered");
    let fed = a.federation();
    assert_eq!(fed["partners"][0]["refusals"]["rate-limited"], limited, "{fed}");
    assert_eq!(fed["partners"][0]["refusals"]["blocked-domain"], 1, "{fed}");

    // `federation explain`, from the front-end (not the edge), gives the
    // verdict each case above got.
    let ok = explain(&a, &["fabrikam.test"]);
    assert!(ok["verdict"].as_str().unwrap().starts_with("allowed"), "{ok}");
    assert_eq!(ok["partner_edge"], "sip.fabrikam.test");
    assert_eq!(ok["address"], b.federation_addr().to_string());
    assert_eq!(ok["resolved"], serde_json::json!([b.federation_addr().to_string()]));
    assert_eq!(ok["max_rate"], 5);
    assert_eq!(ok["edges"][0]["fqdn"], "edge1.contoso.test");
    assert_eq!(ok["edges"][0]["link"], "up");
    assert!(
        ok["anchors"][0]
            .as_str()
            .unwrap()
            .contains("fabrikam.test Federation Root CA"),
        "{ok}"
    );
    let blocked = explain(&a, &["blocked.test"]);
    assert_eq!(blocked["rule"], "federation.blocked_domains");
    assert!(
        blocked["verdict"].as_str().unwrap().contains("blocked-domain"),
        "{blocked}"
    );
    let stranger = explain(&a, &["northwind.test"]);
    assert!(
        stranger["verdict"].as_str().unwrap().contains("403 Domain Not Allowed"),
        "{stranger}"
    );
    let spoof = explain(&a, &["fabrikam.test", "--from", "sip:mallory@evil.test"]);
    assert_eq!(
        spoof["inbound"],
        "refused: 403 Forbidden (federation: from-domain-mismatch)"
    );
    let from_blocked = explain(&a, &["fabrikam.test", "--from", "sip:eve@blocked.test"]);
    assert_eq!(
        from_blocked["inbound"],
        "refused: 403 Forbidden (federation: blocked-domain)"
    );
    let partner_from = explain(&a, &["fabrikam.test", "--from", "sip:bob@fabrikam.test"]);
    assert!(
        partner_from["inbound"].as_str().unwrap().starts_with("allowed"),
        "{partner_from}"
    );
}

/// `sipmesh ctl --socket <org's fe1> federation explain ARGS --json`.
fn explain(org: &Org, args: &[&str]) -> Value {
    let socket = org.node("fe1.")["debug_socket"].as_str().unwrap().to_owned();
    let out = Command::new(BIN)
        .args(["ctl", "--socket", &socket, "--json", "federation", "explain"])
        .args(args)
        .output()
        .expect("sipmesh ctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test]
async fn a_partner_certificate_revoked_by_its_crl_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = federated(tmp.path());
    let mut alice = a.registered("alice").await;
    let ca_dir = b.federation_ca_dir();
    let cert = issue(&ca_dir, "sip.fabrikam.test", &tmp.path().join("edge2"));
    // Valid before the CRL is published.
    let mut partner = partner_ua(&a, &cert, "bob", "fabrikam.test").await;
    let sent = partner
        .request(
            "MESSAGE",
            "sip:alice@contoso.test",
            &["Content-Type: text/plain".into()],
            b"before",
        )
        .await;
    let got = alice.recv_request_method("MESSAGE", WAIT).await;
    alice.respond(&got, 200, "OK", &[], b"").await;
    assert_eq!(partner.final_response(&sent, WAIT).await.1.status(), Some(200));

    sipmesh::pki::revoke(&ca_dir, &cert.serial).unwrap();
    let crl = tmp.path().join("fabrikam-federation.crl");
    sipmesh::pki::write_crl(&ca_dir, &crl).unwrap();
    let crl_pem = std::fs::read_to_string(&crl).unwrap();
    republish(&a, |t| t.federation.partners[0].crl_pem = Some(crl_pem));
    let mut again = partner_ua(&a, &cert, "bob", "fabrikam.test").await;
    let _ = again
        .request(
            "MESSAGE",
            "sip:alice@contoso.test",
            &["Content-Type: text/plain".into()],
            b"after",
        )
        .await;
    assert!(
        again.recv(Duration::from_secs(2)).await.is_none(),
        "a revoked edge got an answer"
    );
    alice.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(a.federation()["strangers"]["revoked"], 1, "{}", a.federation());
    // fabrikam's real edge is not revoked: federation still works.
    let mut bob = b.registered("bob").await;
    let (_, fin) = message(&mut alice, &mut bob, b"still partners").await;
    assert_eq!(fin.status(), Some(200), "{}", text(&fin));
}

/// dnsmasq on a loopback port of its own, answering only what it is given.
struct Dns {
    addr: std::net::SocketAddr,
    _proc: ProcGuard,
}

impl Dns {
    fn start(dir: &Path, records: &[String]) -> Dns {
        // A port no one holds (dnsmasq binds it itself, UDP and TCP). The
        // UDP probe cannot see a TCP socket holding the same port, so a
        // dnsmasq that finds it taken is started again on another one.
        const ATTEMPTS: usize = 5;
        let log = dir.join("dnsmasq.log");
        for _ in 0..ATTEMPTS {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut cmd = Command::new("dnsmasq");
            cmd.args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--conf-file=/dev/null",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file",
                "--user=root",
                "--log-facility=-",
                "--log-queries",
            ])
            .arg(format!("--port={port}"))
            .args(records);
            let mut proc = ProcGuard::spawn("dnsmasq", cmd, &log);
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let up = poll_until(WAIT, Duration::from_millis(20), || {
                if std::net::TcpStream::connect(addr).is_ok() {
                    return Some(true);
                }
                proc.try_wait().map(|_| false)
            });
            match up {
                Some(true) => return Dns { addr, _proc: proc },
                Some(false) if tail(&log, 40).contains("Address already in use") => continue,
                _ => break,
            }
        }
        panic!("dnsmasq never listened:\n{}", tail(&log, 40))
    }
}

fn partner_entry(
    org: &Org,
    mode: sipmesh_state::PartnerMode,
    edge: Option<&str>,
    address: Option<String>,
) -> sipmesh_state::Partner {
    sipmesh_state::Partner {
        domain: org.domain.clone(),
        mode,
        edge: edge.map(|e| sipmesh_state::Fqdn::new(e).unwrap()),
        address,
        ca_pem: std::fs::read_to_string(org.federation_ca()).unwrap(),
        crl_pem: None,
        max_rate: None,
    }
}

#[tokio::test]
async fn allowed_domain_partners_are_found_by_srv_and_dns_cannot_hijack_a_partner() {
    use sipmesh_state::PartnerMode;
    let tmp = tempfile::tempdir().unwrap();
    let n = Org::up(tmp.path(), "northwind.test");
    // Nothing listens on `dead`: the first SRV target is down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nw = n.federation_addr().port();
    let dns = Dns::start(
        tmp.path(),
        &[
            format!("--srv-host=_sipfederationtls._tcp.northwind.test,sip1.northwind.test,{dead},10,10"),
            format!("--srv-host=_sipfederationtls._tcp.northwind.test,sip.northwind.test,{nw},20,10"),
            "--host-record=sip1.northwind.test,127.0.0.1".into(),
            "--host-record=sip.northwind.test,127.0.0.1".into(),
            // DNS sends tailspin's edge name to northwind's edge: a valid
            // certificate from the anchors we trust for tailspin, another name.
            "--host-record=sip.tailspin.test,127.0.0.1".into(),
        ],
    );
    let dns_arg = dns.addr.to_string();
    let a = Org::up_with(tmp.path(), "contoso.test", &["--federation-dns", &dns_arg]);
    republish(&a, |t| {
        t.federation
            .partners
            .push(partner_entry(&n, PartnerMode::AllowedDomain, None, None));
        let mut tailspin = partner_entry(
            &n,
            PartnerMode::AllowedServer,
            Some("sip.tailspin.test"),
            Some(format!("sip.tailspin.test:{nw}")),
        );
        tailspin.domain = "tailspin.test".into();
        t.federation.partners.push(tailspin);
    });
    republish(&n, |t| {
        let edge = a.info["edge"]["federation_fqdn"].as_str().unwrap().to_owned();
        let addr = a.federation_addr().to_string();
        t.federation
            .partners
            .push(partner_entry(&a, PartnerMode::AllowedServer, Some(&edge), Some(addr)));
    });
    let mut alice = a.registered("alice").await;
    let mut bob = n.registered("bob").await;

    // The edge asks dnsmasq: sip1 (priority 10) is down, sip (20) answers.
    let (got, fin) = message(&mut alice, &mut bob, b"via SRV").await;
    assert_eq!(fin.status(), Some(200), "{}", text(&fin));
    assert_eq!(&got.body[..], b"via SRV");
    let rows = a.federation()["partners"].clone();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["domain"] == "northwind.test")
        .unwrap()
        .clone();
    assert_eq!(row["state"], "up", "{rows}");
    assert_eq!(row["mode"], "allowed-domain");
    // Replies come back over the same connection: bob answers alice.
    let (_, fin) = message(&mut bob, &mut alice, b"back").await;
    assert_eq!(fin.status(), Some(200));

    // explain on the edge shows the SRV order it dials.
    let request = serde_json::json!({"cmd": "federation-explain", "domain": "northwind.test"}).to_string();
    let explained = debug(&a.edge_socket(), &request);
    assert_eq!(
        explained["resolved"][0]["target"],
        format!("sip1.northwind.test:{dead}"),
        "{explained}"
    );
    assert_eq!(
        explained["resolved"][1]["target"],
        format!("sip.northwind.test:{nw}"),
        "{explained}"
    );
    assert_eq!(
        explained["resolved"][1]["addrs"],
        serde_json::json!([format!("127.0.0.1:{nw}")])
    );
    assert!(explained["verdict"].as_str().unwrap().contains("SRV"), "{explained}");

    // tailspin's name leads to northwind's edge: refused name-mismatch in
    // our handshake, nothing delivered (the request times out, later ones
    // fail fast while the dial backs off).
    let sent = alice
        .request(
            "MESSAGE",
            "sip:carol@tailspin.test",
            &["Content-Type: text/plain".into()],
            b"hijack",
        )
        .await;
    let (_, fin) = alice.final_response(&sent, Duration::from_secs(10)).await;
    assert_eq!(fin.status(), Some(408), "{}", text(&fin));
    let sent = alice
        .request(
            "MESSAGE",
            "sip:carol@tailspin.test",
            &["Content-Type: text/plain".into()],
            b"again",
        )
        .await;
    let (_, fin) = alice.final_response(&sent, WAIT).await;
    assert_eq!(fin.status(), Some(503), "{}", text(&fin));
    bob.expect_silence(Duration::from_millis(300)).await;
    let rows = a.federation()["partners"].clone();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["domain"] == "tailspin.test")
        .unwrap()
        .clone();
    assert_eq!(row["refusals"]["name-mismatch"], 1, "{row}");
    assert_eq!(row["state"], "down", "{row}");
    assert!(
        row["last_error"].as_str().unwrap().contains("sip.tailspin.test"),
        "{row}"
    );
    let rejections = debug(&a.edge_socket(), "rejections");
    let r = rejections
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "name-mismatch")
        .expect("recorded");
    assert_eq!(r["direction"], "outbound", "{r}");
    assert_eq!(r["presented_name"], "sip.northwind.test", "{r}");
}

#[tokio::test]
async fn a_member_named_by_dns_cannot_be_hijacked() {
    let tmp = tempfile::tempdir().unwrap();
    let dns = Dns::start(tmp.path(), &["--host-record=fe3.contoso.test,127.0.0.1".into()]);
    let dns_arg = dns.addr.to_string();
    let cluster = common::Cluster::up_with_args(3, 200, 1000, &["--t1-ms", "50", "--mesh-dns", &dns_arg], &[]);
    let mut alice = sip_ua::registered(&cluster, "alice", 1).await;
    let mut bob = sip_ua::registered(&cluster, "bob", 3).await;
    // v2 names fe3 by DNS, and DNS answers with fe2's mesh port: fe2 holds a
    // valid certificate from the same CA, for another name.
    let fe2_port = cluster.node("fe2.contoso.test").mesh().port();
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(cluster.dir.join("cluster.json")).unwrap()).unwrap();
    let org = Org {
        domain: "contoso.test".into(),
        dir: cluster.dir.clone(),
        info,
        _launcher: None, // the cluster is `cluster`'s
    };
    let fe1 = cluster.node("fe1.contoso.test").debug_socket.clone();
    let fe2 = cluster.node("fe2.contoso.test").debug_socket.clone();
    republish_to(
        &org,
        |t| {
            let fe3 = t
                .members
                .iter_mut()
                .find(|m| m.fqdn.as_str() == "fe3.contoso.test")
                .unwrap();
            fe3.mesh_addr = format!("fe3.contoso.test:{fe2_port}").parse().unwrap();
        },
        &[fe1.clone(), fe2],
    );
    let rejection = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        debug(&fe1, "rejections")
            .as_array()?
            .iter()
            .find(|r| r["reason"] == "name-mismatch" && r["direction"] == "outbound")
            .cloned()
    })
    .unwrap_or_else(|| panic!("no name-mismatch on fe1: {}", debug(&fe1, "rejections")));
    assert_eq!(rejection["presented_name"], "fe2.contoso.test", "{rejection}");
    assert_eq!(rejection["remote_addr"], format!("127.0.0.1:{fe2_port}"), "{rejection}");
    let link = common::link(&fe1, "fe3.contoso.test").expect("a link row");
    assert_ne!(link["state"], "up", "{link}");
    // Nothing reaches bob through the impostor.
    let sent = alice
        .request(
            "MESSAGE",
            &sip_ua::aor("bob"),
            &["Content-Type: text/plain".into()],
            b"hijack?",
        )
        .await;
    let (_, fin) = alice.final_response(&sent, Duration::from_secs(10)).await;
    assert!(fin.status().unwrap_or(0) >= 400, "{}", text(&fin));
    bob.expect_silence(Duration::from_millis(300)).await;
}
