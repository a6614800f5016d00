//! Connection migration across a real address change, in network
//! namespaces: the clinic's interface gets a new address and loses its old
//! one while it sends 5,000 events to the hub. Root only (CI); elsewhere it
//! says why it skipped.

use ferry::pki::Role;
use ferry_tests::netns::{self, Netns, Proc};
use ferry_tests::{all_events, workload, Deployment};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const EVENTS: u64 = 5000;

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn transfer_survives_a_real_address_change() {
    if let Some(why) = netns::skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_field-bench"));
    let dep = Deployment::new("migration").unwrap();
    let hub = dep.enroll("hub", Role::Hub).unwrap();
    let clinic = dep.enroll("clinic", Role::Clinic).unwrap();
    ferry_tests::fill_wal(&clinic, &workload("MIGNS", EVENTS as usize, 11).unwrap()).unwrap();

    let h = Netns::new("mh").unwrap();
    let c = Netns::new("mc").unwrap();
    c.veth("vc", &h, "vh").unwrap();
    h.ip(&["addr", "add", "10.77.1.1/24", "dev", "vh"]).unwrap();
    c.ip(&["addr", "add", "10.77.1.2/24", "dev", "vc"]).unwrap();
    // A thin link, so the transfer is still running when the address moves.
    for (ns, dev) in [(&h, "vh"), (&c, "vc")] {
        ns.tc(&[
            "qdisc", "add", "dev", dev, "root", "tbf", "rate", "256kbit", "burst", "4kb", "latency", "400ms",
        ])
        .unwrap();
    }
    // Removing the primary address must leave the new one in place.
    netns::sh(
        "ip",
        &[
            "netns",
            "exec",
            &c.name,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/conf/vc/promote_secondaries",
        ],
    )
    .unwrap();

    let hub_log = dep.tmp.path().join("hub.log");
    let mut hub_proc = Proc::spawn({
        let mut cmd = h.command(bin);
        cmd.arg("__ferry")
            .args(["run", "--data-dir"])
            .arg(&hub.root)
            .args(["--listen", "10.77.1.1:4433", "--no-mdns", "--log", "info"])
            .stderr(std::fs::File::create(&hub_log).unwrap());
        cmd
    })
    .unwrap();
    let log = || std::fs::read_to_string(&hub_log).unwrap_or_default();
    wait_for("the hub to listen", Duration::from_secs(30), || {
        log().contains("listening on")
    });

    let mut sync = Proc::spawn({
        let mut cmd = c.command(bin);
        cmd.arg("__ferry")
            .args(["sync", "--data-dir"])
            .arg(&clinic.root)
            .args(["--peer", "10.77.1.1:4433", "--json", "--log", "info"])
            .stdout(Stdio::piped());
        cmd
    })
    .unwrap();
    let held = || hub.open_wal(true).map(|w| w.stats().events).unwrap_or(0);
    wait_for("a third of the events at the hub", Duration::from_secs(120), || {
        held() >= EVENTS / 3
    });
    let at_move = held();
    c.ip(&["addr", "add", "10.77.1.3/24", "dev", "vc"]).unwrap();
    c.ip(&["addr", "del", "10.77.1.2/24", "dev", "vc"]).unwrap();

    let status = {
        let start = Instant::now();
        loop {
            if let Some(s) = sync.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "sync hung after the address change"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut sync.child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "sync failed: {out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    hub_proc.stop();

    assert!(at_move < EVENTS, "the transfer had finished before the address changed");
    assert_eq!(report["events_sent"], EVENTS, "events sent twice or missing: {report}");
    assert!(
        report["rebinds"].as_u64().unwrap() >= 1,
        "the clinic never rebound: {report}"
    );
    let handshakes = log().matches("peer connected").count();
    assert_eq!(handshakes, 1, "a new handshake was needed:\n{}", log());
    let peers = hub.peers();
    let seen = peers.values().next().map(|p| p.addr.clone()).unwrap_or_default();
    assert!(seen.starts_with("10.77.1.3:"), "the hub last saw the clinic at {seen}");
    let hub_wal = hub.open_wal(true).unwrap();
    let clinic_wal = clinic.open_wal(true).unwrap();
    assert_eq!(hub_wal.stats().events, EVENTS);
    assert_eq!(all_events(&hub_wal).unwrap(), all_events(&clinic_wal).unwrap());
    println!(
        "address changed with {at_move} of {EVENTS} events at the hub; {} UDP bytes from the clinic, one connection",
        report["udp_tx_bytes"]
    );
}
