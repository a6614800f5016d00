//! The own-log guard through a real daemon: stopped with SIGTERM it seals
//! its WAL and writes on in the same log after a restart; killed (a power
//! cut) it cannot vouch for the log's end, and its first new event starts a
//! new log epoch, so no number a peer may hold is given out twice.

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
fn a_stopped_daemon_writes_on_and_a_killed_one_starts_a_new_log() {
    let dep = Deployment::new("own-log");
    let dir = dep.node("clinic", "clinic");

    let d = Daemon::start(&dir, &[]);
    let (first, seq) = push(&d, r#"{"visit":1}"#);
    assert_eq!(seq, 1);
    d.stop();
    let d = Daemon::start(&dir, &[]);
    assert_eq!(
        push(&d, r#"{"visit":2}"#),
        (first.clone(), 2),
        "a clean stop keeps the log"
    );

    d.kill();
    let d = Daemon::start(&dir, &[]);
    let (after_kill, seq) = push(&d, r#"{"visit":3}"#);
    assert_ne!(after_kill, first, "after a kill the node wrote on its old log");
    assert_eq!(
        after_kill.split('.').next(),
        first.split('.').next(),
        "same node, new epoch"
    );
    assert_eq!(seq, 1);
    d.stop();

    // The new log is the node's log from now on, across clean restarts.
    let d = Daemon::start(&dir, &[]);
    assert_eq!(push(&d, r#"{"visit":4}"#), (after_kill, 2));
    d.stop();
}
