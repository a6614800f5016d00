//! Three defects found by trying the node as a new user would, run end to
//! end on real processes (the same cases are named scenarios in ferry-sim):
//! a backlog of photos, an interrupted sync, and a hub that restarts.

use ferry::datadir::DataDir;
use ferry::pki::Role;
use ferry_tests::netns::Proc;
use ferry_tests::{all_events, eventually, fill_wal, init_logging, workload, Deployment};
use std::process::Command;
use std::time::{Duration, Instant};

fn ferry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_field-bench"));
    c.arg("__ferry");
    c
}

/// `ferry run` on `listen`; returns the process and the address it took.
fn run(dir: &DataDir, listen: &str, extra: &[&str]) -> (Proc, String) {
    let mut cmd = ferry();
    cmd.args(["run", "--data-dir"])
        .arg(&dir.root)
        .args(["--listen", listen, "--api-listen", "127.0.0.1:0", "--no-mdns"])
        .args(extra);
    ferry_tests::spawn_daemon(cmd).unwrap()
}

/// Blocking WAL work from inside the async tests (the runtime has two
/// workers, so one may block).
fn held(dir: &DataDir) -> u64 {
    tokio::task::block_in_place(|| dir.open_wal(true).map(|w| w.summary().total_events()).unwrap_or(0))
}

fn sync(dir: &DataDir, peer: &str) -> Command {
    let mut cmd = ferry();
    cmd.args(["sync", "--data-dir"]).arg(&dir.root).args(["--peer", peer]);
    cmd
}

/// Photos and scanned forms of 760 KB each used to fail the whole sync: a
/// want's answer packed up to 128 events into one frame with no byte cap.
#[test]
fn a_backlog_of_large_events_replicates_byte_identical() {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    let hub = dep.enroll("hub", Role::Hub).unwrap();
    let clinic = dep.enroll("clinic", Role::Clinic).unwrap();
    let mut payloads: Vec<Vec<u8>> = (0..24u32)
        .map(|i| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
            let raw: Vec<u8> = (0..760_000).map(|_| rand::Rng::gen(&mut rng)).collect();
            if i % 2 == 0 {
                raw
            } else {
                // A scanned form as base64 text.
                raw.iter()
                    .map(|b| b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(b & 63) as usize])
                    .collect()
            }
        })
        .collect();
    payloads.extend(workload("BHU-GASA", 200, 3).unwrap());
    fill_wal(&clinic, &payloads).unwrap();
    let (mut hub_proc, addr) = run(&hub, "127.0.0.1:0", &[]);
    let status = sync(&clinic, &addr).status().unwrap();
    assert!(status.success(), "ferry sync failed: {status}");
    assert_eq!(hub_proc.stop(), Some(0));
    let (a, b) = (clinic.open_wal(true).unwrap(), hub.open_wal(true).unwrap());
    assert_eq!(all_events(&b).unwrap().len(), 224);
    assert_eq!(all_events(&a).unwrap(), all_events(&b).unwrap(), "not byte-identical");
}

/// After a sync was cut, an immediate `ferry sync` used to exit 0 with
/// most events still missing: the hub skipped the ranges the dead
/// connection had claimed until that connection timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_right_after_an_interrupted_one_moves_everything() {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    let hub = dep.enroll("hub", Role::Hub).unwrap();
    let clinic = dep.enroll("clinic", Role::Clinic).unwrap();
    tokio::task::block_in_place(|| fill_wal(&clinic, &workload("BHU-GASA", 5000, 4).unwrap())).unwrap();
    let (mut hub_proc, addr) = run(&hub, "127.0.0.1:0", &[]);
    // A 1 Mbit/s link: the transfer takes seconds, long enough to cut.
    let mut profile = ferry_netsim::Profile::urban_3g();
    profile.up.delay = Duration::from_millis(100);
    let cfg = ferry_netsim::Config::new("127.0.0.1:0".parse().unwrap(), addr.parse().unwrap(), profile);
    let sim = ferry_netsim::Netsim::udp(cfg).await.unwrap();
    let via = sim.local_addr().to_string();

    let mut first = Proc::spawn(sync(&clinic, &via)).unwrap();
    eventually("some events at the hub", Duration::from_secs(60), || held(&hub) >= 500)
        .await
        .unwrap();
    first.child.kill().unwrap(); // SIGKILL, mid-transfer
    first.child.wait().unwrap();
    let cut_at = held(&hub);
    assert!(cut_at < 5000, "the sync finished before it was cut");

    let started = Instant::now();
    let status = sync(&clinic, &via).status().unwrap();
    assert!(status.success(), "the second sync failed: {status}");
    assert_eq!(held(&hub), 5000, "ferry sync exited 0 with events missing at the hub");
    println!(
        "cut at {cut_at} of 5000; the next sync moved the rest in {:.1?}",
        started.elapsed()
    );
    assert_eq!(hub_proc.stop(), Some(0));
}

/// After the hub restarted, connected clinics used to stall for the idle
/// timeout (about two minutes) before they reconnected. Now the restarted
/// hub answers the clinic's next packet with a stateless reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_hub_is_noticed_at_once() {
    init_logging();
    let dep = Deployment::new("test").unwrap();
    let hub = dep.enroll("hub", Role::Hub).unwrap();
    let clinic = dep.enroll("clinic", Role::Clinic).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let (mut hub_proc, addr) = run(&hub, &listen, &[]);
    let (mut clinic_proc, _) = run(&clinic, "127.0.0.1:0", &["--peer", &addr]);
    let connected = |dir: &DataDir| dir.peers().values().any(|p| p.connected && p.verified);
    eventually("the clinic connected", Duration::from_secs(30), || connected(&clinic))
        .await
        .unwrap();

    hub_proc.child.kill().unwrap(); // the power goes at the hub
    hub_proc.child.wait().unwrap();
    let (mut hub_proc, _) = run(&hub, &listen, &[]);
    let before = held(&hub);
    let pushed = Instant::now();
    let out = ferry()
        .args(["push", "--data-dir"])
        .arg(&clinic.root)
        .arg(r#"{"type":"vitals","patient_id":"BT-TH-000001","pulse":72}"#)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The idle timeout is 120 s: arriving well before it shows the reset worked.
    eventually("the event at the restarted hub", Duration::from_secs(30), || {
        held(&hub) > before
    })
    .await
    .unwrap();
    println!(
        "an event written after the hub restarted reached it in {:.1?}",
        pushed.elapsed()
    );
    assert_eq!(clinic_proc.stop(), Some(0));
    assert_eq!(hub_proc.stop(), Some(0));
}

use rand::SeedableRng;
