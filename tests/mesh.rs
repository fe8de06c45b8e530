//! Mesh formation, node loss and restart, and cluster lifecycle, against real
//! node processes started with `sipmesh cluster up`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

#[test]
fn three_nodes_form_a_full_mesh() {
    let c = Cluster::up(3, 200, 1_000);
    // Secrets the launcher writes are owner-only: demo passwords, HA1 hashes, keys.
    for secret in ["cluster.json", "users.toml", "topology-admin.key", "ca/ca.key"] {
        let path = c.dir.join(secret);
        let mode = std::fs::metadata(&path).expect(secret).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} mode {mode:o}", path.display());
    }
    let names: Vec<String> = (1..=3).map(fe).collect();

    for me in &names {
        let socket = &c.node(me).debug_socket;
        let peers: Vec<&String> = names.iter().filter(|n| *n != me).collect();
        // RTT and counters appear after the first heartbeat round trip.
        let rows = eventually(
            Duration::from_secs(3),
            &format!("{me}: rtt and frames on both links"),
            || {
                let rows = links(socket);
                rows.iter()
                    .all(|l| {
                        l["rtt_ms"].as_f64().is_some_and(|r| r > 0.0)
                            && l["frames_in"].as_u64().is_some_and(|f| f > 0)
                            && l["frames_out"].as_u64().is_some_and(|f| f > 0)
                    })
                    .then_some(rows)
            },
        );
        let mut got: Vec<&str> = rows.iter().map(|l| l["peer"].as_str().expect("peer")).collect();
        got.sort();
        assert_eq!(
            got,
            peers.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "{me}: link peers"
        );
        for l in &rows {
            let peer = l["peer"].as_str().unwrap();
            assert_eq!(l["state"], "up", "{me} -> {peer}: {l}");
            assert_eq!(l["tls_version"], "TLSv1.3", "{me} -> {peer}: {l}");
            assert!(l["cert_not_after"].is_string(), "{me} -> {peer}: cert_not_after {l}");
            assert!(l["rtt_ms"].as_f64().unwrap() > 0.0, "{me} -> {peer}: {l}");
            // Lower FQDN dials.
            let want_dir = if me.as_str() < peer { "dial" } else { "accept" };
            assert_eq!(l["direction"], want_dir, "{me} -> {peer}: {l}");
        }

        let mode = std::fs::metadata(socket).expect("debug socket").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{me}: debug socket mode {mode:o}");

        let status = debug(socket, "status");
        assert_eq!(status["fqdn"], me.as_str(), "{status}");
        assert_eq!(status["links_up"], 2, "{me}: {status}");
        assert_eq!(status["links_total"], 2, "{me}: {status}");
        assert_eq!(status["topology_version"], 1, "{me}: {status}");

        let members = debug(socket, "members");
        let mut fqdns: Vec<&str> = members
            .as_array()
            .expect("members array")
            .iter()
            .map(|m| m["fqdn"].as_str().expect("member fqdn"))
            .collect();
        fqdns.sort();
        assert_eq!(
            fqdns,
            names.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "{me}: members"
        );
    }

    // Exactly one TCP connection per pair, opened by the lower FQDN.
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            let (na, nb) = (c.node(a), c.node(b));
            let (a_to_b, b_to_a) = established_between(na.pid, na.mesh().port(), nb.pid, nb.mesh().port());
            assert_eq!(
                (a_to_b, b_to_a),
                (1, 0),
                "established connections {a}->{b} and {b}->{a} (pids {} {})",
                na.pid,
                nb.pid
            );
        }
    }
}

#[test]
fn kill_and_restart_a_node() {
    const HEARTBEAT_MS: u64 = 200;
    const BACKOFF_CAP_MS: u64 = 1_000;
    let mut c = Cluster::up(3, HEARTBEAT_MS, BACKOFF_CAP_MS);
    let (fe1, fe2, fe3) = (fe(1), fe(2), fe(3));
    let before1 = restarts(&c.link(&fe1, &fe2));
    let before3 = restarts(&c.link(&fe3, &fe2));
    let fe2_info = c.node(&fe2).clone();

    kill(Pid::from_raw(fe2_info.pid), Signal::SIGKILL).expect("kill -9 fe2");
    let killed = Instant::now();
    // Three heartbeat intervals (600 ms) is the detection bound; +300 ms is
    // slack for our 10 ms polling, two debug round trips per poll and
    // scheduling on a shared 2-core machine.
    let detect = Duration::from_millis(3 * HEARTBEAT_MS + 300);
    let mut last: Vec<Value> = Vec::new();
    let down = poll_until(detect, Duration::from_millis(10), || {
        last = vec![c.link(&fe1, &fe2), c.link(&fe3, &fe2)];
        last.iter().all(|l| l["state"] == "down").then_some(())
    });
    assert!(
        down.is_some(),
        "fe1 and fe3 did not both report fe2 down within {detect:?} of kill -9: {last:?}"
    );
    eprintln!("fe2 seen down everywhere after {:?}", killed.elapsed());
    assert!(!pid_alive(fe2_info.pid), "fe2 pid {} still alive", fe2_info.pid);

    // Restart fe2 from its own config; the test owns this process.
    let mut cmd = Command::new(BIN);
    cmd.args(["node", "run", "--config"]).arg(&fe2_info.config);
    let restart_log = c.tmp.path().join("fe2-restart.log");
    c.extra.push(ProcGuard::spawn("fe2 (restarted)", cmd, &restart_log));
    let restarted = Instant::now();

    let up_deadline = Duration::from_millis(BACKOFF_CAP_MS + 1_000);
    let ends = [
        (&fe1, &fe2),
        (&fe2, &fe1),
        (&fe2, &fe3),
        (&fe3, &fe2),
        (&fe1, &fe3),
        (&fe3, &fe1),
    ];
    let mut seen: Vec<String> = Vec::new();
    let all_up = poll_until(up_deadline, Duration::from_millis(20), || {
        seen = ends
            .iter()
            .map(|(me, peer)| {
                let state = try_debug(&c.node(me).debug_socket, "links")
                    .ok()
                    .and_then(|v| {
                        v.as_array()
                            .and_then(|a| a.iter().find(|l| l["peer"] == peer.as_str()).cloned())
                    })
                    .map(|l| l["state"].as_str().unwrap_or("?").to_owned())
                    .unwrap_or_else(|| "no answer".into());
                format!("{me}->{peer}={state}")
            })
            .collect();
        seen.iter().all(|s| s.ends_with("=up")).then_some(())
    });
    assert!(
        all_up.is_some(),
        "not all 6 link ends up within {up_deadline:?} of restarting fe2: {seen:?}\nrestart log:\n{}",
        tail(&restart_log, 60)
    );
    eprintln!("all link ends up {:?} after restarting fe2", restarted.elapsed());

    let after1 = restarts(&c.link(&fe1, &fe2));
    let after3 = restarts(&c.link(&fe3, &fe2));
    assert!(
        after1 > before1,
        "fe1's restarts of its fe2 link: {before1} -> {after1}"
    );
    assert!(
        after3 > before3,
        "fe3's restarts of its fe2 link: {before3} -> {after3}"
    );
}

/// A frozen peer (SIGSTOP: no FIN, no RST) can only be noticed by the
/// heartbeat timeout; SIGCONT brings the mesh back.
#[test]
fn frozen_node_is_detected_by_heartbeat_timeout() {
    const HEARTBEAT_MS: u64 = 200;
    const BACKOFF_CAP_MS: u64 = 1_000;
    let c = Cluster::up(3, HEARTBEAT_MS, BACKOFF_CAP_MS);
    let (fe1, fe2, fe3) = (fe(1), fe(2), fe(3));
    let fe2_pid = Pid::from_raw(c.node(&fe2).pid);

    kill(fe2_pid, Signal::SIGSTOP).expect("SIGSTOP fe2");
    let stopped = Instant::now();
    // Timeout = 3 heartbeats of silence, checked once per heartbeat: down by
    // 4 heartbeats after the last frame; +300 ms slack for polling and
    // scheduling on a shared 2-core machine.
    let detect = Duration::from_millis(4 * HEARTBEAT_MS + 300);
    let mut first_down: Option<Duration> = None;
    let mut last: Vec<Value> = Vec::new();
    let down = poll_until(detect, Duration::from_millis(10), || {
        last = vec![c.link(&fe1, &fe2), c.link(&fe3, &fe2)];
        if first_down.is_none() && last.iter().any(|l| l["state"] == "down") {
            first_down = Some(stopped.elapsed());
        }
        last.iter().all(|l| l["state"] == "down").then_some(())
    });
    let _ = kill(fe2_pid, Signal::SIGCONT);
    assert!(
        down.is_some(),
        "frozen fe2 not reported down by fe1 and fe3 within {detect:?}: {last:?}"
    );
    // fe2 sent a frame at most one heartbeat before it froze, so nobody may
    // give up on it before 3 - 1 = 2 heartbeats of freeze.
    let first_down = first_down.expect("seen down");
    eprintln!(
        "frozen fe2 first seen down after {first_down:?}, everywhere after {:?}",
        stopped.elapsed()
    );
    assert!(
        first_down >= Duration::from_millis(2 * HEARTBEAT_MS),
        "fe2 declared down {first_down:?} after freezing: before the heartbeat timeout could expire"
    );

    let thawed = Instant::now();
    let up_deadline = Duration::from_millis(BACKOFF_CAP_MS + 1_000);
    let mut seen = String::new();
    let up = poll_until(up_deadline, Duration::from_millis(20), || {
        let statuses: Vec<(String, Option<u64>)> = [&fe1, &fe2, &fe3]
            .iter()
            .map(|n| {
                let up = try_debug(&c.node(n).debug_socket, "status")
                    .ok()
                    .and_then(|s| s["links_up"].as_u64());
                (n.to_string(), up)
            })
            .collect();
        seen = format!("{statuses:?}");
        statuses.iter().all(|(_, up)| *up == Some(2)).then_some(())
    });
    assert!(
        up.is_some(),
        "mesh not fully up within {up_deadline:?} of SIGCONT: {seen}"
    );
    eprintln!("mesh fully up {:?} after SIGCONT", thawed.elapsed());
}

#[test]
fn cluster_down_stops_everything() {
    let mut c = Cluster::up(3, 200, 1_000);
    assert_eq!(c.info.launcher_pid, c.launcher.pid(), "cluster.json launcher_pid");
    let pids: Vec<i32> = c.info.nodes.iter().map(|n| n.pid).collect();
    let sockets: Vec<_> = c.info.nodes.iter().map(|n| n.debug_socket.clone()).collect();

    let started = Instant::now();
    let mut down = Command::new(BIN);
    down.args(["cluster", "down", "--dir"]).arg(&c.dir);
    let down_log = c.tmp.path().join("down.log");
    let mut down = ProcGuard::spawn("cluster down", down, &down_log);
    let status = down
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("cluster down still running after 5 s:\n{}", tail(&down_log, 40)));
    assert!(status.success(), "cluster down: {status}\n{}", tail(&down_log, 40));

    let deadline = Duration::from_secs(5).saturating_sub(started.elapsed());
    let mut launcher_status = None;
    let mut left = String::new();
    let gone = poll_until(deadline, POLL, || {
        if launcher_status.is_none() {
            launcher_status = c.launcher.try_wait();
        }
        let alive: Vec<i32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        let present: Vec<_> = sockets.iter().filter(|s| s.exists()).collect();
        left = format!("launcher exited: {launcher_status:?}, live node pids: {alive:?}, sockets left: {present:?}");
        (launcher_status.is_some() && alive.is_empty() && present.is_empty()).then_some(())
    });
    assert!(gone.is_some(), "5 s after `cluster down`: {left}");
}

/// Each node's mesh, client, metrics and page ports are listening sockets that the
/// node holds as fds 3, 4, 5 and 6, named by socket activation, and the launcher holds
/// none of them: `cluster up` handed over the sockets it bound and wrote into
/// the topology instead of releasing the ports for the node to bind again.
fn assert_sockets_handed_over(info: &ClusterInfo, when: &str) {
    let rows = tcp_rows();
    let launcher = socket_inodes(info.launcher_pid);
    for n in &info.nodes {
        let environ = std::fs::read(format!("/proc/{}/environ", n.pid)).expect("node environ");
        let environ: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        for var in [&b"LISTEN_FDS=4"[..], b"LISTEN_FDNAMES=mesh:client:metrics:http"] {
            assert!(
                environ.contains(&var),
                "{when}: {} started without {}",
                n.fqdn,
                String::from_utf8_lossy(var)
            );
        }
        let metrics: std::net::SocketAddr = n
            .metrics_addr
            .as_deref()
            .unwrap_or_else(|| panic!("{when}: {} has no metrics_addr", n.fqdn))
            .parse()
            .expect("metrics_addr");
        let page: std::net::SocketAddr = n
            .admin_http
            .as_deref()
            .unwrap_or_else(|| panic!("{when}: {} has no admin_http", n.fqdn))
            .parse()
            .expect("admin_http");
        for (fd, what, addr) in [
            (3, "mesh", n.mesh()),
            (4, "client", n.client()),
            (5, "metrics", metrics),
            (6, "page", page),
        ] {
            let listening: Vec<u64> = rows
                .iter()
                .filter(|r| r.state == "0A" && r.local_port == addr.port())
                .map(|r| r.inode)
                .collect();
            assert_eq!(
                listening.len(),
                1,
                "{when}: {} {what} {addr}: LISTEN rows {listening:?}",
                n.fqdn
            );
            let held = std::fs::read_link(format!("/proc/{}/fd/{fd}", n.pid))
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_else(|e| format!("<{e}>"));
            assert_eq!(
                held,
                format!("socket:[{}]", listening[0]),
                "{when}: {} fd {fd} is not its {what} socket {addr}",
                n.fqdn
            );
            assert!(
                !launcher.contains(&listening[0]),
                "{when}: the launcher still holds {}'s {what} socket {addr}",
                n.fqdn
            );
        }
    }
}

#[test]
fn cluster_up_hands_its_sockets_to_the_nodes() {
    let mut c = Cluster::up(2, 200, 1_000);
    assert_sockets_handed_over(&c.info, "first start");
    let first = c.info.clone();

    // Stopped and started again on its directory, the cluster binds the same
    // addresses in the launcher (SO_REUSEADDR: mesh connections left TIME_WAIT
    // behind on those ports) and hands them over again.
    kill(Pid::from_raw(c.launcher.pid()), Signal::SIGTERM).expect("SIGTERM the launcher");
    let status = c
        .launcher
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("launcher still running 10 s after SIGTERM\n{}", c.logs()));
    assert!(status.success(), "launcher: {status}\n{}", c.logs());
    let mut again = Command::new(BIN);
    again
        .args(["cluster", "up", "--dir"])
        .arg(&c.dir)
        .args(["--heartbeat-ms", "200", "--backoff-cap-ms", "1000"]);
    let again_log = c.tmp.path().join("launcher-again.log");
    let relauncher = ProcGuard::spawn("cluster up again", again, &again_log);
    let pid = relauncher.pid();
    c.extra.push(relauncher);
    let json = c.dir.join("cluster.json");
    let info = poll_until(CLUSTER_UP_DEADLINE, POLL, || {
        let info: ClusterInfo = serde_json::from_str(&std::fs::read_to_string(&json).ok()?).ok()?;
        (info.launcher_pid == pid).then_some(info)
    })
    .unwrap_or_else(|| panic!("no cluster.json from the second launcher:\n{}", tail(&again_log, 40)));
    c.info = info;
    for (before, after) in first.nodes.iter().zip(&c.info.nodes) {
        assert_eq!(
            (&before.mesh_addr, &before.client_addr),
            (&after.mesh_addr, &after.client_addr),
            "{}: addresses after restart",
            after.fqdn
        );
    }
    c.wait_full_mesh(CLUSTER_UP_DEADLINE);
    assert_sockets_handed_over(&c.info, "restart");
}

#[test]
fn launcher_killed_takes_nodes_with_it() {
    let mut c = Cluster::up(3, 200, 1_000);
    let pids: Vec<i32> = c.info.nodes.iter().map(|n| n.pid).collect();
    c.launcher.kill(); // SIGKILL + reap
    let mut alive = Vec::new();
    let gone = poll_until(Duration::from_secs(3), POLL, || {
        alive = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        alive.is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "3 s after SIGKILL of the launcher, node pids still alive: {alive:?}"
    );
}

#[test]
fn log_level_changes_at_run_time() {
    let c = Cluster::up(2, 200, 1_000);
    let socket = c.node(&fe(1)).debug_socket.to_str().unwrap().to_owned();
    let ctl = |args: &[&str]| {
        Command::new(BIN)
            .args(["ctl", "--socket", &socket])
            .args(args)
            .output()
            .unwrap()
    };
    let out = ctl(&["log-level", "debug", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer, serde_json::json!({"level": "debug"}));
    // The node logs at debug now: kill fe2 and fe1 logs its failed redials.
    let fe2 = c.node(&fe(2)).pid;
    kill(Pid::from_raw(fe2), Signal::SIGKILL).unwrap();
    let log = c.node(&fe(1)).log.clone();
    eventually(Duration::from_secs(5), "a DEBUG line in fe1's log", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains(" DEBUG "))
            .map(|_| ())
    });
    let out = ctl(&["log-level", "nonsense=["]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: bad log filter \"nonsense=[\":"), "{err}");
}
