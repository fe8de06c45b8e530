//! Interop: Debian's Kamailio (with kamailio-tls-modules) as the edge of a
//! partner organisation, `kamailio.test`, with its own CA and
//! `verify_certificate` / `require_certificate` on both TLS sides, and a UA
//! registered behind it; contoso.test is a local cluster with `--edge`.
//! MESSAGE both ways. Kamailio is started and stopped by PID.
//!
//! `scripts/test` installs Kamailio when it is missing; under `CI` a missing
//! Kamailio fails the test instead of skipping it.

#![allow(dead_code)]

mod common;
mod federation_org;
mod sip_ua;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{debug, poll_until, tail, ProcGuard};
use federation_org::{issue, message, republish, Org};
use sip_ua::{text, Ua};
use sipmesh_actors::sip::HeaderName;

const KAMAILIO: &str = "/usr/sbin/kamailio";
const TLS_MODULE: &str = "/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so";

/// Whether Kamailio and its TLS module are installed (panics under CI when not).
fn kamailio_present() -> bool {
    let present = Path::new(KAMAILIO).exists() && Path::new(TLS_MODULE).exists();
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "kamailio and kamailio-tls-modules are required under CI (scripts/test installs them)"
        );
        eprintln!("skipping: kamailio or kamailio-tls-modules not installed (scripts/test installs them)");
    }
    present
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The generated Kamailio configuration: TLS on `port`, registrar for
/// kamailio.test, contoso.test relayed to `contoso_edge` over TLS.
fn kamailio_cfg(port: u16, tls_cfg: &Path, contoso_edge: std::net::SocketAddr) -> String {
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=2
tcp_children=2
disable_tcp=no
enable_tls=yes
auto_aliases=no
listen=tls:127.0.0.1:{port}
alias="kamailio.test"
tcp_connection_lifetime=3600
tcp_conn_wq_max=1048576

loadpath "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tls.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"

modparam("tls", "config", "{tls}")
modparam("usrloc", "db_mode", 0)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{ t_relay(); }}
            exit;
        }}
        sl_send_reply("404", "Not Here");
        exit;
    }}
    if (is_method("REGISTER")) {{
        save("location");
        exit;
    }}
    if ($rd == "kamailio.test") {{
        if (!lookup("location")) {{
            sl_send_reply("404", "Not Found");
            exit;
        }}
        t_relay();
        exit;
    }}
    if ($rd == "contoso.test") {{
        $du = "sip:{contoso_edge};transport=tls";
        t_relay();
        exit;
    }}
    sl_send_reply("403", "Forbidden");
}}
"#,
        tls = tls_cfg.display()
    )
}

#[tokio::test]
async fn kamailio_as_a_partner_edge_messages_both_ways() {
    if !kamailio_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let org = Org::up(tmp.path(), "contoso.test");
    let contoso_edge: std::net::SocketAddr = org.info["edge"]["federation_addr"].as_str().unwrap().parse().unwrap();
    let contoso_fed_ca = PathBuf::from(org.info["edge"]["federation_ca"].as_str().unwrap());

    // Kamailio's own CA, its edge certificate and a certificate for bob's phone.
    let kca = tmp.path().join("kamailio-ca");
    sipmesh::pki::init_ca(&kca, "Kamailio Partner Root CA").unwrap();
    let edge = issue(&kca, "sip.kamailio.test", &tmp.path().join("kamailio-edge"));
    let phone = issue(&kca, "bob.kamailio.test", &tmp.path().join("kamailio-phone"));
    let kca_pem = std::fs::read_to_string(kca.join("ca.pem")).unwrap();
    // Kamailio trusts contoso's external CA (and its own, for the phone).
    let bundle = tmp.path().join("kamailio-trust.pem");
    std::fs::write(
        &bundle,
        format!("{}{}", std::fs::read_to_string(&contoso_fed_ca).unwrap(), kca_pem),
    )
    .unwrap();
    let tls_cfg = tmp.path().join("tls.cfg");
    let side = |name: &str| {
        format!(
            "[{name}:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\nprivate_key = {}\ncertificate = {}\nca_list = {}\n\n",
            edge.key_path.display(),
            edge.cert_path.display(),
            bundle.display()
        )
    };
    std::fs::write(&tls_cfg, side("server") + &side("client")).unwrap();
    let port = free_port();
    let cfg = tmp.path().join("kamailio.cfg");
    std::fs::write(&cfg, kamailio_cfg(port, &tls_cfg, contoso_edge)).unwrap();
    let run_dir = tmp.path().join("kamailio-run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut cmd = Command::new(KAMAILIO);
    cmd.args(["-DD", "-E", "-m", "64", "-M", "8", "-f"])
        .arg(&cfg)
        .arg("-Y")
        .arg(&run_dir)
        .arg("-P")
        .arg(run_dir.join("kamailio.pid"))
        .arg("-w")
        .arg(&run_dir);
    let klog = tmp.path().join("kamailio.log");
    let mut kam = ProcGuard::spawn("kamailio", cmd, &klog);
    let kaddr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        if let Some(status) = kam.try_wait() {
            panic!("kamailio exited ({status}):\n{}", tail(&klog, 60));
        }
        std::net::TcpStream::connect(kaddr).ok().map(|_| ())
    })
    .unwrap_or_else(|| panic!("kamailio never listened:\n{}", tail(&klog, 60)));

    republish(&org, |t| {
        t.federation.partners.push(sipmesh_state::Partner {
            domain: "kamailio.test".into(),
            mode: sipmesh_state::PartnerMode::AllowedServer,
            edge: Some(sipmesh_state::Fqdn::new("sip.kamailio.test").unwrap()),
            address: Some(kaddr.to_string()),
            ca_pem: kca_pem,
            crl_pem: None,
            max_rate: None,
        })
    });

    // bob's phone behind Kamailio (TLS with its certificate), registered there.
    let mut bob = Ua::connect_with_cert(kaddr, &kca.join("ca.pem"), "bob", &phone)
        .await
        .in_domain("kamailio.test");
    let reg = bob.register(600).await;
    assert_eq!(reg.status(), Some(200), "{}\n{}", text(&reg), tail(&klog, 40));
    // alice on contoso's front-end.
    let mut alice = org.registered("alice").await;

    // contoso -> Kamailio: our edge dials it, checks sip.kamailio.test.
    let (got, fin) = message(&mut alice, &mut bob, b"hello kamailio").await;
    assert_eq!(
        fin.status(),
        Some(200),
        "{}\nkamailio:\n{}",
        text(&fin),
        tail(&klog, 40)
    );
    assert_eq!(&got.body[..], b"hello kamailio");
    assert!(
        !text(&got).contains("fe1.contoso.test") && !text(&got).contains("edge1.contoso.test"),
        "{}",
        text(&got)
    );
    // Kamailio's Via on top of contoso's one: our edge's, by its public name.
    let vias: Vec<&str> = got.headers_named(HeaderName::Via).map(|h| h.value_str()).collect();
    assert_eq!(vias.len(), 2, "{}", text(&got));
    assert!(vias[1].starts_with("SIP/2.0/TLS sip.contoso.test:"), "{}", text(&got));
    // Kamailio -> contoso: Kamailio dials our federation listener with its certificate.
    let (back, fin) = message(&mut bob, &mut alice, b"hello contoso").await;
    assert_eq!(
        fin.status(),
        Some(200),
        "{}\nkamailio:\n{}",
        text(&fin),
        tail(&klog, 40)
    );
    assert_eq!(&back.body[..], b"hello contoso");
    let marks: Vec<&str> = back
        .headers
        .iter()
        .filter(|h| h.raw_name.eq_ignore_ascii_case(b"P-Sipmesh-Partner"))
        .map(|h| h.value_str())
        .collect();
    assert_eq!(marks, vec!["kamailio.test"]);
    let edge_socket = PathBuf::from(org.node("edge1.")["debug_socket"].as_str().unwrap());
    let row = debug(&edge_socket, "federation")["partners"][0].clone();
    assert_eq!(row["domain"], "kamailio.test");
    assert_eq!(row["state"], "up", "{row}");
    assert_eq!(row["requests_in"], 1, "{row}");
    assert_eq!(row["requests_out"], 1, "{row}");
    kam.kill();
}
