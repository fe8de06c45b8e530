//! What the federation tests share (`tests/federation.rs`,
//! `tests/federation_kamailio.rs`): an organisation started with `cluster up
//! --nodes 1 --edge`, its users, topology changes published to it, and a
//! MESSAGE exchange.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::common::{debug, poll_until, tail, try_debug, ProcGuard, BIN};
use super::sip_ua::{text, Ua};
use serde_json::Value;
use sipmesh::pki::{IssueOptions, Issued};
use sipmesh_actors::sip::SipMessage;

/// Deadline of one SIP exchange.
pub const WAIT: Duration = Duration::from_secs(5);
/// Deadline for a cluster to come up or a topology to replicate.
pub const UP: Duration = Duration::from_secs(60);

/// One organisation: `cluster up --nodes 1 --edge --domain DOMAIN`.
pub struct Org {
    pub domain: String,
    pub dir: PathBuf,
    pub info: Value,
    /// The `cluster up` process when this test started it.
    pub _launcher: Option<ProcGuard>,
}

impl Org {
    pub fn up(parent: &Path, domain: &str) -> Org {
        Org::up_with(parent, domain, &[])
    }

    /// [`Org::up`] with more `cluster up` arguments.
    pub fn up_with(parent: &Path, domain: &str, extra: &[&str]) -> Org {
        let dir = parent.join(domain);
        let log = parent.join(format!("{domain}-launcher.log"));
        let mut cmd = Command::new(BIN);
        cmd.args(["cluster", "up", "--nodes", "1", "--edge", "--domain", domain, "--dir"])
            .arg(&dir)
            .args(["--heartbeat-ms", "200", "--backoff-cap-ms", "1000", "--t1-ms", "50"])
            .args(extra);
        let mut launcher = ProcGuard::spawn(domain, cmd, &log);
        let info = poll_until(UP, Duration::from_millis(50), || {
            if let Some(status) = launcher.try_wait() {
                panic!("cluster up {domain} exited ({status}):\n{}", tail(&log, 60));
            }
            let v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cluster.json")).ok()?).ok()?;
            (v["nodes"]
                .as_array()?
                .iter()
                .all(|n| n["pid"].as_u64().unwrap_or(0) > 0))
            .then_some(v)
        })
        .unwrap_or_else(|| panic!("no cluster.json for {domain}:\n{}", tail(&log, 60)));
        let org = Org {
            domain: domain.to_owned(),
            dir,
            info,
            _launcher: Some(launcher),
        };
        poll_until(UP, Duration::from_millis(50), || {
            org.sockets()
                .iter()
                .all(|s| try_debug(s, "status").is_ok_and(|v| v["links_up"] == 1))
                .then_some(())
        })
        .unwrap_or_else(|| panic!("{domain}: front-end and edge never linked:\n{}", tail(&log, 60)));
        org
    }

    pub fn node(&self, fqdn_prefix: &str) -> &Value {
        self.info["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["fqdn"].as_str().unwrap().starts_with(fqdn_prefix))
            .unwrap_or_else(|| panic!("{}: no node {fqdn_prefix}", self.domain))
    }

    pub fn sockets(&self) -> Vec<PathBuf> {
        self.info["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| PathBuf::from(n["debug_socket"].as_str().unwrap()))
            .collect()
    }

    pub fn edge_socket(&self) -> PathBuf {
        PathBuf::from(self.node("edge1.")["debug_socket"].as_str().unwrap())
    }

    pub fn federation_addr(&self) -> std::net::SocketAddr {
        self.info["edge"]["federation_addr"].as_str().unwrap().parse().unwrap()
    }

    pub fn federation_ca(&self) -> PathBuf {
        PathBuf::from(self.info["edge"]["federation_ca"].as_str().unwrap())
    }

    pub fn federation_ca_dir(&self) -> PathBuf {
        self.federation_ca().parent().unwrap().to_owned()
    }

    pub fn password(&self, user: &str) -> String {
        let aor = format!("sip:{user}@{}", self.domain);
        self.info["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["aor"] == aor.as_str())
            .and_then(|u| u["password"].as_str())
            .unwrap()
            .to_owned()
    }

    pub async fn registered(&self, user: &str) -> Ua {
        let fe = self.node("fe1.");
        let addr = fe["client_addr"].as_str().unwrap().parse().unwrap();
        let ca = PathBuf::from(self.info["ca"].as_str().unwrap());
        let mut ua = Ua::connect(addr, &ca, user, &self.password(user))
            .await
            .in_domain(&self.domain);
        let ok = ua.register(600).await;
        assert_eq!(ok.status(), Some(200), "{user}@{}: {}", self.domain, text(&ok));
        ua
    }

    pub fn federation(&self) -> Value {
        debug(&self.edge_socket(), "federation")
    }
}

/// A MESSAGE from `from` to `to_aor`; the request `to` received and the final response.
pub async fn message(from: &mut Ua, to: &mut Ua, body: &[u8]) -> (SipMessage, SipMessage) {
    let target = to.aor.clone();
    let sent = from
        .request("MESSAGE", &target, &["Content-Type: text/plain".into()], body)
        .await;
    let got = to.recv_request_method("MESSAGE", WAIT).await;
    to.respond(&got, 200, "OK", &[], b"").await;
    let (_, fin) = from.final_response(&sent, WAIT).await;
    (got, fin)
}

/// A certificate for `fqdn` (and 127.0.0.1) from the CA in `ca_dir`.
pub fn issue(ca_dir: &Path, fqdn: &str, out: &Path) -> Issued {
    let mut o = IssueOptions::new(fqdn);
    o.ips = vec!["127.0.0.1".parse().unwrap()];
    sipmesh::pki::issue(ca_dir, &o, out).unwrap()
}

/// Publish `org`'s topology changed by `change` (next version, signed with
/// its admin key) and wait until every node of `org` runs it.
pub fn republish(org: &Org, change: impl FnOnce(&mut sipmesh_state::Topology)) {
    republish_to(org, change, &org.sockets());
}

/// [`republish`], waiting only for the nodes behind `sockets`.
pub fn republish_to(org: &Org, change: impl FnOnce(&mut sipmesh_state::Topology), sockets: &[PathBuf]) {
    use sipmesh_state::{signed, AdminKey, Topology};
    let path = PathBuf::from(org.info["topology"].as_str().unwrap());
    let doc = std::fs::read_to_string(&path).unwrap();
    let mut t = Topology::from_toml_str(signed::unsigned_content(&doc)).unwrap();
    t.version += 1;
    change(&mut t);
    let key = AdminKey::load(Path::new(org.info["topology_key"].as_str().unwrap())).unwrap();
    let signed_doc = key.sign(&t.to_toml_string());
    let request = serde_json::json!({"cmd": "publish", "document": signed_doc}).to_string();
    let result = debug(&org.sockets()[0], &request);
    assert_eq!(result["applied"], true, "{result}");
    for s in sockets {
        poll_until(UP, Duration::from_millis(50), || {
            (debug(s, "topology")["version"] == t.version).then_some(())
        })
        .unwrap_or_else(|| panic!("v{} never reached {}", t.version, s.display()));
    }
}
