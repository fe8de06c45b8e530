//! Tests of [`SipMessage`] as a whole: parsing, typed access, edits,
//! serialization byte for byte, and a round-trip property.

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn parse(s: &str) -> SipMessage {
    SipMessage::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap_or_else(|e| panic!("{e}: {s}"))
}

const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
v: SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKnashds8;rport, SIP/2.0/TCP relay.example.com;branch=z9hG4bK2\r\n\
VIA: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK3;received=192.0.2.99\r\n\
max-forwards: 70\r\n\
t: Bob <sip:bob@biloxi.example.com>\r\n\
f: \"Alice \\\"Al\\\", Smith\" <sips:alice@[2001:db8::2]:5061;transport=tls>;tag=1928301774\r\n\
i: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSEQ: 314159 INVITE\r\n\
m: <sip:alice@pc33.atlanta.example.com;ob>;expires=60, \"x, y\" <sip:alt@example.com>;q=0.5\r\n\
Route: <sip:p1.example.com;lr>,\r\n <sip:p2.example.com;lr>\r\n\
Subject: lunch,\r\n\ttomorrow\r\n\
X-Custom-Thing: keep  me ,exactly\r\n\
c: application/sdp\r\n\
l: 4\r\n\
\r\n\
v=0\n";

#[test]
fn typed_access_to_a_tortuous_invite() {
    let m = parse(INVITE);
    m.validate().unwrap();
    assert!(m.is_request());
    assert_eq!(m.method(), Some(&Method::Invite));
    assert_eq!(m.status(), None);
    assert_eq!(m.call_id().unwrap(), "a84b4c76e66710@pc33.atlanta.example.com");
    assert_eq!(
        m.cseq().unwrap(),
        CSeq {
            seq: 314159,
            method: Method::Invite
        }
    );
    let vias = m.vias().unwrap();
    assert_eq!(vias.len(), 3);
    assert_eq!((vias[0].host.as_str(), vias[0].port), ("[2001:db8::1]", Some(5061)));
    assert_eq!(vias[0].param("rport"), Some(None));
    assert_eq!(vias[1].to_string(), "SIP/2.0/TCP relay.example.com;branch=z9hG4bK2");
    assert_eq!(vias[2].param("received"), Some(Some("192.0.2.99")));
    assert_eq!(m.top_via().unwrap(), vias[0]);
    assert_eq!(m.max_forwards().unwrap(), Some(70));
    assert_eq!(m.expires().unwrap(), None);
    let from = m.from_hdr().unwrap();
    assert_eq!(from.display.as_deref(), Some("Alice \"Al\", Smith"));
    assert_eq!(from.tag(), Some("1928301774"));
    let uri = from.uri.unwrap();
    assert_eq!(
        (uri.scheme, &uri.host, uri.port),
        (Scheme::Sips, &Host::V6("2001:db8::2".parse().unwrap()), Some(5061))
    );
    assert_eq!(uri.aor(), "sip:alice@[2001:db8::2]");
    let to = m.to_hdr().unwrap();
    assert_eq!((to.display.as_deref(), to.tag()), (Some("Bob"), None));
    let Contacts::List(contacts) = m.contacts().unwrap() else {
        panic!()
    };
    assert_eq!(contacts.len(), 2);
    assert_eq!(contacts[0].param("expires"), Some(Some("60")));
    assert_eq!(contacts[0].uri.as_ref().unwrap().param("ob"), Some(None));
    assert_eq!(contacts[1].display.as_deref(), Some("x, y"));
    let routes = m.routes().unwrap();
    assert_eq!(
        routes.iter().map(|r| r.raw_uri.as_str()).collect::<Vec<_>>(),
        ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    );
    assert!(m.record_routes().unwrap().is_empty());
    // Subject is not a list header: the comma and the fold stay.
    assert_eq!(m.values(HeaderName::Subject), ["lunch,\r\n\ttomorrow"]);
    assert_eq!(
        m.other_header("x-custom-THING").unwrap().value_str(),
        "keep  me ,exactly"
    );
    assert!(m.other_header("Subject").is_none());
    assert_eq!(m.values(HeaderName::Via).len(), 3);
    assert_eq!(m.headers_named(HeaderName::Via).count(), 2);
    assert_eq!(&m.header(HeaderName::Via).unwrap().raw_name[..], b"v");
    assert_eq!(&m.body[..], b"v=0\n");
}

#[test]
fn remove_first_splits_a_multi_value_via() {
    let mut m = parse(INVITE);
    let top = m.remove_first(HeaderName::Via).unwrap();
    assert_eq!(
        top.value_str(),
        "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKnashds8;rport"
    );
    assert_eq!(&top.raw_name[..], b"v");
    assert_eq!(
        m.headers[0].value_str(),
        "SIP/2.0/TCP relay.example.com;branch=z9hG4bK2"
    );
    assert_eq!(m.values(HeaderName::Via).len(), 2);
    // Now a one-value header: removed whole.
    let second = m.remove_first(HeaderName::Via).unwrap();
    assert_eq!(second.value_str(), "SIP/2.0/TCP relay.example.com;branch=z9hG4bK2");
    assert_eq!(m.headers_named(HeaderName::Via).count(), 1);
    assert_eq!(m.top_via().unwrap().host, "192.0.2.4");
    // A folded Route list keeps the rest byte for byte.
    let r = m.remove_first(HeaderName::Route).unwrap();
    assert_eq!(r.value_str(), "<sip:p1.example.com;lr>");
    assert_eq!(m.values(HeaderName::Route), ["<sip:p2.example.com;lr>"]);
    // Non-list headers are never split.
    assert_eq!(
        m.remove_first(HeaderName::Subject).unwrap().value_str(),
        "lunch,\r\n\ttomorrow"
    );
    assert!(m.remove_first(HeaderName::Expires).is_none());
}

const SMALL: &str = "OPTIONS sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/TLS a.example.com;branch=z9hG4bK1\r\n\
To: <sip:bob@example.com>\r\n\
From: <sip:alice@example.com>;tag=88\r\n\
Call-ID: c1@a.example.com\r\n\
CSeq: 7 OPTIONS\r\n\
X-Odd:   spaced\r\n folded  \r\n\
l: 2\r\n\
\r\n\
hi";

#[test]
fn edits_and_to_bytes_byte_exact() {
    let mut m = parse(SMALL);
    m.validate().unwrap();
    m.push_header_front(Header::new(
        HeaderName::Via,
        "SIP/2.0/TLS proxy.example.com;branch=z9hG4bKp1",
    ));
    m.set_header(Header::new(HeaderName::MaxForwards, "69"));
    m.body = Bytes::from_static(b"hello");
    assert_eq!(
        &m.to_bytes()[..],
        &b"OPTIONS sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/TLS proxy.example.com;branch=z9hG4bKp1\r\n\
Via: SIP/2.0/TLS a.example.com;branch=z9hG4bK1\r\n\
To: <sip:bob@example.com>\r\n\
From: <sip:alice@example.com>;tag=88\r\n\
Call-ID: c1@a.example.com\r\n\
CSeq: 7 OPTIONS\r\n\
X-Odd: spaced\r\n folded\r\n\
l: 5\r\n\
Max-Forwards: 69\r\n\
\r\n\
hello"[..]
    );
    // set_header replaces every header of the name, in the first one's place.
    m.push_header_front(Header::new(HeaderName::MaxForwards, "1"));
    m.headers.push(Header::new(HeaderName::MaxForwards, "2"));
    m.set_header(Header::new(HeaderName::MaxForwards, "68"));
    assert_eq!(m.values(HeaderName::MaxForwards), ["68"]);
    assert_eq!(
        m.headers.iter().position(|h| h.name == HeaderName::MaxForwards),
        Some(8)
    );
    // Unknown headers are matched by raw name.
    m.set_header(Header::other("x-odd", "new"));
    assert_eq!(m.headers_named(HeaderName::Other).count(), 1);
    assert_eq!(m.other_header("X-ODD").unwrap().value_str(), "new");
    m.push_header_front(Header::other("X-Other", "1"));
    assert_eq!(m.headers[0].raw_name_str(), "X-Other");
}

#[test]
fn to_bytes_normalises_content_length() {
    let mut m = parse(SMALL);
    m.headers.retain(|h| h.name != HeaderName::ContentLength);
    m.body = Bytes::new();
    assert!(m
        .to_bytes()
        .ends_with(b"X-Odd: spaced\r\n folded\r\nContent-Length: 0\r\n\r\n"));
    m.headers.push(Header::new(HeaderName::ContentLength, "7"));
    m.headers.push(Header::other("Content-length", "8"));
    m.body = Bytes::from_static(b"xyz");
    assert!(m.to_bytes().ends_with(b"folded\r\nContent-Length: 3\r\n\r\nxyz"));
}

#[test]
fn response_to_byte_exact() {
    let mut req = parse(SMALL);
    req.push_header_front(Header::new(
        HeaderName::Via,
        "SIP/2.0/TLS proxy.example.com;branch=z9hG4bKp1",
    ));
    let resp = SipMessage::response_to(&req, 180, "Ringing", Some("abc"));
    assert_eq!(resp.status(), Some(180));
    assert_eq!(
        &resp.to_bytes()[..],
        &b"SIP/2.0 180 Ringing\r\n\
Via: SIP/2.0/TLS proxy.example.com;branch=z9hG4bKp1\r\n\
Via: SIP/2.0/TLS a.example.com;branch=z9hG4bK1\r\n\
From: <sip:alice@example.com>;tag=88\r\n\
To: <sip:bob@example.com>;tag=abc\r\n\
Call-ID: c1@a.example.com\r\n\
CSeq: 7 OPTIONS\r\n\
Content-Length: 0\r\n\
\r\n"[..]
    );
    resp.validate().unwrap();
    // A To that has a tag keeps it; no tag asked, none added.
    let again = SipMessage::response_to(&resp, 200, "OK", Some("zzz"));
    assert_eq!(again.to_hdr().unwrap().tag(), Some("abc"));
    let plain = SipMessage::response_to(&req, 100, "Trying", None);
    assert_eq!(
        plain.header(HeaderName::To).unwrap().value_str(),
        "<sip:bob@example.com>"
    );
    assert_eq!(SipMessage::parse(plain.to_bytes()).unwrap(), plain);
}

#[test]
fn datagram_framing() {
    // Leading CRLFs are skipped; no Content-Length: the body is the rest.
    let m = parse(&format!("\r\n\r\n{}", SMALL.replace("l: 2\r\n", "")));
    assert_eq!(&m.body[..], b"hi");
    // Extra bytes after Content-Length are discarded (RFC 4475 dblreq).
    let m = parse(&SMALL.replace("l: 2", "l: 1"));
    assert_eq!(&m.body[..], b"h");
    let short = SipMessage::parse(Bytes::from(SMALL.replace("l: 2", "l: 3"))).unwrap_err();
    assert_eq!(short.status(), (400, "Bad Content-Length".into()));
    let neg = SipMessage::parse(Bytes::from(SMALL.replace("l: 2", "l: -2"))).unwrap_err();
    assert_eq!(neg.status(), (400, "Bad Content-Length".into()));
    let big = SipMessage::parse(Bytes::from(SMALL.replace("l: 2", "l: 99999999999"))).unwrap_err();
    assert_eq!(big.status().0, 413);
    let unbounded = format!("{}{}", SMALL.replace("l: 2\r\n", ""), "x".repeat(MAX_BODY));
    assert_eq!(
        SipMessage::parse(Bytes::from(unbounded)).unwrap_err(),
        ParseError::BodyTooLarge(MAX_BODY + 2)
    );
    let truncated = SipMessage::parse(Bytes::from_static(b"OPTIONS sip:a@b SIP/2.0\r\nTo: <sip:a@b>\r\n"));
    assert_eq!(truncated.unwrap_err(), ParseError::Truncated);
    assert_eq!(SipMessage::parse(Bytes::new()).unwrap_err(), ParseError::Truncated);
    let huge = format!(
        "OPTIONS sip:a@b SIP/2.0\r\n{}",
        "X: y\r\n".repeat(MAX_HEADER_BLOCK / 6 + 1)
    );
    assert_eq!(
        SipMessage::parse(Bytes::from(huge)).unwrap_err(),
        ParseError::HeaderBlockTooLarge
    );
    // Bare LF line ends are tolerated.
    let lf = parse(&SMALL.replace("\r\n", "\n"));
    lf.validate().unwrap();
    assert_eq!(lf.call_id().unwrap(), "c1@a.example.com");
}

#[test]
fn validation_names_the_problem() {
    let check = |from: &str, to: &str| {
        let m = parse(&SMALL.replace(from, to));
        m.validate().map_err(|e| e.status().1).err().unwrap_or_default()
    };
    assert_eq!(check("Call-ID: c1@a.example.com\r\n", ""), "Missing Call-ID");
    assert_eq!(check("From: <sip:alice@example.com>;tag=88\r\n", ""), "Missing From");
    assert_eq!(check("To: <sip:bob@example.com>\r\n", ""), "Missing To");
    assert_eq!(check("CSeq: 7 OPTIONS\r\n", ""), "Missing CSeq");
    assert_eq!(
        check("Via: SIP/2.0/TLS a.example.com;branch=z9hG4bK1\r\n", ""),
        "Missing Via"
    );
    assert_eq!(check("CSeq: 7 OPTIONS", "CSeq: 7 INVITE"), "CSeq Method Mismatch");
    assert_eq!(check("CSeq: 7 OPTIONS", "CSeq: x OPTIONS"), "Bad CSeq");
    assert_eq!(
        check("SIP/2.0/TLS a.example.com", "SIP/2.0/TLS a.example.com;;"),
        "Bad Via"
    );
    assert_eq!(check("SIP/2.0/TLS", "SIP/2.1/TLS"), "Bad Via");
    assert_eq!(check("Call-ID: c1@a.example.com", "Call-ID: c1 c2"), "Bad Call-ID");
    assert_eq!(
        check("To: <sip:bob@example.com>", "To: <sip:bob@example.com>, <sip:x@y.com>"),
        "Bad To"
    );
    assert_eq!(
        check(
            "To: <sip:bob@example.com>\r\n",
            "To: <sip:bob@example.com>\r\nt: <sip:bob@example.com>\r\n"
        ),
        "Duplicate To"
    );
    assert_eq!(check("l: 2", "l: 2\r\nContent-Length: 2"), "Duplicate Content-Length");
    assert_eq!(
        check("l: 2\r\n", "Max-Forwards: seventy\r\nl: 2\r\n"),
        "Bad Max-Forwards"
    );
    assert_eq!(
        check("sip:bob@example.com SIP", "sip:bob@example.com?Route=%3Csip:x%3E SIP"),
        "Bad Request-URI"
    );
    assert_eq!(
        check("sip:bob@example.com SIP", "sip:bob@exa_mple.com SIP"),
        "Bad Request-URI"
    );
    assert_eq!(check("sip:bob@example.com SIP", "urn:service:sos SIP"), "");
    let mut m = parse(SMALL);
    m.body = Bytes::from_static(b"longer");
    assert_eq!(m.validate().unwrap_err().status().1, "Bad Content-Length");
    // A response needs no method match.
    let resp = parse(&SMALL.replace("OPTIONS sip:bob@example.com SIP/2.0", "SIP/2.0 200 OK"));
    resp.validate().unwrap();
}

#[test]
fn contacts_star() {
    let reg = |contact: &str| parse(&SMALL.replace("X-Odd", &format!("{contact}\r\nX-Odd")));
    assert_eq!(reg("Contact: *").contacts().unwrap(), Contacts::Star);
    assert!(reg("Contact: *, <sip:a@b.com>").contacts().is_err());
    assert_eq!(reg("X-None: 1").contacts().unwrap(), Contacts::List(vec![]));
    let Contacts::List(l) = reg("m: sip:a@b.com;expires=0").contacts().unwrap() else {
        panic!()
    };
    assert_eq!(
        (l[0].raw_uri.as_str(), l[0].param("expires")),
        ("sip:a@b.com", Some(Some("0")))
    );
    assert_eq!(reg("Expires: 3600").expires().unwrap(), Some(3600));
    assert!(reg("Expires: 99999999999").expires().is_err());
}

// ---- round-trip property ----------------------------------------------------

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]{0,11}"
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::Register),
        Just(Method::Invite),
        Just(Method::Ack),
        Just(Method::Bye),
        Just(Method::Cancel),
        Just(Method::Message),
        Just(Method::Options),
        Just(Method::Subscribe),
        Just(Method::Notify),
        "[A-Z]{3,10}".prop_map(|m| m.parse().unwrap()),
    ]
}

/// A header value: no surrounding whitespace, UTF-8, maybe a fold inside.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[!-~]([ -~]{0,30}[!-~])?",
        1 => "[!-~]{1,10}\r\n [!-~]{1,10}",
        1 => "[a-zé\u{263a}]{1,8}",
        1 => Just(String::new()),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    let known = prop_oneof![
        Just("Via"),
        Just("v"),
        Just("f"),
        Just("To"),
        Just("cSeQ"),
        Just("Call-ID"),
        Just("Record-Route"),
        Just("Contact"),
        Just("WWW-Authenticate"),
        Just("l"),
        Just("Content-Length"),
        Just("x"),
    ]
    .prop_map(str::to_owned);
    let name = prop_oneof![known, token().prop_map(|t| format!("X-{t}"))];
    (name, value()).prop_map(|(n, v)| {
        if HeaderName::parse(&n) == HeaderName::ContentLength {
            Header::other(&n, "0")
        } else {
            Header::other(&n, &v)
        }
    })
}

fn message() -> impl Strategy<Value = SipMessage> {
    let request = (method(), token(), token()).prop_map(|(method, user, host)| StartLine::Request {
        method,
        uri: format!("sip:{user}@{host}.example"),
    });
    let response = (100u16..700, "([ -~]{0,20})").prop_map(|(code, reason)| StartLine::Response { code, reason });
    (
        prop_oneof![request, response],
        proptest::collection::vec(header(), 0..20),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(start, headers, body)| SipMessage {
            start,
            headers,
            body: Bytes::from(body),
        })
}

/// What `to_bytes` does to Content-Length: the first one carries the body
/// length, later ones go, one is added at the end if there was none.
fn normalise(mut m: SipMessage) -> SipMessage {
    let len = m.body.len().to_string();
    let mut seen = false;
    m.headers.retain_mut(|h| {
        if h.name != HeaderName::ContentLength {
            return true;
        }
        if seen {
            return false;
        }
        seen = true;
        h.value = Bytes::from(len.clone());
        true
    });
    if !seen {
        m.headers.push(Header::new(HeaderName::ContentLength, &len));
    }
    m
}

proptest! {
    #[test]
    fn parse_of_to_bytes_is_identity(m in message()) {
        let bytes = m.to_bytes();
        let parsed = SipMessage::parse(bytes.clone());
        prop_assert_eq!(parsed, Ok(normalise(m.clone())), "{:?}", String::from_utf8_lossy(&bytes));
        // The stream decoder frames it the same way (validation aside).
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let item = SipDecoder::new().decode(&mut buf);
        let framed = match item {
            Some(Incoming::Message(m)) => m,
            Some(Incoming::Invalid { partial: Some(m), resync: true, .. }) => m,
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(framed, normalise(m));
        prop_assert!(buf.is_empty());
    }
}
