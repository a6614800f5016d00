//! Field scenarios: real nodes, real QUIC, through netsim's 2G profiles.
//! These take minutes of simulated link time; `cargo test` runs them all.

use ferry::daemon::{self, DaemonOptions};
use ferry::datadir::Policy;
use ferry::pki::Role;
use ferry::transport::TransportProfile;
use ferry_netsim::Profile;
use ferry_proto::Priority;
use ferry_tests::{
    all_events, eventually, init_logging, link_to, spawn_sync, start_with, wan_pair, workload, write_events, Deployment,
};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

fn wan() -> TransportProfile {
    TransportProfile::wan()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_mid_transfer_resumes_with_nothing_received_twice() {
    init_logging();
    let dep = Deployment::new("field").unwrap();
    let (hub, clinic) = wan_pair(&dep, None).await.unwrap();
    write_events(&clinic.ctx.wal, workload("CUT", 5000, 1).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let sim = link_to(&hub, Profile::bhutan_2g(), 1).await.unwrap();

    let t0 = Instant::now();
    let sync = spawn_sync(&clinic, sim.local_addr());
    eventually("a third of the events at the hub", Duration::from_secs(600), || {
        hub.ctx.wal.stats().events >= 5000 / 3
    })
    .await
    .unwrap();
    sim.cut();
    let at_cut = hub.ctx.wal.stats().events;
    tokio::time::sleep(Duration::from_secs(5)).await;
    sim.restore();
    let report = tokio::time::timeout(Duration::from_secs(900), sync)
        .await
        .expect("sync hung")
        .unwrap()
        .unwrap();
    let s = sim.stats();
    println!(
        "cut at {at_cut}/5000 events for 5 s; finished in {:.0} s; {} bytes ({} packets) dropped by the cut; clinic sent {} events, hub stored {}, duplicates {}",
        t0.elapsed().as_secs_f64(), s.up.dropped_cut_bytes + s.down.dropped_cut_bytes, s.up.dropped_cut + s.down.dropped_cut,
        report.events_sent, hub.ctx.wal.stats().events, hub.ctx.totals.duplicates_received.load(Relaxed)
    );
    assert_eq!(hub.ctx.wal.stats().events, 5000);
    assert_eq!(all_events(&hub.ctx.wal).unwrap(), all_events(&clinic.ctx.wal).unwrap());
    assert_eq!(
        hub.ctx.totals.duplicates_received.load(Relaxed),
        0,
        "the hub received an event twice"
    );
    assert_eq!(report.events_sent, 5000, "the clinic sent an event twice");
    assert!(
        s.up.dropped_cut + s.down.dropped_cut > 0,
        "the cut did not hit the transfer"
    );
    hub.shutdown().await;
    clinic.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_clinics_at_once_over_2g() {
    init_logging();
    let dep = Deployment::new("field").unwrap();
    let hub = start_with(&dep.enroll("hub", Role::Hub).unwrap(), Some(Policy::Own), &wan())
        .await
        .unwrap();
    let mut syncs = Vec::new();
    let mut clinics = Vec::new();
    for i in 0..4u64 {
        let name = format!("clinic-{i}");
        let clinic = start_with(&dep.enroll(&name, Role::Clinic).unwrap(), None, &wan())
            .await
            .unwrap();
        write_events(
            &clinic.ctx.wal,
            workload(&name, 1000, 10 + i).unwrap(),
            Priority::Normal,
        )
        .await
        .unwrap();
        // Each clinic has its own 2G link to the hub.
        let sim = link_to(&hub, Profile::bhutan_2g(), 20 + i).await.unwrap();
        let (c, addr) = (clinic.clone(), sim.local_addr());
        syncs.push(tokio::spawn(async move {
            let r = c.sync_once(addr).await;
            (r, sim)
        }));
        clinics.push(clinic);
    }
    for s in syncs {
        let (report, _sim) = tokio::time::timeout(Duration::from_secs(900), s)
            .await
            .expect("sync hung")
            .unwrap();
        assert_eq!(report.unwrap().events_sent, 1000);
    }
    assert_eq!(hub.ctx.wal.stats().events, 4000);
    assert_eq!(hub.ctx.wal.summary().0.len(), 4);
    for c in &clinics {
        // Policy `own`: the hub gives a clinic nothing of the others.
        let origins: Vec<_> = c.ctx.wal.summary().0.keys().map(|o| o.node).collect();
        assert_eq!(origins, vec![c.ctx.node_id]);
        c.shutdown().await;
    }
    assert_eq!(hub.ctx.totals.duplicates_received.load(Relaxed), 0);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_minute_outage_while_both_sides_write_converges_by_itself() {
    init_logging();
    let dep = Deployment::new("field").unwrap();
    let (hub, clinic) = wan_pair(&dep, None).await.unwrap();
    write_events(&clinic.ctx.wal, workload("OUT", 200, 1).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let sim = link_to(&hub, Profile::bhutan_2g(), 3).await.unwrap();
    let opts = DaemonOptions {
        peers: vec![sim.local_addr().to_string()],
        interval: Duration::from_secs(5),
        mdns: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(daemon::run(clinic.clone(), opts, async move {
        let _ = stop_rx.await;
    }));
    let same = || hub.ctx.wal.summary() == clinic.ctx.wal.summary();
    eventually("first convergence", Duration::from_secs(300), same)
        .await
        .unwrap();

    sim.cut();
    let more_clinic = workload("OUT", 240, 2).unwrap();
    let more_hub = workload("HUB", 12, 3).unwrap();
    for i in 0..12 {
        write_events(
            &clinic.ctx.wal,
            more_clinic[i * 20..(i + 1) * 20].to_vec(),
            Priority::Normal,
        )
        .await
        .unwrap();
        write_events(&hub.ctx.wal, vec![more_hub[i].clone()], Priority::Normal)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    assert_ne!(hub.ctx.wal.summary(), clinic.ctx.wal.summary());
    sim.restore();
    let t = Instant::now();
    eventually("convergence after the outage", Duration::from_secs(600), same)
        .await
        .unwrap();
    println!(
        "converged {:.0} s after a 120 s outage; clinic sent {} events, hub sent {}",
        t.elapsed().as_secs_f64(),
        clinic.ctx.totals.events_sent.load(Relaxed),
        hub.ctx.totals.events_sent.load(Relaxed)
    );
    assert_eq!(hub.ctx.wal.stats().events, 200 + 240 + 12);
    assert_eq!(all_events(&hub.ctx.wal).unwrap(), all_events(&clinic.ctx.wal).unwrap());
    for n in [&hub, &clinic] {
        assert_eq!(
            n.ctx.totals.duplicates_received.load(Relaxed),
            0,
            "an event arrived twice"
        );
    }
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_bursty_link_completes_and_converges() {
    init_logging();
    let dep = Deployment::new("field").unwrap();
    let (hub, clinic) = wan_pair(&dep, None).await.unwrap();
    write_events(&clinic.ctx.wal, workload("LOSSY", 2000, 4).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let sim = link_to(&hub, Profile::edge_lossy(), 4).await.unwrap();
    let t = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(900), clinic.sync_once(sim.local_addr()))
        .await
        .expect("sync hung")
        .unwrap();
    let s = sim.stats();
    println!(
        "edge_lossy: 2000 events in {:.0} s, {} packets lost up, {} down",
        t.elapsed().as_secs_f64(),
        s.up.dropped_loss,
        s.down.dropped_loss
    );
    assert_eq!(report.events_sent, 2000);
    assert!(s.up.dropped_loss + s.down.dropped_loss > 0, "the link lost nothing");
    assert_eq!(all_events(&hub.ctx.wal).unwrap(), all_events(&clinic.ctx.wal).unwrap());
    assert_eq!(hub.ctx.totals.duplicates_received.load(Relaxed), 0);
    hub.shutdown().await;
    clinic.shutdown().await;
}
