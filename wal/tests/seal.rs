//! The own-log guard: a WAL closed cleanly vouches for its tail; one that
//! was not (a crash, a card that lost fsynced writes, a tail cut off) sends
//! the next local write to a new log.

mod common;

use common::{new_event, origin};
use ferry_proto::Origin;
use ferry_wal::{Keyring, Wal, WalKey, WalOptions};
use std::path::Path;

fn open(dir: &Path, key: &WalKey) -> Wal {
    Wal::open(WalOptions::new(dir, Keyring::single(key.clone()), origin(1))).expect("open WAL")
}

fn write(wal: &Wal, n: usize) {
    for i in 0..n {
        wal.append_local_blocking(vec![new_event(format!("event {i}"))])
            .unwrap();
    }
}

fn segment(dir: &Path) -> std::path::PathBuf {
    dir.join("00000001.seg")
}

#[test]
fn a_clean_close_is_vouched_for_and_a_first_open_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    let wal = open(dir.path(), &key);
    assert!(
        !wal.closed_cleanly(),
        "a WAL never closed before has nothing to vouch for"
    );
    write(&wal, 3);
    wal.close();
    let wal = open(dir.path(), &key);
    assert!(wal.closed_cleanly());
    drop(wal);
    assert!(open(dir.path(), &key).closed_cleanly(), "dropping closes cleanly too");
}

#[test]
fn an_open_that_ends_without_a_close_is_not_vouched_for() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    let wal = open(dir.path(), &key);
    write(&wal, 3);
    // The seal is taken at open: while the WAL is open there is none, which
    // is what a process killed now leaves behind. A second writer cannot
    // open the WAL, so look at the directory directly.
    assert!(!dir.path().join("SEALED").exists());
    std::mem::forget(wal);
}

#[test]
fn a_tail_cut_off_after_a_clean_close_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    let wal = open(dir.path(), &key);
    write(&wal, 1);
    let one_group = std::fs::metadata(segment(dir.path())).unwrap().len();
    write(&wal, 4);
    wal.close();
    // The card "lost" four acknowledged groups: the file ends at a commit,
    // so recovery finds nothing wrong with it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(segment(dir.path()))
        .unwrap();
    f.set_len(one_group).unwrap();
    drop(f);
    let wal = open(dir.path(), &key);
    assert_eq!(wal.have(&origin(1)).last(), Some(1));
    assert!(
        !wal.closed_cleanly(),
        "a seal over five events vouched for a log of one"
    );
}

#[test]
fn an_unconfirmed_tail_moves_the_first_local_write_to_the_new_log() {
    let dir = tempfile::tempdir().unwrap();
    let key = WalKey::generate();
    let wal = open(dir.path(), &key);
    write(&wal, 2);
    let next = Origin { epoch: 8, ..origin(1) };
    wal.set_unconfirmed_tail(next);
    assert!(wal.tail_unconfirmed());
    // Replicated events do not move the log.
    assert_eq!(wal.local_origin(), origin(1));
    let written = wal.append_local_blocking(vec![new_event("after the crash")]).unwrap();
    assert_eq!((written[0].origin, written[0].seq), (next, 1));
    assert_eq!(wal.local_origin(), next);
    assert!(!wal.tail_unconfirmed());
    write(&wal, 1);
    assert_eq!(wal.have(&next).last(), Some(2));
    assert_eq!(wal.have(&origin(1)).last(), Some(2), "the old log is left as it was");
}
