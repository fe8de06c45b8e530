//! What `cluster up` writes for a new cluster: a CA, one certificate and
//! `node.toml` per node, the CRL, the demo users and the signed topology.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use sipmesh_actors::config::{MeshTiming, NodeConfig, SipConfig, TlsPaths};
use sipmesh_state::{Fqdn, Role, Topology, TrustedServer};

use super::file::write_private;
use super::spawn::NodeSockets;
use super::{ClusterFile, ClusterNode, ClusterUser, LoadUsers, UpOptions, DEMO_USERS};
use crate::pki;

fn password() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Write a new cluster into `dir`, one node per entry of `sockets`, whose
/// addresses become the nodes' addresses in the topology.
pub(super) fn generate(dir: &Path, opts: &UpOptions, sockets: &[NodeSockets]) -> anyhow::Result<ClusterFile> {
    let ca_dir = dir.join("ca");
    let ca = pki::init_ca(&ca_dir, "sipmesh Local Root CA")?;
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut members = Vec::new();
    let mut nodes = Vec::new();
    let crl = ca_dir.join("crl.pem");
    let topology_path = dir.join("topology.toml");
    let (topology_key, topology_public_key) = crate::topology::keygen(dir)?;
    let users: Vec<ClusterUser> = DEMO_USERS
        .iter()
        .map(|u| ClusterUser {
            aor: format!("sip:{u}@{}", opts.domain),
            password: password(),
        })
        .collect();
    let load_users = (opts.load_users > 0).then(|| LoadUsers {
        prefix: "load".into(),
        count: opts.load_users,
        password: password(),
    });
    let mut users_file = sipmesh_actors::auth::UsersFile {
        realm: opts.domain.clone(),
        users: DEMO_USERS
            .iter()
            .zip(&users)
            .map(|(name, u)| sipmesh_actors::auth::UserEntry::from_password(name, &opts.domain, &u.password))
            .collect(),
    };
    if let Some(l) = &load_users {
        users_file.users.extend(
            (1..=l.count)
                .map(|n| sipmesh_actors::auth::UserEntry::from_password(&l.name(n), &opts.domain, &l.password)),
        );
    }
    let users_path = dir.join("users.toml");
    write_private(&users_path, &users_file.to_toml())?;
    let mut edge = None;
    let mut front_ends = 0;
    for sockets in sockets {
        let federation_addr = sockets.federation_addr();
        let (name, role) = match federation_addr {
            Some(_) => ("edge1".to_owned(), Role::Edge),
            None => {
                front_ends += 1;
                (format!("fe{front_ends}"), Role::FrontEnd)
            }
        };
        let fqdn = Fqdn::new(&format!("{name}.{}", opts.domain)).context("--domain")?;
        let node_dir = dir.join(&name);
        let mut issue = pki::IssueOptions::new(fqdn.as_str());
        issue.ips = vec![localhost];
        let cert = pki::issue(&ca_dir, &issue, &node_dir)?;
        let mesh_addr = sockets.mesh_addr()?;
        let client_addr = sockets.client_addr()?;
        // An edge's external side: a certificate for sip.<domain> from a CA
        // of its own (partners trust that one, not the internal CA).
        let federation = match federation_addr {
            None => None,
            Some(addr) => {
                let fed_ca_dir = dir.join("federation-ca");
                let fed_ca = pki::init_ca(&fed_ca_dir, &format!("{} Federation Root CA", opts.domain))?;
                let federation_fqdn = Fqdn::new(&format!("sip.{}", opts.domain)).context("--domain")?;
                let mut issue = pki::IssueOptions::new(federation_fqdn.as_str());
                issue.ips = vec![localhost];
                let ext = pki::issue(&fed_ca_dir, &issue, &node_dir.join("federation"))?;
                edge = Some(super::ClusterEdge {
                    fqdn: fqdn.to_string(),
                    federation_fqdn: federation_fqdn.to_string(),
                    federation_addr: addr,
                    federation_ca: fed_ca.cert_path,
                    federation_ca_key: fed_ca.key_path,
                });
                Some((addr, federation_fqdn, ext))
            }
        };
        members.push(TrustedServer {
            fqdn: fqdn.clone(),
            role,
            mesh_addr: mesh_addr.into(),
            client_addr: Some(client_addr),
            pool: None,
            federation_addr: federation.as_ref().map(|f| f.0),
            federation_fqdn: federation.as_ref().map(|f| f.1.clone()),
        });
        let config = NodeConfig {
            fqdn: fqdn.clone(),
            topology: Some(topology_path.clone()),
            topology_public_key: Some(topology_public_key.clone()),
            data_dir: node_dir.join("data"),
            debug_socket: node_dir.join("debug.sock"),
            mesh_listen: None,
            client_listen: None,
            tls: TlsPaths {
                cert: cert.cert_path,
                key: cert.key_path,
                ca: ca.cert_path.clone(),
                crls: vec![crl.clone()],
                crl_expired: Default::default(),
                keylog: opts.keylog.then(|| node_dir.join("tls-keys.log")),
            },
            mesh: MeshTiming {
                heartbeat_interval: Duration::from_millis(opts.heartbeat_ms),
                heartbeat_timeout: Duration::from_millis(3 * opts.heartbeat_ms),
                backoff_cap: Duration::from_millis(opts.backoff_cap_ms),
                dns: opts.mesh_dns,
                ..MeshTiming::default()
            },
            sip: SipConfig {
                domain: Some(opts.domain.clone()),
                users: Some(users_path.clone()),
                t1: Duration::from_millis(opts.t1_ms),
                digest_algorithms: opts
                    .digest_algorithms
                    .clone()
                    .unwrap_or_else(|| SipConfig::default().digest_algorithms),
                ..SipConfig::default()
            },
            federation: federation.map(|(_, _, ext)| sipmesh_actors::config::FederationConfig {
                cert: ext.cert_path,
                key: ext.key_path,
                listen: None,
                dns: opts.federation_dns,
                max_connections: sipmesh_actors::config::DEFAULT_MAX_FEDERATION_CONNECTIONS,
            }),
            admin: sipmesh_actors::config::AdminConfig {
                metrics: sockets.metrics_addr(),
                http: sockets.http_addr(),
            },
        };
        let config_path = node_dir.join("node.toml");
        std::fs::write(&config_path, config.to_toml())?;
        nodes.push(ClusterNode {
            fqdn: fqdn.to_string(),
            role,
            federation_addr,
            metrics_addr: sockets.metrics_addr(),
            admin_http: sockets.http_addr(),
            client_addr,
            mesh_addr,
            debug_socket: config.debug_socket.clone(),
            data_dir: config.data_dir.clone(),
            pid: 0,
            config: config_path,
            log: node_dir.join("node.log"),
        });
    }
    pki::write_crl(&ca_dir, &crl)?;
    let topology = Topology::new(1, members)?;
    let admin = sipmesh_state::AdminKey::load(&topology_key)?;
    std::fs::write(&topology_path, admin.sign(&topology.to_toml_string()))?;
    Ok(ClusterFile {
        domain: opts.domain.clone(),
        ca: ca.cert_path,
        ca_key: ca.key_path,
        ca_dir,
        crl,
        topology: topology_path,
        topology_key,
        topology_public_key,
        users,
        load_users,
        launcher_pid: std::process::id(),
        nodes,
        edge,
    })
}
