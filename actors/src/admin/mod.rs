//! DebugServer: the node's Unix-domain debug socket (mode 0600).
//!
//! Layout: [`socket`] (bind, accept, one JSON line in, one out), [`commands`]
//! (the typed [`Command`] and its answers), [`check`] (`ctl check`).
//!
//! One request per line, one JSON answer per line. A request is either a JSON
//! object `{"cmd": "links"}` or just the command word. Answers are
//! `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.
//!
//! Commands (field names are an interface for scripts):
//! - `status`: `fqdn, role, topology_version, links_up, links_total, uptime_s`,
//!   plus `pid, version, mesh_addr, rejections` (totals by reason) and `sip`
//!   (`domain, flows, requests` by method, `transactions` by method and final status,
//!   `refusals` at the client door by reason (`digest-failure`, `client-limit`),
//!   `registrar`: `pending_writes, written, commits, failed_commits, refused_queue_full`).
//! - `links`: list of `peer, state (up|connecting|backoff|down), rtt_ms, since,
//!   restarts, last_error, cert_not_after, tls_version, cipher, frames_in,
//!   frames_out, bytes_in, bytes_out` plus `cert_serial, direction, local_addr,
//!   remote_addr, peer_topology_version, redial_in_ms`.
//! - `members`: list of `fqdn, role, mesh_addr, client_addr` plus `pool, self`,
//!   `topology_version` (the version that member reports; null when unknown)
//!   and `up_to_date`.
//! - `rejections`: list of `at, remote_addr, reason, presented_name` plus
//!   `direction, detail`, oldest first (the last
//!   [`MAX_REJECTIONS_KEPT`](crate::trust::reject::MAX_REJECTIONS_KEPT)).
//! - `topology`: `version, history, signed, dynamic, toml, refusals` of the
//!   trusted-server set in effect (`refusals`: `at, from, reason, detail`).
//! - `publish` (`{"cmd":"publish","document":"<signed topology>"}`): offer a
//!   signed topology; answers `offered, current, applied, diff` or an error
//!   starting with its reason (`bad-signature`, `stale-version`, `invalid`, `static`).
//! - `reload`: re-read certificate, key, CA bundle and CRLs; re-check live
//!   links. Answers `cert_serial, cert_not_after, crls, links_rechecked`.
//! - `check` (`{"cmd":"check","days":30}`, `days` in 0..=36500): `ok` and
//!   `problems` (expired CRLs with file, issuer and nextUpdate, certificates
//!   expiring within `days`, peers not up, members lagging the topology version).
//!   Every numeric argument is range-checked; an error names the value and the range.
//! - `registrations`: bindings stored at this node (it is their home), once
//!   the registrar's queued writes are committed:
//!   `aor, contact, home_node, flow_node, flow_id, expires_in`.
//! - `log-level` (`{"cmd":"log-level","level":"debug"}`): change the log
//!   filter at run time (a `RUST_LOG` directive); answers the filter in effect.
//! - `help`: the command list.
//! - `fault` (`{"cmd":"fault","panic_link":"<peer>"}`): only when the node
//!   runs with `SIPMESH_FAULT_INJECTION=1`; makes that link's actor panic.

pub mod check;
pub mod commands;
pub mod http;
pub mod metrics;
pub mod page;
pub mod socket;

use std::sync::Arc;

use actix::Addr;

pub use commands::{answer, Command, COMMANDS};
pub use socket::{bind, serve};

use crate::mesh::membership::Membership;
use crate::mesh::node::NodeActor;
use crate::mesh::status::Shared;
use crate::proxy::Proxy;

/// Sets the process's log filter (a `RUST_LOG`-style directive); returns the
/// filter now in effect.
pub type LogLevelHook = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// What the debug socket answers from, given at construction.
#[derive(Clone)]
pub struct NodeHandle {
    /// Shared read-mostly view.
    pub shared: Arc<Shared>,
    /// The node actor.
    pub node: Addr<NodeActor>,
    /// The membership actor.
    pub membership: Addr<Membership>,
    /// The SIP proxy (registrations, counters).
    pub proxy: Arc<Proxy>,
    /// Whether fault-injection commands are allowed.
    pub faults: bool,
    /// Changes the log filter at run time (`ctl log-level`), when the binary provides it.
    pub set_log_level: Option<LogLevelHook>,
}
