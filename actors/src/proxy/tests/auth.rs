//! The lockout's timing, in process on the paused clock: a lock refuses the
//! right password until the very millisecond it ends, doubles with each
//! further lock of the same source up to the cap, and a user whose password
//! is guessed from many sources is locked for all of them.

use super::*;
use crate::auth::{authorization_header, Algorithm, Backoff, UserEntry, UsersFile};
use crate::sip::digest::DigestParams;

const BASE: Duration = Duration::from_secs(10);
const CAP: Duration = Duration::from_secs(40);

/// A node whose users file holds alice ("secret") and bob, with lockouts of 10 s doubling to 40 s.
fn digest_node() -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let users = UsersFile {
        realm: "contoso.test".into(),
        users: vec![
            UserEntry::from_password("alice", "contoso.test", "secret"),
            UserEntry::from_password("bob", "contoso.test", "hunter2"),
        ],
    };
    let path = dir.path().join("users.toml");
    std::fs::write(&path, users.to_toml()).unwrap();
    let config = SipConfig {
        users: Some(path),
        lockout: Backoff { base: BASE, cap: CAP },
        ..SipConfig::default()
    };
    (node(config), dir)
}

/// A connection that proved nothing yet, from `remote`.
struct Anon {
    client: Client,
    seq: u32,
    /// The nonce of the last challenge, and the next nonce count for it.
    nonce: Option<(String, u32)>,
}

impl Anon {
    fn open(proxy: &Proxy, remote: &str) -> Anon {
        let (tx, rx) = mpsc::channel(64);
        let flow = proxy.flows.open(tx, remote.parse().unwrap(), None);
        Anon {
            client: Client { flow, rx },
            seq: 0,
            nonce: None,
        }
    }

    /// REGISTER alice, answering the last challenge with `password` (none:
    /// no credentials); the status and Retry-After of the one answer.
    fn register(&mut self, proxy: &Proxy, password: Option<&str>) -> (u16, Option<String>) {
        self.seq += 1;
        let seq = self.seq;
        let creds = password.map(|pw| {
            let (nonce, nc) = self.nonce.as_mut().expect("a challenge to answer");
            *nc += 1;
            let h = authorization_header(
                Algorithm::Sha256,
                "alice",
                "contoso.test",
                pw,
                nonce,
                "sip:contoso.test",
                "REGISTER",
                "c0",
                *nc - 1,
            );
            format!("Authorization: {h}\r\n")
        });
        let port = self.client.flow.remote.port();
        self.client.send(
            proxy,
            &format!(
                "REGISTER sip:contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bK-a{port}-{seq}\r\n\
                 From: <sip:alice@contoso.test>;tag=r{seq}\r\nTo: <sip:alice@contoso.test>\r\nCall-ID: reg-{port}\r\n\
                 CSeq: {seq} REGISTER\r\nContact: <sip:alice@127.0.0.1:{port};transport=tls>\r\nExpires: 600\r\n\
                 {}Content-Length: 0\r\n\r\n",
                creds.unwrap_or_default()
            ),
        );
        let got = self.client.received();
        assert_eq!(got.len(), 1, "{:?}", lines(&got));
        let r = &got[0];
        if let Some(c) = r.header(HeaderName::WwwAuthenticate) {
            let nonce = DigestParams::parse(c.value_str())
                .unwrap()
                .get("nonce")
                .unwrap()
                .to_owned();
            self.nonce = Some((nonce, 1));
        }
        let retry = r.header(HeaderName::RetryAfter).map(|h| h.value_str().to_owned());
        (r.status().unwrap(), retry)
    }
}

fn ra(s: u64) -> Option<String> {
    Some(s.to_string())
}

#[tokio::test(start_paused = true)]
async fn a_lock_refuses_the_right_password_until_it_ends_and_doubles_up_to_the_cap() {
    let (n, _users) = digest_node();
    let p = &n.proxy;
    for (round, lock_s) in [10u64, 20, 40, 40].into_iter().enumerate() {
        // A fresh connection from the same source each round.
        let mut c = Anon::open(p, &format!("10.0.0.1:{}", 5000 + round));
        assert_eq!(c.register(p, None), (401, None), "round {round}");
        let codes: Vec<_> = (0..3).map(|_| c.register(p, Some("guess"))).collect();
        assert_eq!(codes, [(401, None), (401, None), (403, ra(lock_s))], "round {round}");
        // The right password, on a genuine nonce of this connection: refused
        // until the lock ends, to the millisecond.
        let lock = Duration::from_secs(lock_s);
        assert_eq!(c.register(p, Some("secret")), (403, ra(lock_s)));
        tokio::time::advance(lock - Duration::from_millis(1)).await;
        assert_eq!(c.register(p, Some("secret")), (403, ra(1)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(c.register(p, Some("secret")), (200, None), "round {round}");
    }
    let auth = &p.stats()["auth"];
    assert_eq!(auth["failures"], 12, "{auth}");
    assert_eq!(auth["lockouts"], 4, "{auth}");
    assert_eq!(auth["refused_while_locked"], 8, "{auth}");
    assert_eq!(auth["successes"], 4, "{auth}");
    assert_eq!(auth["locked_sources"], 0, "{auth}");
}

#[tokio::test(start_paused = true)]
async fn a_user_guessed_from_many_sources_is_locked_for_all_of_them() {
    let (n, _users) = digest_node();
    let p = &n.proxy;
    let limit = SipConfig::default().auth_retry_limit * crate::auth::USER_LIMIT_FACTOR;
    // One wrong guess from each of `limit` sources: no source reaches its own
    // limit, the user does at the last one.
    for i in 1..=limit {
        let mut c = Anon::open(p, &format!("10.0.1.{i}:5060"));
        assert_eq!(c.register(p, None).0, 401);
        let want = if i == limit { (403, ra(10)) } else { (401, None) };
        assert_eq!(c.register(p, Some("guess")), want, "source {i}");
    }
    // alice's own phone, from elsewhere, with the right password: refused.
    let mut phone = Anon::open(p, "192.0.2.7:5060");
    assert_eq!(phone.register(p, None), (401, None), "an unlocked source is challenged");
    assert_eq!(phone.register(p, Some("secret")), (403, ra(10)));
    assert_eq!(p.stats()["auth"]["locked_users"], 1);
    assert_eq!(p.stats()["auth"]["locked_sources"], 0);
    tokio::time::advance(BASE).await;
    assert_eq!(phone.register(p, Some("secret")), (200, None));
}

#[tokio::test(start_paused = true)]
async fn credentials_are_not_forwarded_in_process() {
    let (n, _users) = digest_node();
    let p = &n.proxy;
    let mut bob = Client::open(p, "bob");
    register(p, &mut bob, "bob");
    let alice = Client::open(p, "alice");
    let msg = "MESSAGE sip:bob@contoso.test SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:40001;branch=z9hG4bK-m1\r\n\
               From: <sip:alice@contoso.test>;tag=a\r\nTo: <sip:bob@contoso.test>\r\nCall-ID: m1\r\nCSeq: 1 MESSAGE\r\n\
               Authorization: Digest username=\"alice\"\r\nProxy-Authorization: Digest username=\"alice\"\r\n\
               Content-Length: 0\r\n\r\n";
    alice.send(p, msg);
    let got = bob.received();
    assert_eq!(lines(&got), ["MESSAGE"]);
    assert!(got[0].header(HeaderName::Authorization).is_none());
    assert!(got[0].header(HeaderName::ProxyAuthorization).is_none());
}
