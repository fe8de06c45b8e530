//! How `sipmesh ctl` shows a debug-socket result to people: one table (or
//! short text) per command, and a FIELD/VALUE table or pretty JSON for the rest.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde_json::Value;

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    t
}

/// Render a result for people.
pub fn render(cmd: &str, result: &Value) -> String {
    let rows = result.as_array().cloned().unwrap_or_default();
    match cmd {
        "links" => {
            let mut t = table(&[
                "PEER",
                "STATE",
                "RTT ms",
                "SINCE",
                "RESTARTS",
                "TLS",
                "FRAMES in/out",
                "BYTES in/out",
                "CERT NOT AFTER",
                "LAST ERROR",
            ]);
            for r in rows {
                t.add_row(vec![
                    text(&r["peer"]),
                    text(&r["state"]),
                    text(&r["rtt_ms"]),
                    text(&r["since"]),
                    text(&r["restarts"]),
                    format!("{} {}", text(&r["tls_version"]), text(&r["cipher"])),
                    format!("{}/{}", text(&r["frames_in"]), text(&r["frames_out"])),
                    format!("{}/{}", text(&r["bytes_in"]), text(&r["bytes_out"])),
                    text(&r["cert_not_after"]),
                    text(&r["last_error"]),
                ]);
            }
            t.to_string()
        }
        "members" => {
            let mut t = table(&["FQDN", "ROLE", "MESH", "CLIENT", "POOL", "TOPOLOGY", ""]);
            for r in rows {
                let me = if r["self"] == Value::Bool(true) {
                    "(this node)"
                } else {
                    ""
                };
                t.add_row(vec![
                    text(&r["fqdn"]),
                    text(&r["role"]),
                    text(&r["mesh_addr"]),
                    text(&r["client_addr"]),
                    text(&r["pool"]),
                    match (&r["topology_version"], r["up_to_date"] == Value::Bool(true)) {
                        (Value::Null, _) => "unknown".to_owned(),
                        (v, true) => format!("v{v}"),
                        (v, false) => format!("v{v} (lags)"),
                    },
                    me.to_owned(),
                ]);
            }
            t.to_string()
        }
        "mesh" => {
            let members: Vec<String> = result["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect();
            let mut header = vec!["VIEW FROM \\ PEER".to_owned()];
            header.extend(members.iter().cloned());
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            let mut t = table(&header);
            for a in &members {
                let view = &result["views"][a];
                let mut row = vec![a.clone()];
                for b in &members {
                    let cell = if a == b {
                        "-".to_owned()
                    } else if view["reachable"] != Value::Bool(true) {
                        "?".to_owned()
                    } else {
                        let l = &view["links"][b];
                        match (l["state"].as_str(), l["rtt_ms"].as_f64()) {
                            (Some("up"), Some(rtt)) => format!("up {rtt:.1}ms"),
                            (Some(s), _) => s.to_owned(),
                            _ => "none".to_owned(),
                        }
                    };
                    row.push(cell);
                }
                t.add_row(row);
            }
            let mut out = t.to_string();
            for u in result["unreachable"].as_array().into_iter().flatten() {
                out += &format!(
                    "\nunreachable: {} ({})",
                    text(u),
                    text(&result["views"][u.as_str().unwrap_or("")]["error"])
                );
            }
            for x in result["asymmetric"].as_array().into_iter().flatten() {
                out += &format!(
                    "\nasymmetric: {} sees {} {}, {} sees {} {}",
                    text(&x["a"]),
                    text(&x["b"]),
                    text(&x["a_sees"]),
                    text(&x["b"]),
                    text(&x["a"]),
                    text(&x["b_sees"])
                );
            }
            out
        }
        "federation-explain" => {
            let mut out = String::new();
            for key in [
                "domain",
                "rule",
                "verdict",
                "inbound",
                "from",
                "mode",
                "partner_edge",
                "address",
                "resolved",
                "name_checked",
                "anchors",
                "crl",
                "max_rate",
                "edges",
                "topology_version",
            ] {
                let v = &result[key];
                if !v.is_null() {
                    let shown = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    out += &format!("{key:>16}: {shown}\n");
                }
            }
            out.trim_end().to_owned()
        }
        "federation" => {
            let partners = result["partners"].as_array().cloned().unwrap_or_default();
            let mut out = match &result["edge"] {
                Value::Null => "this node is no federation edge; requests to partners go through the edge\n".to_owned(),
                e => format!(
                    "edge: {} at {} (certificate until {})\n",
                    text(&e["federation_fqdn"]),
                    text(&e["federation_addr"]),
                    text(&e["cert_not_after"])
                ),
            };
            if partners.is_empty() {
                out += "no partners";
                return out;
            }
            let mut t = table(&[
                "DOMAIN",
                "MODE",
                "EDGE",
                "ADDRESS",
                "STATE",
                "CONNS",
                "CERT NOT AFTER",
                "IN",
                "OUT",
                "REFUSALS",
            ]);
            for p in &partners {
                let refusals = p["refusals"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                t.add_row(vec![
                    text(&p["domain"]),
                    text(&p["mode"]),
                    text(&p["edge"]),
                    text(&p["address"]),
                    text(&p["state"]),
                    text(&p["connections"]),
                    text(&p["cert_not_after"]),
                    text(&p["requests_in"]),
                    text(&p["requests_out"]),
                    refusals,
                ]);
            }
            out += &t.to_string();
            out
        }
        "rejections" => {
            if rows.is_empty() {
                return "no rejections".into();
            }
            let mut t = table(&["AT", "REMOTE", "DIR", "REASON", "PRESENTED NAME", "DETAIL"]);
            for r in rows {
                t.add_row(vec![
                    text(&r["at"]),
                    text(&r["remote_addr"]),
                    text(&r["direction"]),
                    text(&r["reason"]),
                    text(&r["presented_name"]),
                    text(&r["detail"]),
                ]);
            }
            t.to_string()
        }
        "check" => {
            let problems = result["problems"].as_array().cloned().unwrap_or_default();
            if problems.is_empty() {
                format!(
                    "OK: no certificate expires within {} days, every peer is up and current",
                    text(&result["days"])
                )
            } else {
                let mut out = format!("{} problem(s):\n", problems.len());
                for p in problems {
                    out += &format!("  - {}\n", text(&p));
                }
                out.trim_end().to_owned()
            }
        }
        "registrations" => {
            if rows.is_empty() {
                return "no registrations stored at this node".into();
            }
            let mut t = table(&["AOR", "CONTACT", "HOME", "FLOW NODE", "FLOW", "EXPIRES IN s"]);
            for r in rows {
                t.add_row(vec![
                    text(&r["aor"]),
                    text(&r["contact"]),
                    text(&r["home_node"]),
                    text(&r["flow_node"]),
                    text(&r["flow_id"]),
                    text(&r["expires_in"]),
                ]);
            }
            t.to_string()
        }
        "topology" => format!(
            "# topology v{} (versions in store: {})\n{}",
            text(&result["version"]),
            text(&result["history"]),
            result["toml"].as_str().unwrap_or("")
        ),
        _ => match result {
            Value::Object(map) => {
                let mut t = table(&["FIELD", "VALUE"]);
                for (k, v) in map {
                    t.add_row(vec![k.clone(), text(v)]);
                }
                t.to_string()
            }
            other => serde_json::to_string_pretty(other).unwrap_or_default(),
        },
    }
}

/// One `watch` event for people: `AT KIND key=value ...` (and the count of
/// events this watcher dropped, when any).
pub fn event(e: &Value, dropped: u64) -> String {
    let mut out = format!("{} {:<12}", text(&e["at"]), text(&e["kind"]));
    if let Some(fields) = e.as_object() {
        for (k, v) in fields.iter().filter(|(k, _)| *k != "at" && *k != "kind") {
            if v.is_null() {
                continue;
            }
            let shown = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out += &format!(" {k}={shown}");
        }
    }
    if dropped > 0 {
        out += &format!(" ({dropped} dropped)");
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn links_table_shows_every_column() {
        let rows = json!([{"peer":"fe2.contoso.test","state":"up","rtt_ms":0.25,"since":"2026-11-30T03:00:00Z",
            "restarts":1,"tls_version":"TLSv1.3","cipher":"TLS13_AES_256_GCM_SHA384","frames_in":5,"frames_out":6,
            "bytes_in":50,"bytes_out":60,"cert_not_after":"2027-11-30T03:00:00Z","last_error":null}]);
        let out = render("links", &rows);
        for want in [
            "fe2.contoso.test",
            "up",
            "0.25",
            "TLSv1.3 TLS13_AES_256_GCM_SHA384",
            "5/6",
            "50/60",
            "2027-11-30T03:00:00Z",
        ] {
            assert!(out.contains(want), "missing {want} in\n{out}");
        }
    }
}
