//! Supervision: a panicking link actor is replaced and its link comes back,
//! while the node's other links and the process itself are untouched.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn panicking_link_is_restarted_alone() {
    let c = Cluster::up_with_env(3, 200, 1_000, &[("SIPMESH_FAULT_INJECTION", "1")]);
    let (fe1, fe2, fe3) = (fe(1), fe(2), fe(3));
    let node = c.node(&fe1).clone();
    let to_fe2 = c.link(&fe1, &fe2);
    let to_fe3 = c.link(&fe1, &fe3);
    assert_eq!(to_fe2["state"], "up", "{to_fe2}");
    assert_eq!(to_fe3["state"], "up", "{to_fe3}");
    let (fe2_before, fe3_before) = (restarts(&to_fe2), restarts(&to_fe3));
    let fe3_since = to_fe3["since"].clone();

    let answer = debug(
        &node.debug_socket,
        &format!(r#"{{"cmd":"fault","panic_link":"{fe2}"}}"#),
    );
    assert_eq!(answer["panicked"], fe2.as_str(), "{answer}");

    // The fe2 link must come back up with a higher restart count; meanwhile
    // every sample of the fe3 link must show it up and never restarted.
    let mut samples = 0;
    let back = eventually(
        Duration::from_secs(5),
        "fe1's link to fe2 back up after the panic",
        || {
            let rows = links(&node.debug_socket);
            let l3 = rows.iter().find(|l| l["peer"] == fe3.as_str()).expect("fe3 row");
            assert_eq!(l3["state"], "up", "fe3 link disturbed: {l3}");
            assert_eq!(restarts(l3), fe3_before, "fe3 link restarted: {l3}");
            samples += 1;
            let l2 = rows.iter().find(|l| l["peer"] == fe2.as_str()).expect("fe2 row");
            (l2["state"] == "up" && restarts(l2) > fe2_before).then(|| l2.clone())
        },
    );
    eprintln!("after {samples} samples: {back}");
    assert!(restarts(&back) > fe2_before, "{back}");
    assert!(samples >= 1);

    // A few more samples after recovery.
    for _ in 0..5 {
        let l3 = c.link(&fe1, &fe3);
        assert_eq!(l3["state"], "up", "{l3}");
        assert_eq!(restarts(&l3), fe3_before, "{l3}");
        assert_eq!(l3["since"], fe3_since, "fe3 link changed state: {l3}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(pid_alive(node.pid), "fe1 died from a link panic");
    let status = debug(&node.debug_socket, "status");
    assert_eq!(status["links_up"], 2, "{status}");
    // The other side saw the link come back too.
    assert_eq!(c.link(&fe2, &fe1)["state"], "up");
}
