//! [`SingleNode`]: one hand-built node (its own CA, topology and node.toml),
//! started by [`SingleNodeBuilder::start`] for the rejection matrix; killed on
//! drop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sipmesh::pki::{IssueOptions, Issued};
use sipmesh_actors::config::{CrlExpired, MeshTiming, NodeConfig, TlsPaths};
use sipmesh_state::{Fqdn, Role, Topology, TrustedServer};
use tempfile::TempDir;

use super::debug::{debug, try_debug};
use super::poll::{poll_until, NODE_READY_DEADLINE, POLL};
use super::proc::{free_addr, tail, ProcGuard};
use super::tls::Pki;
use super::{fe, BIN};

/// Where the node binds its mesh and client ports: the OS picks, and the test
/// reads the mesh address back from `status` (no port picked, released and
/// hoped to be still free).
const BIND_ANY_PORT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
/// The node's own topology entry. The listen overrides replace it and no other
/// node runs to dial it, so it is never bound nor dialed; TEST-NET-1 (RFC 5737)
/// so it cannot clash with a member's loopback address, and not port 0, which
/// a topology refuses.
const OWN_MESH_PLACEHOLDER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 5061);
/// See [`OWN_MESH_PLACEHOLDER`].
const OWN_CLIENT_PLACEHOLDER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 5060);

/// Builder of a [`SingleNode`]: `fe1.contoso.test` with a CA made in the test.
pub struct SingleNodeBuilder {
    tmp: TempDir,
    /// The node's CA; issue and revoke client certificates before `start`.
    pub pki: Pki,
    fqdn: String,
    members: Vec<(String, SocketAddr)>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    heartbeat_ms: u64,
    backoff_ms: u64,
    handshake_timeout_ms: u64,
    max_connections: usize,
    crl_next_update: Option<time::OffsetDateTime>,
    crl_expired: CrlExpired,
}

impl SingleNodeBuilder {
    /// Add a member whose mesh port nothing listens on.
    ///
    /// The node dials that address from the topology written before it starts,
    /// so it is picked in advance with [`free_addr`] (racy: something else may
    /// take the port meanwhile).
    pub fn member(self, fqdn: &str) -> Self {
        let addr = free_addr();
        self.member_at(fqdn, addr)
    }

    /// Add a member whose mesh address is `mesh_addr`.
    pub fn member_at(mut self, fqdn: &str, mesh_addr: SocketAddr) -> Self {
        self.members.push((fqdn.to_owned(), mesh_addr));
        self
    }

    /// Extra arguments of `node run`.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    /// Extra environment for the node process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Heartbeat and backoff cap.
    pub fn timing(mut self, heartbeat_ms: u64, backoff_ms: u64) -> Self {
        self.heartbeat_ms = heartbeat_ms;
        self.backoff_ms = backoff_ms;
        self
    }

    /// TLS+hello deadline and the bound on simultaneous mesh connections.
    pub fn limits(mut self, handshake_timeout_ms: u64, max_connections: usize) -> Self {
        self.handshake_timeout_ms = handshake_timeout_ms;
        self.max_connections = max_connections;
        self
    }

    /// Write the node's CRL with this nextUpdate (e.g. in the past: an expired CRL).
    pub fn crl_next_update(mut self, next_update: time::OffsetDateTime) -> Self {
        self.crl_next_update = Some(next_update);
        self
    }

    /// `[tls] crl_expired`.
    pub fn crl_expired(mut self, mode: CrlExpired) -> Self {
        self.crl_expired = mode;
        self
    }

    /// Write CRL, topology and node.toml, spawn `node run`, wait for the debug
    /// socket and read the mesh address the node bound.
    pub fn start(self) -> SingleNode {
        let root = self.tmp.path().to_owned();
        let node_cert = self.pki.issue(&IssueOptions {
            ips: vec!["127.0.0.1".parse().expect("ip")],
            ..IssueOptions::new(&self.fqdn)
        });
        let crl = root.join("ca.crl");
        match self.crl_next_update {
            Some(t) => self.pki.write_crl_until(&crl, t),
            None => self.pki.write_crl(&crl),
        }

        let me = TrustedServer {
            fqdn: Fqdn::new(&self.fqdn).unwrap_or_else(|e| panic!("fqdn {}: {e}", self.fqdn)),
            role: Role::FrontEnd,
            mesh_addr: OWN_MESH_PLACEHOLDER.into(),
            client_addr: Some(OWN_CLIENT_PLACEHOLDER),
            pool: None,
            federation_addr: None,
            federation_fqdn: None,
        };
        let members: Vec<TrustedServer> = std::iter::once(me)
            .chain(self.members.iter().map(|(fqdn, mesh_addr)| TrustedServer {
                fqdn: Fqdn::new(fqdn).unwrap_or_else(|e| panic!("fqdn {fqdn}: {e}")),
                role: Role::FrontEnd,
                mesh_addr: (*mesh_addr).into(),
                // Never bound nor dialed (links use mesh addresses only).
                client_addr: Some(free_addr()),
                pool: None,
                federation_addr: None,
                federation_fqdn: None,
            }))
            .collect();
        let topology = Topology::new(1, members).unwrap_or_else(|e| panic!("topology: {e}"));
        let topology_path = root.join("topology.toml");
        std::fs::write(&topology_path, topology.to_toml_string()).expect("write topology");

        let debug_socket = root.join("debug.sock");
        let heartbeat = Duration::from_millis(self.heartbeat_ms);
        let config = NodeConfig {
            fqdn: Fqdn::new(&self.fqdn).expect("fqdn"),
            topology: Some(topology_path),
            topology_public_key: None,
            data_dir: root.join("data"),
            debug_socket: debug_socket.clone(),
            mesh_listen: Some(BIND_ANY_PORT),
            client_listen: Some(BIND_ANY_PORT),
            tls: TlsPaths {
                cert: node_cert.cert_path.clone(),
                key: node_cert.key_path.clone(),
                ca: self.pki.ca_pem.clone(),
                crls: vec![crl.clone()],
                crl_expired: self.crl_expired,
                keylog: None,
            },
            mesh: MeshTiming {
                heartbeat_interval: heartbeat,
                heartbeat_timeout: 3 * heartbeat,
                backoff_cap: Duration::from_millis(self.backoff_ms),
                handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
                max_connections: self.max_connections,
                member_reserved_connections: self.max_connections
                    / sipmesh_actors::config::DEFAULT_MEMBER_RESERVED_SHARE,
                ..MeshTiming::default()
            },
            sip: Default::default(),
            federation: None,
            admin: Default::default(),
        };
        let config_path = root.join("node.toml");
        std::fs::write(&config_path, config.to_toml()).expect("write node.toml");

        let log = root.join("node.log");
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "run", "--config"]).arg(&config_path).args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut proc = ProcGuard::spawn(&self.fqdn, cmd, &log);
        let ready = poll_until(NODE_READY_DEADLINE, POLL, || {
            if let Some(status) = proc.try_wait() {
                panic!("node exited early ({status}):\n{}", tail(&log, 80));
            }
            try_debug(&debug_socket, "status").ok()
        });
        let status = ready.unwrap_or_else(|| {
            panic!(
                "node {} did not answer on {} within {NODE_READY_DEADLINE:?}:\n{}",
                self.fqdn,
                debug_socket.display(),
                tail(&log, 80)
            )
        });
        let mesh_addr: SocketAddr = status["mesh_addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("status without a parsable mesh_addr: {status}"));
        SingleNode {
            fqdn: self.fqdn,
            mesh_addr,
            debug_socket,
            log,
            crl,
            node_cert,
            proc,
            pki: self.pki,
            tmp: self.tmp,
        }
    }
}

/// One live node built by hand; killed on drop.
pub struct SingleNode {
    pub fqdn: String,
    /// The mesh address the node bound, as its `status` reports it.
    pub mesh_addr: SocketAddr,
    pub debug_socket: PathBuf,
    pub log: PathBuf,
    /// The node's CRL file.
    pub crl: PathBuf,
    pub node_cert: Issued,
    pub proc: ProcGuard,
    pub pki: Pki,
    /// Owns the files; dropped last.
    pub tmp: TempDir,
}

impl SingleNode {
    /// A builder for `fe1.contoso.test` with a fresh CA.
    pub fn builder() -> SingleNodeBuilder {
        let tmp = tempfile::Builder::new()
            .prefix("sipmesh-node")
            .tempdir()
            .expect("tempdir");
        let pki = Pki::init(tmp.path(), "sipmesh test CA");
        SingleNodeBuilder {
            tmp,
            pki,
            fqdn: fe(1),
            members: Vec::new(),
            env: Vec::new(),
            args: Vec::new(),
            heartbeat_ms: 200,
            backoff_ms: 1_000,
            handshake_timeout_ms: sipmesh_actors::config::DEFAULT_HANDSHAKE_TIMEOUT_MS,
            max_connections: sipmesh_actors::config::DEFAULT_MAX_MESH_CONNECTIONS,
            crl_next_update: None,
            crl_expired: CrlExpired::default(),
        }
    }

    /// `debug` on this node.
    pub fn debug(&self, cmd: &str) -> Value {
        debug(&self.debug_socket, cmd)
    }
}

impl Drop for SingleNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== node log at failure ({})\n{}",
                self.log.display(),
                tail(&self.log, 60)
            );
        }
        self.proc.kill();
    }
}
