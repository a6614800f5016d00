//! The WAL reads time only from `WalOptions::clock`.

mod common;

use common::{all_events, new_event, origin, FakeClock, DAY_MS};
use ferry_proto::{Event, Hlc, Priority};
use ferry_wal::{Keyring, Wal, WalKey, WalOptions};
use std::path::Path;

/// 2020-09-13: years before this machine's clock, so a WAL that read the
/// system clock instead would stamp visibly different times.
const T0: u64 = 1_600_000_000_000;

fn open(dir: &Path, key: &WalKey, clock: &FakeClock) -> Wal {
    let mut o = WalOptions::new(dir, Keyring::single(key.clone()), origin(1));
    o.clock = clock.source();
    Wal::open(o).expect("open WAL")
}

#[test]
fn local_events_carry_the_injected_time() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    let clock = FakeClock::at(T0);
    let wal = open(dir.path(), &key, &clock);
    let first = wal
        .append_local_blocking(vec![new_event("a"), new_event("b"), new_event("c")])
        .unwrap();
    let stamps: Vec<_> = first.iter().map(|e| (e.hlc.wall_ms(), e.hlc.logical())).collect();
    assert_eq!(stamps, [(T0, 0), (T0, 1), (T0, 2)]);

    clock.advance(5_000);
    let later = wal.append_local_blocking(vec![new_event("d")]).unwrap();
    assert_eq!(later[0].hlc, Hlc::new(T0 + 5_000, 0));
    drop(wal);

    // What was stamped is what is stored.
    let wal = open(dir.path(), &key, &clock);
    let stored: Vec<_> = all_events(&wal).iter().map(|e| e.hlc).collect();
    assert_eq!(
        stored,
        [
            Hlc::new(T0, 0),
            Hlc::new(T0, 1),
            Hlc::new(T0, 2),
            Hlc::new(T0 + 5_000, 0)
        ]
    );
}

#[test]
fn a_clock_that_jumps_back_a_day_still_gives_increasing_stamps_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    let clock = FakeClock::at(T0);
    let mut stamps = Vec::new();
    {
        let wal = open(dir.path(), &key, &clock);
        for i in 0..10 {
            clock.advance(1_000);
            stamps.extend(
                wal.append_local_blocking(vec![new_event(format!("before {i}"))])
                    .unwrap(),
            );
        }
        // Backwards while running.
        clock.set(T0 - DAY_MS);
        stamps.extend(wal.append_local_blocking(vec![new_event("after jump")]).unwrap());
    }
    // And backwards again across a restart (NTP corrects a clinic box after a
    // power cut reset its RTC).
    clock.set(T0 - 2 * DAY_MS);
    let wal = open(dir.path(), &key, &clock);
    for i in 0..10 {
        stamps.extend(
            wal.append_local_blocking(vec![new_event(format!("after restart {i}"))])
                .unwrap(),
        );
    }
    let hlcs: Vec<Hlc> = stamps.iter().map(|e| e.hlc).collect();
    assert!(hlcs.windows(2).all(|w| w[0] < w[1]), "stamps went backwards: {hlcs:?}");
    // The clock is held at the latest time seen, not at the jumped-back one.
    assert_eq!(hlcs.last().unwrap().wall_ms(), T0 + 10_000);
    assert_eq!(all_events(&wal), stamps);
}

#[test]
fn replicated_stamps_are_judged_against_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    let clock = FakeClock::at(T0);
    let wal = open(dir.path(), &key, &clock);
    let remote = |seq: u64, wall: u64| Event {
        origin: origin(2),
        seq,
        hlc: Hlc::new(wall, 0),
        topic: "t".into(),
        priority: Priority::Normal,
        payload: b"remote".to_vec(),
    };
    // An hour ahead of this node: merged, so the next local stamp sorts after.
    wal.append_replicated_blocking(vec![remote(1, T0 + 3_600_000)]).unwrap();
    let next = wal.append_local_blocking(vec![new_event("x")]).unwrap();
    assert!(next[0].hlc > Hlc::new(T0 + 3_600_000, 0), "{:?}", next[0].hlc);

    // Two days ahead of the injected time (still in the past of the machine's
    // clock): too far ahead to merge.
    wal.append_replicated_blocking(vec![remote(2, T0 + 2 * DAY_MS)])
        .unwrap();
    let next = wal.append_local_blocking(vec![new_event("y")]).unwrap();
    assert!(next[0].hlc < Hlc::new(T0 + DAY_MS, 0), "{:?}", next[0].hlc);
}
