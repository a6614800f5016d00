//! The CLI as a newcomer uses it, through the real binary and real daemons.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn run(args: &[&str]) -> Output {
    Command::new(FERRY).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn status(dir: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&["status", "--data-dir", dir, "--json"])).unwrap()
}

/// Starts `ferry run` and returns it with the address it listens on.
fn daemon(dir: &str, extra: &[&str]) -> (Running, String) {
    let mut child = Command::new(FERRY)
        .args([
            "run",
            "--data-dir",
            dir,
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--interval",
            "1",
            // Loopback only: no multicast onto the machine's real network.
            "--no-mdns",
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // Warnings may come first (a WAL not closed cleanly, say).
    let mut line = String::new();
    while !line.contains("listening on ") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the daemon exited before it listened"
        );
    }
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    // Keep draining stderr so the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in stderr.lines() {});
    (Running(Some(child)), addr.to_string())
}

/// A daemon this test started: killed if the test fails before it stops it.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn stop(mut running: Running) {
    let mut child = running.0.take().expect("a running daemon");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "daemon did not exit cleanly on SIGTERM: {status}");
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_newcomer_sets_up_two_nodes_and_they_replicate() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let (ca, a, b) = (p("ca"), p("a"), p("b"));

    ok(&["ca", "init", "--ca-dir", &ca, "--name", "test-deployment"]);
    let a_id = ok(&["init", "--data-dir", &a, "--name", "clinic-a"]).trim().to_string();
    let b_id = ok(&["init", "--data-dir", &b, "--name", "hub"]).trim().to_string();
    assert!(a_id.parse::<ferry_proto::NodeId>().is_ok(), "init printed {a_id:?}");

    // Remote enrolment: CSR out, signed at the CA, bundle back in.
    ok(&["csr", "--data-dir", &a, "--out", &p("a.csr")]);
    ok(&[
        "ca",
        "sign",
        "--ca-dir",
        &ca,
        "--csr",
        &p("a.csr"),
        "--role",
        "clinic",
        "--out",
        &p("a.bundle"),
    ]);
    let wrong = run(&["cert", "install", "--data-dir", &b, "--cert", &p("a.bundle")]);
    assert!(!wrong.status.success(), "installed another node's certificate");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("another node"));
    ok(&["cert", "install", "--data-dir", &a, "--cert", &p("a.bundle")]);
    // Local one-step enrolment.
    assert_eq!(
        ok(&["--data-dir", &b, "ca", "enroll", "--ca-dir", &ca, "--role", "hub"]).trim(),
        b_id
    );

    // Three ways to push.
    let first = ok(&[
        "push",
        "--data-dir",
        &a,
        r#"{"type":"vitals","pulse":80}"#,
        "--topic",
        "vitals",
        "--priority",
        "urgent",
    ]);
    assert!(first.trim().ends_with(":1"), "{first}");
    std::fs::write(p("payload.json"), br#"{"type":"registration"}"#).unwrap();
    // Without a daemon every push is a start of its own: a new log.
    let second = ok(&["push", "--data-dir", &a, "--file", &p("payload.json")]);
    assert!(second.trim().ends_with(":1"), "{second}");
    assert_ne!(second, first);
    let mut child = Command::new(FERRY)
        .args(["push", "--data-dir", &a])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = ferry_tests_support::workload("A", 200, 1).unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in &lines {
            stdin.write_all(l).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let printed: Vec<_> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(printed.len(), 200);
    let batch_log = printed[0].strip_suffix(":1").unwrap();
    assert_eq!(printed[199], format!("{batch_log}:200"), "one call, one log");
    ok(&["push", "--data-dir", &b, "hub notice"]);

    assert_eq!(
        ok(&["log", "--data-dir", &a, "--json", "--limit", "2"]).lines().count(),
        2
    );
    let log: Vec<serde_json::Value> = ok(&["log", "--data-dir", &a, "--json", "--id", first.trim()])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["topic"], "vitals");
    assert_eq!(log[0]["priority"], "urgent");
    assert_eq!(log[0]["payload"]["pulse"], 80);
    let after = ok(&["log", "--data-dir", &a, "--json", "--after", "198"]);
    assert_eq!(after.lines().count(), 2);

    let s = status(&a);
    assert_eq!(s["node_id"], a_id);
    assert_eq!(s["role"], "clinic");
    assert_eq!(s["events"], 202);
    assert!(s["wal_bytes"].as_u64().unwrap() > 200 * 200);
    let have = s["have"].as_object().unwrap();
    assert_eq!(have.len(), 3, "three pushes, three logs");
    assert_eq!(have[batch_log], serde_json::json!([[1, 200]]));

    // B runs as a daemon; A syncs once, then A runs as a daemon too.
    let (hub, hub_addr) = daemon(&b, &[]);
    // Writes go through the daemon's local API; a second writer is refused.
    let through = ok(&["push", "--data-dir", &b, "pushed while the daemon runs"]);
    assert!(through.trim().ends_with(":1"), "{through}");
    let refused = run(&["wal", "rekey", "--data-dir", &b]);
    assert!(!refused.status.success(), "a second writer opened the daemon's WAL");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("daemon"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(status(&b)["events"], 2, "status reads a running daemon's WAL");

    let sync = run(&["sync", "--data-dir", &a, "--peer", &hub_addr, "--json"]);
    assert!(sync.status.success(), "{}", String::from_utf8_lossy(&sync.stderr));
    let report: serde_json::Value = serde_json::from_slice(&sync.stdout).unwrap();
    assert_eq!(
        (report["events_sent"].as_u64(), report["events_received"].as_u64()),
        (Some(202), Some(2))
    );
    assert_eq!(status(&b)["events"], 204);
    let peers = status(&a)["peers"].as_array().unwrap().clone();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["name"], "hub");
    assert!(peers[0]["last_sync_unix"].as_u64().is_some());

    // The hub goes away; A's daemon keeps retrying until it is back.
    stop(hub);
    let (clinic, _) = daemon(&a, &["--peer", &hub_addr]);
    ok(&[
        "push",
        "--data-dir",
        &b,
        "written while the clinic could not reach the hub",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let port = hub_addr.rsplit_once(':').unwrap().1;
    let listen = format!("127.0.0.1:{port}");
    let hub = Command::new(FERRY)
        .args([
            "run",
            "--data-dir",
            &b,
            "--listen",
            &listen,
            "--api-listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--interval",
            "1",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hub = Running(Some(hub));
    wait_for("the clinic daemon to reconnect and pull", || {
        status(&a)["events"] == 205
    });
    assert_eq!(status(&b)["events"], 205);

    // Live: an event pushed into the running clinic reaches the hub.
    let live = ok(&[
        "push",
        "--data-dir",
        &a,
        r#"{"type":"vitals","pulse":131}"#,
        "--priority",
        "urgent",
    ]);
    assert!(
        live.trim().ends_with(":1"),
        "the daemon's first event, in its own log: {live}"
    );
    wait_for("the pushed event at the hub", || status(&b)["events"] == 206);

    // The local API answers bad requests with a JSON error and a stable code.
    let api = std::fs::read_to_string(std::path::Path::new(&a).join("api.addr")).unwrap();
    let bad = ureq::post(&format!("http://{}/v1/events?priority=soon", api.trim())).send_string("x");
    match bad {
        Err(ureq::Error::Status(400, r)) => {
            let v: serde_json::Value = r.into_json().unwrap();
            assert_eq!(v["error"]["code"], "bad_request");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    drop(hub);
    stop(clinic);
}

/// The README's first command: three nodes converge, and nothing on
/// stderr alarms a newcomer (a resumed session once logged a warning that
/// the peer's certificate was not at hand, though its key was kept).
#[test]
fn the_demo_converges_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(FERRY)
        .args(["demo", "--dir"])
        .arg(dir.path().join("demo"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "ferry demo: {:?} {stderr}", out.status);
    assert!(stdout.contains("all three nodes hold the same 300 events"), "{stdout}");
    assert!(!stderr.contains("WARN") && !stderr.contains("ERROR"), "{stderr}");
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec![],
        vec!["demo"],
        vec!["init"],
        vec!["ca"],
        vec!["ca", "init"],
        vec!["ca", "sign"],
        vec!["ca", "enroll"],
        vec!["csr"],
        vec!["cert", "install"],
        vec!["push"],
        vec!["log"],
        vec!["status"],
        vec!["peers"],
        vec!["sync"],
        vec!["run"],
        vec!["wal", "rekey"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let out = ok(&args);
        assert!(out.contains("Usage"), "{cmd:?}");
    }
}

#[test]
fn commands_without_a_data_dir_say_what_to_do() {
    let out = Command::new(FERRY)
        .args(["status"])
        .env_remove("FERRY_DATA_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--data-dir"));
    let tmp = tempfile::tempdir().unwrap();
    let out = run(&["status", "--data-dir", tmp.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ferry init"));
}

#[test]
fn wal_rekey_keeps_every_event_and_replaces_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("n");
    let d = d.to_str().unwrap();
    ok(&["init", "--data-dir", d, "--name", "n"]);
    for i in 0..50 {
        ok(&["push", "--data-dir", d, &format!(r#"{{"visit":{i}}}"#)]);
    }
    let before = ok(&["log", "--data-dir", d, "--json", "--limit", "1000"]);
    let old_key = std::fs::read(tmp.path().join("n/wal.key")).unwrap();
    ok(&["wal", "rekey", "--data-dir", d]);
    assert_ne!(std::fs::read(tmp.path().join("n/wal.key")).unwrap(), old_key);
    assert!(!tmp.path().join("n/wal.key.next").exists());
    assert_eq!(ok(&["log", "--data-dir", d, "--json", "--limit", "1000"]), before);
    assert!(ok(&["push", "--data-dir", d, "after"]).trim().ends_with(":1"));
    let s: serde_json::Value = serde_json::from_str(&ok(&["status", "--data-dir", d, "--json"])).unwrap();
    assert_eq!(s["events"], 51);
}

/// `ferry sync` on a terminal draws progress (events and bytes done, total,
/// rate, ETA); with stderr not a terminal it draws nothing.
#[test]
fn sync_shows_progress_on_a_terminal_and_nothing_otherwise() {
    if Command::new("script").arg("--version").output().is_err() {
        println!("skipped: `script` (util-linux) is not installed, so no pseudo-terminal");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let (ca, hub, first, second, mule) = (p("ca"), p("hub"), p("first"), p("second"), p("mule"));
    ok(&["ca", "init", "--ca-dir", &ca, "--name", "progress"]);
    for (dir, role) in [(&hub, "hub"), (&first, "clinic"), (&second, "clinic"), (&mule, "mule")] {
        ok(&["init", "--data-dir", dir, "--name", dir.rsplit('/').next().unwrap()]);
        ok(&["--data-dir", dir, "ca", "enroll", "--ca-dir", &ca, "--role", role]);
    }
    let mut push = Command::new(FERRY)
        .args(["push", "--data-dir", &hub])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut stdin = push.stdin.take().unwrap();
        for l in ferry_tests_support::workload("HUB", 4000, 3).unwrap() {
            stdin.write_all(&l).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
    }
    assert!(push.wait().unwrap().success());
    // Served at 200 kbit/s, the transfer (about 105 KiB compressed) lasts a
    // few seconds: long enough to draw.
    let (daemon, addr) = daemon(&hub, &["--bandwidth-kbps", "200"]);

    let on_terminal = Command::new("script")
        .args([
            "-qec",
            &format!("{FERRY} sync --data-dir {first} --peer {addr}"),
            "/dev/null",
        ])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(on_terminal.status.success(), "{shown}");
    assert!(shown.contains("received 4000 events"), "{shown}");
    for part in ["/4000 events", "ETA", "KiB at", "/s"] {
        assert!(
            shown.contains(part),
            "no {part:?} in what the terminal showed:\n{shown}"
        );
    }

    println!("{shown}");
    let piped = run(&["sync", "--data-dir", &second, "--peer", &addr]);
    assert!(piped.status.success());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !stderr.contains("events") && !stderr.contains("ETA"),
        "progress drawn off a terminal: {stderr}"
    );
    assert!(String::from_utf8_lossy(&piped.stdout).contains("received 4000 events"));

    // A mule's daemon on a terminal shows each visit's transfer the same way.
    let visit = Command::new("script")
        .args([
            "-qec",
            &format!(
                "timeout -s TERM 8 {FERRY} run --data-dir {mule} --peer {addr} --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --no-mdns"
            ),
            "/dev/null",
        ])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&visit.stdout);
    assert!(
        shown.contains("4000/4000 events") && shown.contains("KiB in"),
        "{shown}"
    );
    stop(daemon);
}
