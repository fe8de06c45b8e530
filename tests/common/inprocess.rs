//! In-process nodes: [`Plan`] binds every listener on port 0 first, writes
//! the topology with the addresses actually bound, and [`Plan::start`] hands
//! the listeners to `sipmesh_actors::run` inside the test's own actix System
//! (no process, no port released and re-bound).
//!
//! Timers: [`paused_system`] runs that System on a tokio runtime whose clock
//! is paused, and [`ClockHold`] keeps it from auto-advancing while real I/O
//! (TLS handshakes on loopback) is in flight, so the test moves time only
//! with `tokio::time::advance` and every timer fires at an exact virtual
//! instant. [`spin_until`] waits for I/O by yielding, bounded by a wall-clock
//! deadline, never by sleeping.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sipmesh::pki::{IssueOptions, Issued};
use sipmesh_actors::config::{MeshTiming, NodeConfig, TlsPaths};
use sipmesh_actors::{Hooks, Listeners, NodeError};
use sipmesh_state::{Fqdn, Role, Topology, TrustedServer};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use super::tls::Pki;

/// Wall-clock bound of one [`spin_until`].
pub const SPIN_DEADLINE: Duration = Duration::from_secs(10);

/// An actix System on a current-thread tokio runtime with the clock paused.
pub fn paused_system() -> actix_rt::SystemRunner {
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("tokio runtime")
    })
}

/// Keeps the paused clock from auto-advancing while it lives: tokio does not
/// auto-advance while a blocking task runs, so this holds one until dropped.
pub struct ClockHold(Option<std::sync::mpsc::Sender<()>>);

impl ClockHold {
    /// Hold the clock (call inside the runtime).
    pub fn new() -> ClockHold {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        tokio::task::spawn_blocking(move || {
            let _ = rx.recv();
        });
        ClockHold(Some(tx))
    }
}

impl Drop for ClockHold {
    fn drop(&mut self) {
        self.0.take(); // the blocking task's recv returns
    }
}

/// Yield to the runtime (its I/O driver and every task) until `f` holds;
/// panic naming `what` after [`SPIN_DEADLINE`] of wall-clock time.
pub async fn spin_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < SPIN_DEADLINE, "timed out waiting for {what}");
        tokio::task::yield_now().await;
    }
}

/// Yield `n` times: gives the node every chance to act on what it has.
pub async fn spin(n: usize) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// One request on a debug socket, asynchronously (the node runs on this
/// thread: a blocking client would stall it).
pub async fn ctl(socket: &std::path::Path, cmd: &str) -> Value {
    let stream = UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("debug socket {}: {e}", socket.display()));
    let (rd, mut wr) = stream.into_split();
    wr.write_all(format!("{cmd}\n").as_bytes())
        .await
        .expect("write request");
    let mut line = String::new();
    BufReader::new(rd).read_line(&mut line).await.expect("read answer");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?}: {e}"));
    assert_eq!(v["ok"], true, "{cmd}: {v}");
    v["result"].clone()
}

/// One node to start: its config and the listeners it will be handed.
pub struct Planned {
    /// Its FQDN.
    pub fqdn: String,
    /// Its config (tests may change timings before start).
    pub config: NodeConfig,
    /// The mesh address bound.
    pub mesh_addr: SocketAddr,
    mesh: std::net::TcpListener,
    client: std::net::TcpListener,
}

/// Nodes planned in one topology with one CA.
pub struct Plan {
    /// Keeps every file until the end of the test.
    pub tmp: TempDir,
    /// The CA (issue more certificates, e.g. for a fake member).
    pub pki: Pki,
    /// The nodes to start.
    pub nodes: Vec<Planned>,
}

fn loopback_listener() -> std::net::TcpListener {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

/// An address in TEST-NET-1 (RFC 5737): never bound nor dialed.
fn placeholder(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), port)
}

impl Plan {
    /// `run` nodes (started) plus `others`: members that are not started,
    /// at the mesh address given (`None`: a placeholder nobody dials).
    pub fn new(run: &[&str], others: &[(&str, Option<SocketAddr>)], timing: MeshTiming) -> Plan {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::init(tmp.path(), "in-process CA");
        let crl = tmp.path().join("ca.crl");
        pki.write_crl(&crl);
        let bound: Vec<_> = run
            .iter()
            .map(|f| (*f, loopback_listener(), loopback_listener()))
            .collect();
        let mut members: Vec<TrustedServer> = bound
            .iter()
            .map(|(fqdn, mesh, client)| TrustedServer {
                fqdn: Fqdn::new(fqdn).expect("fqdn"),
                role: Role::FrontEnd,
                mesh_addr: mesh.local_addr().expect("addr").into(),
                client_addr: Some(client.local_addr().expect("addr")),
                pool: None,
                federation_addr: None,
                federation_fqdn: None,
            })
            .collect();
        for (i, (fqdn, addr)) in others.iter().enumerate() {
            let port = 5100 + 2 * i as u16;
            members.push(TrustedServer {
                fqdn: Fqdn::new(fqdn).expect("fqdn"),
                role: Role::FrontEnd,
                mesh_addr: addr.unwrap_or_else(|| placeholder(port)).into(),
                client_addr: Some(placeholder(port + 1)),
                pool: None,
                federation_addr: None,
                federation_fqdn: None,
            });
        }
        let topology = Topology::new(1, members).unwrap_or_else(|e| panic!("topology: {e}"));
        let topology_path = tmp.path().join("topology.toml");
        std::fs::write(&topology_path, topology.to_toml_string()).expect("write topology");
        let nodes = bound
            .into_iter()
            .map(|(fqdn, mesh, client)| {
                let dir = tmp.path().join(fqdn);
                let cert = pki.issue(&IssueOptions::new(fqdn));
                Planned {
                    fqdn: fqdn.to_owned(),
                    mesh_addr: mesh.local_addr().expect("addr"),
                    config: NodeConfig {
                        fqdn: Fqdn::new(fqdn).expect("fqdn"),
                        topology: Some(topology_path.clone()),
                        topology_public_key: None,
                        data_dir: dir.join("data"),
                        debug_socket: dir.join("debug.sock"),
                        mesh_listen: None,
                        client_listen: None,
                        tls: TlsPaths {
                            cert: cert.cert_path,
                            key: cert.key_path,
                            ca: pki.ca_pem.clone(),
                            crls: vec![crl.clone()],
                            crl_expired: Default::default(),
                            keylog: None,
                        },
                        mesh: timing,
                        sip: Default::default(),
                        federation: None,
                        admin: Default::default(),
                    },
                    mesh,
                    client,
                }
            })
            .collect();
        Plan { tmp, pki, nodes }
    }

    /// A certificate for a member the test plays itself.
    pub fn issue(&self, fqdn: &str) -> Issued {
        self.pki.issue(&IssueOptions::new(fqdn))
    }

    /// Start every node on this System; wait until each answers on its
    /// debug socket.
    pub async fn start(self) -> Running {
        let mut running = Running {
            stops: Vec::new(),
            tasks: Vec::new(),
            sockets: Vec::new(),
            _tmp: self.tmp,
        };
        for n in self.nodes {
            let listeners = Listeners {
                mesh: Some(tokio::net::TcpListener::from_std(n.mesh).expect("mesh listener")),
                client: Some(tokio::net::TcpListener::from_std(n.client).expect("client listener")),
                debug: None,
                federation: None,
                metrics: None,
                http: None,
            };
            let (stop, stopped) = oneshot::channel::<()>();
            let shutdown = async move {
                let _ = stopped.await;
            };
            running.sockets.push(n.config.debug_socket.clone());
            running.tasks.push(actix_rt::spawn(sipmesh_actors::run(
                listeners,
                n.config,
                shutdown,
                Hooks::default(),
            )));
            running.stops.push(stop);
        }
        for s in running.sockets.clone() {
            spin_until("the debug socket", || s.exists()).await;
        }
        running
    }
}

/// Nodes running on the test's System.
pub struct Running {
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), NodeError>>>,
    /// Each node's debug socket, in plan order.
    pub sockets: Vec<PathBuf>,
    _tmp: TempDir,
}

impl Running {
    /// The `links` row of node `i` for `peer`.
    pub async fn link(&self, i: usize, peer: &str) -> Value {
        let rows = ctl(&self.sockets[i], "links").await;
        rows.as_array()
            .and_then(|r| r.iter().find(|l| l["peer"] == peer).cloned())
            .unwrap_or_else(|| panic!("no link to {peer}: {rows}"))
    }

    /// Stop every node and check each stopped cleanly (the clock must be
    /// free to advance: the shutdown waits a grace period).
    pub async fn stop(mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.tasks.drain(..) {
            t.await.expect("node task").expect("node stopped cleanly");
        }
    }
}
