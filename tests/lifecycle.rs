//! Trust lifecycle on live local clusters: publishing topologies that add and
//! remove members, refusing foreign and stale documents, keeping the trusted
//! set across a restart with every peer down, revoking and re-keying a node's
//! certificate, and reloading TLS material many times without growing memory.
//!
//! Every test starts its own `sipmesh cluster up` through `common::Cluster`;
//! every extra process (a fourth node, a restarted node) is owned by a
//! `ProcGuard` in `Cluster::extra`, so it is killed and reaped even on panic.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use sipmesh::pki::{self, IssueOptions};
use sipmesh_actors::config::NodeConfig;
use sipmesh_state::signed::unsigned_content;
use sipmesh_state::{Fqdn, Role, Topology, TrustedServer};

/// Heartbeat and backoff cap of every cluster here (the brief's timing).
const HEARTBEAT_MS: u64 = 200;
const BACKOFF_CAP_MS: u64 = 1_000;
/// Bound on any one CLI invocation (ctl itself gives up after 10 s).
const CLI_DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- helpers

fn cluster3() -> Cluster {
    Cluster::up(3, HEARTBEAT_MS, BACKOFF_CAP_MS)
}

/// A path inside `cluster.json` that `common::ClusterInfo` does not parse.
fn cluster_path(c: &Cluster, key: &str) -> PathBuf {
    let text = std::fs::read_to_string(c.dir.join("cluster.json")).expect("read cluster.json");
    let v: Value = serde_json::from_str(&text).expect("parse cluster.json");
    PathBuf::from(
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("cluster.json has no string {key:?}: {v}")),
    )
}

/// A scratch directory owned by the cluster's tempdir.
fn scratch(c: &Cluster) -> PathBuf {
    let d = c.tmp.path().join("lifecycle");
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// Run the binary with `args` (bounded); the whole output.
fn cli<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn sipmesh {args:?}: {e}"));
    let deadline = Instant::now() + CLI_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sipmesh {args:?} did not finish within {CLI_DEADLINE:?}");
            }
        }
    }
    child.wait_with_output().expect("collect CLI output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `sipmesh topology publish FILE --key KEY --socket SOCK`.
fn publish(file: &Path, key: &Path, socket: &Path) -> Output {
    cli([
        OsStr::new("topology"),
        OsStr::new("publish"),
        file.as_os_str(),
        OsStr::new("--key"),
        key.as_os_str(),
        OsStr::new("--socket"),
        socket.as_os_str(),
    ])
}

fn assert_published(out: &Output, version: u64) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "publish failed: stdout {:?} stderr {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("published: topology v{version} is in effect")),
        "{stdout}"
    );
}

/// The cluster's v1 topology (signature trailer stripped).
fn topology_v1(c: &Cluster) -> Topology {
    let signed = std::fs::read_to_string(&c.info.topology).expect("read topology");
    let t = Topology::from_toml_str(unsigned_content(&signed)).expect("parse cluster topology");
    assert_eq!(t.version, 1, "cluster topology starts at v1");
    t
}

fn member(fqdn: &str) -> TrustedServer {
    TrustedServer {
        fqdn: Fqdn::new(fqdn).expect("fqdn"),
        role: Role::FrontEnd,
        mesh_addr: free_addr().into(),
        client_addr: Some(free_addr()),
        pool: None,
        federation_addr: None,
        federation_fqdn: None,
    }
}

/// Write an (unsigned) topology file.
fn write_topology(path: &Path, t: &Topology) {
    std::fs::write(path, t.to_toml_string()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `sipmesh ctl --socket SOCKET CMD --json`: must exit 0; its JSON.
fn ctl_json(socket: &Path, cmd: &str) -> Value {
    let out = cli([
        OsStr::new("ctl"),
        OsStr::new("--socket"),
        socket.as_os_str(),
        OsStr::new(cmd),
        OsStr::new("--json"),
    ]);
    assert_eq!(out.status.code(), Some(0), "ctl {cmd}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ctl {cmd} --json: {e}"))
}

fn status(socket: &Path) -> Value {
    debug(socket, "status")
}

fn topology_version(socket: &Path) -> u64 {
    status(socket)["topology_version"]
        .as_u64()
        .unwrap_or_else(|| panic!("status without topology_version"))
}

fn members(socket: &Path) -> Vec<Value> {
    match debug(socket, "members") {
        Value::Array(a) => a,
        other => panic!("members: expected an array, got {other}"),
    }
}

fn member_names(socket: &Path) -> Vec<String> {
    members(socket)
        .iter()
        .map(|m| m["fqdn"].as_str().expect("member fqdn").to_owned())
        .collect()
}

/// First rejection logged after index `before` that matches `pred`, within `deadline`.
fn wait_rejection(
    socket: &Path,
    before: usize,
    deadline: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut seen = Vec::new();
    poll_until(deadline, POLL, || {
        seen = rejections(socket);
        seen.iter().skip(before).find(|r| pred(r)).cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "no {what} rejection on {} within {deadline:?}; new records: {:#?}",
            socket.display(),
            seen.iter().skip(before).collect::<Vec<_>>()
        )
    })
}

/// Spawn `node run --config CONFIG`, owned by the cluster, and wait until it
/// answers `status` on `socket`.
fn start_node(c: &mut Cluster, name: &str, config: &Path, socket: &Path, log: &Path) -> i32 {
    let mut cmd = Command::new(BIN);
    cmd.args(["node", "run", "--config"]).arg(config);
    let mut guard = ProcGuard::spawn(name, cmd, log);
    let ready = poll_until(NODE_READY_DEADLINE, POLL, || {
        if let Some(status) = guard.try_wait() {
            panic!("{name} exited early ({status}):\n{}", tail(log, 60));
        }
        try_debug(socket, "status").ok()
    });
    if ready.is_none() {
        panic!(
            "{name} did not answer on {} within {NODE_READY_DEADLINE:?}:\n{}",
            socket.display(),
            tail(log, 60)
        );
    }
    let pid = guard.pid();
    c.extra.push(guard);
    pid
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// Hex serial as the node prints it (no leading zero bytes, lower case).
fn serial_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse certificate");
    cert.tbs_certificate
        .raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn serial_of_pem_file(path: &Path) -> String {
    let certs = load_certs(path);
    serial_of(
        certs
            .first()
            .unwrap_or_else(|| panic!("{}: no certificate", path.display())),
    )
}

/// A server verifier that records the end-entity certificate it was shown
/// and then verifies it against the CA as usual.
#[derive(Debug)]
struct Recording {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    seen: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("lock") = Some(end_entity.clone().into_owned());
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Open a fresh TLS connection to `addr` (no client certificate; the node
/// refuses it after the handshake, which does not matter here) and return the
/// serial of the server certificate it presented.
fn presented_serial(addr: std::net::SocketAddr, server_name: &str, ca_pem: &Path) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca_pem) {
        roots.add(c).expect("add trust anchor");
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .expect("webpki verifier");
    let recording = Arc::new(Recording {
        inner,
        seen: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(recording.clone())
        .with_no_client_auth();
    // Drop the stream inside the runtime that owns it.
    let result = block_on(async { tls_connect(addr, server_name, Arc::new(config)).await.map(drop) });
    let seen = recording.seen.lock().expect("lock").clone();
    let der = seen.unwrap_or_else(|| panic!("no server certificate seen from {addr}: {result:?}"));
    if let Err(e) = result {
        panic!("the server certificate of {addr} did not verify as {server_name}: {e}");
    }
    serial_of(&der)
}

fn vm_rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

fn assert_links_all_up(socket: &Path, want: usize) -> Vec<Value> {
    let rows = links(socket);
    assert_eq!(rows.len(), want, "{}: {rows:#?}", socket.display());
    for r in &rows {
        assert_eq!(r["state"], "up", "{}: {r}", socket.display());
    }
    rows
}

// ---------------------------------------------------------------- tests

#[test]
fn publish_adds_then_removes_a_member() {
    let mut c = cluster3();
    let dir = scratch(&c);
    let key = cluster_path(&c, "topology_key");
    let public_key = cluster_path(&c, "topology_public_key");
    let socks: Vec<PathBuf> = (1..=3).map(|i| c.node(&fe(i)).debug_socket.clone()).collect();
    let fe0 = fe(0);

    // v2 = v1 + fe0 on fresh ports, published to fe2: every node holds v2 within 2 s.
    let v1 = topology_v1(&c);
    let mut with_fe0 = v1.members.clone();
    with_fe0.push(member(&fe0));
    let v2 = Topology::new(2, with_fe0).expect("v2");
    let v2_file = dir.join("v2.toml");
    write_topology(&v2_file, &v2);
    assert_published(&publish(&v2_file, &key, &socks[1]), 2);
    eventually(Duration::from_secs(2), "topology v2 on fe1..fe3", || {
        socks.iter().all(|s| topology_version(s) == 2).then_some(())
    });
    for s in &socks {
        let t = debug(s, "topology");
        assert_eq!(t["version"], 2, "{t}");
        assert_eq!(t["signed"], true, "{t}");
        assert!(
            t["history"].as_array().is_some_and(|h| h.contains(&Value::from(2))),
            "{t}"
        );
        assert_eq!(member_names(s).len(), 4);
    }

    // fe0: a certificate from the cluster CA, the signed v2 file, the cluster's admin key.
    let signed_v2 = dir.join("v2.signed.toml");
    let out = cli([
        OsStr::new("topology"),
        OsStr::new("sign"),
        v2_file.as_os_str(),
        OsStr::new("--key"),
        key.as_os_str(),
        OsStr::new("--out"),
        signed_v2.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(0), "sign: {}", text(&out.stderr));
    let pki = Pki::existing(&c.info.ca_dir, &c.info.ca, &dir);
    let cert = pki.issue(&IssueOptions {
        ips: vec!["127.0.0.1".parse().expect("ip")],
        ..IssueOptions::new(&fe0)
    });
    let fe0_dir = dir.join("fe0");
    let mut config = NodeConfig::load(&c.node(&fe(1)).config).expect("load fe1 node.toml");
    config.fqdn = Fqdn::new(&fe0).expect("fqdn");
    config.topology = Some(signed_v2);
    config.topology_public_key = Some(public_key);
    config.data_dir = fe0_dir.join("data");
    config.debug_socket = fe0_dir.join("debug.sock");
    config.mesh_listen = None;
    config.client_listen = None;
    // fe1's admin ports (metrics, page) are fe1's: fe0 runs without them.
    config.admin = Default::default();
    config.tls.cert = cert.cert_path.clone();
    config.tls.key = cert.key_path.clone();
    std::fs::create_dir_all(&fe0_dir).expect("fe0 dir");
    let fe0_config = fe0_dir.join("node.toml");
    std::fs::write(&fe0_config, config.to_toml()).expect("write fe0 node.toml");
    let fe0_sock = config.debug_socket.clone();
    let started = Instant::now();
    start_node(&mut c, "fe0", &fe0_config, &fe0_sock, &fe0_dir.join("node.log"));

    // Within 5 s of starting fe0: 4 nodes, 3 links up each, 6 links in all.
    let mut all = vec![fe0_sock.clone()];
    all.extend(socks.iter().cloned());
    let left = Duration::from_secs(5).saturating_sub(started.elapsed());
    eventually(left, "3 links up on each of the 4 nodes", || {
        all.iter()
            .all(|s| {
                let st = status(s);
                st["links_up"] == 3 && st["links_total"] == 3
            })
            .then_some(())
    });
    let mut pairs = std::collections::BTreeSet::new();
    for (s, name) in all.iter().zip([fe(0), fe(1), fe(2), fe(3)]) {
        for r in assert_links_all_up(s, 3) {
            let peer = r["peer"].as_str().expect("peer").to_owned();
            pairs.insert(if name < peer {
                (name.clone(), peer)
            } else {
                (peer, name.clone())
            });
        }
    }
    assert_eq!(pairs.len(), 6, "{pairs:?}");
    assert_eq!(topology_version(&fe0_sock), 2);
    // Every member reports v2 to fe3 (fe0 says so in its hello; the others
    // learn it through replication).
    let rows = eventually(Duration::from_secs(2), "fe3's members all at v2", || {
        let rows = members(&socks[2]);
        rows.iter()
            .all(|m| m["topology_version"] == 2 && m["up_to_date"] == true)
            .then_some(rows)
    });
    let mut names: Vec<&str> = rows.iter().map(|m| m["fqdn"].as_str().expect("fqdn")).collect();
    names.sort_unstable();
    assert_eq!(names, [fe(0), fe(1), fe(2), fe(3)]);

    // v3 = the v1 members, published to fe1: fe0's links close at once...
    let before: Vec<usize> = socks.iter().map(|s| rejections(s).len()).collect();
    let v3 = Topology::new(3, v1.members.clone()).expect("v3");
    let v3_file = dir.join("v3.toml");
    write_topology(&v3_file, &v3);
    let published = Instant::now();
    assert_published(&publish(&v3_file, &key, &socks[0]), 3);
    let left = Duration::from_secs(1).saturating_sub(published.elapsed());
    eventually(left, "fe1..fe3 to drop their link to fe0", || {
        socks
            .iter()
            .all(|s| {
                let rows = links(s);
                rows.len() == 2 && rows.iter().all(|r| r["peer"] != fe0.as_str())
            })
            .then_some(())
    });
    for s in &socks {
        assert_eq!(topology_version(s), 3);
        assert_eq!(member_names(s), [fe(1), fe(2), fe(3)]);
    }
    // ...and its redials (it still holds v2) are refused as not-in-topology.
    assert_eq!(topology_version(&fe0_sock), 2, "fe0 must not have received v3");
    for (s, before) in socks.iter().zip(before) {
        let left = Duration::from_secs(3).saturating_sub(published.elapsed());
        let r = wait_rejection(s, before, left, "not-in-topology from fe0", |r| {
            r["reason"] == "not-in-topology"
        });
        assert_eq!(r["presented_name"], fe0.as_str(), "{r}");
        assert_eq!(r["direction"], "inbound", "{r}");
    }
    for s in &socks {
        assert_links_all_up(s, 2);
    }
}

#[test]
fn foreign_and_stale_topologies_are_refused() {
    let c = cluster3();
    let dir = scratch(&c);
    let key = cluster_path(&c, "topology_key");
    let socks: Vec<PathBuf> = (1..=3).map(|i| c.node(&fe(i)).debug_socket.clone()).collect();
    let target = &socks[0];
    let members_before: Vec<Vec<Value>> = socks.iter().map(|s| members(s)).collect();
    let v1 = topology_v1(&c);

    let foreign_dir = dir.join("foreign");
    let out = cli([
        OsStr::new("topology"),
        OsStr::new("keygen"),
        OsStr::new("--out"),
        foreign_dir.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(0), "keygen: {}", text(&out.stderr));
    let foreign_key = foreign_dir.join("topology-admin.key");

    let mut plus = v1.members.clone();
    plus.push(member("fe9.contoso.test"));
    let v2 = dir.join("v2.toml");
    write_topology(&v2, &Topology::new(2, plus).expect("v2"));

    let mut changed = v1.members.clone();
    changed[2].client_addr = Some(free_addr());
    let same_version = dir.join("v1-changed.toml");
    write_topology(&same_version, &Topology::new(1, changed).expect("v1 changed"));

    let v0 = dir.join("v0.toml");
    std::fs::write(&v0, v1.to_toml_string().replacen("version = 1", "version = 0", 1)).expect("write v0");
    assert!(std::fs::read_to_string(&v0).expect("v0").starts_with("version = 0\n"));

    // Well-formed TOML, version 2, but fe1 listed twice.
    let duplicate = dir.join("v2-duplicate.toml");
    let mut dup = Topology::new(2, v1.members.clone()).expect("v2").to_toml_string();
    let first = &v1.members[0];
    dup += &format!(
        "\n[[member]]\nfqdn = \"{}\"\nrole = \"front-end\"\nmesh_addr = \"{}\"\nclient_addr = \"{}\"\n",
        first.fqdn,
        free_addr(),
        free_addr()
    );
    std::fs::write(&duplicate, dup).expect("write duplicate");

    let cases: [(&str, &Path, &Path); 4] = [
        ("bad-signature", &v2, &foreign_key),
        ("stale-version", &same_version, &key),
        ("invalid", &v0, &key),
        ("invalid", &duplicate, &key),
    ];
    for (i, (reason, file, signing_key)) in cases.into_iter().enumerate() {
        let out = publish(file, signing_key, target);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{reason} ({}): stdout {:?} stderr {stderr:?}",
            file.display(),
            text(&out.stdout)
        );
        assert!(stderr.contains(&format!("error: {reason}: ")), "{reason}: {stderr}");

        for (s, before) in socks.iter().zip(&members_before) {
            assert_eq!(topology_version(s), 1, "{reason}: {}", s.display());
            assert_eq!(&members(s), before, "{reason}: members changed on {}", s.display());
        }
        let t = ctl_json(target, "topology");
        assert_eq!(t["version"], 1, "{t}");
        assert_eq!(t["history"], serde_json::json!([1]), "{t}");
        let refusals = t["refusals"].as_array().expect("refusals array");
        assert_eq!(refusals.len(), i + 1, "{reason}: {refusals:#?}");
        let newest = refusals.last().expect("a refusal");
        assert_eq!(newest["reason"], reason, "{newest}");
        assert_eq!(newest["from"], "publish", "{newest}");
    }
    // A refused document goes nowhere: the other nodes saw nothing.
    for s in &socks[1..] {
        let t = debug(s, "topology");
        assert_eq!(t["refusals"], serde_json::json!([]), "{}: {t}", s.display());
        assert_eq!(t["version"], 1);
    }
    for s in &socks {
        assert_links_all_up(s, 2);
    }
}

#[test]
fn restart_with_peers_down_keeps_the_trusted_set() {
    let mut c = cluster3();
    let dir = scratch(&c);
    let key = cluster_path(&c, "topology_key");
    let fe1 = c.node(&fe(1)).clone();
    let fe9 = "fe9.contoso.test";

    let v1 = topology_v1(&c);
    let mut plus = v1.members.clone();
    plus.push(member(fe9));
    let v2 = dir.join("v2.toml");
    write_topology(&v2, &Topology::new(2, plus).expect("v2"));
    // Published to fe2: fe1 gets it by replication and commits it to its store.
    assert_published(&publish(&v2, &key, &c.node(&fe(2)).debug_socket), 2);
    eventually(Duration::from_secs(2), "fe1 at topology v2", || {
        let t = debug(&fe1.debug_socket, "topology");
        (t["version"] == 2 && t["history"] == serde_json::json!([1, 2])).then_some(())
    });

    // Stop everything.
    let out = cli([
        OsStr::new("cluster"),
        OsStr::new("down"),
        OsStr::new("--dir"),
        c.dir.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(0), "cluster down: {}", text(&out.stderr));
    assert!(
        c.launcher.wait_exit(Duration::from_secs(10)).is_some(),
        "launcher still running"
    );
    for n in &c.info.nodes {
        assert!(
            poll_until(Duration::from_secs(5), POLL, || (!pid_alive(n.pid)).then_some(())).is_some(),
            "{} (pid {}) still running after cluster down",
            n.fqdn,
            n.pid
        );
    }

    let original = std::fs::read_to_string(&fe1.config).expect("read fe1 node.toml");
    assert!(original.lines().any(|l| l.starts_with("topology = ")), "{original}");
    let without: String = original
        .lines()
        .filter(|l| !l.starts_with("topology = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let ca = c.info.ca.clone();
    let stranger = Pki::existing(&c.info.ca_dir, &ca, &dir).issue(&IssueOptions {
        ips: vec!["127.0.0.1".parse().expect("ip")],
        ..IssueOptions::new("stranger.contoso.test")
    });

    // Without a topology file (only the store can provide it), then with the
    // topology line pointing at the v1 file: both must come up with v2.
    for (variant, config_text) in [("no topology line", without), ("topology = v1 file", original)] {
        std::fs::write(&fe1.config, &config_text).expect("write fe1 node.toml");
        let log = dir.join(format!("fe1-{}.log", c.extra.len()));
        start_node(&mut c, "fe1 (alone)", &fe1.config, &fe1.debug_socket, &log);
        let st = status(&fe1.debug_socket);
        assert_eq!(st["topology_version"], 2, "{variant}: {st}");
        assert_eq!(st["links_up"], 0, "{variant}: every peer is down: {st}");
        let names = member_names(&fe1.debug_socket);
        assert_eq!(names, [fe(1), fe(2), fe(3), fe9.to_owned()], "{variant}");
        let t = debug(&fe1.debug_socket, "topology");
        assert_eq!(t["signed"], true, "{variant}: {t}");
        assert_eq!(t["dynamic"], true, "{variant}: {t}");

        // A valid certificate from the cluster CA whose name is not a member.
        let before = rejections(&fe1.debug_socket).len();
        let config = client_config(&ca, Some(&stranger));
        let end = block_on(async {
            match tls_connect(fe1.mesh(), &fe(1), config).await {
                Ok(mut tls) => {
                    let _ = send(&mut tls, &hello_frame("stranger.contoso.test")).await;
                    read_end(&mut tls, Duration::from_secs(2)).await
                }
                Err(e) => ReadEnd::Error(format!("handshake: {e}")),
            }
        });
        assert!(end.closed(), "{variant}: the stranger was not refused: {end:?}");
        let r = wait_rejection(&fe1.debug_socket, before, Duration::from_secs(3), "stranger", |r| {
            r["presented_name"] == "stranger.contoso.test"
        });
        assert_eq!(r["reason"], "not-in-topology", "{variant}: {r}");
        assert_eq!(r["direction"], "inbound", "{variant}: {r}");

        c.extra.pop().expect("the fe1 guard").kill();
    }
}

#[test]
fn revoking_a_node_evicts_it() {
    let c = cluster3();
    let (s1, s2, s3) = (
        c.node(&fe(1)).debug_socket.clone(),
        c.node(&fe(2)).debug_socket.clone(),
        c.node(&fe(3)).debug_socket.clone(),
    );
    let fe2 = fe(2);
    let fe2_cert = NodeConfig::load(&c.node(&fe2).config)
        .expect("load fe2 node.toml")
        .tls
        .cert;
    let serial = serial_of_pem_file(&fe2_cert);
    assert_eq!(c.link(&fe(1), &fe2)["cert_serial"], serial.as_str());
    let before1 = rejections(&s1).len();
    let before3 = rejections(&s3).len();

    let out = cli([
        OsStr::new("pki"),
        OsStr::new("revoke"),
        OsStr::new("--ca"),
        c.info.ca_dir.as_os_str(),
        OsStr::new("--serial"),
        OsStr::new(&serial),
    ]);
    assert_eq!(out.status.code(), Some(0), "revoke: {}", text(&out.stderr));
    let out = cli([
        OsStr::new("pki"),
        OsStr::new("crl"),
        OsStr::new("--ca"),
        c.info.ca_dir.as_os_str(),
        OsStr::new("--out"),
        c.info.crl.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(0), "crl: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("with 1 revoked certificate"),
        "{}",
        text(&out.stdout)
    );

    let report = ctl_json(&s1, "reload");
    assert_eq!(report["crls"], 1, "{report}");
    assert_eq!(report["links_rechecked"], 2, "{report}");
    let fe3_pid = c.node(&fe(3)).pid;
    assert!(pid_alive(fe3_pid), "fe3 is not running");
    kill(Pid::from_raw(fe3_pid), Signal::SIGHUP).expect("SIGHUP fe3");
    let reloaded = Instant::now();

    eventually(Duration::from_secs(1), "fe1's and fe3's links to fe2 revoked", || {
        (c.link(&fe(1), &fe2)["state"] == "revoked" && c.link(&fe(3), &fe2)["state"] == "revoked").then_some(())
    });
    let left = Duration::from_secs(3).saturating_sub(reloaded.elapsed());
    for (socket, before, directions) in [
        (&s1, before1, ["outbound", "recheck"]),
        (&s3, before3, ["inbound", "recheck"]),
    ] {
        let r = wait_rejection(socket, before, left, "revoked", |r| r["reason"] == "revoked");
        assert_eq!(r["presented_name"], fe2.as_str(), "{r}");
        let dir = r["direction"].as_str().unwrap_or_default();
        assert!(
            directions.contains(&dir),
            "{}: direction {dir:?} not in {directions:?}: {r}",
            socket.display()
        );
    }

    // Redials do not bring it back.
    std::thread::sleep(Duration::from_secs(2));
    for who in [fe(1), fe(3)] {
        let row = c.link(&who, &fe2);
        assert_eq!(row["state"], "revoked", "{who}: {row}");
    }
    assert_eq!(c.link(&fe(1), &fe(3))["state"], "up");
    assert_eq!(status(&s2)["links_up"], 0, "fe2 is evicted by both peers");

    let out = cli([
        OsStr::new("ctl"),
        OsStr::new("--socket"),
        s1.as_os_str(),
        OsStr::new("check"),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "check: {stdout} {}", text(&out.stderr));
    assert!(stdout.contains("peer fe2.contoso.test is revoked"), "{stdout}");
}

#[test]
fn rotating_a_certificate_keeps_links_up() {
    let c = cluster3();
    let dir = scratch(&c);
    let fe1 = c.node(&fe(1)).clone();
    let peers = [fe(2), fe(3)];

    let before = assert_links_all_up(&fe1.debug_socket, 2);
    let restarts_of = |rows: &[Value], peer: &str| -> u64 {
        restarts(rows.iter().find(|r| r["peer"] == peer).expect("row for peer"))
    };
    let peer_view = |who: &str| restarts(&c.link(who, &fe(1)));
    let peer_before: Vec<u64> = peers.iter().map(|p| peer_view(p)).collect();
    let old_serial = presented_serial(fe1.mesh(), &fe(1), &c.info.ca);
    assert_eq!(c.link(&fe(2), &fe(1))["cert_serial"], old_serial.as_str());

    let tls = NodeConfig::load(&fe1.config).expect("load fe1 node.toml").tls;
    let new = Pki::existing(&c.info.ca_dir, &c.info.ca, &dir).issue(&IssueOptions {
        ips: vec!["127.0.0.1".parse().expect("ip")],
        ..IssueOptions::new(&fe(1))
    });
    assert_ne!(new.serial, old_serial);
    std::fs::copy(&new.key_path, &tls.key).expect("copy key");
    std::fs::copy(&new.cert_path, &tls.cert).expect("copy cert");

    let report = ctl_json(&fe1.debug_socket, "reload");
    assert_eq!(report["cert_serial"], new.serial.as_str(), "{report}");

    // For 2 s nothing moves: links up, no restarts, on fe1 and at its peers.
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        let rows = assert_links_all_up(&fe1.debug_socket, 2);
        for p in &peers {
            assert_eq!(
                restarts_of(&rows, p),
                restarts_of(&before, p),
                "fe1's link to {p} restarted"
            );
        }
        for (p, was) in peers.iter().zip(&peer_before) {
            let row = c.link(p, &fe(1));
            assert_eq!(row["state"], "up", "{p}: {row}");
            assert_eq!(restarts(&row), *was, "{p}'s link to fe1 restarted: {row}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // The next handshake presents the new certificate.
    assert_eq!(presented_serial(fe1.mesh(), &fe(1), &c.info.ca), new.serial);
}

#[test]
fn reloading_200_times_does_not_grow_memory() {
    let c = cluster3();
    let fe1 = c.node(&fe(1)).clone();
    let reload = || {
        let r = debug(&fe1.debug_socket, "reload");
        assert_eq!(r["links_rechecked"], 2, "{r}");
    };
    for _ in 0..20 {
        reload();
    }
    let warm = vm_rss_kib(fe1.pid);
    for _ in 0..200 {
        reload();
    }
    let after = vm_rss_kib(fe1.pid);
    // Bound: 8 MiB over 200 reloads. One reload builds a few rustls configs
    // (a few KiB each); a leak of the old material per reload (certificates,
    // CA store, CRLs, configs) would show as tens of KiB per reload, while
    // allocator noise stays well under this.
    const MAX_GROWTH_KIB: u64 = 8 * 1024;
    assert!(
        after <= warm + MAX_GROWTH_KIB,
        "VmRSS grew from {warm} KiB to {after} KiB over 200 reloads (bound {MAX_GROWTH_KIB} KiB)"
    );
    eprintln!("fe1 VmRSS: {warm} KiB after warm-up, {after} KiB after 200 reloads");
    assert_links_all_up(&fe1.debug_socket, 2);
    assert_eq!(status(&fe1.debug_socket)["links_up"], 2);
}

/// Replacing the CA bundle with another CA (which also re-issued fe1's own
/// certificate) and reloading fe1: its live links to fe2 and fe3, whose
/// certificates chain to the old CA, close at once in state `untrusted`
/// (distinct from `down` and `revoked`), recorded as `unknown-ca` rechecks.
#[test]
fn a_new_ca_bundle_distrusts_peers_of_the_old_ca() {
    let c = cluster3();
    let s1 = c.node(&fe(1)).debug_socket.clone();
    let fe1_tls = NodeConfig::load(&c.node(&fe(1)).config)
        .expect("load fe1 node.toml")
        .tls;
    let before = rejections(&s1).len();

    // A second CA issues fe1 a certificate; the shared bundle becomes that CA only.
    let ca2 = scratch(&c).join("ca2");
    pki::init_ca(&ca2, "Other Root CA").expect("init ca2");
    let mut opts = IssueOptions::new(&fe(1));
    opts.ips = vec!["127.0.0.1".parse().unwrap()];
    let issued = pki::issue(&ca2, &opts, &scratch(&c).join("fe1-ca2")).expect("issue from ca2");
    std::fs::copy(&issued.cert_path, &fe1_tls.cert).expect("install cert");
    std::fs::copy(&issued.key_path, &fe1_tls.key).expect("install key");
    std::fs::copy(ca2.join("ca.pem"), &fe1_tls.ca).expect("install ca bundle");

    let report = ctl_json(&s1, "reload");
    assert_eq!(report["cert_serial"], issued.serial.as_str(), "{report}");

    eventually(Duration::from_secs(1), "fe1's links untrusted", || {
        (c.link(&fe(1), &fe(2))["state"] == "untrusted" && c.link(&fe(1), &fe(3))["state"] == "untrusted").then_some(())
    });
    let new: Vec<Value> = rejections(&s1).into_iter().skip(before).collect();
    for peer in [fe(2), fe(3)] {
        assert!(
            new.iter().any(|r| r["reason"] == "unknown-ca"
                && r["direction"] == "recheck"
                && r["presented_name"] == peer.as_str()),
            "no unknown-ca recheck for {peer} in {new:?}"
        );
    }
    // It stays so: redials to peers of the old CA keep failing.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.link(&fe(1), &fe(2))["state"], "untrusted");
    assert_eq!(c.link(&fe(1), &fe(3))["state"], "untrusted");
    assert_eq!(status(&s1)["links_up"], 0);
}
