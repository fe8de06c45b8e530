//! `ctl check`: certificates expiring within a horizon, expired CRLs, peers
//! not up, members lagging the topology version, federation certificates
//! (ours, partner anchors, partner edges seen) expiring.

use serde_json::{json, Value};

use crate::config::CrlExpired;
use crate::mesh::status::{LinkState, Shared};

/// The health check behind `ctl check`; `days` is the horizon for expiring
/// certificates (an error, never a panic, if it does not fit a date).
pub fn check(shared: &Shared, federation: &crate::federation::Federation, days: u64) -> Result<Value, String> {
    let now = time::OffsetDateTime::now_utc();
    let horizon = i64::try_from(days)
        .ok()
        .and_then(|d| d.checked_mul(86_400))
        .and_then(|s| now.checked_add(time::Duration::seconds(s)))
        .ok_or_else(|| format!("check: days {days} reaches beyond the representable dates"))?;
    let mut problems = Vec::new();
    let tls = shared.tls.load();
    for crl in tls.crl_files.iter().filter(|c| c.expired_at(now)) {
        let consequence = match tls.crl_expired {
            CrlExpired::Refuse => "peers it covers are refused",
            CrlExpired::Warn => "peers it covers are still accepted",
        };
        problems.push(format!(
            "CRL {} (issuer {}) expired: nextUpdate {} has passed; {consequence} (tls.crl_expired = \"{}\")",
            crl.path.display(),
            crl.issuer,
            crl.next_update.map(crate::rfc3339).unwrap_or_default(),
            tls.crl_expired.as_str()
        ));
    }
    let own = tls.own.not_after;
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
    problems.extend(federation.expiring(horizon, days));
    Ok(json!({ "ok": problems.is_empty(), "days": days, "problems": problems }))
}
