//! `tls.keylog` (here through `cluster up --keylog`): Debian's `tshark`
//! decrypts, with the nodes' key logs, a MESSAGE captured on the client port
//! and on the mesh.

mod common;
mod sip_ua;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{poll_until, tail, ProcGuard};

const TSHARK: &str = "/usr/bin/tshark";

/// The decrypted bytes of every TLS stream in `pcap`, using `keylog`.
fn decrypted_streams(pcap: &Path, keylog: &Path) -> Vec<Vec<u8>> {
    let out = Command::new(TSHARK)
        .arg("-r")
        .arg(pcap)
        .args(["-T", "fields", "-e", "tcp.stream"])
        .output()
        .expect("tshark");
    let mut streams: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    streams.sort_unstable();
    streams.dedup();
    let mut all = Vec::new();
    for s in streams {
        let out = Command::new(TSHARK)
            .arg("-r")
            .arg(pcap)
            .arg("-o")
            .arg(format!("tls.keylog_file:{}", keylog.display()))
            .args(["-q", "-z", &format!("follow,tls,raw,{s}")])
            .output()
            .expect("tshark follow");
        // Lines of hex after the header; a leading tab marks the other direction.
        let mut bytes = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let hex = line.trim();
            if hex.len() % 2 == 0 && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                for i in (0..hex.len()).step_by(2) {
                    bytes.push(u8::from_str_radix(&hex[i..i + 2], 16).unwrap());
                }
            }
        }
        all.push(bytes);
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn tshark_decrypts_client_and_mesh_traffic_with_the_key_logs() {
    if !Path::new(TSHARK).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "tshark is required under CI (scripts/test installs it)"
        );
        eprintln!("skipping: tshark is not installed (scripts/test installs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pcap = tmp.path().join("capture.pcapng");
    // Capture every loopback TCP packet, bounded in time and size, from
    // before the cluster starts (the handshakes carry the client randoms).
    let mut cmd = Command::new(TSHARK);
    cmd.args([
        "-i",
        "lo",
        "-f",
        "tcp",
        "-a",
        "duration:60",
        "-a",
        "filesize:65536",
        "-w",
    ])
    .arg(&pcap);
    let cap_log = tmp.path().join("tshark.log");
    let mut capture = ProcGuard::spawn("tshark", cmd, &cap_log);
    poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        std::fs::read_to_string(&cap_log)
            .ok()
            .filter(|l| l.contains("Capturing on"))
            .map(|_| ())
    })
    .unwrap_or_else(|| panic!("tshark did not start:\n{}", tail(&cap_log, 20)));

    let t1 = sip_ua::T1_MS.to_string();
    let cluster = common::Cluster::up_with_args(2, 200, 1000, &["--t1-ms", &t1, "--keylog"], &[]);
    let mut alice = sip_ua::registered(&cluster, "alice", 1).await;
    let mut bob = sip_ua::registered(&cluster, "bob", 2).await;
    let body = b"decrypt me, wireshark";
    let sent = alice
        .request(
            "MESSAGE",
            &sip_ua::aor("bob"),
            &["Content-Type: text/plain".into()],
            body,
        )
        .await;
    let got = bob.recv_request_method("MESSAGE", Duration::from_secs(5)).await;
    bob.respond(&got, 200, "OK", &[], b"").await;
    let (_, fin) = alice.final_response(&sent, Duration::from_secs(5)).await;
    assert_eq!(fin.status(), Some(200));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(capture.pid()),
        nix::sys::signal::Signal::SIGINT,
    );
    capture.wait_exit(Duration::from_secs(10));

    // One key log holding every node's secrets.
    let mut keys = String::new();
    for n in ["fe1", "fe2"] {
        let log = cluster.dir.join(n).join("tls-keys.log");
        let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        assert!(
            text.lines().any(|l| l.starts_with("CLIENT_TRAFFIC_SECRET_0 ")),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
        keys += &text;
    }
    let keylog = tmp.path().join("all-keys.log");
    std::fs::write(&keylog, keys).unwrap();
    let streams = decrypted_streams(&pcap, &keylog);
    let with_message: Vec<&Vec<u8>> = streams.iter().filter(|s| contains(s, b"MESSAGE sip:bob@")).collect();
    // The client port (alice -> fe1), the mesh (fe1 -> fe2) and the client
    // port again (fe2 -> bob): three decrypted streams carry the MESSAGE.
    let sizes: Vec<(usize, bool)> = streams
        .iter()
        .map(|s| (s.len(), contains(s, b"MESSAGE sip:bob@")))
        .collect();
    assert!(
        with_message.len() >= 3,
        "streams (decrypted bytes, has the MESSAGE): {sizes:?}"
    );
    assert!(with_message.iter().all(|s| contains(s, body)));
    // Without the key log nothing is readable.
    let empty = tmp.path().join("no-keys.log");
    std::fs::write(&empty, "").unwrap();
    let blind = decrypted_streams(&pcap, &empty);
    assert!(!blind.iter().any(|s| contains(s, b"MESSAGE sip:bob@")));
}
