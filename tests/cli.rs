//! What an operator sees from the command line when input is wrong: exit
//! status 1 and a message naming the offending key, entry or value.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sipmesh");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run sipmesh")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const TOPOLOGY: &str = r#"version = 1

[[member]]
fqdn = "fe1.contoso.test"
role = "front-end"
mesh_addr = "127.0.0.1:5061"
client_addr = "127.0.0.1:5060"

[[member]]
fqdn = "fe2.contoso.test"
role = "frontend"
mesh_addr = "127.0.0.1:5071"
client_addr = "localhost:5070"

[[member]]
fqdn = "fe1.contoso.test"
role = "edge"
mesh_addr = "127.0.0.1:5081"
client_addr = "127.0.0.1:5080"
"#;

#[test]
fn topology_validate_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topology.toml");
    std::fs::write(&file, TOPOLOGY).unwrap();
    let out = run(&["topology", "validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("invalid topology: 3 problem(s):"), "{err}");
    assert!(
        err.contains(r#"member #2 (fe2.contoso.test): unknown role "frontend" (expected front-end, edge or director)"#),
        "{err}"
    );
    assert!(
        err.contains(r#"member #2 (fe2.contoso.test): client_addr "localhost:5070" is not an IP:port socket address"#),
        "{err}"
    );
    assert!(
        err.contains("member #3 (fe1.contoso.test): duplicate fqdn, also member #1"),
        "{err}"
    );

    let good = TOPOLOGY
        .replace("\"frontend\"", "\"front-end\"")
        .replace("localhost:5070", "127.0.0.1:5070")
        .replace(
            "fqdn = \"fe1.contoso.test\"\nrole = \"edge\"",
            "fqdn = \"edge1.contoso.test\"\nrole = \"edge\"",
        );
    std::fs::write(&file, good).unwrap();
    let out = run(&["topology", "validate", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{}: valid, version 1, 3 member(s)", file.display())
    );
}

fn node_toml(dir: &Path, extra: &str) -> std::path::PathBuf {
    let config = format!(
        "fqdn = \"fe1.contoso.test\"\ntopology = \"topology.toml\"\ndata_dir = \"data\"\n\
         debug_socket = \"debug.sock\"\n{extra}\n[tls]\ncert = \"c.pem\"\nkey = \"c.key\"\nca = \"ca.pem\"\n"
    );
    let path = dir.join("node.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn node_refuses_unknown_config_keys_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = node_toml(dir.path(), "heartbeat_ms = 5");
    let out = run(&["node", "run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("unknown field `heartbeat_ms`"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn node_refuses_an_invalid_topology_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("topology.toml"), TOPOLOGY).unwrap();
    let path = node_toml(dir.path(), "");
    let out = run(&["node", "run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: topology: invalid topology: 3 problem(s):"),
        "{err}"
    );
    assert!(
        err.contains("member #3 (fe1.contoso.test): duplicate fqdn, also member #1"),
        "{err}"
    );
    assert!(
        !dir.path().join("debug.sock").exists(),
        "no socket for a node that did not start"
    );
}

#[test]
fn bad_values_on_the_command_line_are_named() {
    let out = run(&["cluster", "up", "--nodes", "0", "--dir", "/nonexistent-sipmesh-test/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).trim(), "error: --nodes 0: must be between 1 and 64");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    assert!(run(&["pki", "init-ca", "--dir", ca.to_str().unwrap()]).status.success());
    let out = run(&["pki", "revoke", "--ca", ca.to_str().unwrap(), "--serial", "abcdef"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("abcdef"), "{}", stderr(&out));
    let out = run(&[
        "pki",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--fqdn",
        "not a name!",
        "--out",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a name!"), "{}", stderr(&out));
}

#[test]
fn node_refuses_badly_named_inherited_sockets() {
    // Checked before the config is read: no config file is needed.
    let node = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "run", "--config", "/nonexistent-sipmesh-test/node.toml"]);
        cmd.env_remove("LISTEN_PID").envs(env.iter().copied());
        cmd.output().expect("run sipmesh")
    };
    let out = node(&[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "sipmesh.socket")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        r#"error: LISTEN_FDNAMES="sipmesh.socket": unknown socket name "sipmesh.socket" (expected mesh, client, federation, metrics or http)"#
    );
    let out = node(&[("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "mesh")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        r#"error: LISTEN_FDS=2 but LISTEN_FDNAMES="mesh" names 1 socket(s)"#
    );
    // Sockets meant for another process are not ours: the node goes on to its config.
    let out = node(&[("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "mesh"), ("LISTEN_PID", "1")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: cannot read config"),
        "{}",
        stderr(&out)
    );
}
