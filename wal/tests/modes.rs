//! Every file the WAL writes is 0600 and its directory 0700, checked on real
//! files.

mod common;

use common::{new_event, origin};
use ferry_wal::{Keyring, Wal, WalKey, WalOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn set_mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Every entry of `dir` with its mode, sorted by name.
fn modes(dir: &Path) -> Vec<(String, u32)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), mode(&p))
        })
        .collect();
    out.sort();
    out
}

fn fill(dir: &Path, key: &WalKey) {
    let mut o = WalOptions::new(dir, Keyring::single(key.clone()), origin(1));
    o.segment_bytes = 4096;
    let wal = Wal::open(o).unwrap();
    for i in 0..20 {
        wal.append_local_blocking(
            (0..5)
                .map(|j| new_event(format!("event {i}.{j} {}", "x".repeat(100))))
                .collect(),
        )
        .unwrap();
    }
    wal.append_local_once_blocking("k", vec![new_event("keyed")]).unwrap();
    assert!(wal.stats().segments > 3);
}

#[test]
fn a_new_wal_and_its_key_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    set_mode(tmp.path(), 0o755);
    let dir = tmp.path().join("data").join("wal");
    let key = WalKey::generate();
    let key_path = tmp.path().join("wal.key");
    key.save_new(&key_path).unwrap();
    assert_eq!(mode(&key_path), 0o600);
    fill(&dir, &key);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&tmp.path().join("data")), 0o700, "a parent the WAL created");
    let files = modes(&dir);
    assert!(files.iter().any(|(n, _)| n == "LOCK"));
    assert!(files.iter().filter(|(n, _)| n.ends_with(".seg")).count() > 3);
    for (name, m) in &files {
        assert_eq!(*m, 0o600, "{name} is {m:o}");
    }
}

#[test]
fn rekeyed_segments_are_private_even_over_a_stale_temporary_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let (k1, k2) = (WalKey::generate(), WalKey::generate());
    fill(&dir, &k1);
    // What an interrupted rekey by an older build left: a world-readable
    // temporary copy of segment 1.
    let stale = dir.join("00000001.seg.rekey");
    std::fs::write(&stale, b"half a segment").unwrap();
    set_mode(&stale, 0o644);
    let n = ferry_wal::rekey(&dir, &Keyring::single(k1), &k2).unwrap();
    assert!(n > 3);
    assert!(!stale.exists());
    for (name, m) in modes(&dir) {
        assert_eq!(m, 0o600, "{name} is {m:o} after rekey");
    }
    let wal = Wal::open(WalOptions::new(&dir, Keyring::single(k2), origin(1))).unwrap();
    assert_eq!(wal.stats().events, 101);
}

#[test]
fn an_older_builds_open_files_are_made_private_by_a_writer_not_a_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let key = WalKey::generate();
    fill(&dir, &key);
    // As an older build left them.
    set_mode(&dir, 0o755);
    for (name, _) in modes(&dir) {
        set_mode(&dir.join(name), 0o644);
    }
    let mut ro = WalOptions::new(&dir, Keyring::single(key.clone()), origin(1));
    ro.read_only = true;
    drop(Wal::open(ro).unwrap());
    assert_eq!(mode(&dir), 0o755, "a reader changes nothing");
    assert!(modes(&dir).iter().all(|(_, m)| *m == 0o644));

    let wal = Wal::open(WalOptions::new(&dir, Keyring::single(key), origin(1))).unwrap();
    assert_eq!(mode(&dir), 0o700);
    for (name, m) in modes(&dir) {
        assert_eq!(m, 0o600, "{name} is {m:o} after a writer opened it");
    }
    assert_eq!(wal.stats().events, 101);
}
