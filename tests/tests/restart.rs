//! A clinic daemon killed with SIGKILL mid-transfer and started again with
//! the same command picks up where its WAL left off: nothing to repair by
//! hand, and none of what it had stored is sent to it again.

use ferry::pki::Role;
use ferry::transport::TransportProfile;
use ferry_proto::Priority;
use ferry_tests::netns::Proc;
use ferry_tests::{all_events, eventually, init_logging, start_capped, workload, write_events, Deployment};
use std::path::Path;
use std::process::Command;
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
    // The hub serves at 500 kbit/s, so the transfer (about 120 KB) lasts
    // a couple of seconds: long enough to cut.
    // A short idle timeout, so the hub soon gives up the killed connection.
    let profile = TransportProfile {
        idle_timeout: Duration::from_secs(2),
        keep_alive: Duration::from_millis(500),
        ..TransportProfile::lan()
    };
    let hub = start_capped(&dep.enroll("hub", Role::Hub).unwrap(), 500, &profile).unwrap();
    let hub_dir = hub.ctx.data_dir.clone().unwrap();
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
    // Until its idle timeout the hub keeps writing into the dead
    // connection: events that never arrive, and that the restarted clinic
    // asks for again. The hub counts each connection's events when it ends.
    let sent_to = |dir: &ferry::datadir::DataDir| -> Option<u64> {
        dir.peers().values().find(|p| p.name == "clinic").map(|p| p.events_sent)
    };
    eventually("the hub to drop the killed connection", Duration::from_secs(30), || {
        sent_to(&hub_dir).is_some()
    })
    .await
    .unwrap();
    let sent_before = sent_to(&hub_dir).unwrap_or(0);

    let mut second = clinic_daemon(&clinic.root, &hub_addr, &log);
    eventually("every event at the clinic", Duration::from_secs(60), || {
        held(&clinic) == EVENTS
    })
    .await
    .unwrap();
    assert_eq!(second.stop(), Some(0), "the restarted daemon did not stop cleanly");
    eventually(
        "the hub to record the second connection",
        Duration::from_secs(30),
        || sent_to(&hub_dir) != Some(sent_before),
    )
    .await
    .unwrap();
    let sent_after = sent_to(&hub_dir).unwrap_or(0) - sent_before;
    assert_eq!(
        sent_after,
        EVENTS - kept,
        "on the new connection the hub sent {sent_after} events; the clinic lacked {}",
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
    println!("killed at {kept}/{EVENTS}; on the new connection the hub sent exactly the {sent_after} missing events");
    hub.shutdown().await;
}
