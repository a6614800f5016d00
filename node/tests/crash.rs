//! Power-cut durability through a real process: `ferry push` appends in a
//! loop and is killed with SIGKILL at random moments. Every event whose
//! `origin:seq` it printed (printed only after fsync) must be there after.

use ferry_proto::Origin;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn ferry(args: &[&str]) -> std::process::Output {
    let out = Command::new(FERRY).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ferry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn sigkill_during_appends_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let d = dir.to_str().unwrap();
    ferry(&["init", "--data-dir", d, "--name", "crashy"]);
    let lines = ferry_tests_support::workload("CRASH", 3000, 11).unwrap();
    let mut expected: Vec<(Origin, u64, Vec<u8>)> = Vec::new();
    let rounds = 24;
    for round in 0..rounds {
        let mut child = Command::new(FERRY)
            .args(["push", "--data-dir", d, "--topic", "crash"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feed = lines.clone();
        let sent: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sent_w = sent.clone();
        let writer = std::thread::spawn(move || {
            for line in feed.iter().cycle().take(20_000) {
                sent_w.lock().unwrap().push(line.clone());
                if stdin.write_all(line).and_then(|_| stdin.write_all(b"\n")).is_err() {
                    break;
                }
            }
        });
        let acked: Arc<Mutex<Vec<(Origin, u64)>>> = Arc::default();
        let acked_r = acked.clone();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (o, s) = line.rsplit_once(':').unwrap();
                acked_r.lock().unwrap().push((o.parse().unwrap(), s.parse().unwrap()));
            }
        });
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 400 + 30));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        writer.join().unwrap();

        // Reopen as the next start would, and check every acknowledged event.
        let acked = acked.lock().unwrap().clone();
        let sent = sent.lock().unwrap().clone();
        let base = expected.len() as u64;
        for (i, (origin, seq)) in acked.iter().enumerate() {
            assert_eq!(
                *seq,
                base + i as u64 + 1,
                "round {round}: sequence numbers skip or repeat"
            );
            expected.push((*origin, *seq, sent[i].clone()));
        }
        let dd = ferry::datadir::DataDir::new(&dir);
        let wal = dd
            .open_wal(false)
            .unwrap_or_else(|e| panic!("round {round}: WAL does not open after SIGKILL: {e:#}"));
        let local = wal.local_origin();
        let have = wal.summary().get(&local).cloned().unwrap_or_default();
        assert!(
            have.ranges().len() <= 1,
            "round {round}: holes in the local log {have:?}"
        );
        let stored = wal.read_range(&local, 1, u64::MAX, usize::MAX).unwrap();
        assert_eq!(stored.len() as u64, have.count());
        assert!(
            stored.len() >= expected.len(),
            "round {round}: {} acknowledged, {} stored",
            expected.len(),
            stored.len()
        );
        for ((origin, seq, payload), got) in expected.iter().zip(&stored) {
            assert_eq!(
                (got.origin, got.seq),
                (*origin, *seq),
                "round {round}: acknowledged {origin}:{seq} is missing"
            );
            assert_eq!(
                &got.payload, payload,
                "round {round}: {origin}:{seq} has the wrong payload"
            );
        }
        // Whatever is stored beyond the acknowledged events (written, not yet
        // acknowledged when killed) is whole and in order: the next start
        // continues from it.
        let extra = &stored[expected.len()..];
        for (i, e) in extra.iter().enumerate() {
            assert_eq!(
                e.payload,
                sent[acked.len() + i],
                "round {round}: unacknowledged tail event is not what was sent"
            );
            expected.push((e.origin, e.seq, e.payload.clone()));
        }
        println!(
            "round {round}: {} acknowledged, {} more stored unacknowledged, total {}",
            acked.len(),
            extra.len(),
            expected.len()
        );
    }
    assert!(
        expected.len() > 100,
        "the child barely wrote anything: {} events",
        expected.len()
    );
}
