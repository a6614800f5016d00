//! Reconnecting: TLS session resumption with the round's opening as 0-RTT
//! data, and the fall-back to a full handshake when the peer rejects it.

use ferry::node::{Node, ZeroRtt};
use ferry::transport::TransportProfile;
use ferry_netsim::Profile;
use ferry_proto::Priority;
use ferry_tests::{all_events, init_logging, link_to, wan_pair, workload, write_events, Deployment};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Over 2G, a clinic syncs, both sides write more, and the clinic
/// reconnects: the session resumes, its Hello, summary and wants go out as
/// 0-RTT data and are accepted, and both sides converge with nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resumes_in_0rtt_and_converges() {
    init_logging();
    let dep = Deployment::new("resume").unwrap();
    let (hub, clinic) = wan_pair(&dep, None).await.unwrap();
    let sim = link_to(&hub, Profile::bhutan_2g(), 3).await.unwrap();
    let events = workload("RES", 140, 3).unwrap();
    let (hub_first, rest) = events.split_at(40);
    let (clinic_first, rest) = rest.split_at(60);
    let (hub_later, clinic_later) = rest.split_at(30);
    write_events(&hub.ctx.wal, hub_first.to_vec(), Priority::Normal)
        .await
        .unwrap();
    write_events(&clinic.ctx.wal, clinic_first.to_vec(), Priority::Normal)
        .await
        .unwrap();

    let first = clinic.sync_once(sim.local_addr()).await.unwrap();
    assert_eq!(first.zero_rtt, ZeroRtt::NotTried);
    assert_eq!((first.events_received, first.events_sent), (40, 60));

    write_events(&hub.ctx.wal, hub_later.to_vec(), Priority::Normal)
        .await
        .unwrap();
    write_events(&clinic.ctx.wal, clinic_later.to_vec(), Priority::Normal)
        .await
        .unwrap();
    let again = clinic.sync_once(sim.local_addr()).await.unwrap();

    assert_eq!(again.zero_rtt, ZeroRtt::Accepted);
    assert_eq!(clinic.ctx.totals.zero_rtt_accepted.load(Relaxed), 1);
    assert_eq!(hub.ctx.totals.connections_accepted.load(Relaxed), 2);
    assert_eq!((again.events_received, again.events_sent), (30, 10), "{again:?}");
    assert_eq!(clinic.ctx.totals.duplicates_received.load(Relaxed), 0);
    assert_eq!(hub.ctx.totals.duplicates_received.load(Relaxed), 0);
    assert_eq!(all_events(&hub.ctx.wal).unwrap(), all_events(&clinic.ctx.wal).unwrap());
    assert_eq!(hub.ctx.wal.stats().events, 140);
    let rtt = Profile::bhutan_2g().base_rtt().as_secs_f64();
    let to_event = |ms: Option<u64>| ms.map(|ms| ms as f64 / 1000.0 / rtt);
    println!(
        "first event after {:?} RTTs with a full handshake, {:?} RTTs resumed in 0-RTT",
        to_event(first.first_event_ms),
        to_event(again.first_event_ms)
    );
    hub.shutdown().await;
    clinic.shutdown().await;
}

/// The hub restarts between two syncs, forgetting the sessions it issued:
/// the clinic's 0-RTT opening is rejected, the handshake completes in full,
/// the round is sent again and both sides converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_0rtt_falls_back_to_a_full_handshake() {
    init_logging();
    let dep = Deployment::new("resume").unwrap();
    let (hub, clinic) = wan_pair(&dep, None).await.unwrap();
    let hub_dir = hub.ctx.data_dir.clone().unwrap();
    let hub_addr = hub.local_addr().unwrap();
    let events = workload("REJ", 100, 4).unwrap();
    let (before, after) = events.split_at(50);
    write_events(&clinic.ctx.wal, before.to_vec(), Priority::Normal)
        .await
        .unwrap();
    let first = clinic.sync_once(hub_addr).await.unwrap();
    assert_eq!(first.events_sent, 50);

    hub.shutdown().await;
    drop(hub);
    let (ctx, tls) = ferry::node::open_ctx(&hub_dir, None).unwrap();
    // quinn's endpoint driver releases the old socket on its own task,
    // shortly after the last handle is dropped: retry the bind briefly.
    let mut tries = 0;
    let hub = loop {
        match Node::start(ctx.clone(), &tls, hub_addr, &TransportProfile::wan()) {
            Ok(node) => break Arc::new(node),
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the hub could not listen on its old port again: {e:#}"),
        }
    };
    write_events(&clinic.ctx.wal, after.to_vec(), Priority::Normal)
        .await
        .unwrap();
    write_events(&hub.ctx.wal, workload("HUB", 20, 5).unwrap(), Priority::Normal)
        .await
        .unwrap();
    let again = clinic.sync_once(hub_addr).await.unwrap();

    assert_eq!(again.zero_rtt, ZeroRtt::Rejected);
    assert_eq!(clinic.ctx.totals.zero_rtt_rejected.load(Relaxed), 1);
    assert_eq!((again.events_received, again.events_sent), (20, 50), "{again:?}");
    assert_eq!(all_events(&hub.ctx.wal).unwrap(), all_events(&clinic.ctx.wal).unwrap());
    assert_eq!(hub.ctx.wal.stats().events, 120);
    hub.shutdown().await;
    clinic.shutdown().await;
}
