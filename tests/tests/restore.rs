//! A node restored from an old backup must not reuse sequence numbers its
//! earlier self already gave out: it starts a new log epoch.

use ferry::datadir::DataDir;
use ferry::pki::Role;
use ferry_proto::Priority;
use ferry_tests::{all_events, init_logging, start, workload, write_events, Deployment};
use std::path::Path;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A disk image put back: every file as it was, with the identity the node
/// recorded for its epoch file (a `dd` of the card keeps inodes and change
/// times, which a copy in a test cannot, so the record is made to match).
fn image_restore(backup: &Path, dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    std::fs::remove_dir_all(dir).unwrap();
    copy_dir(backup, dir);
    let m = std::fs::metadata(dir.join("log-epoch")).unwrap();
    let identity = format!("{} {} {}.{:09}", m.dev(), m.ino(), m.ctime(), m.ctime_nsec());
    std::fs::write(dir.join("log-epoch.id"), identity).unwrap();
    assert!(
        dir.join("wal").join("SEALED").exists(),
        "the image was taken of a stopped node"
    );
}

/// Writes 10, backs up, writes 10 more and syncs them to the hub, then
/// restores the backup (`restore` decides how) and writes 5 more.
async fn restore_scenario(restore: impl Fn(&Path, &Path), sync_before_writing: bool) {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    let hub = start(&dep.enroll("hub", Role::Hub).unwrap(), None).await.unwrap();
    let dir = dep.enroll("clinic", Role::Clinic).unwrap();
    let backup = dep.tmp.path().join("backup");
    let events = workload("C", 25, 1).unwrap();

    let clinic = start(&dir, None).await.unwrap();
    write_events(&clinic.ctx.wal, events[..10].to_vec(), Priority::Normal)
        .await
        .unwrap();
    let first_origin = clinic.ctx.wal.local_origin();
    clinic.shutdown().await;
    drop(clinic);
    copy_dir(&dir.root, &backup);
    let clinic = start(&dir, None).await.unwrap();
    write_events(&clinic.ctx.wal, events[10..20].to_vec(), Priority::Normal)
        .await
        .unwrap();
    let second_origin = clinic.ctx.wal.local_origin();
    clinic.sync_once(hub.local_addr().unwrap()).await.unwrap();
    clinic.shutdown().await;
    drop(clinic);

    restore(&backup, &dir.root);
    let clinic = start(&DataDir::new(&dir.root), None).await.unwrap();
    // Either way the 5 new events must not collide with the 20 before.
    if sync_before_writing {
        clinic.sync_once(hub.local_addr().unwrap()).await.unwrap();
    }
    write_events(&clinic.ctx.wal, events[20..].to_vec(), Priority::Normal)
        .await
        .unwrap();
    let new_origin = clinic.ctx.wal.local_origin();
    assert!(
        new_origin != first_origin && new_origin != second_origin,
        "the restored node wrote on a log it had written before"
    );
    assert_eq!(new_origin.node, first_origin.node);
    clinic.sync_once(hub.local_addr().unwrap()).await.unwrap();

    // Every event once, at both nodes, in the log its session wrote.
    let stored = all_events(&hub.ctx.wal).unwrap();
    let mut payloads: Vec<_> = stored
        .iter()
        .filter(|((o, _), _)| o.node == first_origin.node)
        .map(|((o, s), e)| (*o, *s, ferry_proto::event::decode_event(e).unwrap().payload))
        .collect();
    payloads.sort_by_key(|(o, s, _)| (*o != first_origin, *o != second_origin, *s));
    assert_eq!(
        payloads.iter().map(|(_, _, p)| p.clone()).collect::<Vec<_>>(),
        events,
        "an event was lost, written twice or overwritten"
    );
    for (range, origin) in [(0..10, first_origin), (10..20, second_origin), (20..25, new_origin)] {
        assert!(
            payloads[range].iter().all(|(o, _, _)| *o == origin),
            "an event is not in the log that wrote it"
        );
    }
    assert_eq!(all_events(&clinic.ctx.wal).unwrap(), stored);
    hub.shutdown().await;
    clinic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_level_restore_starts_a_new_epoch_at_open_before_any_write() {
    restore_scenario(
        |backup, dir| {
            std::fs::remove_dir_all(dir).unwrap();
            copy_dir(backup, dir);
        },
        false,
    )
    .await;
}

/// A restore that copies the backup over the live files (`cp -r backup/. dir`)
/// writes into the same inodes, so a file's place on disk alone cannot tell
/// a restored data directory from the one the node left. This is also what
/// a file-level restore looks like when the file system hands the freed
/// inodes out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_written_over_the_live_files_starts_a_new_epoch() {
    restore_scenario(
        |backup, dir| {
            let epoch_file = dir.join("log-epoch");
            let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
            let before = inode(&epoch_file);
            copy_dir(backup, dir);
            assert_eq!(inode(&epoch_file), before, "the restore must reuse the inode");
        },
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_restored_node_that_syncs_first_writes_a_new_log() {
    restore_scenario(image_restore, true).await;
}

/// Nothing on the restored card tells the node it went back in time, and no
/// peer has spoken yet when it writes: only a new log at every start keeps
/// these numbers from colliding with those the hub holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_restored_node_that_writes_before_any_sync_writes_a_new_log() {
    restore_scenario(image_restore, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_that_lost_its_synced_tail_writes_a_new_epoch_before_any_sync() {
    // An SD card that acknowledged fsyncs and lost them: the segment ends
    // at an earlier commit, so recovery finds nothing wrong, and the events
    // the hub holds are gone here. Only the seal the clean close left, which
    // no longer matches, tells the node not to write on.
    restore_scenario(
        |backup, dir| {
            let segment = |d: &Path| d.join("wal").join("00000001.seg");
            let earlier = std::fs::metadata(segment(backup)).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(segment(dir)).unwrap();
            assert!(f.metadata().unwrap().len() > earlier);
            f.set_len(earlier).unwrap();
        },
        false,
    )
    .await;
}

/// The SD card died with everything on it but the key and certificate,
/// which were kept apart: `ferry init --key --cert --restore-from` makes the
/// node anew with the same id, and one sync gives back every event it held,
/// byte for byte; what it writes next goes to a new log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rebuilt_with_its_key_is_restored_from_the_hub() {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    let hub = start(&dep.enroll("hub", Role::Hub).unwrap(), None).await.unwrap();
    write_events(&hub.ctx.wal, workload("H", 5, 2).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let dir = dep.enroll("clinic", Role::Clinic).unwrap();
    let clinic = start(&dir, None).await.unwrap();
    let old_origin = clinic.ctx.wal.local_origin();
    write_events(&clinic.ctx.wal, workload("C", 30, 1).unwrap(), Priority::Normal)
        .await
        .unwrap();
    clinic.sync_once(hub.local_addr().unwrap()).await.unwrap();
    let before = all_events(&clinic.ctx.wal).unwrap();
    assert_eq!(before.len(), 35);
    clinic.shutdown().await;
    drop(clinic);

    let saved = dep.tmp.path().join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    std::fs::copy(dir.path("node.key"), saved.join("node.key")).unwrap();
    let bundle =
        std::fs::read_to_string(dir.path("node.crt")).unwrap() + &std::fs::read_to_string(dir.path("ca.crt")).unwrap();
    std::fs::write(saved.join("node.crt"), bundle).unwrap();
    std::fs::remove_dir_all(&dir.root).unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_field-bench"))
        .arg("__ferry")
        .arg("--data-dir")
        .arg(&dir.root)
        .args(["init", "--name", "clinic", "--key"])
        .arg(saved.join("node.key"))
        .arg("--cert")
        .arg(saved.join("node.crt"))
        .arg("--restore-from")
        .arg(hub.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("35 events, 30 of them written by this node before"),
        "{stdout}"
    );

    let restored = DataDir::new(&dir.root);
    assert_eq!(
        restored.identity().unwrap().node_id,
        old_origin.node,
        "the node kept its id"
    );
    let clinic = start(&restored, None).await.unwrap();
    assert_eq!(
        all_events(&clinic.ctx.wal).unwrap(),
        before,
        "not restored byte for byte"
    );
    write_events(&clinic.ctx.wal, workload("C", 1, 3).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let new_origin = clinic.ctx.wal.local_origin();
    assert_ne!(new_origin, old_origin, "the restored node wrote on its old log");
    assert_eq!(clinic.ctx.wal.have(&new_origin).ranges(), &[(1, 1)]);
    clinic.shutdown().await;
    hub.shutdown().await;
}
