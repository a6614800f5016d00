//! Keyed local appends: one write per key, through restarts, crashes and
//! torn writes, forgotten after the window.

mod common;

use common::{all_events, new_event, origin, FakeClock, DAY_MS};
use ferry_proto::Origin;
use ferry_wal::{AppendOnce, Keyring, NewEvent, Wal, WalError, WalKey, WalOptions};
use std::path::Path;
use std::time::Duration;

const T0: u64 = 1_750_000_000_000;
const HOUR_MS: u64 = 3_600_000;

fn opts(dir: &Path, key: &WalKey, clock: &FakeClock) -> WalOptions {
    let mut o = WalOptions::new(dir, Keyring::single(key.clone()), origin(1));
    o.clock = clock.source();
    o
}

fn open(dir: &Path, key: &WalKey, clock: &FakeClock) -> Wal {
    Wal::open(opts(dir, key, clock)).expect("open WAL")
}

fn request(key: &str, n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|j| new_event(format!("{key}/{j}: {}", "x".repeat(150))))
        .collect()
}

fn seqs(first: u64, n: u64) -> Vec<(Origin, u64)> {
    (first..first + n).map(|s| (origin(1), s)).collect()
}

#[test]
fn a_retry_returns_the_first_answer_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (key, clock) = (WalKey::generate(), FakeClock::at(T0));
    let wal = open(dir.path(), &key, &clock);
    wal.append_local_blocking(request("plain", 2)).unwrap();

    let first = wal
        .append_local_once_blocking("order-17", request("order-17", 3))
        .unwrap();
    assert_eq!(
        first,
        AppendOnce {
            events: seqs(3, 3),
            replayed: false
        }
    );
    let before = wal.stats();
    for _ in 0..3 {
        let again = wal
            .append_local_once_blocking("order-17", request("order-17", 3))
            .unwrap();
        assert_eq!(again.events, first.events);
        assert!(again.replayed);
    }
    let after = wal.stats();
    assert_eq!(
        (after.events, after.bytes, after.commits),
        (before.events, before.bytes, before.commits)
    );

    // The same key for a different request is a client bug, not a retry.
    let err = wal
        .append_local_once_blocking("order-17", request("order-18", 3))
        .unwrap_err();
    assert!(matches!(err, WalError::IdempotencyKeyReused { .. }), "{err}");
    assert!(err.to_string().contains("new key"), "{err}");
    assert_eq!(wal.stats().events, 5);

    let other = wal
        .append_local_once_blocking("order-18", request("order-18", 1))
        .unwrap();
    assert_eq!(other.events, seqs(6, 1));
    assert!(!other.replayed);
    let payloads: Vec<_> = all_events(&wal).into_iter().map(|e| e.payload).collect();
    let want: Vec<_> = request("plain", 2)
        .into_iter()
        .chain(request("order-17", 3))
        .chain(request("order-18", 1))
        .map(|e| e.payload)
        .collect();
    assert_eq!(payloads, want);
}

#[test]
fn keys_are_checked_and_never_stored_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (key, clock) = (WalKey::generate(), FakeClock::at(T0));
    let wal = open(dir.path(), &key, &clock);
    for bad in ["", &"k".repeat(256)] {
        let err = wal.append_local_once_blocking(bad, request("a", 1)).unwrap_err();
        assert!(matches!(err, WalError::InvalidIdempotencyKey(_)), "{err}");
    }
    let err = wal.append_local_once_blocking("empty", vec![]).unwrap_err();
    assert!(matches!(err, WalError::InvalidEvent(_)), "{err}");
    let too_big = vec![new_event(vec![0u8; (1 << 20) + 1])];
    let err = wal.append_local_once_blocking("big", too_big).unwrap_err();
    assert!(matches!(err, WalError::InvalidEvent(_)), "{err}");
    // A refused request does not hold its key.
    assert!(
        !wal.append_local_once_blocking("big", request("big", 1))
            .unwrap()
            .replayed
    );
    let longest = "k".repeat(255);
    assert!(
        !wal.append_local_once_blocking(&longest, request("l", 1))
            .unwrap()
            .replayed
    );
    assert!(
        wal.append_local_once_blocking(&longest, request("l", 1))
            .unwrap()
            .replayed
    );
    wal.append_local_once_blocking("patient-BT-TH-004711", request("p", 1))
        .unwrap();
    drop(wal);
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(!bytes.windows(12).any(|w| w == b"BT-TH-004711"), "key found in clear");
    }
}

#[test]
fn keys_survive_a_restart_and_a_rekey() {
    let dir = tempfile::tempdir().unwrap();
    let (key, clock) = (WalKey::generate(), FakeClock::at(T0));
    let first = {
        let wal = open(dir.path(), &key, &clock);
        let a = wal.append_local_once_blocking("a", request("a", 2)).unwrap();
        let b = wal.append_local_once_blocking("b", request("b", 1)).unwrap();
        (a, b)
    };
    let wal = open(dir.path(), &key, &clock);
    let events = wal.stats().events;
    let a = wal.append_local_once_blocking("a", request("a", 2)).unwrap();
    assert_eq!((a.events.clone(), a.replayed), (first.0.events.clone(), true));
    let b = wal.append_local_once_blocking("b", request("b", 1)).unwrap();
    assert_eq!((b.events, b.replayed), (first.1.events.clone(), true));
    assert_eq!(wal.stats().events, events, "replays after a restart store nothing");
    assert!(!wal.append_local_once_blocking("c", request("c", 1)).unwrap().replayed);
    drop(wal);

    let new_key = WalKey::generate();
    ferry_wal::rekey(dir.path(), &Keyring::single(key), &new_key).unwrap();
    let wal = open(dir.path(), &new_key, &clock);
    for (k, n) in [("a", 2), ("b", 1), ("c", 1)] {
        assert!(
            wal.append_local_once_blocking(k, request(k, n)).unwrap().replayed,
            "{k} after rekey"
        );
    }
    assert_eq!(wal.stats().events, 4);
}

#[test]
fn concurrent_retries_of_one_key_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (key, clock) = (WalKey::generate(), FakeClock::at(T0));
    let wal = std::sync::Arc::new(open(dir.path(), &key, &clock));
    for round in 0..20 {
        let k = format!("retry-{round}");
        let answers: Vec<AppendOnce> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let (wal, k) = (wal.clone(), k.clone());
                    s.spawn(move || wal.append_local_once_blocking(&k, request(&k, 2)).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            answers.iter().filter(|a| !a.replayed).count(),
            1,
            "round {round}: {answers:?}"
        );
        assert!(answers.iter().all(|a| a.events == answers[0].events), "round {round}");
    }
    assert_eq!(wal.stats().events, 40);
}

#[test]
fn keys_are_forgotten_after_the_window_by_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let (key, clock) = (WalKey::generate(), FakeClock::at(T0));
    {
        let wal = open(dir.path(), &key, &clock);
        assert_eq!(
            wal.append_local_once_blocking("k", request("k", 2)).unwrap().events,
            seqs(1, 2)
        );
        clock.set(T0 + DAY_MS - 1);
        assert!(wal.append_local_once_blocking("k", request("k", 2)).unwrap().replayed);
        clock.set(T0 + DAY_MS);
        let again = wal.append_local_once_blocking("k", request("k", 2)).unwrap();
        assert_eq!(
            (again.events, again.replayed),
            (seqs(3, 2), false),
            "the default window is a day"
        );
        // The new record holds the key from now on.
        assert_eq!(
            wal.append_local_once_blocking("k", request("k", 2)).unwrap().events,
            seqs(3, 2)
        );
    }
    // Across restarts, with a configured window of one hour.
    let open_with = |window_ms: u64| {
        let mut o = opts(dir.path(), &key, &clock);
        o.idempotency_window = Duration::from_millis(window_ms);
        Wal::open(o).unwrap()
    };
    clock.set(T0 + DAY_MS + HOUR_MS - 1);
    let wal = open_with(HOUR_MS);
    assert_eq!(
        wal.append_local_once_blocking("k", request("k", 2)).unwrap().events,
        seqs(3, 2)
    );
    drop(wal);
    clock.set(T0 + DAY_MS + HOUR_MS);
    let wal = open_with(HOUR_MS);
    assert_eq!(
        wal.append_local_once_blocking("k", request("k", 2)).unwrap().events,
        seqs(5, 2)
    );
    drop(wal);
    // A clock stepped back keeps keys longer, never shorter.
    clock.set(T0);
    let wal = open_with(HOUR_MS);
    assert!(wal.append_local_once_blocking("k", request("k", 2)).unwrap().replayed);
}

/// Cut the segment at every byte of a group holding a key and its events:
/// after recovery the key and its events are both there or both gone.
#[test]
fn a_torn_group_keeps_its_key_and_events_together() {
    let src = tempfile::tempdir().unwrap();
    let (key, clock) = (WalKey::generate(), FakeClock::at(T0));
    let (before, full) = {
        let wal = open(src.path(), &key, &clock);
        wal.append_local_once_blocking("early", request("early", 2)).unwrap();
        let before = wal.stats().bytes;
        wal.append_local_once_blocking("torn", request("torn", 3)).unwrap();
        (before, wal.stats().bytes)
    };
    let name = "00000001.seg";
    let bytes = std::fs::read(src.path().join(name)).unwrap();
    assert_eq!(bytes.len() as u64, full);
    let (mut whole, mut gone) = (0, 0);
    for cut in before..=full {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), &bytes[..cut as usize]).unwrap();
        let wal = open(dir.path(), &key, &clock);
        let held = wal.stats().events;
        let retry = wal.append_local_once_blocking("torn", request("torn", 3)).unwrap();
        match held {
            5 => {
                assert!(retry.replayed, "cut at {cut}: events without their key");
                assert_eq!(retry.events, seqs(3, 3));
                whole += 1;
            }
            2 => {
                assert!(!retry.replayed, "cut at {cut}: a key without its events");
                assert_eq!(retry.events, seqs(3, 3));
                gone += 1;
            }
            n => panic!("cut at {cut}: {n} events, part of a group"),
        }
        assert!(
            wal.append_local_once_blocking("early", request("early", 2))
                .unwrap()
                .replayed
        );
        assert_eq!(wal.stats().events, 5);
    }
    assert_eq!((whole, gone), (1, full - before), "only the whole file holds the group");
}

#[test]
fn wal_of_the_previous_format_opens_and_new_keys_go_to_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (key, clock) = (WalKey::generate(), FakeClock::at(T0));
    open(dir.path(), &key, &clock)
        .append_local_blocking(request("v1", 3))
        .unwrap();
    // Version 1 segments differ only in their version field: what an older
    // build wrote.
    let seg1 = dir.path().join("00000001.seg");
    let mut bytes = std::fs::read(&seg1).unwrap();
    assert_eq!(&bytes[8..10], &[0, 2]);
    bytes[9] = 1;
    std::fs::write(&seg1, &bytes).unwrap();

    let wal = open(dir.path(), &key, &clock);
    assert_eq!(all_events(&wal).len(), 3);
    assert!(!wal.append_local_once_blocking("k", request("k", 1)).unwrap().replayed);
    assert_eq!(wal.stats().segments, 2);
    drop(wal);
    assert_eq!(
        std::fs::read(&seg1).unwrap(),
        bytes,
        "the old segment is not appended to"
    );
    let seg2 = std::fs::read(dir.path().join("00000002.seg")).unwrap();
    assert_eq!(&seg2[8..10], &[0, 2]);
    let wal = open(dir.path(), &key, &clock);
    assert!(wal.append_local_once_blocking("k", request("k", 1)).unwrap().replayed);
    assert_eq!(all_events(&wal).len(), 4);
    drop(wal);

    // A segment from a newer build is refused, naming the file, and left alone.
    let mut newer = seg2.clone();
    newer[9] = 3;
    std::fs::write(dir.path().join("00000002.seg"), &newer).unwrap();
    let err = Wal::open(opts(dir.path(), &key, &clock)).err().expect("must fail");
    assert!(matches!(err, WalError::NewerFormat { version: 3, .. }), "{err}");
    assert!(err.to_string().contains("00000002.seg"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("00000002.seg")).unwrap(), newer);
}

const CHILD_ENV: &str = "FERRY_WAL_CRASH_CHILD";

/// The child: four threads appending keyed requests until killed, printing
/// each answer once it has it.
fn crash_child(dir: &Path, round: u32) {
    use std::io::Write;
    let key = WalKey::from_bytes([7; 32]);
    let wal = std::sync::Arc::new(open(dir, &key, &FakeClock::at(T0)));
    std::thread::scope(|s| {
        for t in 0..4 {
            let wal = wal.clone();
            s.spawn(move || {
                for i in 0..100_000 {
                    let k = format!("r{round}-t{t}-{i}");
                    let a = wal.append_local_once_blocking(&k, request(&k, 3)).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "acked {k} {}", a.events[0].1).unwrap();
                    out.flush().unwrap();
                }
            });
        }
    });
}

/// SIGKILL a process appending keyed requests, at random moments: every key
/// it was answered for is there with its events; a key in flight is there
/// with all its events or absent with all of them.
#[test]
fn sigkill_during_keyed_appends_keeps_keys_and_events_together() {
    use std::collections::HashMap;
    use std::process::{Command, Stdio};
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let round = std::env::var("FERRY_WAL_CRASH_ROUND").unwrap().parse().unwrap();
        crash_child(Path::new(&dir), round);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::from_bytes([7; 32]);
    let clock = FakeClock::at(T0);
    let exe = std::env::current_exe().unwrap();
    let (mut acked_total, mut unanswered_stored, mut unanswered_absent) = (0, 0, 0);
    for round in 0..12u32 {
        let child = Command::new(&exe)
            .args([
                "sigkill_during_keyed_appends_keeps_keys_and_events_together",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("FERRY_WAL_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 400 + 150));
        let mut child = child;
        child.kill().unwrap(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        let acked: HashMap<String, u64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            // The harness's "test NAME ... " precedes the first line unbroken.
            .filter_map(|l| l.rsplit_once("acked ").map(|(_, rest)| rest))
            .filter_map(|l| l.split_once(' '))
            .map(|(k, s)| {
                (
                    k.to_string(),
                    s.parse().expect("whole lines: each is one write to a pipe"),
                )
            })
            .collect();
        acked_total += acked.len();

        let wal = open(dir.path(), &key, &clock);
        // Which events of this round's keys are stored, by key.
        let mut stored: HashMap<String, Vec<u64>> = HashMap::new();
        for e in all_events(&wal) {
            let text = String::from_utf8(e.payload).unwrap();
            let k = text.split_once('/').unwrap().0;
            if k.starts_with(&format!("r{round}-")) {
                stored.entry(k.to_string()).or_default().push(e.seq);
            }
        }
        for (k, first) in &acked {
            assert_eq!(
                stored.get(k),
                Some(&vec![*first, first + 1, first + 2]),
                "round {round}: acked {k}"
            );
        }
        // Each thread had at most one request in flight: the next after its
        // last acknowledged one.
        for t in 0..4 {
            let done = (0..)
                .take_while(|i| acked.contains_key(&format!("r{round}-t{t}-{i}")))
                .count();
            let k = format!("r{round}-t{t}-{done}");
            let retry = wal.append_local_once_blocking(&k, request(&k, 3)).unwrap();
            match stored.get(&k) {
                Some(seqs) => {
                    assert_eq!(seqs.len(), 3, "round {round}: {k} has part of its events");
                    assert!(retry.replayed, "round {round}: {k}'s events are stored without its key");
                    assert_eq!(retry.events.iter().map(|e| e.1).collect::<Vec<_>>(), *seqs);
                    unanswered_stored += 1;
                }
                None => {
                    assert!(!retry.replayed, "round {round}: {k} is held without its events");
                    unanswered_absent += 1;
                }
            }
            let later = format!("r{round}-t{t}-{}", done + 1);
            assert!(!stored.contains_key(&later), "round {round}: {later} was never sent");
        }
        for (k, first) in &acked {
            let retry = wal.append_local_once_blocking(k, request(k, 3)).unwrap();
            assert!(
                retry.replayed && retry.events[0].1 == *first,
                "round {round}: {k} after restart"
            );
        }
        println!(
            "round {round}: {} keyed appends acknowledged before SIGKILL",
            acked.len()
        );
    }
    println!(
        "{acked_total} acknowledged; of the requests in flight at the kill, {unanswered_stored} were \
         stored (killed between fsync and answer) and {unanswered_absent} were not"
    );
    assert!(acked_total > 100, "the child barely wrote: {acked_total} acknowledged");
}
