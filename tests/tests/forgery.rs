//! Events that relays cannot forge, on real nodes over loopback QUIC: an
//! enrolled node turned rogue alters the events of another clinic it
//! relays, then fabricates events in that clinic's name and signs their
//! head with its own key. The clinic it serves refuses every one of them,
//! counts them, and takes the rogue's own events of the same sync; the
//! real events reach it later from their writer, byte for byte.

use ferry::datadir::{DataDir, Policy};
use ferry::node::{open_ctx_with, Node, Overrides};
use ferry::pki::Role;
use ferry::transport::TransportProfile;
use ferry_proto::{Event, Hlc, Priority, RangeSet};
use ferry_sync::Bugs;
use ferry_tests::{all_events, init_logging, start, workload, write_events, Deployment};
use std::sync::Arc;

/// Starts a node that relays everything, with deliberate faults.
async fn rogue(dir: &DataDir, faults: Bugs, plant: Vec<Event>) -> Arc<Node> {
    let overrides = Overrides {
        policy: Some(Policy::All),
        faults,
        ..Default::default()
    };
    let (ctx, tls) = open_ctx_with(dir, overrides).unwrap();
    if !plant.is_empty() {
        ctx.wal.append_replicated(plant).await.unwrap();
    }
    Arc::new(Node::start(ctx, &tls, "127.0.0.1:0".parse().unwrap(), &TransportProfile::lan()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_relay_can_neither_alter_nor_fabricate_another_clinics_events() {
    init_logging();
    let dep = Deployment::new("district").unwrap();
    let a = start(&dep.enroll("clinic-a", Role::Clinic).unwrap(), Some(Policy::All))
        .await
        .unwrap();
    let b = start(&dep.enroll("clinic-b", Role::Clinic).unwrap(), Some(Policy::All))
        .await
        .unwrap();
    let r_dir = dep.enroll("rogue", Role::Clinic).unwrap();
    write_events(&a.ctx.wal, workload("CLA", 20, 1).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let a_origin = a.ctx.wal.local_origin();

    // The rogue takes A's events honestly and writes five of its own; it
    // alters every event of another writer it passes on.
    let forges = Bugs::parse("relay-forges").unwrap();
    let r = rogue(&r_dir, forges, Vec::new()).await;
    write_events(&r.ctx.wal, workload("ROG", 5, 2).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let r_origin = r.ctx.wal.local_origin();
    r.sync_once(a.local_addr().unwrap()).await.unwrap();
    assert_eq!(r.ctx.wal.have(&a_origin), RangeSet::from_range(1, 20));
    let _ = b.sync_once(r.local_addr().unwrap()).await;
    assert_eq!(
        b.ctx.wal.have(&r_origin),
        RangeSet::from_range(1, 5),
        "the rogue's own events arrive"
    );
    assert!(b.ctx.wal.have(&a_origin).is_empty(), "no altered event of A is taken");
    let altered = b.ctx.writer_keys.unproved();
    assert!(altered >= 20, "every altered event is refused and counted: {altered}");

    // The rogue, restarted, fabricates five more events in A's name and
    // signs A's head over them with its own key.
    r.shutdown().await;
    drop(r);
    let fabricated: Vec<Event> = (21..=25)
        .map(|seq| Event {
            origin: a_origin,
            seq,
            hlc: Hlc::new(1_900_000_000_000 + seq, 0),
            topic: "clinic/visit".into(),
            priority: Priority::Normal,
            payload: format!("{{\"patient\":\"forged-{seq}\"}}").into_bytes(),
        })
        .collect();
    let signs = Bugs::parse("sign-any-log").unwrap();
    let r = rogue(&r_dir, signs, fabricated).await;
    assert_eq!(r.ctx.wal.have(&a_origin), RangeSet::from_range(1, 25));
    let _ = b.sync_once(r.local_addr().unwrap()).await;
    assert!(
        b.ctx.wal.have(&a_origin).is_empty(),
        "nothing the rogue signed in A's name is taken"
    );
    assert!(
        b.ctx.writer_keys.unproved() >= altered + 25,
        "refused again and counted"
    );

    // A's real events come from A, whole and unaltered; nothing fabricated.
    b.sync_once(a.local_addr().unwrap()).await.unwrap();
    assert_eq!(b.ctx.wal.have(&a_origin), RangeSet::from_range(1, 20));
    let theirs = all_events(&a.ctx.wal).unwrap();
    let ours = all_events(&b.ctx.wal).unwrap();
    for (key, bytes) in theirs.iter().filter(|((o, _), _)| *o == a_origin) {
        assert_eq!(ours.get(key), Some(bytes), "event {key:?} differs");
    }
    for n in [&a, &b, &r] {
        n.shutdown().await;
    }
}

/// A mule proves what it carries after a restart, and after a power cut
/// right after the sync (no clean shutdown): the heads and hashes are saved
/// as the events are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mule_proves_what_it_carries_after_a_restart_or_a_power_cut() {
    init_logging();
    let dep = Deployment::new("district").unwrap();
    let a = start(&dep.enroll("clinic-a", Role::Clinic).unwrap(), Some(Policy::All))
        .await
        .unwrap();
    write_events(&a.ctx.wal, workload("CLA", 300, 3).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let a_origin = a.ctx.wal.local_origin();
    for clean in [true, false] {
        let mut m_dir = dep.enroll(if clean { "mule-1" } else { "mule-2" }, Role::Mule).unwrap();
        let m = start(&m_dir, Some(Policy::All)).await.unwrap();
        m.sync_once(a.local_addr().unwrap()).await.unwrap();
        if !clean {
            // The power cut: the data directory as it is on disk a moment
            // after the sync, while the mule still runs (no shutdown save).
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let cut = dep.tmp.path().join("mule-2-after-the-cut");
            let copied = std::process::Command::new("cp")
                .arg("-a")
                .arg(&m_dir.root)
                .arg(&cut)
                .status()
                .unwrap();
            assert!(copied.success());
            m_dir = DataDir::new(cut);
        }
        m.shutdown().await;
        drop(m);
        let m = start(&m_dir, Some(Policy::All)).await.unwrap();
        let b_name = if clean { "clinic-b" } else { "clinic-c" };
        let b = start(&dep.enroll(b_name, Role::Clinic).unwrap(), Some(Policy::All))
            .await
            .unwrap();
        b.sync_once(m.local_addr().unwrap()).await.unwrap();
        assert_eq!(
            b.ctx.wal.have(&a_origin),
            RangeSet::from_range(1, 300),
            "clean shutdown: {clean}"
        );
        assert_eq!(b.ctx.writer_keys.unproved(), 0);
        for n in [&m, &b] {
            n.shutdown().await;
        }
    }
    a.shutdown().await;
}
