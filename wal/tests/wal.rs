use ferry_proto::{Event, Hlc, NodeId, Origin, Priority};
use ferry_wal::{Keyring, NewEvent, Wal, WalError, WalKey, WalOptions};
use std::path::Path;

fn origin(n: u8) -> Origin {
    Origin {
        node: NodeId([n; 16]),
        epoch: 7,
    }
}

/// Varied payloads, shaped like clinic events, so nothing compresses to nothing.
fn new_event(i: u64) -> NewEvent {
    let payload = format!(
        r#"{{"type":"vitals","patient_id":"BT-TH-{:06}","systolic":{},"pulse":{},"note":"visit {i}"}}"#,
        (i * 7919) % 1_000_000,
        90 + i % 90,
        48 + (i * 31) % 80
    );
    NewEvent {
        topic: "clinic/vitals".into(),
        priority: Priority::Normal,
        payload: payload.into_bytes(),
    }
}

fn opts(dir: &Path, keys: Keyring) -> WalOptions {
    WalOptions::new(dir, keys, origin(1))
}

fn open(dir: &Path, key: &WalKey) -> Wal {
    Wal::open(opts(dir, Keyring::single(key.clone()))).expect("open WAL")
}

fn all_events(wal: &Wal) -> Vec<Event> {
    let mut out = Vec::new();
    for (o, set) in wal.summary().0 {
        for &(a, b) in set.ranges() {
            out.extend(wal.read_range(&o, a, b, usize::MAX).expect("read"));
        }
    }
    out
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn appends_survive_reopen_and_are_encrypted_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    let written = {
        let wal = open(dir.path(), &key);
        let mut all = Vec::new();
        for chunk in (1..=500u64).collect::<Vec<_>>().chunks(50) {
            all.extend(
                wal.append_local_blocking(chunk.iter().map(|i| new_event(*i)).collect())
                    .unwrap(),
            );
        }
        all
    };
    assert_eq!(
        written.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=500).collect::<Vec<_>>()
    );
    assert!(written.windows(2).all(|w| w[0].hlc < w[1].hlc));

    let wal = open(dir.path(), &key);
    assert_eq!(all_events(&wal), written);
    assert_eq!(
        wal.read_range(&origin(1), 100, 109, usize::MAX).unwrap(),
        written[99..109].to_vec()
    );
    let more = wal.append_local_blocking(vec![new_event(501)]).unwrap();
    assert_eq!(more[0].seq, 501, "sequence continues after reopen");
    assert!(more[0].hlc > written[499].hlc, "clock continues after reopen");

    for (_, bytes) in snapshot(dir.path()) {
        assert!(
            !bytes.windows(10).any(|w| w == b"patient_id"),
            "plaintext payload found on disk"
        );
    }
}

#[test]
fn plaintext_mode_and_segment_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path(), Keyring::plaintext());
    o.segment_bytes = 8 * 1024;
    let wal = Wal::open(o).unwrap();
    for i in 0..40 {
        wal.append_local_blocking((0..10).map(|j| new_event(i * 10 + j)).collect())
            .unwrap();
    }
    assert!(wal.stats().segments > 5);
    let events = all_events(&wal);
    assert_eq!(events.len(), 400);
    drop(wal);
    let o = opts(dir.path(), Keyring::plaintext());
    assert_eq!(all_events(&Wal::open(o).unwrap()), events);
}

#[test]
fn replicated_appends_are_idempotent_and_may_arrive_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    let wal = open(dir.path(), &key);
    let ev = |seq: u64| Event {
        origin: origin(2),
        seq,
        hlc: Hlc::new(1_000 + seq, 0),
        topic: "t".into(),
        priority: Priority::Bulk,
        payload: format!("remote {seq}").into_bytes(),
    };
    let r = wal.append_replicated_blocking((50..=60).map(ev).collect()).unwrap();
    assert_eq!((r.stored, r.duplicates), (11, 0));
    let r = wal
        .append_replicated_blocking((1..=55).chain(55..=56).map(ev).collect())
        .unwrap();
    assert_eq!((r.stored, r.duplicates), (49, 8));
    assert_eq!(wal.summary().get(&origin(2)).unwrap().ranges(), &[(1, 60)]);
    assert_eq!(
        wal.read_range(&origin(2), 45, 52, 100).unwrap(),
        (45..=52).map(ev).collect::<Vec<_>>()
    );
    drop(wal);
    let wal = open(dir.path(), &key);
    assert_eq!(wal.stats().events, 60);
    assert_eq!(
        wal.read_range(&origin(2), 1, 60, 1000).unwrap(),
        (1..=60).map(ev).collect::<Vec<_>>()
    );
}

#[test]
fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let wal = std::sync::Arc::new(open(dir.path(), &WalKey::generate()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    wal.append_local_blocking(vec![new_event(t * 1000 + i)]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = wal.stats();
    assert_eq!(stats.events, 800);
    assert!(
        stats.commits < 800,
        "800 appends took {} fsyncs: no group commit",
        stats.commits
    );
    println!("800 concurrent appends, {} group commits", stats.commits);
}

/// Cut the file at every byte inside the last two groups: what was committed
/// before stays, what was cut is gone, nothing half-written is visible.
#[test]
fn torn_tails_are_truncated_at_every_byte() {
    let src = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    let (committed, full_len, cut_from) = {
        let wal = open(src.path(), &key);
        for i in 0..5 {
            wal.append_local_blocking((0..4).map(|j| new_event(i * 4 + j)).collect())
                .unwrap();
        }
        let before_last_two = wal.stats().bytes;
        wal.append_local_blocking(vec![new_event(100), new_event(101)]).unwrap();
        wal.append_local_blocking(vec![new_event(102)]).unwrap();
        (all_events(&wal), wal.stats().bytes, before_last_two)
    };
    let seg = snapshot(src.path()).remove(0);
    for cut in cut_from..full_len {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(&seg.0), &seg.1[..cut as usize]).unwrap();
        let wal = open(dir.path(), &key);
        let got = all_events(&wal);
        assert!(got.len() >= 20 && got.len() <= 23, "cut at {cut}: {} events", got.len());
        assert_eq!(got[..], committed[..got.len()], "cut at {cut}");
        let after = wal.append_local_blocking(vec![new_event(999)]).unwrap();
        assert_eq!(after[0].seq, got.len() as u64 + 1);
        drop(wal);
        assert_eq!(
            all_events(&open(dir.path(), &key)).len(),
            got.len() + 1,
            "cut at {cut}: append after recovery"
        );
    }
}

#[test]
fn garbage_after_the_last_commit_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    open(dir.path(), &key)
        .append_local_blocking((0..10).map(new_event).collect())
        .unwrap();
    let (name, mut bytes) = snapshot(dir.path()).remove(0);
    bytes.extend_from_slice(&[0u8; 300]);
    bytes.extend_from_slice(&[0xAB; 77]);
    std::fs::write(dir.path().join(&name), &bytes).unwrap();
    assert_eq!(all_events(&open(dir.path(), &key)).len(), 10);
}

#[test]
fn corruption_in_the_middle_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    {
        let wal = open(dir.path(), &key);
        for i in 0..10 {
            wal.append_local_blocking(vec![new_event(i)]).unwrap();
        }
    }
    let (name, bytes) = snapshot(dir.path()).remove(0);
    for (pos, what) in [
        (32 + 2, "length field"),
        (32 + 60, "record body"),
        (bytes.len() / 2, "middle"),
    ] {
        let mut damaged = bytes.clone();
        damaged[pos] ^= 0x40;
        std::fs::write(dir.path().join(&name), &damaged).unwrap();
        match Wal::open(opts(dir.path(), Keyring::single(key.clone()))) {
            Err(WalError::Corrupt { path, offset, .. }) => {
                assert!(path.ends_with(&name), "{what}");
                assert!(
                    offset <= pos as u64 && offset >= 32,
                    "{what}: offset {offset} for damage at {pos}"
                );
            }
            Err(e) => panic!("{what}: unexpected error {e}"),
            Ok(_) => panic!("{what}: damage at {pos} was silently accepted"),
        }
        assert_eq!(
            std::fs::read(dir.path().join(&name)).unwrap(),
            damaged,
            "{what}: file was modified"
        );
    }
}

#[test]
fn wrong_key_is_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path(), &WalKey::generate())
        .append_local_blocking(vec![new_event(1)])
        .unwrap();
    let before = snapshot(dir.path());
    let err = Wal::open(opts(dir.path(), Keyring::single(WalKey::generate())))
        .err()
        .expect("must fail");
    assert!(matches!(err, WalError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains("right key file"));
    assert_eq!(snapshot(dir.path()), before);
}

/// A lock held for a moment (a child process between fork and exec holds
/// every descriptor its parent had open) does not fail the open.
#[test]
fn a_lock_held_for_a_moment_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    drop(open(dir.path(), &key));
    let holder = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("LOCK"))
        .unwrap();
    holder.lock().unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(holder);
    });
    let wal = Wal::open(opts(dir.path(), Keyring::single(key)));
    release.join().unwrap();
    assert!(wal.is_ok(), "{:?}", wal.err());
}

#[test]
fn second_opener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    let _wal = open(dir.path(), &key);
    let err = Wal::open(opts(dir.path(), Keyring::single(key.clone())))
        .err()
        .expect("must fail");
    assert!(matches!(err, WalError::Locked { .. }), "{err}");
    let mut ro = opts(dir.path(), Keyring::single(key));
    ro.read_only = true;
    assert!(Wal::open(ro).is_ok(), "read-only opens alongside the writer");
}

#[test]
fn rekey_keeps_every_event_in_order_even_when_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = WalKey::generate();
    let k2 = WalKey::generate();
    let mut o = opts(dir.path(), Keyring::single(k1.clone()));
    o.segment_bytes = 4096;
    let before = {
        let wal = Wal::open(o).unwrap();
        for i in 0..30 {
            wal.append_local_blocking((0..5).map(|j| new_event(i * 5 + j)).collect())
                .unwrap();
        }
        all_events(&wal)
    };
    let original = snapshot(dir.path());
    assert!(original.len() > 4);

    // Interrupted: rekey a copy, then mix its first segments with the originals.
    let copy = tempfile::tempdir().unwrap();
    for (name, bytes) in &original {
        std::fs::write(copy.path().join(name), bytes).unwrap();
    }
    ferry_wal::rekey(copy.path(), &Keyring::single(k1.clone()), &k2).unwrap();
    let rekeyed = snapshot(copy.path());
    for (name, bytes) in rekeyed.iter().take(original.len() / 2) {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let both = Keyring {
        current: Some(k2.clone()),
        previous: vec![k1.clone()],
    };
    let wal = Wal::open(opts(dir.path(), both.clone())).unwrap();
    assert_eq!(all_events(&wal), before, "half-rekeyed WAL reads with both keys");
    drop(wal);

    let n = ferry_wal::rekey(dir.path(), &both, &k2).unwrap();
    assert_eq!(
        n,
        original.len() - original.len() / 2,
        "resumed rekey rewrites only what is left"
    );
    assert_eq!(all_events(&open(dir.path(), &k2)), before);
    assert!(matches!(
        Wal::open(opts(dir.path(), Keyring::single(k1))),
        Err(WalError::WrongKey { .. })
    ));
}

/// Found by the `wal_open` fuzz target: the writer continued the last
/// segment with its own key although the segment's header names another, so
/// what it wrote could not be read back. It must start a new segment.
#[test]
fn appends_after_a_key_change_go_to_a_segment_under_that_key() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (WalKey::generate(), WalKey::generate());
    Wal::open(opts(dir.path(), Keyring::plaintext()))
        .unwrap()
        .append_local_blocking(vec![new_event(1)])
        .unwrap();
    // Encryption turned on.
    let wal = open(dir.path(), &k1);
    wal.append_local_blocking(vec![new_event(2)]).unwrap();
    wal.append_local_once_blocking("k", vec![new_event(3)]).unwrap();
    assert_eq!(wal.stats().segments, 2);
    drop(wal);
    let wal = open(dir.path(), &k1);
    assert_eq!(all_events(&wal).len(), 3);
    assert!(
        wal.append_local_once_blocking("k", vec![new_event(3)])
            .unwrap()
            .replayed
    );
    drop(wal);
    // A rekey that rewrote every segment but was cut short before the new
    // key replaced the old: the node opens with the old key as current.
    ferry_wal::rekey(dir.path(), &Keyring::single(k1.clone()), &k2).unwrap();
    let both = Keyring {
        current: Some(k1.clone()),
        previous: vec![k2.clone()],
    };
    let wal = Wal::open(opts(dir.path(), both.clone())).unwrap();
    wal.append_local_blocking(vec![new_event(4)]).unwrap();
    drop(wal);
    let wal = Wal::open(opts(dir.path(), both)).unwrap();
    assert_eq!(all_events(&wal).len(), 4);
    assert_eq!(wal.stats().segments, 3);
}

/// Found by the `wal_open` fuzz target: an event at seq u64::MAX (a damaged
/// file, or a peer sending this node's own origin) overflowed the index and
/// the next local seq. It is stored and read like any other; the local log
/// then refuses new events instead of wrapping to seq 0.
#[test]
fn an_event_at_the_largest_seq_is_held_and_ends_the_local_log() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    let wal = open(dir.path(), &key);
    let ev = |seq: u64| Event {
        origin: origin(1),
        seq,
        hlc: Hlc::new(1_000, 0),
        topic: "t".into(),
        priority: Priority::Normal,
        payload: format!("at {seq}").into_bytes(),
    };
    wal.append_replicated_blocking(vec![ev(u64::MAX - 1)]).unwrap();
    let last = wal.append_local_blocking(vec![new_event(1)]).unwrap();
    assert_eq!(last[0].seq, u64::MAX);
    let err = wal.append_local_blocking(vec![new_event(2)]).unwrap_err();
    assert!(matches!(err, WalError::SeqExhausted(_)), "{err}");
    assert_eq!(wal.append_local_blocking(vec![]).unwrap(), vec![]);
    drop(wal);
    let wal = open(dir.path(), &key);
    let got = wal.read_range(&origin(1), u64::MAX - 5, u64::MAX, 10).unwrap();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [u64::MAX - 1, u64::MAX]);
    assert!(matches!(
        wal.append_local_blocking(vec![new_event(3)]),
        Err(WalError::SeqExhausted(_))
    ));
    // Other origins are unaffected.
    let other = Event {
        origin: origin(2),
        ..ev(u64::MAX)
    };
    assert_eq!(wal.append_replicated_blocking(vec![other]).unwrap().stored, 1);
}
