//! NodeActor and [`run`]: start a node, supervise its links, shut it down.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use arc_swap::ArcSwap;
use sipmesh_state::{Fqdn, Store, TrustedServer};
use tokio::net::TcpListener;

use crate::config::{MeshTiming, NodeConfig};
use crate::link::{self, Directory, PeerLink};
use crate::membership::{self, Membership};
use crate::status::{LinkStatus, Shared};
use crate::tls::{TlsConfigs, TlsMaterial};
use crate::{debug, listener, NodeError};

/// Time given to goaway frames to leave before the process exits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(300);

/// Store file inside the data directory.
pub const STORE_FILE: &str = "sipmesh.redb";

/// Environment variable that enables fault injection commands on the debug
/// socket (tests of supervision only).
pub const FAULT_INJECTION_ENV: &str = "SIPMESH_FAULT_INJECTION";

/// The per-process actor: owns the links and replaces dead ones.
pub struct NodeActor {
    shared: Arc<Shared>,
    timing: MeshTiming,
    directory: Arc<Directory>,
    links: BTreeMap<Fqdn, (TrustedServer, Addr<PeerLink>)>,
    closing: bool,
}

impl NodeActor {
    fn spawn_link(&mut self, member: TrustedServer) {
        let status = {
            let mut links = self.shared.links.write().unwrap_or_else(|p| p.into_inner());
            links
                .entry(member.fqdn.clone())
                .or_insert_with(|| Arc::new(LinkStatus::new(member.fqdn.clone(), self.shared.fqdn < member.fqdn)))
                .clone()
        };
        let (shared, timing, m) = (self.shared.clone(), self.timing, member.clone());
        let addr = Supervisor::start(move |_| PeerLink::new(m, shared, status, timing));
        self.directory.insert(member.fqdn.clone(), addr.clone());
        self.links.insert(member.fqdn.clone(), (member, addr));
    }

    /// Replace link actors whose mailbox closed (a handler panicked: actix's
    /// supervisor only sees actors that stop, not ones that die).
    fn watchdog(&mut self) {
        if self.closing {
            return;
        }
        let dead: Vec<TrustedServer> = self
            .links
            .values()
            .filter(|(_, addr)| !addr.connected())
            .map(|(m, _)| m.clone())
            .collect();
        for member in dead {
            if let Some(status) = self.shared.link(member.fqdn.as_str()) {
                status.restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                status.update(|i| i.last_error = Some("link actor died; replaced by the node watchdog".into()));
                status.set_state(crate::status::LinkState::Down);
            }
            tracing::error!(peer = %member.fqdn, "link actor died; restarting it");
            self.spawn_link(member);
        }
    }
}

impl Actor for NodeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let topology = self.shared.topology.load_full();
        for m in &topology.members {
            if m.fqdn != self.shared.fqdn {
                self.spawn_link(m.clone());
            }
        }
        ctx.run_interval(self.timing.heartbeat_interval, |act, _| act.watchdog());
    }
}

/// Stop every link (goaway to peers).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutdownNode;

impl Handler<ShutdownNode> for NodeActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: ShutdownNode, _ctx: &mut Context<Self>) -> Self::Result {
        self.closing = true;
        let addrs: Vec<Addr<PeerLink>> = self.links.values().map(|(_, a)| a.clone()).collect();
        Box::pin(
            async move {
                for a in addrs {
                    let _ = a.send(link::Shutdown { reason: "shutdown" }).await;
                }
            }
            .into_actor(self)
            .map(|_, act, _| {
                for fqdn in act.links.keys() {
                    act.directory.remove(fqdn);
                }
                act.links.clear();
            }),
        )
    }
}

/// Make the link to `peer` panic (fault injection).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct InjectPanic {
    /// The peer whose link actor should panic.
    pub peer: String,
}

impl Handler<InjectPanic> for NodeActor {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: InjectPanic, _ctx: &mut Context<Self>) -> Self::Result {
        let (_, addr) = self
            .links
            .get(msg.peer.as_str())
            .ok_or_else(|| format!("no link to {:?}", msg.peer))?;
        addr.try_send(link::Panic).map_err(|e| e.to_string())
    }
}

/// Handles the debug server needs.
#[derive(Clone)]
pub struct NodeHandle {
    /// Shared read-mostly view.
    pub shared: Arc<Shared>,
    /// The node actor.
    pub node: Addr<NodeActor>,
    /// The membership actor.
    pub membership: Addr<Membership>,
    /// Whether fault-injection commands are allowed.
    pub faults: bool,
}

/// Run a node until `shutdown` resolves. Must be called inside an actix
/// `System` (the binary uses `actix_rt::System::new().block_on`).
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    let started = Instant::now();
    let store = Store::open(&config.data_dir.join(STORE_FILE))?;
    let topology = membership::initial_topology(&config, &store)?;
    let me = topology
        .member(config.fqdn.as_str())
        .cloned()
        .expect("initial_topology checked membership");
    let topology = Arc::new(ArcSwap::from_pointee(topology));
    let material = TlsMaterial::load(&config.tls, config.fqdn.as_str())?;
    let tls = TlsConfigs::build(&material, topology.clone())?;
    let mesh_addr = config.mesh_listen.unwrap_or(me.mesh_addr);
    let mesh = TcpListener::bind(mesh_addr).await.map_err(|source| NodeError::Bind {
        what: "mesh",
        addr: mesh_addr,
        source,
    })?;
    let mesh_addr = mesh.local_addr().unwrap_or(mesh_addr);
    let debug_listener = debug::bind(&config.debug_socket)?;
    let shared = Arc::new(Shared {
        fqdn: config.fqdn.clone(),
        role: me.role,
        started,
        topology,
        tls: ArcSwap::from_pointee(tls),
        links: RwLock::new(BTreeMap::new()),
        rejections: Default::default(),
        mesh_addr,
    });
    let membership = Membership::new(store, shared.clone()).start();
    let directory = Arc::new(Directory::default());
    let node = NodeActor {
        shared: shared.clone(),
        timing: config.mesh,
        directory: directory.clone(),
        links: BTreeMap::new(),
        closing: false,
    }
    .start();
    let accept = actix_rt::spawn(listener::accept_loop(mesh, shared.clone(), directory, config.mesh));
    let handle = NodeHandle {
        shared: shared.clone(),
        node: node.clone(),
        membership,
        faults: std::env::var_os(FAULT_INJECTION_ENV).is_some_and(|v| v == "1"),
    };
    let debug_task = actix_rt::spawn(debug::serve(debug_listener, handle));
    tracing::info!(
        fqdn = %shared.fqdn,
        mesh = %mesh_addr,
        debug_socket = %config.debug_socket.display(),
        topology_version = shared.topology.load().version,
        "node running"
    );
    shutdown.await;
    tracing::info!(fqdn = %shared.fqdn, "shutting down");
    accept.abort();
    let _ = node.send(ShutdownNode).await;
    tokio::time::sleep(SHUTDOWN_GRACE).await;
    debug_task.abort();
    let _ = std::fs::remove_file(&config.debug_socket);
    Ok(())
}
