//! `sipmesh bench` end to end: a short relay run against the cluster it
//! starts itself must answer every transaction and report both nodes' CPU.
//! (Speed targets are checked by running the bench, never asserted here.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sipmesh");

#[test]
fn relay_bench_answers_every_transaction() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "relay",
            "--rate",
            "200",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--json",
        ])
        .output()
        .expect("run sipmesh bench");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["rate"], 200);
    assert_eq!(report["sent"], 200);
    assert_eq!(report["answered"], 200);
    assert_eq!(report["statuses"], serde_json::json!({"200": 200}));
    let cpu = report["cpu_us_per_txn"].as_object().expect("cpu map");
    assert_eq!(
        cpu.keys().collect::<Vec<_>>(),
        ["fe1.contoso.test", "fe2.contoso.test"],
        "{report}"
    );
    let p50 = report["latency_ms"]["p50"].as_f64().expect("p50");
    let max = report["latency_ms"]["max"].as_f64().expect("max");
    assert!(p50 > 0.0 && p50 <= max, "{report}");
}

#[test]
fn bench_refuses_bad_input_with_the_value() {
    let out = Command::new(BIN)
        .args(["bench", "relay", "--rate", "0"])
        .output()
        .expect("run sipmesh bench");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: --rate 0: must be at least 1"
    );
}

#[test]
fn mesh_bench_reports_time_and_memory() {
    let out = Command::new(BIN)
        .args(["bench", "mesh", "--nodes", "4", "--runs", "1", "--json"])
        .output()
        .expect("run sipmesh bench mesh");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["nodes"], 4);
    let ready = report["ready_ms"].as_array().expect("ready_ms");
    assert_eq!(ready.len(), 1);
    assert!(ready[0].as_u64().is_some_and(|ms| ms > 0 && ms < 30_000), "{report}");
    assert!(report["rss_kib"].as_u64().is_some_and(|k| k > 1024), "{report}");
    assert!(
        report["rss_kib_one_link"].as_u64().is_some_and(|k| k > 1024),
        "{report}"
    );
    // RSS noise can make the estimate slightly negative; a leak makes it large.
    let per_link = report["kib_per_idle_link"].as_f64().expect("kib_per_idle_link");
    assert!(per_link.abs() < 1024.0, "an idle link costs {per_link} KiB: {report}");
}
