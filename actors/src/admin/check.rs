//! `ctl check`: certificates expiring within a horizon, peers not up, members
//! lagging the topology version.

use serde_json::{json, Value};

use crate::mesh::status::{LinkState, Shared};

/// The health check behind `ctl check`.
pub fn check(shared: &Shared, days: u64) -> Value {
    let horizon = time::OffsetDateTime::now_utc() + time::Duration::days(days as i64);
    let mut problems = Vec::new();
    let own = shared.tls.load().own.not_after;
    if own <= horizon {
        problems.push(format!(
            "this node's certificate expires {} (within {days} days)",
            crate::rfc3339(own)
        ));
    }
    let version = shared.topology.load().version;
    let links: Vec<_> = shared
        .links
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    for link in links {
        let (state, not_after, peer_version) = link.update(|i| (i.state, i.cert_not_after, i.peer_topology_version));
        if state != LinkState::Up {
            let state = serde_json::to_value(state).unwrap_or_default();
            problems.push(format!("peer {} is {}", link.peer, state.as_str().unwrap_or("not up")));
        }
        if let Some(t) = not_after.filter(|t| *t <= horizon) {
            problems.push(format!(
                "peer {}'s certificate expires {} (within {days} days)",
                link.peer,
                crate::rfc3339(t)
            ));
        }
        match peer_version {
            Some(v) if v < version => {
                problems.push(format!("member {} holds topology v{v}, behind v{version}", link.peer))
            }
            _ => {}
        }
    }
    json!({ "ok": problems.is_empty(), "days": days, "problems": problems })
}
