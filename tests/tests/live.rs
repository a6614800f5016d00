//! Live replication between daemons: with the sync timer out of the way
//! (one hour), only "this node has news for the peer" can move an event, on
//! whichever side of the connection it was written, and across a relay.

use ferry::daemon::{self, DaemonOptions};
use ferry::node::Node;
use ferry::pki::Role;
use ferry_proto::Priority;
use ferry_tests::{all_events, eventually, init_logging, start, workload, write_events, Deployment};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

const NO_TIMER: Duration = Duration::from_secs(3600);
const LIMIT: Duration = Duration::from_secs(30);

/// `ferry run` in-process, dialing `peers`; stopped by the returned sender.
fn run_daemon(node: &Arc<Node>, peers: Vec<String>) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let opts = DaemonOptions {
        peers,
        interval: NO_TIMER,
        mdns: None,
    };
    let node = node.clone();
    let task = tokio::spawn(async move {
        daemon::run(node, opts, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (stop, task)
}

fn holds(node: &Node, n: u64) -> bool {
    node.ctx.wal.summary().total_events() == n
}

fn duplicates(nodes: &[&Arc<Node>]) -> u64 {
    nodes
        .iter()
        .map(|n| n.ctx.totals.duplicates_received.load(Relaxed))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_on_either_side_or_behind_a_relay_arrive_without_a_timer() {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    let hub = start(&dep.enroll("hub", Role::Hub).unwrap(), None).await.unwrap();
    let a = start(&dep.enroll("a", Role::Clinic).unwrap(), None).await.unwrap();
    let b = start(&dep.enroll("b", Role::Clinic).unwrap(), None).await.unwrap();
    let hub_addr = hub.local_addr().unwrap().to_string();
    let daemons = [
        run_daemon(&hub, vec![]),
        run_daemon(&a, vec![hub_addr.clone()]),
        run_daemon(&b, vec![hub_addr]),
    ];
    eventually("both clinics connected", LIMIT, || {
        hub.ctx.totals.connections_accepted.load(Relaxed) >= 2
    })
    .await
    .unwrap();

    // Written on the accepting side: only the hub's own news round moves it.
    write_events(&hub.ctx.wal, workload("HUB", 1, 1).unwrap(), Priority::Normal)
        .await
        .unwrap();
    for n in [&a, &b] {
        eventually("the hub's event at a clinic", LIMIT, || holds(n, 1))
            .await
            .unwrap();
    }
    // Written on a dialing side, relayed by the hub to the other clinic.
    write_events(&a.ctx.wal, workload("A", 1, 2).unwrap(), Priority::Urgent)
        .await
        .unwrap();
    eventually("a's event relayed to b", LIMIT, || holds(&b, 2))
        .await
        .unwrap();

    // Bursts on all three at once: rounds run both ways on every
    // connection at the same time, and still nothing arrives twice.
    let bursts = [(&hub, "HUB2", 3), (&a, "A2", 4), (&b, "B2", 5)];
    let writes = bursts.map(|(n, name, seed)| {
        let wal = n.ctx.wal.clone();
        tokio::spawn(async move {
            for chunk in workload(name, 600, seed).unwrap().chunks(50) {
                write_events(&wal, chunk.to_vec(), Priority::Normal).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    for w in writes {
        w.await.unwrap();
    }
    for n in [&hub, &a, &b] {
        eventually("every burst everywhere", LIMIT, || holds(n, 2 + 1800))
            .await
            .unwrap();
    }
    assert_eq!(duplicates(&[&hub, &a, &b]), 0, "an event was received twice");
    let sent: u64 = [&hub, &a, &b]
        .iter()
        .map(|n| n.ctx.totals.events_sent.load(Relaxed))
        .sum();
    // Each clinic's events cross two links, the hub's one link to each clinic.
    assert_eq!(sent, 2 * (1 + 600) + 2 * 600 + 2 * (1 + 600), "an event was sent twice");
    assert_eq!(all_events(&a.ctx.wal).unwrap(), all_events(&hub.ctx.wal).unwrap());
    assert_eq!(all_events(&b.ctx.wal).unwrap(), all_events(&hub.ctx.wal).unwrap());
    assert_eq!(a.driver.claimed(), 0, "a claim outlived its pull");

    for (stop, task) in daemons {
        stop.send(()).unwrap();
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rounds_at_once_on_one_connection_ask_for_each_event_once() {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    let hub = start(&dep.enroll("hub", Role::Hub).unwrap(), None).await.unwrap();
    let clinic = start(&dep.enroll("clinic", Role::Clinic).unwrap(), None).await.unwrap();
    write_events(&hub.ctx.wal, workload("HUB", 3000, 6).unwrap(), Priority::Normal)
        .await
        .unwrap();

    let opened = clinic.open(hub.local_addr().unwrap(), true).await.unwrap();
    let link = opened.link.clone();
    // A second round at once: both see the same 3,000 missing events in
    // the hub's summaries.
    clinic.driver.with_core(|core, now| core.start_round(now, link.id()));
    assert!(link.wait_in_step().await, "the connection ended before the sync did");
    eventually("every event", LIMIT, || holds(&clinic, 3000)).await.unwrap();
    assert_eq!(
        hub.ctx.totals.events_sent.load(Relaxed),
        3000,
        "the hub sent an event twice"
    );
    assert_eq!(clinic.ctx.totals.duplicates_received.load(Relaxed), 0);
    assert_eq!(clinic.driver.claimed(), 0);
    link.conn.close(0u32.into(), b"done");
    hub.shutdown().await;
    clinic.shutdown().await;
}
