//! Thin-link transport behaviour: connection migration, a path that went
//! silent, priorities and the bandwidth budget.

use ferry::daemon::{self, DaemonOptions};
use ferry::pki::Role;
use ferry::transport::TransportProfile;
use ferry_netsim::Profile;
use ferry_proto::{Origin, Priority, RangeSet};
use ferry_tests::{
    all_events, eventually, init_logging, link_to, spawn_sync, start_with, wan_pair, workload, write_events, Deployment,
};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// The clinic's address changes twice mid-transfer (a NAT rebinding: new
/// port; then a new source address). The same connection carries on, with
/// no new handshake and no event sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_survives_nat_rebinding_and_a_new_address() {
    init_logging();
    let dep = Deployment::new("field").unwrap();
    let (hub, clinic) = wan_pair(&dep, None).await.unwrap();
    write_events(&clinic.ctx.wal, workload("MIG", 2000, 7).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let sim = link_to(&hub, Profile::bhutan_2g(), 7).await.unwrap();
    let sync = spawn_sync(&clinic, sim.local_addr());
    let limit = Duration::from_secs(600);
    eventually("a third at the hub", limit, || hub.ctx.wal.stats().events >= 2000 / 3)
        .await
        .unwrap();
    sim.rebind(None).await.unwrap();
    eventually("two thirds at the hub", limit, || {
        hub.ctx.wal.stats().events >= 2 * 2000 / 3
    })
    .await
    .unwrap();
    sim.rebind(Some("127.0.0.2".parse().unwrap())).await.unwrap();
    let report = tokio::time::timeout(limit, sync)
        .await
        .expect("sync hung")
        .unwrap()
        .unwrap();

    assert_eq!(sim.stats().rebinds, 2);
    assert_eq!(
        hub.ctx.totals.connections_accepted.load(Relaxed),
        1,
        "a new handshake was needed"
    );
    assert_eq!(report.events_sent, 2000, "events were sent twice");
    assert_eq!(hub.ctx.totals.duplicates_received.load(Relaxed), 0);
    assert_eq!(all_events(&hub.ctx.wal).unwrap(), all_events(&clinic.ctx.wal).unwrap());
    hub.shutdown().await;
    clinic.shutdown().await;
}

/// The clinic's NAT rebinds while its first handshake is still in flight:
/// the hub drops packets from the new address until the handshake is
/// confirmed (RFC 9000 section 9) and sends its own to the old one, so the
/// clinic's connection is up but nothing comes back. The clinic gives it
/// up when the hub stays silent and dials again, well before the idle
/// timeout (120 s) would have ended it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_hears_nothing_back_is_dialled_again() {
    init_logging();
    let dep = Deployment::new("field").unwrap();
    let wan = TransportProfile::wan();
    assert_eq!(wan.idle_timeout, Duration::from_secs(120));
    let hub = start_with(&dep.enroll("hub", Role::Hub).unwrap(), None, &wan)
        .await
        .unwrap();
    let clinic = start_with(&dep.enroll("clinic", Role::Clinic).unwrap(), None, &wan)
        .await
        .unwrap();
    write_events(&clinic.ctx.wal, workload("NAT", 20, 11).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let sim = link_to(&hub, Profile::bhutan_2g(), 11).await.unwrap();
    let opts = DaemonOptions {
        peers: vec![sim.local_addr().to_string()],
        interval: Duration::from_secs(3600),
        mdns: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(daemon::run(clinic.clone(), opts, async move {
        let _ = stop_rx.await;
    }));
    // The hub's first flight is at the clinic's end of the link: the
    // clinic's Finished has not left yet, and will leave from a new port.
    eventually("the hub's first flight", Duration::from_secs(30), || {
        sim.stats().down.delivered_packets > 0
    })
    .await
    .unwrap();
    sim.rebind(None).await.unwrap();
    let start = std::time::Instant::now();
    eventually("the clinic's events at the hub", Duration::from_secs(90), || {
        hub.ctx.wal.stats().events >= 20
    })
    .await
    .unwrap();
    println!(
        "events at the hub {:.1} s after the rebinding; {} connection given up as silent",
        start.elapsed().as_secs_f64(),
        clinic.ctx.totals.silent_peers.load(Relaxed)
    );
    assert_eq!(clinic.ctx.totals.silent_peers.load(Relaxed), 1);
    // `ferry peers` says why the first connection ended.
    let peers = clinic.ctx.data_dir.as_ref().unwrap().peers();
    assert!(
        peers.values().any(|p| p
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("no answer from the peer"))),
        "{peers:?}"
    );
    assert_eq!(all_events(&hub.ctx.wal).unwrap(), all_events(&clinic.ctx.wal).unwrap());
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
    hub.shutdown().await;
    clinic.shutdown().await;
}

/// A one-shot sync whose path carries nothing for longer than the silence
/// limit (a long burst of loss on edge_lossy did this): a link gives the
/// connection up (the clinic's, or the hub's, whose close then arrives
/// when the path is back), and the sync dials again and completes, with nothing
/// received twice, instead of failing (it did, at seed 4 of edge_lossy with a
/// smaller congestion window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_whose_path_goes_silent_dials_again_and_completes() {
    init_logging();
    let dep = Deployment::new("field").unwrap();
    let (hub, clinic) = wan_pair(&dep, None).await.unwrap();
    assert_eq!(TransportProfile::wan().silence_limit, Duration::from_secs(20));
    write_events(&clinic.ctx.wal, workload("GAP", 600, 12).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let sim = link_to(&hub, Profile::bhutan_2g(), 12).await.unwrap();
    let sync = spawn_sync(&clinic, sim.local_addr());
    let limit = Duration::from_secs(300);
    eventually("some events at the hub", limit, || hub.ctx.wal.stats().events >= 100)
        .await
        .unwrap();
    sim.cut();
    tokio::time::sleep(Duration::from_secs(24)).await;
    sim.restore();
    let report = tokio::time::timeout(limit, sync)
        .await
        .expect("sync hung")
        .unwrap()
        .expect("the sync gave up instead of dialling again");
    // Whichever end looked first gave the connection up (the hub's watch
    // may, and its close then reaches the clinic when the path is back).
    let silent = |n: &ferry::node::Node| n.ctx.totals.silent_peers.load(Relaxed);
    assert!(silent(&clinic) + silent(&hub) >= 1, "no end gave the silent path up");
    // What the dead path swallowed went again on the new connection; the
    // hub received each event once.
    assert!(report.events_sent >= 600, "{report:?}");
    assert_eq!(hub.ctx.totals.duplicates_received.load(Relaxed), 0);
    assert_eq!(all_events(&hub.ctx.wal).unwrap(), all_events(&clinic.ctx.wal).unwrap());
    hub.shutdown().await;
    clinic.shutdown().await;
}

/// A backlog of 2,000 bulk events, then 20 urgent ones: over 2G every
/// urgent event arrives before a quarter of the backlog has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_events_overtake_a_bulk_backlog() {
    init_logging();
    let dep = Deployment::new("field").unwrap();
    let (hub, clinic) = wan_pair(&dep, None).await.unwrap();
    let events = workload("PRIO", 2020, 8).unwrap();
    write_events(&clinic.ctx.wal, events[..2000].to_vec(), Priority::Bulk)
        .await
        .unwrap();
    write_events(&clinic.ctx.wal, events[2000..].to_vec(), Priority::Urgent)
        .await
        .unwrap();
    let origin = clinic.ctx.wal.local_origin();
    let sim = link_to(&hub, Profile::bhutan_2g(), 8).await.unwrap();
    let sync = spawn_sync(&clinic, sim.local_addr());
    let urgent = RangeSet::from_range(2001, 2020);
    let bulk = RangeSet::from_range(1, 2000);
    let held = |set: &RangeSet| held_of(&hub, &origin, set);
    wait_for_all(&hub, &origin, &urgent, Duration::from_secs(600)).await;
    let bulk_before = held(&bulk);
    println!("all 20 urgent events arrived after {bulk_before} of 2000 bulk ones");
    assert!(
        bulk_before < 500,
        "{bulk_before} bulk events arrived before the last urgent one"
    );
    tokio::time::timeout(Duration::from_secs(600), sync)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(hub.ctx.wal.stats().events, 2020);
    assert_eq!(
        hub.ctx.wal.classes().urgent.get(&origin),
        Some(&urgent),
        "priority class lost in transit"
    );
    hub.shutdown().await;
    clinic.shutdown().await;
}

/// With a budget of 64 kbps on a 1 Mbps link, what the clinic sends stays
/// under the budget (netsim's counters, sampled mid-transfer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_budget_caps_what_a_node_sends() {
    init_logging();
    let dep = Deployment::new("field").unwrap();
    let wan = TransportProfile::wan();
    let hub = start_with(&dep.enroll("hub", Role::Hub).unwrap(), None, &wan)
        .await
        .unwrap();
    let clinic_dir = dep.enroll("clinic", Role::Clinic).unwrap();
    let mut cfg = clinic_dir.config().unwrap();
    cfg.bandwidth_kbps = Some(64);
    clinic_dir.save_config(&cfg).unwrap();
    let clinic = start_with(&clinic_dir, None, &wan).await.unwrap();
    write_events(&clinic.ctx.wal, workload("BUDGET", 1500, 9).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let sim = link_to(&hub, Profile::urban_3g(), 9).await.unwrap();
    let sync = spawn_sync(&clinic, sim.local_addr());
    let limit = Duration::from_secs(300);
    eventually("a quarter", limit, || hub.ctx.wal.stats().events >= 1500 / 4)
        .await
        .unwrap();
    let (t0, b0) = (std::time::Instant::now(), sim.stats().up.offered_bytes);
    eventually("three quarters", limit, || hub.ctx.wal.stats().events >= 3 * 1500 / 4)
        .await
        .unwrap();
    let (t1, b1) = (std::time::Instant::now(), sim.stats().up.offered_bytes);
    let kbps = (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64() / 1000.0;
    println!("sent at {kbps:.1} kbps under a 64 kbps budget on a 1000 kbps link");
    assert!(kbps <= 64.0 * 1.15, "{kbps:.1} kbps exceeds the 64 kbps budget");
    tokio::time::timeout(limit, sync).await.unwrap().unwrap().unwrap();
    assert_eq!(hub.ctx.wal.stats().events, 1500);
    hub.shutdown().await;
    clinic.shutdown().await;
}

/// Four photos of 760 KB, then 20 urgent events behind them in the log:
/// over 2G (where one photo takes over three minutes) every urgent event
/// is at the hub before the first photo is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_events_overtake_photos_on_2g() {
    use rand::{Rng, SeedableRng};
    init_logging();
    let dep = Deployment::new("field").unwrap();
    let (hub, clinic) = wan_pair(&dep, None).await.unwrap();
    let photos: Vec<Vec<u8>> = (0..4u64)
        .map(|i| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i);
            (0..760_000).map(|_| rng.gen::<u8>()).collect()
        })
        .collect();
    write_events(&clinic.ctx.wal, photos, Priority::Normal).await.unwrap();
    write_events(&clinic.ctx.wal, workload("URG", 20, 9).unwrap(), Priority::Urgent)
        .await
        .unwrap();
    let origin = clinic.ctx.wal.local_origin();
    let sim = link_to(&hub, Profile::bhutan_2g(), 9).await.unwrap();
    let sync = spawn_sync(&clinic, sim.local_addr());
    let (photo_seqs, urgent) = (RangeSet::from_range(1, 4), RangeSet::from_range(5, 24));
    let start = std::time::Instant::now();
    wait_for_all(&hub, &origin, &urgent, Duration::from_secs(300)).await;
    let photos_before = held_of(&hub, &origin, &photo_seqs);
    println!(
        "all 20 urgent events at the hub after {:.1} s, {photos_before} of 4 photos whole",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(photos_before, 0, "a photo was whole before the last urgent event");
    // The photos would take a quarter of an hour more; the point is made.
    sync.abort();
    hub.shutdown().await;
    clinic.shutdown().await;
}

/// How many of `set` the hub holds of `origin`.
fn held_of(hub: &ferry::node::Node, origin: &Origin, set: &RangeSet) -> u64 {
    hub.ctx
        .wal
        .summary()
        .get(origin)
        .map(|h| h.intersection(set).count())
        .unwrap_or(0)
}

/// Waits until the hub holds every event of `set`.
async fn wait_for_all(hub: &ferry::node::Node, origin: &Origin, set: &RangeSet, limit: Duration) {
    let start = std::time::Instant::now();
    while held_of(hub, origin, set) < set.count() {
        assert!(start.elapsed() < limit, "urgent events never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
