//! A clinic daemon killed with SIGKILL mid-transfer and started again with
//! the same command picks up where its WAL left off: nothing to repair by
//! hand, and none of what it had stored is sent to it again.

use ferry::node::{open_ctx_with, Node, Overrides};
use ferry::pki::Role;
use ferry::transport::TransportProfile;
use ferry_proto::Priority;
use ferry_tests::netns::Proc;
use ferry_tests::{all_events, eventually, init_logging, workload, write_events, Deployment};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

const EVENTS: u64 = 5000;

fn clinic_daemon(dir: &Path, hub: &str, log: &Path) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_field-bench"));
    cmd.arg("__ferry")
        .args(["run", "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--no-mdns"])
        .args(["--interval", "1", "--log", "info", "--peer", hub])
        .stderr(std::fs::File::options().create(true).append(true).open(log).unwrap());
    Proc::spawn(cmd).unwrap()
}

fn held(dir: &ferry::datadir::DataDir) -> u64 {
    dir.open_wal(true).map(|w| w.summary().total_events()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_transfer_then_restart_resumes_and_sends_nothing_twice() {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    // The hub serves at 2 Mbit/s so the transfer lasts long enough to cut.
    let (ctx, tls) = open_ctx_with(
        &dep.enroll("hub", Role::Hub).unwrap(),
        Overrides {
            bandwidth_kbps: Some(2000),
            ..Default::default()
        },
    )
    .unwrap();
    let hub = Arc::new(Node::start(ctx, &tls, "127.0.0.1:0".parse().unwrap(), &TransportProfile::lan()).unwrap());
    write_events(
        &hub.ctx.wal,
        workload("HUB", EVENTS as usize, 8).unwrap(),
        Priority::Normal,
    )
    .await
    .unwrap();
    let clinic = dep.enroll("clinic", Role::Clinic).unwrap();
    let hub_addr = hub.local_addr().unwrap().to_string();
    let log = dep.tmp.path().join("clinic.log");

    let mut first = clinic_daemon(&clinic.root, &hub_addr, &log);
    eventually("a fifth of the events at the clinic", Duration::from_secs(60), || {
        held(&clinic) >= EVENTS / 5
    })
    .await
    .unwrap();
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    let kept = held(&clinic);
    assert!(kept < EVENTS, "the transfer finished before the kill; nothing was cut");
    // Whatever the hub had queued on the dead connection is out by now;
    // from here on, what it sends is what the restarted clinic asks for.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent_before = hub.ctx.totals.events_sent.load(Relaxed);

    let mut second = clinic_daemon(&clinic.root, &hub_addr, &log);
    eventually("every event at the clinic", Duration::from_secs(60), || {
        held(&clinic) == EVENTS
    })
    .await
    .unwrap();
    assert_eq!(second.stop(), Some(0), "the restarted daemon did not stop cleanly");
    let sent_after = hub.ctx.totals.events_sent.load(Relaxed) - sent_before;
    assert_eq!(
        sent_after,
        EVENTS - kept,
        "after the restart the hub sent {sent_after} events; the clinic lacked {}",
        EVENTS - kept
    );
    let peers = clinic.peers();
    let record = peers.values().find(|p| p.name == "hub").expect("no hub in peers.json");
    assert_eq!(
        record.events_received,
        EVENTS - kept,
        "the restarted daemon's own count"
    );
    let wal = clinic.open_wal(true).unwrap();
    assert_eq!(all_events(&wal).unwrap(), all_events(&hub.ctx.wal).unwrap());
    println!("killed at {kept}/{EVENTS}; after restart the hub sent exactly the {sent_after} missing events");
    hub.shutdown().await;
}
