//! Mesh frame codec throughput: encode and decode of the frames a link
//! carries most (ping/pong) and its largest fixed frame (hello).
#![allow(missing_docs)] // criterion_group! generates undocumented items

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sipmesh_actors::wire::{decode, encode, Frame, Hello, PROTOCOL_VERSION};

fn frames() -> Vec<(&'static str, Frame)> {
    vec![
        ("ping", Frame::Ping { nonce: 123_456_789 }),
        (
            "hello",
            Frame::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                fqdn: "fe12.pool3.contoso.test".into(),
                topology_version: 42,
                features: 0,
            }),
        ),
    ]
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(1));
    for (name, frame) in frames() {
        group.bench_function(format!("encode/{name}"), |b| {
            let mut buf = BytesMut::with_capacity(256);
            b.iter(|| {
                buf.clear();
                encode(std::hint::black_box(&frame), &mut buf).unwrap();
            })
        });
        let mut encoded = BytesMut::new();
        encode(&frame, &mut encoded).unwrap();
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                let mut buf = encoded.clone();
                std::hint::black_box(decode(&mut buf).unwrap().unwrap());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
