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
    let old_origin = clinic.ctx.wal.local_origin();
    write_events(&clinic.ctx.wal, events[..10].to_vec(), Priority::Normal)
        .await
        .unwrap();
    clinic.shutdown().await;
    drop(clinic);
    copy_dir(&dir.root, &backup);
    let clinic = start(&dir, None).await.unwrap();
    write_events(&clinic.ctx.wal, events[10..20].to_vec(), Priority::Normal)
        .await
        .unwrap();
    clinic.sync_once(hub.local_addr().unwrap()).await.unwrap();
    clinic.shutdown().await;
    drop(clinic);

    restore(&backup, &dir.root);
    let clinic = start(&DataDir::new(&dir.root), None).await.unwrap();
    // Either way the 5 new events must not collide with seqs 11..20.
    if sync_before_writing {
        clinic.sync_once(hub.local_addr().unwrap()).await.unwrap();
    }
    write_events(&clinic.ctx.wal, events[20..].to_vec(), Priority::Normal)
        .await
        .unwrap();
    let new_origin = clinic.ctx.wal.local_origin();
    assert_ne!(new_origin, old_origin, "the restored node kept writing its old log");
    assert_eq!(new_origin.node, old_origin.node);
    clinic.sync_once(hub.local_addr().unwrap()).await.unwrap();

    for node in [&hub, &clinic] {
        let s = node.ctx.wal.summary();
        assert_eq!(s.get(&old_origin).unwrap().ranges(), &[(1, 20)]);
        assert_eq!(s.get(&new_origin).unwrap().ranges(), &[(1, 5)]);
    }
    let stored = all_events(&hub.ctx.wal).unwrap();
    let payload = |o, s| ferry_proto::event::decode_event(&stored[&(o, s)]).unwrap().payload;
    for (i, e) in events.iter().enumerate() {
        let got = if i < 20 {
            payload(old_origin, i as u64 + 1)
        } else {
            payload(new_origin, i as u64 - 19)
        };
        assert_eq!(&got, e, "event {i} was lost or overwritten");
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
async fn image_restore_is_caught_by_the_first_peer_that_knows_more() {
    // Only the WAL goes back in time; the epoch files keep their identity, as
    // after restoring a whole disk image.
    restore_scenario(
        |backup, dir| {
            std::fs::remove_dir_all(dir.join("wal")).unwrap();
            copy_dir(&backup.join("wal"), &dir.join("wal"));
        },
        true,
    )
    .await;
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
