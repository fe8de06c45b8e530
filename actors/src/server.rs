//! The composition root: [`run`] wires one node from its config and its
//! already-bound listeners, then runs it until the shutdown future resolves.
//!
//! Everything is built before anything starts, and each part gets what it
//! depends on at construction (no late `OnceLock` wiring): the store and
//! topology, the TLS configs, the proxy, then the actors and the tasks that
//! accept on each door.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use arc_swap::ArcSwap;
use sipmesh_state::Store;
use tokio::net::{TcpListener, UnixListener};

use crate::admin::{self, LogLevelHook, NodeHandle};
use crate::config::NodeConfig;
use crate::federation::Federation;
use crate::mesh::link::Directory;
use crate::mesh::membership::{self, Membership};
use crate::mesh::node::{NodeActor, Reload, ShutdownNode};
use crate::mesh::status::Shared;
use crate::mesh::{listener, SipSink};
use crate::proxy::{self, Proxy};
use crate::trust::{TlsConfigs, TlsMaterial};
use crate::NodeError;

/// Time given to goaway frames to leave before the process exits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(300);

/// Store file inside the data directory.
pub const STORE_FILE: &str = "sipmesh.redb";

/// Environment variable that enables fault injection commands on the debug
/// socket (tests of supervision only).
pub const FAULT_INJECTION_ENV: &str = "SIPMESH_FAULT_INJECTION";

/// The sockets of a node. A listener left `None` is bound by [`run`] at the
/// address the config (or this node's topology entry) gives; tests and
/// `cluster up` bind port 0 themselves and hand the socket over, so no port
/// is ever released and re-bound.
#[derive(Debug, Default)]
pub struct Listeners {
    /// The mesh (MTLS) port.
    pub mesh: Option<TcpListener>,
    /// The SIP client (TLS) port.
    pub client: Option<TcpListener>,
    /// The debug socket (bound with mode 0600 by [`admin::bind`]).
    pub debug: Option<UnixListener>,
    /// The federation listener of an edge.
    pub federation: Option<TcpListener>,
    /// The metrics listener (`[admin] metrics`).
    pub metrics: Option<TcpListener>,
    /// The admin HTTP listener (`[admin] http`: the mesh page).
    pub http: Option<TcpListener>,
}

/// What the process around a node provides.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Changes the log filter at run time (`ctl log-level`).
    pub set_log_level: Option<LogLevelHook>,
}

/// A listening socket as tokio binds one, with the larger backlog.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(crate::net::accept::LISTEN_BACKLOG)
}

async fn bind_tcp(given: Option<TcpListener>, addr: SocketAddr, what: &'static str) -> Result<TcpListener, NodeError> {
    match given {
        Some(l) => Ok(l),
        None => listen(addr).map_err(|cause| NodeError::Bind { what, addr, cause }),
    }
}

async fn reload_on_sighup(node: Addr<NodeActor>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; use `sipmesh ctl ... reload`");
        return;
    };
    while hup.recv().await.is_some() {
        match node.send(Reload).await {
            Ok(Ok(r)) => tracing::info!(serial = %r.cert_serial, "reloaded on SIGHUP"),
            Ok(Err(e)) => tracing::error!(error = %e, "reload on SIGHUP failed; the previous material stays in effect"),
            Err(_) => return,
        }
    }
}

/// Run a node until `shutdown` resolves. Must be called inside an actix
/// `System` (the binary uses `actix_rt::System::new().block_on`).
pub async fn run(
    listeners: Listeners,
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
    hooks: Hooks,
) -> Result<(), NodeError> {
    let started = Instant::now();
    let store = Arc::new(Store::open(&config.data_dir.join(STORE_FILE))?);
    let initial = membership::initial_topology(&config, &store)?;
    let me = initial
        .topology
        .member(config.fqdn.as_str())
        .cloned()
        .expect("initial_topology checked membership");
    let topology = Arc::new(ArcSwap::from_pointee(initial.topology));
    let material = TlsMaterial::load(&config.tls, config.fqdn.as_str())?.with_sni(&config.sip.certs)?;
    let tls = TlsConfigs::build(&material, topology.clone())?;
    // A member named by DNS listens on every address at its port unless
    // `[listen] mesh` says where.
    let mesh_addr = config
        .mesh_listen
        .or(me.mesh_addr.socket_addr())
        .unwrap_or(SocketAddr::new(
            std::net::Ipv6Addr::UNSPECIFIED.into(),
            me.mesh_addr.port(),
        ));
    let mesh = bind_tcp(listeners.mesh, mesh_addr, "mesh").await?;
    let mesh_addr = mesh.local_addr().unwrap_or(mesh_addr);
    // An edge may have no client port: no client door then.
    let client = match (listeners.client, config.client_listen.or(me.client_addr)) {
        (Some(l), _) => Some(l),
        (None, Some(addr)) => Some(bind_tcp(None, addr, "sip clients").await?),
        (None, None) => None,
    };
    let client_addr = client.as_ref().and_then(|c| c.local_addr().ok());
    let debug_listener = match listeners.debug {
        Some(l) => l,
        None => admin::bind(&config.debug_socket)?,
    };
    let events = Arc::new(crate::events::EventBus::default());
    let shared = Arc::new(Shared {
        fqdn: config.fqdn.clone(),
        role: me.role,
        started,
        topology,
        tls: ArcSwap::from_pointee(tls),
        links: RwLock::new(BTreeMap::new()),
        rejections: crate::trust::RejectionLog::with_events(events.clone()),
        mesh_addr,
        topology_doc: arc_swap::ArcSwapOption::from(initial.document.map(Arc::new)),
        topology_key: initial.key,
        topology_refusals: Default::default(),
        tls_paths: config.tls.clone(),
        sni_paths: config.sip.certs.clone(),
        mesh_accept: Default::default(),
        client_accept: Default::default(),
        events,
        links_queries: Default::default(),
        resolver: match crate::net::dns::Resolver::new(config.mesh.dns) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::warn!(error = %e, "no resolver: members named by DNS cannot be dialled");
                None
            }
        },
    });
    // The federation side, on an edge with a `[federation]` section and a
    // federation_addr in the topology.
    let (federation, federation_listener, dial_rx) = match (&config.federation, me.federation_addr) {
        (Some(fc), Some(topo_addr)) => {
            let listen = fc.listen.unwrap_or(topo_addr);
            let listener = bind_tcp(listeners.federation, listen, "federation").await?;
            let bound = listener.local_addr().unwrap_or(listen);
            let fqdn = me.federation_fqdn.as_ref().map_or(config.fqdn.as_str(), |f| f.as_str());
            let (fed, rx) = Federation::edge(shared.topology.clone(), fc, bound, fqdn, shared.events.clone())?;
            (fed, Some(listener), Some(rx))
        }
        (Some(_), None) => {
            tracing::warn!(
                "[federation] is configured but this member has no federation_addr in the topology; not federating"
            );
            (
                Federation::inert(shared.topology.clone(), shared.events.clone()),
                None,
                None,
            )
        }
        (None, _) => (
            Federation::inert(shared.topology.clone(), shared.events.clone()),
            None,
            None,
        ),
    };
    let proxy = Arc::new(
        Proxy::new(
            shared.clone(),
            config.sip.clone(),
            store.clone(),
            client_addr,
            Arc::new(federation),
        )
        .map_err(NodeError::Sip)?,
    );
    // Our own domain as a partner would let that "partner" speak for our users.
    if let Some(problem) = shared.topology.load().federation.own_domain_problem(proxy.domain()) {
        return Err(NodeError::Topology(sipmesh_state::TopologyError::Invalid(vec![
            sipmesh_state::TopologyIssue {
                member: None,
                fqdn: None,
                problem,
            },
        ])));
    }
    let federation_tasks = match (federation_listener, dial_rx) {
        (Some(l), Some(rx)) => {
            tracing::info!(federation = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "federation listener up");
            vec![
                actix_rt::spawn(crate::federation::serve(l, proxy.clone())),
                actix_rt::spawn(crate::federation::dialer(proxy.clone(), rx)),
            ]
        }
        _ => Vec::new(),
    };
    let timers = actix_rt::spawn(proxy::txn::drive_timers(Arc::downgrade(&proxy)));
    let membership = Membership::new(store.clone(), shared.clone(), proxy.domain().to_owned()).start();
    let directory = Arc::new(Directory::default());
    let sip: Arc<dyn SipSink> = proxy.clone();
    let node = NodeActor::new(shared.clone(), config.mesh, directory.clone(), membership.clone(), sip).start();
    let sighup = actix_rt::spawn(reload_on_sighup(node.clone()));
    let accept = actix_rt::spawn(listener::serve(mesh, shared.clone(), directory, config.mesh));
    let clients = client.map(|client| {
        actix_rt::spawn(proxy::client::serve(
            client,
            proxy.clone(),
            shared.clone(),
            config.sip.clone(),
        ))
    });
    let handle = NodeHandle {
        shared: shared.clone(),
        node: node.clone(),
        membership,
        proxy: proxy.clone(),
        faults: std::env::var_os(FAULT_INJECTION_ENV).is_some_and(|v| v == "1"),
        set_log_level: hooks.set_log_level,
    };
    // Each admin listener: the inherited socket, else the configured address, else off.
    let mut admin_tasks = Vec::new();
    for (inherited, configured, what) in [
        (listeners.metrics, config.admin.metrics, "metrics"),
        (listeners.http, config.admin.http, "admin http"),
    ] {
        let listener = match (inherited, configured) {
            (Some(l), _) => l,
            (None, Some(addr)) => bind_tcp(None, addr, what).await?,
            (None, None) => continue,
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(listener = what, addr = %addr, "admin listener up");
        admin_tasks.push(if what == "metrics" {
            actix_rt::spawn(admin::metrics::serve(listener, handle.clone()))
        } else {
            actix_rt::spawn(admin::page::serve(listener, handle.clone()))
        });
    }
    let debug_task = actix_rt::spawn(admin::serve(debug_listener, handle));
    tracing::info!(
        fqdn = %shared.fqdn,
        mesh = %mesh_addr,
        client = client_addr.map(|a| a.to_string()).unwrap_or_default(),
        debug_socket = %config.debug_socket.display(),
        topology_version = shared.topology.load().version,
        "node running"
    );
    shutdown.await;
    tracing::info!(fqdn = %shared.fqdn, "shutting down");
    accept.abort();
    if let Some(c) = clients {
        c.abort();
    }
    for t in federation_tasks {
        t.abort();
    }
    sighup.abort();
    let _ = node.send(ShutdownNode).await;
    // Registrations answered 200 but still queued reach the disk before exit.
    let _ = proxy.registrar.committed().await;
    tokio::time::sleep(SHUTDOWN_GRACE).await;
    debug_task.abort();
    for t in admin_tasks {
        t.abort();
    }
    timers.abort();
    let _ = std::fs::remove_file(&config.debug_socket);
    Ok(())
}
