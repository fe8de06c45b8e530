//! [`SingleNode`]: one hand-built node (its own CA, topology and node.toml),
//! started by [`SingleNodeBuilder::start`] for the rejection matrix; killed on
//! drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sipmesh::pki::{IssueOptions, Issued};
use sipmesh_actors::config::{MeshTiming, NodeConfig, TlsPaths};
use sipmesh_state::{Fqdn, Role, Topology, TrustedServer};
use tempfile::TempDir;

use super::debug::{debug, try_debug};
use super::poll::{poll_until, NODE_READY_DEADLINE, POLL};
use super::proc::{free_addr, tail, ProcGuard};
use super::tls::Pki;
use super::{fe, BIN};

/// Builder of a [`SingleNode`]: `fe1.contoso.test` with a CA made in the test.
pub struct SingleNodeBuilder {
    tmp: TempDir,
    /// The node's CA; issue and revoke client certificates before `start`.
    pub pki: Pki,
    fqdn: String,
    members: Vec<(String, SocketAddr)>,
    env: Vec<(String, String)>,
    heartbeat_ms: u64,
    backoff_ms: u64,
    handshake_timeout_ms: u64,
    max_connections: usize,
}

impl SingleNodeBuilder {
    /// Add a member whose mesh port nothing listens on.
    pub fn member(self, fqdn: &str) -> Self {
        let addr = free_addr();
        self.member_at(fqdn, addr)
    }

    /// Add a member whose mesh address is `mesh_addr`.
    pub fn member_at(mut self, fqdn: &str, mesh_addr: SocketAddr) -> Self {
        self.members.push((fqdn.to_owned(), mesh_addr));
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

    /// Write CRL, topology and node.toml, spawn `node run`, wait for the debug socket.
    pub fn start(self) -> SingleNode {
        let root = self.tmp.path().to_owned();
        let node_cert = self.pki.issue(&IssueOptions {
            ips: vec!["127.0.0.1".parse().expect("ip")],
            ..IssueOptions::new(&self.fqdn)
        });
        let crl = root.join("ca.crl");
        self.pki.write_crl(&crl);

        let mesh_addr = free_addr();
        let mut members = vec![(self.fqdn.clone(), mesh_addr)];
        members.extend(self.members.iter().cloned());
        let members: Vec<TrustedServer> = members
            .into_iter()
            .map(|(fqdn, mesh_addr)| TrustedServer {
                fqdn: Fqdn::new(&fqdn).unwrap_or_else(|e| panic!("fqdn {fqdn}: {e}")),
                role: Role::FrontEnd,
                mesh_addr,
                client_addr: free_addr(),
                pool: None,
            })
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
            mesh_listen: None,
            client_listen: None,
            tls: TlsPaths {
                cert: node_cert.cert_path.clone(),
                key: node_cert.key_path.clone(),
                ca: self.pki.ca_pem.clone(),
                crls: vec![crl],
            },
            mesh: MeshTiming {
                heartbeat_interval: heartbeat,
                heartbeat_timeout: 3 * heartbeat,
                backoff_cap: Duration::from_millis(self.backoff_ms),
                handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
                max_connections: self.max_connections,
            },
            sip: Default::default(),
        };
        let config_path = root.join("node.toml");
        std::fs::write(&config_path, config.to_toml()).expect("write node.toml");

        let log = root.join("node.log");
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "run", "--config"]).arg(&config_path);
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
        if ready.is_none() {
            panic!(
                "node {} did not answer on {} within {NODE_READY_DEADLINE:?}:\n{}",
                self.fqdn,
                debug_socket.display(),
                tail(&log, 80)
            );
        }
        SingleNode {
            fqdn: self.fqdn,
            mesh_addr,
            debug_socket,
            log,
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
    pub mesh_addr: SocketAddr,
    pub debug_socket: PathBuf,
    pub log: PathBuf,
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
            heartbeat_ms: 200,
            backoff_ms: 1_000,
            handshake_timeout_ms: sipmesh_actors::config::DEFAULT_HANDSHAKE_TIMEOUT_MS,
            max_connections: sipmesh_actors::config::DEFAULT_MAX_MESH_CONNECTIONS,
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
