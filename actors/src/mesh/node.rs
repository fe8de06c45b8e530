//! NodeActor: one per process; supervises one PeerLink per trusted peer and
//! reacts to topology changes, reloads and shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;
use sipmesh_state::{Fqdn, Topology, TopologyDiff, TrustedServer};

use super::link::{self, Directory, PeerLink, SendTopology};
use super::membership::{Membership, Offer, OfferTopology, Offered, Refused, TopologyOutcome};
use super::status::{LinkState, LinkStatus, Shared};
use super::SipSink;
use crate::config::MeshTiming;
use crate::trust::{TlsConfigs, TlsMaterial};

/// The per-process actor: owns the links and replaces dead ones.
pub struct NodeActor {
    shared: Arc<Shared>,
    timing: MeshTiming,
    directory: Arc<Directory>,
    links: BTreeMap<Fqdn, (TrustedServer, Addr<PeerLink>)>,
    membership: Addr<Membership>,
    sip: Arc<dyn SipSink>,
    closing: bool,
}

impl NodeActor {
    /// A node actor over `shared`; links it starts hand relayed SIP to `sip`.
    pub fn new(
        shared: Arc<Shared>,
        timing: MeshTiming,
        directory: Arc<Directory>,
        membership: Addr<Membership>,
        sip: Arc<dyn SipSink>,
    ) -> NodeActor {
        NodeActor {
            shared,
            timing,
            directory,
            links: BTreeMap::new(),
            membership,
            sip,
            closing: false,
        }
    }

    fn spawn_link(&mut self, member: TrustedServer, ctx: &mut Context<Self>) {
        let status = {
            let mut links = self.shared.links.write().unwrap_or_else(|p| p.into_inner());
            links
                .entry(member.fqdn.clone())
                .or_insert_with(|| {
                    Arc::new(LinkStatus::new(
                        member.fqdn.clone(),
                        self.shared.fqdn < member.fqdn,
                        self.shared.events.clone(),
                    ))
                })
                .clone()
        };
        let (shared, timing, m) = (self.shared.clone(), self.timing, member.clone());
        let (node, sip) = (ctx.address().recipient(), self.sip.clone());
        let addr = Supervisor::start(move |_| PeerLink::new(m, shared, status, timing, node, sip));
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
                status.set_state(LinkState::Down);
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
        let failed = |e: String| {
            self.shared
                .events
                .publish("reload", || serde_json::json!({"ok": false, "error": e}));
            e
        };
        let material = TlsMaterial::load(&self.shared.tls_paths, self.shared.fqdn.as_str())
            .and_then(|m| m.with_sni(&self.shared.sni_paths))
            .map_err(|e| failed(e.to_string()))?;
        let configs = TlsConfigs::build(&material, self.shared.topology.clone()).map_err(|e| failed(e.to_string()))?;
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
        self.shared.events.publish("reload", || {
            serde_json::json!({"ok": true, "cert_serial": report.cert_serial, "cert_not_after": report.cert_not_after, "crls": report.crls})
        });
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
