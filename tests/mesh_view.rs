//! `sipmesh ctl --socket S mesh [--json]`: the N×N view from any node,
//! gathered over the mesh; an unreachable member is flagged.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{poll_until, Cluster, BIN};
use serde_json::Value;

fn mesh(cluster: &Cluster, node: &str, json: bool) -> String {
    let socket = cluster.node(node).debug_socket.clone();
    let mut cmd = Command::new(BIN);
    cmd.args(["ctl", "--socket"]).arg(&socket);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.arg("mesh").output().expect("sipmesh ctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_members_view_of_every_link_from_one_node() {
    let cluster = Cluster::up(3, 200, 1000);
    let names = ["fe1.contoso.test", "fe2.contoso.test", "fe3.contoso.test"];
    let v: Value = serde_json::from_str(&mesh(&cluster, "fe2.contoso.test", true)).unwrap();
    assert_eq!(v["from"], "fe2.contoso.test");
    assert_eq!(v["members"], serde_json::json!(names));
    for a in names {
        assert_eq!(v["views"][a]["reachable"], true, "{v}");
        for b in names.iter().filter(|b| **b != a) {
            assert_eq!(v["views"][a]["links"][b]["state"], "up", "{a} -> {b}: {v}");
            assert!(v["views"][a]["links"][b]["since"].is_string(), "{v}");
        }
    }
    assert_eq!(v["unreachable"], serde_json::json!([]));
    assert_eq!(v["asymmetric"], serde_json::json!([]));
    let text = mesh(&cluster, "fe1.contoso.test", false);
    assert!(text.contains("VIEW FROM \\ PEER"), "{text}");
    assert_eq!(text.matches(" up ").count(), 6, "{text}");

    common::kill_sipmesh_pid(cluster.node("fe3.contoso.test").pid);
    let v = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let v: Value = serde_json::from_str(&mesh(&cluster, "fe1.contoso.test", true)).ok()?;
        // A query sent while fe1 still saw the link up times out instead
        // ("no answer within 2000 ms"); poll until fe1 has noticed.
        (v["unreachable"] == serde_json::json!(["fe3.contoso.test"])
            && v["views"]["fe3.contoso.test"]["error"] == "link not up"
            && v["views"]["fe2.contoso.test"]["links"]["fe3.contoso.test"]["state"] != "up")
            .then_some(v)
    })
    .expect("fe3 flagged unreachable");
    assert_eq!(v["views"]["fe3.contoso.test"]["reachable"], false, "{v}");
    assert_eq!(v["views"]["fe3.contoso.test"]["error"], "link not up", "{v}");
    assert_eq!(
        v["views"]["fe1.contoso.test"]["links"]["fe2.contoso.test"]["state"],
        "up"
    );
    let text = mesh(&cluster, "fe1.contoso.test", false);
    assert!(text.contains("unreachable: fe3.contoso.test (link not up)"), "{text}");
}
