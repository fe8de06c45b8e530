//! The rustls limit of a handshake here: one mesh-port mutual-TLS handshake
//! and one client-port TLS handshake between two members, entirely in
//! memory (no sockets, no threads), with the node's own configs
//! (`TlsConfigs::build`: its verifier with chain, validity, CRL, EKU and
//! topology checks). Only the server's side is timed, so the figure compares
//! with `sipmesh bench handshake`'s server CPU per handshake; the difference
//! is what the sockets, the kernel and the node's accept path add.
//!
//! - `first_contact`: configs built fresh for every handshake (untimed), so
//!   the verifier has never seen the peer's chain: every signature checked.
//! - `reconnect`: the same configs again and again, as when a member or a
//!   phone reconnects: the verifier remembers the chain it accepted.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};
use sipmesh::pki::{self, IssueOptions};
use sipmesh_actors::config::{CrlExpired, TlsPaths};
use sipmesh_actors::trust::{TlsConfigs, TlsMaterial};
use sipmesh_state::{Fqdn, Role, Topology, TrustedServer};

const FE1: &str = "fe1.contoso.test";
const FE2: &str = "fe2.contoso.test";

struct Members {
    _dir: tempfile::TempDir,
    fe1: TlsPaths,
    fe2: TlsPaths,
    topology: Arc<ArcSwap<Topology>>,
}

fn members() -> Members {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = pki::init_ca(&ca_dir, "Contoso Bench CA").unwrap();
    let crl = dir.path().join("ca.crl");
    pki::write_crl(&ca_dir, &crl).unwrap();
    let paths = |fqdn: &str| {
        let issued = pki::issue(&ca_dir, &IssueOptions::new(fqdn), &dir.path().join(fqdn)).unwrap();
        TlsPaths {
            cert: issued.cert_path,
            key: issued.key_path,
            ca: ca.cert_path.clone(),
            crls: vec![crl.clone()],
            crl_expired: CrlExpired::Refuse,
            keylog: None,
        }
    };
    let member = |fqdn: &str, port: u16| TrustedServer {
        fqdn: Fqdn::new(fqdn).unwrap(),
        role: Role::FrontEnd,
        mesh_addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)).into(),
        client_addr: None,
        pool: None,
        federation_addr: None,
        federation_fqdn: None,
    };
    let topology = Topology {
        version: 1,
        members: vec![member(FE1, 5071), member(FE2, 5072)],
        federation: Default::default(),
    };
    Members {
        fe1: paths(FE1),
        fe2: paths(FE2),
        _dir: dir,
        topology: Arc::new(ArcSwap::from_pointee(topology)),
    }
}

fn configs(paths: &TlsPaths, fqdn: &str, topology: &Arc<ArcSwap<Topology>>) -> TlsConfigs {
    TlsConfigs::build(&TlsMaterial::load(paths, fqdn).unwrap(), topology.clone()).unwrap()
}

/// Move every pending record from one side to the other.
fn pump(from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>, to: &mut Vec<u8>) {
    while from.wants_write() {
        from.write_tls(to).unwrap();
    }
}

/// One full handshake; returns the time spent in the server's code.
fn handshake(server: &Arc<rustls::ServerConfig>, client: &Arc<rustls::ClientConfig>) -> Duration {
    let name = ServerName::try_from(FE1).unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut in_server = Duration::ZERO;
    let t = Instant::now();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    in_server += t.elapsed();
    let mut wire = Vec::with_capacity(8 * 1024);
    while c.is_handshaking() || s.is_handshaking() {
        wire.clear();
        pump(&mut c, &mut wire);
        if !wire.is_empty() {
            let t = Instant::now();
            s.read_tls(&mut wire.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            in_server += t.elapsed();
        }
        wire.clear();
        let t = Instant::now();
        pump(&mut s, &mut wire);
        in_server += t.elapsed();
        if !wire.is_empty() {
            c.read_tls(&mut wire.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
    }
    in_server
}

fn bench(c: &mut Criterion) {
    let m = members();
    let fe1 = configs(&m.fe1, FE1, &m.topology);
    let fe2 = configs(&m.fe2, FE2, &m.topology);
    let phone = {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut std::fs::read(&m.fe1.ca).unwrap().as_slice()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    };
    let mut group = c.benchmark_group("handshake_server_side");
    group.throughput(Throughput::Elements(1));
    group.bench_function("mesh_mtls/reconnect", |b| {
        b.iter_custom(|n| (0..n).map(|_| handshake(&fe1.server, &fe2.client)).sum())
    });
    group.bench_function("mesh_mtls/first_contact", |b| {
        b.iter_custom(|n| {
            (0..n)
                .map(|_| {
                    let fresh = configs(&m.fe1, FE1, &m.topology);
                    handshake(&fresh.server, &fe2.client)
                })
                .sum()
        })
    });
    group.bench_function("client_port_tls", |b| {
        b.iter_custom(|n| (0..n).map(|_| handshake(&fe1.client_port, &phone)).sum())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
