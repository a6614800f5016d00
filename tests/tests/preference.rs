//! When a LAN peer and the hub both hold what a clinic lacks, the clinic
//! pulls it from the LAN peer and not over the WAN.

use ferry::pki::Role;
use ferry::transport::TransportProfile;
use ferry_proto::Priority;
use ferry_sync::Store;
use ferry_tests::{all_events, eventually, init_logging, start, start_capped, workload, write_events, Deployment};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_both_peers_hold_comes_from_the_lan_peer() {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    let hub = start(&dep.enroll("hub", Role::Hub).unwrap(), None).await.unwrap();
    // The neighbour serves slowly (300 kbit/s: about a second for what the
    // clinic lacks), so its round is still running when the clinic reaches
    // the hub.
    let neighbour = start_capped(
        &dep.enroll("neighbour", Role::Clinic).unwrap(),
        300,
        &TransportProfile::lan(),
    )
    .unwrap();
    let clinic = start(&dep.enroll("clinic", Role::Clinic).unwrap(), None).await.unwrap();

    write_events(&hub.ctx.wal, workload("HUB", 2000, 7).unwrap(), Priority::Normal)
        .await
        .unwrap();
    neighbour.sync_once(hub.local_addr().unwrap()).await.unwrap();
    // The clinic holds every other block of 20: 50 gaps, more than one
    // round keeps in flight, so most are still queued when the hub answers.
    let origin = hub.ctx.wal.local_origin();
    let every_other: Vec<_> = hub
        .ctx
        .wal
        .read_range(&origin, 1, 2000, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|e| (e.seq - 1) / 20 % 2 == 0)
        .collect();
    clinic.ctx.wal.append_replicated(every_other.clone()).await.unwrap();
    // As after a sync that verified them: a node holds the hash tree of
    // every event it stores, and a LAN peer proves the gaps against it.
    clinic.driver.with_core(|core, _| {
        let logs = core.store_mut().logs_mut().expect("logs are authenticated");
        for e in &every_other {
            assert!(logs.trusted(e).is_ok(), "event {} refused", e.seq);
        }
    });
    let sent_by_hub = hub.ctx.totals.events_sent.load(Relaxed);

    let opened = clinic.open(neighbour.local_addr().unwrap(), true).await.unwrap();
    let lan = opened.link.clone();
    eventually("the neighbour's summary", Duration::from_secs(20), || {
        clinic.driver.view(lan.id()).is_some_and(|v| v.we_lack > 0)
    })
    .await
    .unwrap();

    let wan = clinic.sync_once(hub.local_addr().unwrap()).await.unwrap();
    assert!(
        clinic.driver.view(lan.id()).is_some_and(|v| !v.in_step),
        "the LAN sync ended before the WAN sync: nothing was left to prefer"
    );
    assert_eq!(wan.events_received, 0, "pulled over the WAN what the LAN peer offers");
    assert!(lan.wait_in_step().await, "the LAN connection ended early");
    let lan_view = lan.last_view().unwrap(); // kept when it came in step
    assert_eq!(lan_view.stats.events_received, 1000);
    assert_eq!(hub.ctx.totals.events_sent.load(Relaxed), sent_by_hub);
    assert_eq!(clinic.ctx.totals.duplicates_received.load(Relaxed), 0);
    assert_eq!(all_events(&clinic.ctx.wal).unwrap(), all_events(&hub.ctx.wal).unwrap());
    lan.conn.close(0u32.into(), b"done");
    for n in [hub, neighbour, clinic] {
        n.shutdown().await;
    }
}
