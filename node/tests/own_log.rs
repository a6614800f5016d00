//! The own-log guard through a real daemon: the first event of every start
//! begins a new log epoch, whether the daemon was stopped with SIGTERM or
//! killed (a power cut), and a start that writes nothing leaves the log as
//! it was. Nothing on the disk can show it did not go back in time, so no
//! number a peer may hold is given out twice.

mod common;

use common::{Daemon, Deployment};

/// Pushes one event through the daemon's API; returns its `origin:seq`.
fn push(d: &Daemon, body: &str) -> (String, u64) {
    let v: serde_json::Value = ureq::post(&d.url("/v1/events?topic=visits"))
        .send_string(body)
        .unwrap()
        .into_json()
        .unwrap();
    let e = &v["events"][0];
    (e["origin"].as_str().unwrap().to_string(), e["seq"].as_u64().unwrap())
}

#[test]
fn every_start_that_writes_begins_a_new_log() {
    let dep = Deployment::new("own-log");
    let dir = dep.node("clinic", "clinic");
    let node_of = |origin: &str| origin.split('.').next().unwrap().to_string();

    let d = Daemon::start(&dir, &[]);
    let (first, seq) = push(&d, r#"{"visit":1}"#);
    assert_eq!(seq, 1);
    assert_eq!(push(&d, r#"{"visit":2}"#), (first.clone(), 2), "one start, one log");
    d.stop();

    let d = Daemon::start(&dir, &[]);
    let (after_stop, seq) = push(&d, r#"{"visit":3}"#);
    assert_ne!(after_stop, first, "after a clean stop the node wrote on its old log");
    assert_eq!(
        (node_of(&after_stop), seq),
        (node_of(&first), 1),
        "same node, new epoch"
    );

    d.kill();
    let d = Daemon::start(&dir, &[]);
    let (after_kill, seq) = push(&d, r#"{"visit":4}"#);
    assert!(
        after_kill != first && after_kill != after_stop,
        "after a kill the node wrote on an old log"
    );
    assert_eq!((node_of(&after_kill), seq), (node_of(&first), 1));
    d.stop();

    // A start without a write loses nothing: every event is still there,
    // under the log that wrote it.
    let d = Daemon::start(&dir, &[]);
    d.stop();
    let held: Vec<(String, u64)> = common::ok(&["log", "--data-dir", &dir, "--json"])
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["origin"].as_str().unwrap().to_string(), v["seq"].as_u64().unwrap())
        })
        .collect();
    for event in [(first.clone(), 1), (first, 2), (after_stop, 1), (after_kill, 1)] {
        assert!(held.contains(&event), "{event:?} missing from the log: {held:?}");
    }
}
