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
