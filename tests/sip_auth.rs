//! Digest at the client door, tried as an attacker would (issue 8, holes 1,
//! 3 and 4) against a 3-node `cluster up` on loopback: credentials never
//! reach the callee, a captured header is worth nothing on another
//! connection or for another Request-URI, each nonce count is accepted once,
//! the algorithm is read from the credentials that are verified, and a
//! locked source is refused before anything is verified, right password
//! included. Exact status codes, who received what, and the `ctl status`
//! counters.
//!
//! The lockout's timing (backoff doubling, cap, unlocking) is tested in
//! process on a paused clock: `actors/src/proxy/tests/auth.rs`.

mod common;
mod sip_ua;

use std::time::{Duration, Instant};

use common::fe;
use sip_ua::{
    aor, ca_path, challenge_param, client_addr, password, reason, registered, registration, sip_cluster, text, Ua,
    DOMAIN, WAIT,
};
use sipmesh_actors::auth::{authorization_header, digest_response, ha1, Algorithm};
use sipmesh_actors::sip::{HeaderName, SipMessage};

/// A fresh, unauthenticated connection to node `n` claiming to be `user`.
async fn connect(cluster: &common::Cluster, user: &str, n: usize) -> Ua {
    Ua::connect(client_addr(cluster, &fe(n)), &ca_path(cluster), user, "").await
}

/// The nonce of the `alg` challenge in a 401/407.
fn nonce_of(challenge: &SipMessage, alg: Algorithm) -> String {
    let name = match challenge.status() {
        Some(407) => HeaderName::ProxyAuthenticate,
        _ => HeaderName::WwwAuthenticate,
    };
    challenge
        .headers_named(name)
        .map(|h| h.value_str())
        .find(|c| challenge_param(c, "algorithm").is_some_and(|a| a.eq_ignore_ascii_case(alg.as_str())))
        .and_then(|c| challenge_param(c, "nonce"))
        .unwrap_or_else(|| panic!("no {alg} challenge in:\n{}", text(challenge)))
}

/// SHA-256 credentials of `user` for `method` on `uri`, nonce count `nc`.
fn creds(user: &str, pw: &str, nonce: &str, method: &str, uri: &str, nc: u32) -> String {
    let cnonce = format!("{:08x}", rand::random::<u32>());
    authorization_header(Algorithm::Sha256, user, DOMAIN, pw, nonce, uri, method, &cnonce, nc)
}

/// A REGISTER of `ua` with `Authorization: creds` (when given), as text.
fn register_text(ua: &mut Ua, branch: &str, creds: Option<&str>) -> String {
    let seq = ua.next_cseq();
    let mut t = format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: <{aor}>;tag=t{seq}\r\n\
         To: <{aor}>\r\nCall-ID: reg-{user}-{port}@127.0.0.1\r\nCSeq: {seq} REGISTER\r\n\
         Contact: <{contact}>\r\nExpires: 600\r\n",
        via = ua.via(branch),
        aor = ua.aor,
        user = ua.user,
        port = ua.local.port(),
        contact = ua.contact_uri(),
    );
    if let Some(c) = creds {
        t.push_str(&format!("Authorization: {c}\r\n"));
    }
    t.push_str("Content-Length: 0\r\n\r\n");
    t
}

/// Send one REGISTER and return its final answer.
async fn register_once(ua: &mut Ua, creds: Option<&str>) -> SipMessage {
    let branch = sip_ua::new_branch();
    let t = register_text(ua, &branch, creds);
    ua.send_raw(t.as_bytes()).await;
    ua.recv_response_to(&branch, "REGISTER", WAIT).await
}

fn header_names(msg: &SipMessage) -> Vec<String> {
    msg.headers
        .iter()
        .map(|h| String::from_utf8_lossy(&h.raw_name).to_ascii_lowercase())
        .collect()
}

/// Hole 1: Authorization and Proxy-Authorization never leave the proxy that
/// checked them. carol (unregistered) answers fe1's 407 with
/// Proxy-Authorization; then, on her now authenticated connection, sends an
/// Authorization the proxy has no use for. bob, at fe3, gets both MESSAGEs
/// with neither header.
#[tokio::test]
async fn credentials_never_reach_the_callee() {
    let cluster = sip_cluster(3);
    let mut bob = registered(&cluster, "bob", 3).await;
    let mut carol = connect(&cluster, "carol", 1).await;
    let first = carol
        .request("MESSAGE", &aor("bob"), &["Content-Type: text/plain".into()], b"hi bob")
        .await;
    let (_, challenge) = carol.final_response(&first, WAIT).await;
    assert_eq!(challenge.status(), Some(407), "{}", text(&challenge));
    let nonce = nonce_of(&challenge, Algorithm::Sha256);
    let pw = password(&cluster, "carol");
    let proxy_auth = creds("carol", &pw, &nonce, "MESSAGE", &aor("bob"), 1);
    let stray = creds("carol", &pw, &nonce, "MESSAGE", &aor("bob"), 2);
    for (i, extra) in [
        format!("Proxy-Authorization: {proxy_auth}"),
        format!("Authorization: {stray}"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = format!("hi bob {i}");
        let sent = carol
            .request(
                "MESSAGE",
                &aor("bob"),
                &["Content-Type: text/plain".into(), extra],
                body.as_bytes(),
            )
            .await;
        let got = bob.recv_request_method("MESSAGE", WAIT).await;
        assert_eq!(got.body.as_ref(), body.as_bytes());
        let names = header_names(&got);
        assert!(
            !names.iter().any(|n| n == "authorization" || n == "proxy-authorization"),
            "credentials reached the callee:\n{}",
            text(&got)
        );
        let raw = String::from_utf8_lossy(&got.to_bytes()).to_ascii_lowercase();
        assert!(!raw.contains("digest username="), "{raw}");
        bob.respond(&got, 200, "OK", &[], b"").await;
        let (_, ok) = carol.final_response(&sent, WAIT).await;
        assert_eq!(ok.status(), Some(200), "{}", text(&ok));
    }
}

/// Hole 1: a captured header is worth nothing elsewhere. carol's
/// Proxy-Authorization, replayed on a new connection (new Call-ID), is
/// refused: with the same Request-URI by the nonce's binding to carol's
/// connection (a fresh 407), with another Request-URI by the `uri=` check
/// (400). The replaying connection did not become carol, and bob received
/// nothing but carol's own MESSAGE.
#[tokio::test]
async fn a_replayed_header_is_refused_on_another_connection() {
    let cluster = sip_cluster(3);
    let mut bob = registered(&cluster, "bob", 3).await;
    let mut alice = registered(&cluster, "alice", 2).await;
    let mut carol = connect(&cluster, "carol", 1).await;
    let first = carol.request("MESSAGE", &aor("bob"), &[], b"1").await;
    let (_, challenge) = carol.final_response(&first, WAIT).await;
    assert_eq!(challenge.status(), Some(407), "{}", text(&challenge));
    let nonce = nonce_of(&challenge, Algorithm::Sha256);
    let captured = creds("carol", &password(&cluster, "carol"), &nonce, "MESSAGE", &aor("bob"), 1);
    let hdr = format!("Proxy-Authorization: {captured}");
    let sent = carol
        .request("MESSAGE", &aor("bob"), std::slice::from_ref(&hdr), b"from carol")
        .await;
    let got = bob.recv_request_method("MESSAGE", WAIT).await;
    assert_eq!(got.body.as_ref(), b"from carol");
    bob.respond(&got, 200, "OK", &[], b"").await;
    assert_eq!(carol.final_response(&sent, WAIT).await.1.status(), Some(200));

    // The callee replays it on its own connection to fe1, claiming to be carol.
    let mut mallory = connect(&cluster, "carol", 1).await;
    let same_uri = mallory
        .request("MESSAGE", &aor("bob"), std::slice::from_ref(&hdr), b"replayed")
        .await;
    assert_ne!(same_uri.call_id, sent.call_id);
    let (_, r) = mallory.final_response(&same_uri, WAIT).await;
    assert_eq!(
        r.status(),
        Some(407),
        "same Request-URI, other connection:\n{}",
        text(&r)
    );
    assert!(r.header(HeaderName::ProxyAuthenticate).is_some(), "{}", text(&r));

    let other_uri = mallory
        .request("MESSAGE", &aor("alice"), std::slice::from_ref(&hdr), b"replayed")
        .await;
    let (_, r) = mallory.final_response(&other_uri, WAIT).await;
    assert_eq!(
        (r.status(), reason(&r).as_str()),
        (Some(400), "Bad Authorization (uri does not match the Request-URI)"),
        "{}",
        text(&r)
    );

    // Not carol: a request without credentials is still challenged.
    let plain = mallory.request("MESSAGE", &aor("bob"), &[], b"still carol?").await;
    let (_, r) = mallory.final_response(&plain, WAIT).await;
    assert_eq!(r.status(), Some(407), "{}", text(&r));

    bob.expect_silence(Duration::from_millis(300)).await;
    alice.expect_silence(Duration::from_millis(100)).await;
    let auth = &cluster.debug(&fe(1), "status")["sip"]["auth"];
    assert_eq!(auth["bad_nonce"], 1, "{auth}");
    assert_eq!(auth["uri_mismatch"], 1, "{auth}");
}

/// Hole 1: each nonce count is accepted once per nonce. A wrong password with
/// nc=1, then the right one with the same nonce and nc=1 again: refused as a
/// replay (401, nothing verified, nothing registered); nc=2 is accepted.
#[tokio::test]
async fn a_nonce_count_is_accepted_once() {
    let cluster = sip_cluster(3);
    let mut carol = connect(&cluster, "carol", 1).await;
    let challenge = register_once(&mut carol, None).await;
    assert_eq!(challenge.status(), Some(401), "{}", text(&challenge));
    let nonce = nonce_of(&challenge, Algorithm::Sha256);
    let pw = password(&cluster, "carol");
    let uri = format!("sip:{DOMAIN}");

    let wrong = register_once(&mut carol, Some(&creds("carol", "wrong", &nonce, "REGISTER", &uri, 1))).await;
    assert_eq!(wrong.status(), Some(401), "{}", text(&wrong));
    let replay = register_once(&mut carol, Some(&creds("carol", &pw, &nonce, "REGISTER", &uri, 1))).await;
    assert_eq!(replay.status(), Some(401), "nc=1 a second time:\n{}", text(&replay));
    let home = |c: &common::Cluster| {
        c.info
            .nodes
            .iter()
            .any(|n| registration(c, &n.fqdn, &aor("carol")).is_some())
    };
    assert!(!home(&cluster), "the replayed nonce count registered carol");
    let next = register_once(&mut carol, Some(&creds("carol", &pw, &nonce, "REGISTER", &uri, 2))).await;
    assert_eq!(next.status(), Some(200), "nc=2:\n{}", text(&next));
    assert!(home(&cluster));

    let auth = &cluster.debug(&fe(1), "status")["sip"]["auth"];
    assert_eq!(auth["replayed"], 1, "{auth}");
    assert_eq!(auth["failures"], 1, "{auth}");
}

/// Hole 1: `uri=` must be the Request-URI. Right password, response computed
/// over `sip:evil.test` while the REGISTER goes to `sip:contoso.test`: 400
/// (RFC 7616 §3.4.6), nothing registered.
#[tokio::test]
async fn the_digest_uri_must_be_the_request_uri() {
    let cluster = sip_cluster(3);
    let mut carol = connect(&cluster, "carol", 1).await;
    let challenge = register_once(&mut carol, None).await;
    let nonce = nonce_of(&challenge, Algorithm::Sha256);
    let pw = password(&cluster, "carol");
    let r = register_once(
        &mut carol,
        Some(&creds("carol", &pw, &nonce, "REGISTER", "sip:evil.test", 1)),
    )
    .await;
    assert_eq!(
        (r.status(), reason(&r).as_str()),
        (Some(400), "Bad Authorization (uri does not match the Request-URI)"),
        "{}",
        text(&r)
    );
    assert!(cluster
        .info
        .nodes
        .iter()
        .all(|n| registration(&cluster, &n.fqdn, &aor("carol")).is_none()));
    // The same credentials over the right uri work (the nonce count moves on).
    let ok = register_once(
        &mut carol,
        Some(&creds("carol", &pw, &nonce, "REGISTER", &format!("sip:{DOMAIN}"), 2)),
    )
    .await;
    assert_eq!(ok.status(), Some(200), "{}", text(&ok));
}

/// Hole 4: with only SHA-256 offered, an MD5 response whose `opaque` holds
/// `"x, algorithm=SHA-256"` is refused (re-challenged with SHA-256 only):
/// the algorithm is the one of the parse that is verified.
#[tokio::test]
async fn md5_hidden_behind_an_opaque_algorithm_is_refused() {
    let t1 = sip_ua::T1_MS.to_string();
    let cluster = common::Cluster::up_with_args(3, 200, 1000, &["--t1-ms", &t1, "--digest-algorithms", "SHA-256"], &[]);
    let mut carol = connect(&cluster, "carol", 1).await;
    let challenge = register_once(&mut carol, None).await;
    assert_eq!(challenge.status(), Some(401), "{}", text(&challenge));
    let offered: Vec<String> = challenge
        .headers_named(HeaderName::WwwAuthenticate)
        .filter_map(|h| challenge_param(h.value_str(), "algorithm"))
        .collect();
    assert_eq!(offered, ["SHA-256"]);
    let nonce = nonce_of(&challenge, Algorithm::Sha256);
    let pw = password(&cluster, "carol");
    let uri = format!("sip:{DOMAIN}");
    let md5 = ha1(Algorithm::Md5, "carol", DOMAIN, &pw);
    let response = digest_response(
        Algorithm::Md5,
        &md5,
        &nonce,
        "00000001",
        "c0ffee",
        Some("auth"),
        "REGISTER",
        &uri,
    );
    let confused = format!(
        "Digest username=\"carol\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", opaque=\"x, algorithm=SHA-256\", cnonce=\"c0ffee\", qop=auth, nc=00000001"
    );
    let r = register_once(&mut carol, Some(&confused)).await;
    assert_eq!(r.status(), Some(401), "MD5 must be refused:\n{}", text(&r));
    let again: Vec<String> = r
        .headers_named(HeaderName::WwwAuthenticate)
        .filter_map(|h| challenge_param(h.value_str(), "algorithm"))
        .collect();
    assert_eq!(again, ["SHA-256"]);
    assert!(cluster
        .info
        .nodes
        .iter()
        .all(|n| registration(&cluster, &n.fqdn, &aor("carol")).is_none()));
    // Control: the honest SHA-256 answer on the same nonce is accepted.
    let ok = register_once(&mut carol, Some(&creds("carol", &pw, &nonce, "REGISTER", &uri, 2))).await;
    assert_eq!(ok.status(), Some(200), "{}", text(&ok));
}

/// Hole 3: once the retry limit is reached the source is locked, and while it
/// is, even the right password is refused before anything is verified: 403
/// with Retry-After. Counted in `ctl status`.
#[tokio::test]
async fn the_right_password_is_refused_while_locked() {
    let cluster = sip_cluster(3);
    let mut carol = connect(&cluster, "carol", 1).await;
    let mut last = register_once(&mut carol, None).await;
    let first_nonce = nonce_of(&last, Algorithm::Sha256);
    let uri = format!("sip:{DOMAIN}");
    let mut codes = Vec::new();
    for _ in 0..3 {
        let nonce = nonce_of(&last, Algorithm::Sha256);
        last = register_once(&mut carol, Some(&creds("carol", "guess", &nonce, "REGISTER", &uri, 1))).await;
        codes.push(last.status().unwrap_or(0));
        if last.status() == Some(403) {
            break;
        }
    }
    assert_eq!(codes, [401, 401, 403], "{}", text(&last));
    assert_eq!(reason(&last), "Forbidden (too many failed authentication attempts)");
    let retry: u32 = sip_ua::hdr(&last, HeaderName::RetryAfter)
        .parse()
        .expect("numeric Retry-After");
    assert!((1..=10).contains(&retry), "Retry-After {retry}");

    // A fresh connection from the same address gets no challenge to answer.
    let mut fresh = connect(&cluster, "carol", 1).await;
    let r = register_once(&mut fresh, None).await;
    assert_eq!(
        (r.status(), reason(&r).as_str()),
        (Some(403), "Forbidden (too many failed authentication attempts)"),
        "a locked source gets no challenge:\n{}",
        text(&r)
    );
    // The right password, on a genuine nonce of this connection (the first
    // challenge's, next nonce count): refused all the same.
    let pw = password(&cluster, "carol");
    let r = register_once(
        &mut carol,
        Some(&creds("carol", &pw, &first_nonce, "REGISTER", &uri, 2)),
    )
    .await;
    assert_eq!(r.status(), Some(403), "the right password while locked:\n{}", text(&r));
    assert!(r.header(HeaderName::RetryAfter).is_some(), "{}", text(&r));
    assert!(cluster
        .info
        .nodes
        .iter()
        .all(|n| registration(&cluster, &n.fqdn, &aor("carol")).is_none()));
    let auth = &cluster.debug(&fe(1), "status")["sip"]["auth"];
    assert_eq!(auth["failures"], 3, "{auth}");
    assert_eq!(auth["lockouts"], 1, "{auth}");
    assert_eq!(auth["refused_while_locked"], 2, "{auth}");
    assert_eq!(auth["locked_sources"], 1, "{auth}");
}

/// Hole 3: 300 guesses pipelined in one write on one nonce (nc 1..=300, the
/// right password last) are counted one by one: the limit (3) are verified,
/// answered 401, 401, 403, and the other 297 are refused unverified with 403;
/// the right password among them is no exception.
#[tokio::test]
async fn pipelined_guesses_are_counted_one_by_one() {
    const GUESSES: usize = 300;
    let cluster = sip_cluster(3);
    let mut carol = connect(&cluster, "carol", 2).await;
    let challenge = register_once(&mut carol, None).await;
    let nonce = nonce_of(&challenge, Algorithm::Sha256);
    let pw = password(&cluster, "carol");
    let uri = format!("sip:{DOMAIN}");
    let mut burst = String::new();
    let mut branches = Vec::new();
    for i in 1..=GUESSES {
        let guess = if i == GUESSES { pw.clone() } else { format!("guess{i}") };
        let branch = sip_ua::new_branch();
        let c = creds("carol", &guess, &nonce, "REGISTER", &uri, i as u32);
        burst.push_str(&register_text(&mut carol, &branch, Some(&c)));
        branches.push(branch);
    }
    carol.send_raw(burst.as_bytes()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut codes = Vec::new();
    for b in &branches {
        let left = deadline.saturating_duration_since(Instant::now());
        codes.push(carol.recv_response_to(b, "REGISTER", left).await.status().unwrap_or(0));
    }
    let count = |c| codes.iter().filter(|&&x| x == c).count();
    assert_eq!((count(401), count(403), count(200)), (2, GUESSES - 2, 0), "{codes:?}");
    assert_eq!(&codes[..3], [401, 401, 403]);
    carol.expect_silence(Duration::from_millis(200)).await;
    let auth = &cluster.debug(&fe(2), "status")["sip"]["auth"];
    assert_eq!(auth["failures"], 3, "verified: the limit, no more: {auth}");
    assert_eq!(auth["lockouts"], 1, "{auth}");
    assert_eq!(auth["refused_while_locked"], GUESSES - 3, "{auth}");
}
