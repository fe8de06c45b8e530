//! The hardened systemd unit in `deploy/`: `systemd-analyze verify` accepts
//! it, and `systemd-analyze security --offline` rates its exposure low.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sipmesh");

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    if !std::path::Path::new("/usr/bin/systemd-analyze").exists() {
        assert!(std::env::var_os("CI").is_none(), "systemd-analyze is required under CI");
        eprintln!("skipping: no systemd-analyze");
        return;
    }
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sipmesh.service")).unwrap();
    for key in [
        "User=sipmesh",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l == key), "missing {key}");
    }
    // verify checks that ExecStart exists: point it at the binary just built.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sipmesh.service");
    std::fs::write(&path, unit.replace("/usr/bin/sipmesh", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for sipmesh.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 2.0, "exposure {score} (systemd rates <= 2 as OK):\n{text}");
    // The binary the unit runs understands the unit's command line.
    let out = Command::new(BIN).args(["node", "run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--log-format") && help.contains("--config"), "{help}");
}
