//! NodeActor and [`run`]: start a node, supervise its links, shut it down.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use arc_swap::ArcSwap;
use sipmesh_state::{Fqdn, Store, Topology, TopologyDiff, TrustedServer};
use tokio::net::TcpListener;

use crate::config::{MeshTiming, NodeConfig};
use crate::link::{self, Directory, PeerLink, SendTopology};
use crate::membership::{self, Membership, Offer, Offered, Refused};
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
    membership: Addr<Membership>,
    closing: bool,
}

impl NodeActor {
    fn spawn_link(&mut self, member: TrustedServer, ctx: &mut Context<Self>) {
        let status = {
            let mut links = self.shared.links.write().unwrap_or_else(|p| p.into_inner());
            links
                .entry(member.fqdn.clone())
                .or_insert_with(|| Arc::new(LinkStatus::new(member.fqdn.clone(), self.shared.fqdn < member.fqdn)))
                .clone()
        };
        let (shared, timing, m, node) = (self.shared.clone(), self.timing, member.clone(), ctx.address());
        let addr = Supervisor::start(move |_| PeerLink::new(m, shared, status, timing, node));
        self.directory.insert(member.fqdn.clone(), addr.clone());
        self.links.insert(member.fqdn.clone(), (member, addr));
    }

    /// Replace link actors whose mailbox closed (a handler panicked: actix's
    /// supervisor only sees actors that stop, not ones that die).
    fn watchdog(&mut self, ctx: &mut Context<Self>) {
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
            self.spawn_link(member, ctx);
        }
    }

    fn close_link(&mut self, fqdn: &Fqdn, reason: &'static str) {
        if let Some((_, addr)) = self.links.remove(fqdn) {
            let _ = addr.try_send(link::Shutdown { reason });
        }
        self.directory.remove(fqdn);
        self.shared
            .links
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(fqdn);
    }

    /// Make the links match a new topology, then pass the document on.
    fn apply_change(&mut self, old: &Topology, new: &Topology, ctx: &mut Context<Self>) -> TopologyDiff {
        let diff = TopologyDiff::between(old, new);
        let me_in = new.member(self.shared.fqdn.as_str()).is_some();
        if !me_in {
            tracing::error!(fqdn = %self.shared.fqdn, version = new.version, "this node is no longer in the topology; closing every link");
        }
        for m in &diff.removed {
            self.close_link(&m.fqdn, "removed-from-topology");
        }
        for (_, m) in &diff.changed {
            if m.fqdn != self.shared.fqdn {
                self.close_link(&m.fqdn, "topology-changed");
                if me_in {
                    self.spawn_link(m.clone(), ctx);
                }
            }
        }
        if me_in {
            for m in &diff.added {
                if m.fqdn != self.shared.fqdn {
                    self.spawn_link(m.clone(), ctx);
                }
            }
        } else {
            let all: Vec<Fqdn> = self.links.keys().cloned().collect();
            for f in all {
                self.close_link(&f, "removed-from-topology");
            }
        }
        if let Some(doc) = self.shared.topology_doc.load_full() {
            for (_, addr) in self.links.values() {
                let _ = addr.try_send(SendTopology {
                    document: doc.clone(),
                    version: new.version,
                });
            }
        }
        diff
    }
}

impl Actor for NodeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let topology = self.shared.topology.load_full();
        for m in &topology.members {
            if m.fqdn != self.shared.fqdn {
                self.spawn_link(m.clone(), ctx);
            }
        }
        ctx.run_interval(self.timing.heartbeat_interval, |act, ctx| act.watchdog(ctx));
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

/// A signed topology document offered by an operator (`from: None`) or a peer.
#[derive(Message)]
#[rtype(result = "Result<TopologyOutcome, Refused>")]
pub struct OfferTopology {
    /// The signed document.
    pub document: String,
    /// The peer it came from.
    pub from: Option<Fqdn>,
}

/// What an accepted offer did.
#[derive(Debug, Default, serde::Serialize)]
pub struct TopologyOutcome {
    /// Version of the offered document.
    pub offered: u64,
    /// Version in effect now.
    pub current: u64,
    /// Whether it was applied (newer than what we held).
    pub applied: bool,
    /// The membership change it made.
    pub diff: TopologyDiff,
}

impl Handler<OfferTopology> for NodeActor {
    type Result = ResponseActFuture<Self, Result<TopologyOutcome, Refused>>;

    fn handle(&mut self, msg: OfferTopology, _ctx: &mut Context<Self>) -> Self::Result {
        let publish = msg.from.is_none();
        let from = msg.from.map_or_else(|| "publish".to_owned(), |f| f.to_string());
        let offer = Offer {
            document: msg.document,
            from: from.clone(),
        };
        let shared = self.shared.clone();
        Box::pin(self.membership.send(offer).into_actor(self).map(move |res, act, ctx| {
            let offered = res.map_err(|e| Refused {
                reason: "invalid",
                detail: format!("membership unavailable: {e}"),
            })??;
            match offered {
                Offered::Applied { old, new } => {
                    let diff = act.apply_change(&old, &new, ctx);
                    Ok(TopologyOutcome {
                        offered: new.version,
                        current: new.version,
                        applied: true,
                        diff,
                    })
                }
                Offered::Same(v) => Ok(TopologyOutcome {
                    offered: v,
                    current: v,
                    ..Default::default()
                }),
                Offered::Older { offered, current } if publish => {
                    let detail = format!("offered v{offered} but v{current} is in effect");
                    shared.refuse_topology(&from, "stale-version", detail.clone());
                    Err(Refused {
                        reason: "stale-version",
                        detail,
                    })
                }
                Offered::Older { offered, current } => Ok(TopologyOutcome {
                    offered,
                    current,
                    ..Default::default()
                }),
            }
        }))
    }
}

/// Reload the certificate, key, CA bundle and CRLs, then re-check live links.
#[derive(Message)]
#[rtype(result = "Result<ReloadReport, String>")]
pub struct Reload;

/// What a reload loaded.
#[derive(Debug, serde::Serialize)]
pub struct ReloadReport {
    /// Serial of our certificate now in use.
    pub cert_serial: String,
    /// Its end of validity.
    pub cert_not_after: String,
    /// CRLs loaded.
    pub crls: usize,
    /// Live links re-checked.
    pub links_rechecked: usize,
}

impl Handler<Reload> for NodeActor {
    type Result = Result<ReloadReport, String>;

    fn handle(&mut self, _msg: Reload, _ctx: &mut Context<Self>) -> Self::Result {
        // Build everything first: a bad file leaves the running material untouched.
        let material = TlsMaterial::load(&self.shared.tls_paths, self.shared.fqdn.as_str())
            .and_then(|m| m.with_sni(&self.shared.sni_paths))
            .map_err(|e| e.to_string())?;
        let configs = TlsConfigs::build(&material, self.shared.topology.clone()).map_err(|e| e.to_string())?;
        let report = ReloadReport {
            cert_serial: configs.own.serial.clone(),
            cert_not_after: crate::rfc3339(configs.own.not_after),
            crls: configs.crl_count,
            links_rechecked: self.links.len(),
        };
        self.shared.tls.store(Arc::new(configs));
        for (_, addr) in self.links.values() {
            let _ = addr.try_send(link::Recheck);
        }
        tracing::info!(serial = %report.cert_serial, crls = report.crls, "tls material reloaded");
        Ok(report)
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
    /// Changes the log filter at run time (`ctl log-level`), when the binary provides it.
    pub set_log_level: Option<LogLevelHook>,
}

/// Sets the process's log filter (a `RUST_LOG`-style directive); returns the
/// filter now in effect.
pub type LogLevelHook = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

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
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    run_with(config, shutdown, None).await
}

/// [`run`] with a hook that changes the log filter at run time.
pub async fn run_with(
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
    set_log_level: Option<LogLevelHook>,
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
    let mesh_addr = config.mesh_listen.unwrap_or(me.mesh_addr);
    let mesh = TcpListener::bind(mesh_addr).await.map_err(|cause| NodeError::Bind {
        what: "mesh",
        addr: mesh_addr,
        cause,
    })?;
    let mesh_addr = mesh.local_addr().unwrap_or(mesh_addr);
    let client_addr = config.client_listen.unwrap_or(me.client_addr);
    let client = TcpListener::bind(client_addr).await.map_err(|cause| NodeError::Bind {
        what: "sip clients",
        addr: client_addr,
        cause,
    })?;
    let client_addr = client.local_addr().unwrap_or(client_addr);
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
        topology_doc: arc_swap::ArcSwapOption::from(initial.document.map(Arc::new)),
        topology_key: initial.key,
        topology_refusals: Default::default(),
        tls_paths: config.tls.clone(),
        sni_paths: config.sip.certs.clone(),
        proxy: Default::default(),
    });
    let proxy =
        Arc::new(crate::proxy::Proxy::new(shared.clone(), config.sip.clone(), store.clone()).map_err(NodeError::Sip)?);
    *proxy.client_addr.lock().unwrap_or_else(|p| p.into_inner()) = Some(client_addr);
    let _ = shared.proxy.set(proxy.clone());
    let membership = Membership::new(store.clone(), shared.clone()).start();
    let directory = Arc::new(Directory::default());
    let node = NodeActor {
        shared: shared.clone(),
        timing: config.mesh,
        directory: directory.clone(),
        links: BTreeMap::new(),
        membership: membership.clone(),
        closing: false,
    }
    .start();
    let sighup = actix_rt::spawn(reload_on_sighup(node.clone()));
    let accept = actix_rt::spawn(listener::accept_loop(mesh, shared.clone(), directory, config.mesh));
    let clients = actix_rt::spawn(crate::proxy::client::accept_loop(
        client,
        proxy.clone(),
        shared.clone(),
        config.sip.clone(),
    ));
    let handle = NodeHandle {
        shared: shared.clone(),
        node: node.clone(),
        membership,
        faults: std::env::var_os(FAULT_INJECTION_ENV).is_some_and(|v| v == "1"),
        set_log_level,
    };
    let debug_task = actix_rt::spawn(debug::serve(debug_listener, handle));
    tracing::info!(
        fqdn = %shared.fqdn,
        mesh = %mesh_addr,
        client = %client_addr,
        debug_socket = %config.debug_socket.display(),
        topology_version = shared.topology.load().version,
        "node running"
    );
    shutdown.await;
    tracing::info!(fqdn = %shared.fqdn, "shutting down");
    accept.abort();
    clients.abort();
    sighup.abort();
    let _ = node.send(ShutdownNode).await;
    tokio::time::sleep(SHUTDOWN_GRACE).await;
    debug_task.abort();
    let _ = std::fs::remove_file(&config.debug_socket);
    Ok(())
}
