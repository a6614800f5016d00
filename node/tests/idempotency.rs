//! `Idempotency-Key` on the API and `--idempotency-key` on `ferry push`: a
//! retry answers as the first try did and writes nothing, across a daemon
//! restart and after the daemon was killed between making the write durable
//! and the application reading the answer.

mod common;
use common::*;
use std::io::{Read, Write};
use std::time::Duration;

fn events(d: &Daemon) -> u64 {
    d.get_json("/v1/status")["events"].as_u64().unwrap()
}

/// An append with a key; `.send_string(body)` sends it.
fn post(d: &Daemon, key: &str) -> ureq::Request {
    ureq::post(&d.url("/v1/events?topic=referrals"))
        .set("Idempotency-Key", key)
        .set("Content-Type", "application/json")
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> (serde_json::Value, Option<String>) {
    let r = r.unwrap();
    let replayed = r.header("idempotent-replayed").map(str::to_string);
    (r.into_json().unwrap(), replayed)
}

#[test]
fn a_retry_with_the_same_key_returns_the_first_answer_and_writes_nothing() {
    let dep = Deployment::new("idem");
    let dir = dep.node("clinic", "clinic");
    let d = Daemon::start(&dir, &[]);
    let body = r#"{"referral":77,"to":"district"}"#;
    let (first, replayed) = answer(post(&d, "referral-77").send_string(body));
    assert_eq!(first["replayed"], false);
    assert_eq!(replayed, None);
    assert_eq!(events(&d), 1);
    let (again, replayed) = answer(post(&d, "referral-77").send_string(body));
    assert_eq!(again["events"], first["events"]);
    assert_eq!(again["replayed"], true);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(events(&d), 1, "the retry wrote nothing");

    // Another request under the same key is refused, and says why.
    let (code, err) = error_of(post(&d, "referral-77").send_string(r#"{"referral":78}"#));
    assert_eq!(
        (code, err["error"]["code"].as_str().unwrap()),
        (422, "idempotency_key_reused")
    );
    let (code, err) = error_of(post(&d, &"k".repeat(256)).send_string(body));
    assert_eq!(
        (code, err["error"]["code"].as_str().unwrap()),
        (400, "invalid_idempotency_key")
    );
    assert_eq!(events(&d), 1);

    // Across a restart of the daemon.
    d.stop();
    let d = Daemon::start(&dir, &[]);
    let (after_restart, _) = answer(post(&d, "referral-77").send_string(body));
    assert_eq!(after_restart["events"], first["events"]);
    assert_eq!(after_restart["replayed"], true);
    // A new key is a new write.
    let (other, _) = answer(post(&d, "referral-78").send_string(r#"{"referral":78}"#));
    assert_eq!(
        other["events"][0]["seq"], 1,
        "the first event of this start, in its own log"
    );
    assert_ne!(other["events"][0]["origin"], first["events"][0]["origin"]);
    assert_eq!(events(&d), 2);
    d.stop();
}

/// The application sent the request, the daemon made it durable, and the
/// daemon was killed before the application read the answer. The retry,
/// against the restarted daemon, gets the answer it never saw.
#[test]
fn a_retry_after_a_crash_between_the_write_and_the_answer_writes_nothing() {
    let dep = Deployment::new("idem-crash");
    let dir = dep.node("clinic", "clinic");
    let d = Daemon::start(&dir, &[]);
    let addr = d.api.trim_start_matches("http://").to_string();
    let body = r#"{"lab":"malaria","result":"negative"}"#;
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /v1/events?topic=labs HTTP/1.1\r\nHost: {addr}\r\nIdempotency-Key: lab-5501\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Durable: a reader sees it in the WAL (its index holds only what was
    // fsynced). The application has not read a byte of the answer.
    wait_for("the event to be durable", || {
        let s: serde_json::Value = serde_json::from_str(&ok(&["status", "--data-dir", &dir, "--json"])).unwrap();
        s["events"] == 1
    });
    d.kill();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut seen = Vec::new();
    let _ = conn.read_to_end(&mut seen);
    drop(conn);

    let d = Daemon::start(&dir, &[]);
    let (retry, replayed) = answer(
        ureq::post(&d.url("/v1/events?topic=labs"))
            .set("Idempotency-Key", "lab-5501")
            .set("Content-Type", "application/json")
            .send_string(body),
    );
    assert_eq!(retry["replayed"], true);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(retry["events"][0]["seq"], 1);
    assert_eq!(events(&d), 1, "the retry after the crash wrote nothing");
    let stored = ureq::get(&d.url(&format!(
        "/v1/events/{}/1",
        retry["events"][0]["origin"].as_str().unwrap()
    )))
    .call()
    .unwrap()
    .into_string()
    .unwrap();
    assert_eq!(stored, body);
    d.stop();
}

#[test]
fn push_with_a_key_prints_the_first_answer_again_with_or_without_the_daemon() {
    let dep = Deployment::new("idem-cli");
    let dir = dep.node("clinic", "clinic");
    let push = |payload: &str| run(&["push", "--data-dir", &dir, "--idempotency-key", "visit-4411", payload]);
    let first = push(r#"{"visit":4411}"#);
    assert!(first.status.success());
    let first = String::from_utf8(first.stdout).unwrap();
    assert_eq!(String::from_utf8(push(r#"{"visit":4411}"#).stdout).unwrap(), first);
    // Through a running daemon: the key was kept in the WAL it opened.
    let d = Daemon::start(&dir, &[]);
    assert_eq!(String::from_utf8(push(r#"{"visit":4411}"#).stdout).unwrap(), first);
    let reused = push(r#"{"visit":9999}"#);
    assert!(!reused.status.success());
    let err = String::from_utf8_lossy(&reused.stderr);
    assert!(err.contains("already used for a different request"), "{err}");
    assert_eq!(events(&d), 1);
    d.stop();
    // Not for lines on stdin: a key names one write.
    let out = std::process::Command::new(FERRY)
        .args(["push", "--data-dir", &dir, "--idempotency-key", "k"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
}
