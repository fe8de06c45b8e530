//! `sipmesh check --dir` against a running local cluster: passes when all is
//! well, and after a node is killed lists each problem with how to fix it
//! and exits 1.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{poll_until, Cluster, BIN};

fn check(cluster: &Cluster, days: &str) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["check", "--days", days, "--dir"])
        .arg(&cluster.dir)
        .output()
        .expect("sipmesh check");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_passes_then_names_each_problem_with_its_fix() {
    let cluster = Cluster::up(3, 200, 1000);
    let (ok, text) = check(&cluster, "30");
    assert!(ok, "{text}");
    assert_eq!(
        text,
        "ok   fe1.contoso.test\nok   fe2.contoso.test\nok   fe3.contoso.test\n\nall checks passed: certificates valid beyond 30 days, every link up, one topology version\n"
    );
    // Certificates are issued for 365 days: a 400-day horizon flags them.
    let (ok, text) = check(&cluster, "400");
    assert!(!ok, "{text}");
    assert!(
        text.contains("- fe1.contoso.test: this node's certificate expires"),
        "{text}"
    );
    assert!(
        text.contains("  fix: issue a new certificate (`sipmesh pki issue`)"),
        "{text}"
    );

    let fe3 = cluster.node("fe3.contoso.test").pid;
    common::kill_sipmesh_pid(fe3);
    let text = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let (ok, text) = check(&cluster, "30");
        (!ok && text.contains("peer fe3.contoso.test is down")).then_some(text)
    })
    .expect("fe3 reported down");
    assert!(
        text.contains("FAIL fe3.contoso.test") || text.contains("FAIL "),
        "{text}"
    );
    assert!(text.contains("the node does not answer on"), "{text}");
    assert!(
        text.contains("  fix: start it (`sipmesh node run --config node.toml`"),
        "{text}"
    );
    assert!(
        text.contains("- fe1.contoso.test: peer fe3.contoso.test is down"),
        "{text}"
    );
    assert!(
        text.contains("  fix: start that peer, or see why its link fails"),
        "{text}"
    );
}
