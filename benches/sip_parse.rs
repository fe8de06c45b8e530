//! SIP parsing throughput: a typical INVITE (12 headers, SDP body, 952
//! bytes) parsed as a whole message, then parsed with the typed access a
//! proxy does on every request, then decoded from a stream with validation.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sipmesh_actors::sip::{Incoming, SipDecoder, SipMessage};

const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/TLS pc33.atlanta.example.com:5061;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com;transport=tls>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\"\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO\r\n\
Supported: replaces, outbound, gruu, timer\r\n\
User-Agent: ExamplePhone/4.2.1 (build 20240101)\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 289\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\n\
s=Session SDP\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49172 RTP/AVP 0 8 97 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:97 iLBC/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

fn parse(c: &mut Criterion) {
    let bytes = Bytes::from_static(INVITE.as_bytes());
    let msg = SipMessage::parse(bytes.clone()).expect("valid INVITE");
    msg.validate().expect("valid INVITE");
    assert_eq!(msg.body.len(), 289);
    let mut group = c.benchmark_group("sip");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse/invite", |b| {
        b.iter(|| std::hint::black_box(SipMessage::parse(std::hint::black_box(bytes.clone())).unwrap()))
    });
    group.bench_function("parse+typed/invite", |b| {
        b.iter(|| {
            let m = SipMessage::parse(std::hint::black_box(bytes.clone())).unwrap();
            let via = m.top_via().unwrap();
            let cseq = m.cseq().unwrap();
            let call_id = m.call_id().unwrap().len();
            let from = m.from_hdr().unwrap();
            let to = m.to_hdr().unwrap();
            std::hint::black_box((via, cseq, call_id, from, to));
        })
    });
    group.bench_function("decode+validate/invite", |b| {
        let mut dec = SipDecoder::new();
        b.iter(|| {
            let mut buf = BytesMut::from(std::hint::black_box(INVITE.as_bytes()));
            match dec.decode(&mut buf) {
                Some(Incoming::Message(m)) => std::hint::black_box(m),
                other => panic!("{other:?}"),
            };
        })
    });
    group.bench_function("to_bytes/invite", |b| b.iter(|| std::hint::black_box(msg.to_bytes())));
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
