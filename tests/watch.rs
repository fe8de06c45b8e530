//! `sipmesh ctl --socket S watch [--json]`: a live stream of events from a
//! node; a killed peer shows up as a link event within the heartbeat
//! timeout, a reload as a reload event.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{debug, poll_until, Cluster, ProcGuard, BIN};
use serde_json::Value;

fn watcher(cluster: &Cluster, json: bool, name: &str) -> (ProcGuard, std::path::PathBuf) {
    let socket = cluster.node("fe1.contoso.test").debug_socket.clone();
    let log = cluster.tmp.path().join(format!("{name}.log"));
    let mut cmd = Command::new(BIN);
    cmd.args(["ctl", "--socket"]).arg(&socket).arg("watch");
    if json {
        cmd.arg("--json");
    }
    (ProcGuard::spawn(name, cmd, &log), log)
}

#[test]
fn watch_streams_link_changes_and_reloads() {
    let cluster = Cluster::up(3, 200, 1000);
    let fe1 = cluster.node("fe1.contoso.test").debug_socket.clone();
    let (_json_watch, json_log) = watcher(&cluster, true, "watch-json");
    let (_text_watch, text_log) = watcher(&cluster, false, "watch-text");
    let events = |log: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // Reload until both watchers have seen one: they are subscribed then.
    poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let _ = debug(&fe1, "reload");
        let text = std::fs::read_to_string(&text_log).unwrap_or_default();
        (events(&json_log).iter().any(|e| e["kind"] == "reload") && text.contains(" reload ")).then_some(())
    })
    .expect("both watchers saw a reload");
    let reload = events(&json_log).into_iter().find(|e| e["kind"] == "reload").unwrap();
    assert_eq!(reload["ok"], true, "{reload}");
    assert!(
        reload["cert_serial"].is_string() && reload["at"].is_string(),
        "{reload}"
    );
    assert_eq!(reload["dropped"], 0, "{reload}");

    let fe3 = cluster.node("fe3.contoso.test").pid;
    common::kill_sipmesh_pid(fe3);
    // Heartbeat timeout 600 ms (3 x 200 ms): well within 5 s.
    let down = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        events(&json_log)
            .into_iter()
            .find(|e| e["kind"] == "link" && e["peer"] == "fe3.contoso.test" && e["from"] == "up")
    })
    .expect("a link event for fe3");
    assert_eq!(down["state"], "down", "{down}");
    let text = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        let t = std::fs::read_to_string(&text_log).unwrap_or_default();
        t.contains("peer=fe3.contoso.test").then_some(t)
    })
    .expect("the text watcher's line");
    let line = text.lines().find(|l| l.contains("peer=fe3.contoso.test")).unwrap();
    assert!(
        line.contains(" link ") && line.contains(" from=up") && line.contains(" state=down"),
        "{line}"
    );
}
