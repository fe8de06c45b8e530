//! The smaller holes of issue 8 (hole 9), each against real node processes:
//! no TLS session resumption on the client port, CRL expiry enforced (or
//! warned about) and reported by `ctl check`, checked `ctl` arguments, and
//! private files 0600 after `cluster up` (also when they existed 0644).

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use sipmesh_actors::config::CrlExpired;
use time::OffsetDateTime;

/// The largest `check` horizon accepted.
const MAX_CHECK_DAYS: u64 = sipmesh_actors::admin::commands::MAX_CHECK_DAYS;

/// The peer the tests connect as (a member of the node's topology).
const PEER: &str = "fe0.contoso.test";

fn node_with_peer(b: SingleNodeBuilder) -> SingleNode {
    b.member(PEER).start()
}

fn client_addr(node: &SingleNode) -> SocketAddr {
    let status = node.debug("status");
    status["client_addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("status without a parsable client_addr: {status}"))
}

/// A TLS 1.2 only client config presenting `identity`, with rustls' default
/// in-memory session cache (so it offers resumption when it can).
fn tls12_config(ca_pem: &Path, identity: &sipmesh::pki::Issued) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca_pem) {
        roots.add(c).expect("add trust anchor");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(&identity.cert_path), load_key(&identity.key_path))
        .expect("client cert");
    Arc::new(config)
}

/// A client certificate carries an identity on the client port: a resumed
/// TLS 1.2 session would reuse it without re-verifying the certificate, so
/// every handshake must be a full one.
#[tokio::test]
async fn client_port_never_resumes_tls12_sessions() {
    let node = SingleNode::builder().start();
    let addr = client_addr(&node);
    let user = node.pki.issue_fqdn(PEER);
    let config = tls12_config(&node.pki.ca_pem, &user);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tls = tls_connect(addr, &node.fqdn, config.clone())
            .await
            .expect("TLS 1.2 handshake with the client port");
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
        assert!(conn.peer_certificates().is_some());
        kinds.push(conn.handshake_kind());
        drop(tls);
    }
    assert_eq!(
        kinds,
        [Some(rustls::HandshakeKind::Full), Some(rustls::HandshakeKind::Full)],
        "the second handshake must not resume the first session"
    );
}

/// The node's CRL expired an hour ago.
fn expired_crl_node(mode: Option<CrlExpired>) -> (SingleNode, OffsetDateTime) {
    let next_update = (OffsetDateTime::now_utc() - time::Duration::hours(1))
        .replace_nanosecond(0)
        .expect("nanos");
    let mut b = SingleNode::builder().crl_next_update(next_update);
    if let Some(m) = mode {
        b = b.crl_expired(m);
    }
    (node_with_peer(b), next_update)
}

/// `ctl check` names the expired CRL and its nextUpdate.
fn assert_check_lists_expired_crl(node: &SingleNode, next_update: OffsetDateTime) {
    let check = node.debug("check");
    assert_eq!(check["ok"], false, "{check}");
    let problems: Vec<&str> = check["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let crl = node.crl.display().to_string();
    let when = sipmesh_actors::rfc3339(next_update);
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&format!("CRL {crl}")) && p.contains(&when) && p.contains("expired")),
        "no problem names the expired CRL {crl} (nextUpdate {when}): {problems:?}"
    );
}

/// Dial the mesh port as PEER with a valid certificate and a truthful hello;
/// what the node answered, and the connection (kept open by the caller).
async fn dial_as_peer(node: &SingleNode) -> (ReadEnd, Option<impl Sized>) {
    let cert = node.pki.issue_fqdn(PEER);
    let config = client_config(&node.pki.ca_pem, Some(&cert));
    match tls_connect(node.mesh_addr, &node.fqdn, config).await {
        Ok(mut tls) => {
            let _ = send(&mut tls, &hello_frame(PEER)).await;
            (read_end(&mut tls, Duration::from_secs(2)).await, Some(tls))
        }
        Err(e) => (ReadEnd::Error(format!("handshake: {e}")), None),
    }
}

/// Default `tls.crl_expired = "refuse"`: a peer whose CRL is past its
/// nextUpdate is refused as `crl-expired`, and `check` says which CRL.
#[tokio::test]
async fn expired_crl_refuses_the_peer_by_default() {
    let (node, next_update) = expired_crl_node(None);
    let (end, _conn) = dial_as_peer(&node).await;
    assert!(end.closed(), "the node did not refuse: {end:?}");
    let newest = newest_rejection_after(&node.debug_socket, 0);
    assert_eq!(newest["reason"], "crl-expired", "{newest}");
    assert_eq!(newest["presented_name"], PEER, "{newest}");
    assert_eq!(newest["direction"], "inbound", "{newest}");
    let status = node.debug("status");
    assert_eq!(status["links_up"], 0, "{status}");
    assert_eq!(status["rejections"]["crl-expired"], 1, "{status}");
    assert_check_lists_expired_crl(&node, next_update);
}

/// `tls.crl_expired = "warn"`: the link comes up, nothing is refused, and
/// `check` still lists the expired CRL.
#[tokio::test]
async fn expired_crl_with_warn_keeps_the_link_and_check_warns() {
    let (node, next_update) = expired_crl_node(Some(CrlExpired::Warn));
    let (end, _conn) = dial_as_peer(&node).await;
    let ReadEnd::Data(bytes) = &end else {
        panic!("expected the node's hello, got {end:?}")
    };
    assert!(bytes.len() > 4, "{bytes:?}");
    eventually(Duration::from_secs(2), "peer link up", || {
        link(&node.debug_socket, PEER).filter(|l| l["state"] == "up")
    });
    assert!(
        rejections(&node.debug_socket).is_empty(),
        "{:?}",
        rejections(&node.debug_socket)
    );
    assert_check_lists_expired_crl(&node, next_update);
}

/// A node with a current CRL has no CRL problem.
#[tokio::test]
async fn current_crl_is_no_problem() {
    let node = node_with_peer(SingleNode::builder());
    let check = node.debug("check");
    let problems = check["problems"].to_string();
    assert!(!problems.contains("CRL"), "{check}");
}

/// Every numeric ctl argument is range-checked: the answer names the value
/// and the allowed range, and the node keeps answering.
#[test]
fn ctl_numeric_arguments_are_checked() {
    let node = SingleNode::builder().start();
    for (request, value) in [
        (r#"{"cmd":"check","days":1000000000}"#, "1000000000"),
        (r#"{"cmd":"check","days":18446744073709551615}"#, "18446744073709551615"),
        (r#"{"cmd":"check","days":-1}"#, "-1"),
        (r#"{"cmd":"check","days":2.5}"#, "2.5"),
        (r#"{"cmd":"check","days":"7"}"#, "\"7\""),
    ] {
        let err = try_debug(&node.debug_socket, request).expect_err(request);
        assert!(
            err.starts_with("ok:false: check: days ")
                && err.contains(value)
                && err.contains(&format!("0..={}", MAX_CHECK_DAYS)),
            "{request}: {err}"
        );
        // The next request is still answered.
        let status = node.debug("status");
        assert_eq!(status["fqdn"], "fe1.contoso.test");
    }
    let ok = node.debug(r#"{"cmd":"check","days":36500}"#);
    assert_eq!(ok["days"], 36500, "{ok}");
    assert!(pid_alive(node.proc.pid()), "node died");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Files holding secrets or state after `cluster up`.
fn private_files(c: &Cluster) -> Vec<PathBuf> {
    let mut files = vec![
        c.dir.join("cluster.json"),
        c.dir.join("users.toml"),
        c.dir.join("topology-admin.key"),
        c.info.ca_key.clone(),
    ];
    for n in &c.info.nodes {
        files.push(n.data_dir.join(sipmesh_actors::server::STORE_FILE));
        let node_dir = n.config.parent().expect("node dir");
        for e in std::fs::read_dir(node_dir).expect("node dir").flatten() {
            if e.path().extension().is_some_and(|x| x == "key") {
                files.push(e.path());
            }
        }
    }
    files
}

fn assert_private(files: &[PathBuf]) {
    let wrong: Vec<String> = files
        .iter()
        .filter(|f| mode(f) != 0o600)
        .map(|f| format!("{} is {:o}", f.display(), mode(f)))
        .collect();
    assert!(wrong.is_empty(), "not 0600: {wrong:?}");
}

/// After `cluster up`, the store, cluster.json, users.toml and every key are
/// exactly 0600; after a restart too when they had been made 0644 (and a
/// stale 0644 temporary of cluster.json was lying around).
#[test]
fn cluster_files_are_private_also_when_they_existed() {
    let mut c = Cluster::up(2, 200, 1_000);
    let files = private_files(&c);
    assert_eq!(files.len(), 4 + 2 * 2, "{files:?}");
    assert_private(&files);

    // Stop everything, loosen the modes, restart in the same directory.
    c.launcher.kill();
    for n in &c.info.nodes {
        kill_sipmesh_pid(n.pid);
        eventually(Duration::from_secs(5), "node dead", || {
            (!pid_alive(n.pid)).then_some(())
        });
    }
    for f in &files {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let stale_tmp = c.dir.join(".cluster.json.tmp");
    std::fs::write(&stale_tmp, "{}").expect("stale tmp");
    std::fs::set_permissions(&stale_tmp, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let old_launcher = c.info.launcher_pid;

    let log = c.tmp.path().join("restart.log");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["cluster", "up", "--dir"]).arg(&c.dir);
    c.extra.push(ProcGuard::spawn("cluster up (restart)", cmd, &log));
    let json = c.dir.join("cluster.json");
    let info: ClusterInfo = poll_until(CLUSTER_UP_DEADLINE, POLL, || {
        let info: ClusterInfo = serde_json::from_str(&std::fs::read_to_string(&json).ok()?).ok()?;
        (info.launcher_pid != old_launcher).then_some(info)
    })
    .unwrap_or_else(|| panic!("no restarted cluster.json:\n{}", tail(&log, 40)));
    c.extra_pids.extend(info.nodes.iter().map(|n| n.pid));
    c.info.nodes = info.nodes;
    c.wait_full_mesh(CLUSTER_UP_DEADLINE);
    // users.toml and the keys are not rewritten on a restart; the store and
    // cluster.json are.
    let rewritten: Vec<PathBuf> = files
        .iter()
        .filter(|f| f.ends_with("cluster.json") || f.ends_with(sipmesh_actors::server::STORE_FILE))
        .cloned()
        .collect();
    assert_eq!(rewritten.len(), 1 + 2, "{rewritten:?}");
    assert_private(&rewritten);
}
