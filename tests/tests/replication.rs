//! Replication between real nodes over real QUIC with mutual TLS on loopback.

use ferry::datadir::Policy;
use ferry::node::ZeroRtt;
use ferry::pki::Role;
use ferry_proto::Priority;
use ferry_tests::{all_events, init_logging, start, workload, write_events, Deployment};
use std::sync::atomic::Ordering::Relaxed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_each_way_then_nothing_twice() {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    let a = start(&dep.enroll("clinic-a", Role::Clinic).unwrap(), None)
        .await
        .unwrap();
    let b = start(&dep.enroll("hub", Role::Hub).unwrap(), None).await.unwrap();
    write_events(&a.ctx.wal, workload("BHU-A", 10_000, 1).unwrap(), Priority::Normal)
        .await
        .unwrap();
    write_events(&b.ctx.wal, workload("HUB", 10_000, 2).unwrap(), Priority::Normal)
        .await
        .unwrap();

    let first = a.sync_once(b.local_addr().unwrap()).await.unwrap();
    assert_eq!((first.events_received, first.events_sent), (10_000, 10_000));
    assert_eq!(first.duplicates_received, 0);
    assert_eq!(a.ctx.wal.summary(), b.ctx.wal.summary(), "have-sets differ");
    assert_eq!(a.ctx.wal.summary().total_events(), 20_000);
    assert_eq!(
        all_events(&a.ctx.wal).unwrap(),
        all_events(&b.ctx.wal).unwrap(),
        "stored events differ"
    );
    println!(
        "20,000 events: {} UDP bytes from A, {} to A",
        first.udp_tx_bytes, first.udp_rx_bytes
    );

    let sent_by_b = b.ctx.totals.events_sent.load(Relaxed);
    let second = a.sync_once(b.local_addr().unwrap()).await.unwrap();
    assert_eq!(
        (second.events_received, second.events_sent),
        (0, 0),
        "second sync moved events"
    );
    // The reconnect resumed and asked, in 0-RTT, for anything after what B
    // held last time: one open-ended want, answered with nothing.
    assert_eq!((second.zero_rtt, second.wants), (ZeroRtt::Accepted, 1));
    assert_eq!(b.ctx.totals.events_sent.load(Relaxed), sent_by_b);
    assert_eq!(
        b.ctx.totals.duplicates_received.load(Relaxed) + a.ctx.totals.duplicates_received.load(Relaxed),
        0
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_a_chain_through_the_middle_node() {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    let a = start(&dep.enroll("a", Role::Clinic).unwrap(), None).await.unwrap();
    let b = start(&dep.enroll("b", Role::Mule).unwrap(), None).await.unwrap();
    let c = start(&dep.enroll("c", Role::Hub).unwrap(), None).await.unwrap();
    write_events(&a.ctx.wal, workload("A", 300, 3).unwrap(), Priority::Normal)
        .await
        .unwrap();
    write_events(&c.ctx.wal, workload("C", 200, 4).unwrap(), Priority::Normal)
        .await
        .unwrap();

    b.sync_once(a.local_addr().unwrap()).await.unwrap();
    b.sync_once(c.local_addr().unwrap()).await.unwrap();
    b.sync_once(a.local_addr().unwrap()).await.unwrap();

    assert_eq!(c.ctx.wal.summary().total_events(), 500);
    assert_eq!(a.ctx.wal.summary(), c.ctx.wal.summary());
    assert_eq!(all_events(&a.ctx.wal).unwrap(), all_events(&c.ctx.wal).unwrap());
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_policy_gives_a_clinic_none_of_the_other_clinics_events() {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    let hub = start(&dep.enroll("hub", Role::Hub).unwrap(), None).await.unwrap();
    for (i, name) in ["clinic-x", "clinic-y"].iter().enumerate() {
        let other = start(&dep.enroll(name, Role::Clinic).unwrap(), None).await.unwrap();
        write_events(&other.ctx.wal, workload(name, 100, i as u64).unwrap(), Priority::Normal)
            .await
            .unwrap();
        other.sync_once(hub.local_addr().unwrap()).await.unwrap();
        other.shutdown().await;
    }
    write_events(&hub.ctx.wal, workload("HUB", 50, 9).unwrap(), Priority::Normal)
        .await
        .unwrap();
    hub.shutdown().await;
    assert_eq!(hub.ctx.wal.summary().total_events(), 250);
    let hub_dir = hub.ctx.data_dir.clone().unwrap();
    drop(hub);

    // The hub restarts with policy `own`.
    let hub = start(&hub_dir, Some(Policy::Own)).await.unwrap();
    let clinic = start(&dep.enroll("clinic-z", Role::Clinic).unwrap(), None)
        .await
        .unwrap();
    write_events(&clinic.ctx.wal, workload("Z", 40, 5).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let report = clinic.sync_once(hub.local_addr().unwrap()).await.unwrap();
    assert_eq!(report.events_received, 0, "own policy leaked other origins");
    assert_eq!(report.events_sent, 40, "the hub still receives the clinic's events");
    let origins: Vec<_> = clinic.ctx.wal.summary().0.keys().map(|o| o.node).collect();
    assert_eq!(origins, vec![clinic.ctx.node_id]);
    assert_eq!(hub.ctx.wal.summary().total_events(), 290);
    hub.shutdown().await;
    clinic.shutdown().await;
}
