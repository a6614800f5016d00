//! Byte-capped range reads over events of mixed sizes.

mod common;

use common::{new_event, origin};
use ferry_proto::{Event, Hlc, Priority};
use ferry_wal::{Keyring, Wal, WalKey, WalOptions};

const MIB: usize = 1 << 20;

/// Payload sizes of the local log: clinic forms beside scanned photos.
const SIZES: &[usize] = &[
    120,
    MIB,
    300 << 10,
    5,
    700 << 10,
    MIB,
    1,
    64 << 10,
    0,
    900 << 10,
    40,
    40,
    40,
    MIB,
    2_000,
    512 << 10,
];

/// What `read_range_capped` must return, from the payload sizes alone.
fn expected(sizes: &[usize], first: u64, last: u64, max_events: usize, max_bytes: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for seq in first.max(1)..=last.min(sizes.len() as u64) {
        if out.len() >= max_events {
            break;
        }
        total += sizes[seq as usize - 1];
        if total > max_bytes && !out.is_empty() {
            break;
        }
        out.push(seq);
    }
    out
}

fn payload(seq: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq * 31 + i * 7) as u8).collect()
}

#[test]
fn capped_reads_stop_at_the_byte_cap_and_always_make_progress() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    let mut o = WalOptions::new(dir.path(), Keyring::single(key), origin(1));
    o.segment_bytes = 2 * MIB as u64; // several segments
    let wal = Wal::open(o).unwrap();
    // Another origin's small events between ours, so reads skip records.
    let remote = |seq: u64| Event {
        origin: origin(2),
        seq,
        hlc: Hlc::new(1_000 + seq, 0),
        topic: "t".into(),
        priority: Priority::Normal,
        payload: vec![9; 50],
    };
    for (i, &len) in SIZES.iter().enumerate() {
        wal.append_local_blocking(vec![new_event(payload(i + 1, len))]).unwrap();
        wal.append_replicated_blocking(vec![remote(i as u64 + 1)]).unwrap();
    }
    assert!(wal.stats().segments > 2, "{:?}", wal.stats());
    let me = origin(1);
    let n = SIZES.len() as u64;

    let caps = [
        0,
        1,
        100,
        64 << 10,
        300 << 10,
        MIB - 1,
        MIB,
        MIB + 120,
        2 * MIB,
        4 * MIB,
        usize::MAX,
    ];
    for first in 1..=n {
        for last in [first, first + 2, n + 5] {
            for max_events in [1, 3, 128] {
                for &cap in &caps {
                    let got = wal.read_range_capped(&me, first, last, max_events, cap).unwrap();
                    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
                    assert_eq!(
                        seqs,
                        expected(SIZES, first, last, max_events, cap),
                        "range {first}..={last}, {max_events} events, {cap} bytes"
                    );
                    for e in &got {
                        assert_eq!(e.payload, payload(e.seq as usize, SIZES[e.seq as usize - 1]));
                    }
                }
            }
        }
    }
    assert!(wal.read_range_capped(&me, 1, n, 0, usize::MAX).unwrap().is_empty());
    assert!(wal.read_range_capped(&me, 5, 4, 10, usize::MAX).unwrap().is_empty());

    // A sender filling 256 KiB frames gets every event once, in order.
    let mut next = 1;
    let mut frames = 0;
    let mut seen = Vec::new();
    while next <= n {
        let batch = wal.read_range_capped(&me, next, n, 128, 256 << 10).unwrap();
        let bytes: usize = batch.iter().map(|e| e.payload.len()).sum();
        assert!(bytes <= 256 << 10 || batch.len() == 1, "frame of {bytes} bytes");
        next = batch.last().unwrap().seq + 1;
        seen.extend(batch.iter().map(|e| e.seq));
        frames += 1;
    }
    assert_eq!(seen, (1..=n).collect::<Vec<_>>());
    println!(
        "{n} events of {} bytes in {frames} capped reads",
        SIZES.iter().sum::<usize>()
    );

    // The uncapped read is unchanged.
    assert_eq!(wal.read_range(&me, 1, n, usize::MAX).unwrap().len(), SIZES.len());
    assert_eq!(wal.read_range(&origin(2), 3, 6, 2).unwrap().len(), 2);
}
