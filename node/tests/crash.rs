//! Power-cut durability through a real process: `ferry push` appends in a
//! loop and is killed with SIGKILL at random moments. Every event whose
//! `origin:seq` it printed (printed only after fsync) must be there after.

use ferry_proto::Origin;
use std::collections::BTreeSet;
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
        let earlier_logs: BTreeSet<Origin> = expected.iter().map(|(o, _, _)| *o).collect();
        let this_log = acked.first().map(|(o, _)| *o);
        for (i, (origin, seq)) in acked.iter().enumerate() {
            assert_eq!(
                (Some(*origin), *seq),
                (this_log, i as u64 + 1),
                "round {round}: one log per start, numbered from 1 without skips or repeats"
            );
        }
        assert!(
            this_log.is_none_or(|o| !earlier_logs.contains(&o)),
            "round {round}: wrote on an earlier start's log"
        );
        let dd = ferry::datadir::DataDir::new(&dir);
        let wal = dd
            .open_wal(false)
            .unwrap_or_else(|e| panic!("round {round}: WAL does not open after SIGKILL: {e:#}"));
        let local = wal.local_origin();
        if let Some(o) = this_log {
            assert_eq!(local, o, "round {round}: the reopened node names another log");
        }
        // Earlier rounds' events, acknowledged or not, are all still there.
        for origin in &earlier_logs {
            let stored = wal.read_range(origin, 1, u64::MAX, usize::MAX).unwrap();
            let want: Vec<_> = expected.iter().filter(|(o, _, _)| o == origin).collect();
            assert_eq!(stored.len(), want.len(), "round {round}: {origin} changed");
            for (got, (_, seq, payload)) in stored.iter().zip(want) {
                assert_eq!(
                    (got.seq, &got.payload),
                    (*seq, payload),
                    "round {round}: {origin}:{seq}"
                );
            }
        }
        let stored = if earlier_logs.contains(&local) {
            Vec::new()
        } else {
            wal.read_range(&local, 1, u64::MAX, usize::MAX).unwrap()
        };
        let have = wal.summary().get(&local).cloned().unwrap_or_default();
        assert!(
            have.ranges().len() <= 1,
            "round {round}: holes in the local log {have:?}"
        );
        assert!(
            stored.len() >= acked.len(),
            "round {round}: {} acknowledged, {} stored",
            acked.len(),
            stored.len()
        );
        // Whatever is stored beyond the acknowledged events (written, not yet
        // acknowledged when killed) is whole and in order.
        for (i, e) in stored.iter().enumerate() {
            assert_eq!(
                (e.seq, &e.payload),
                (i as u64 + 1, &sent[i]),
                "round {round}: {}:{} is not what was sent",
                e.origin,
                e.seq
            );
            expected.push((e.origin, e.seq, e.payload.clone()));
        }
        let extra = &stored[acked.len()..];
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
