//! The data mule: clinic A, clinic B and the hub on three separate LAN
//! segments with no route between them. The mule's cable is moved from one
//! segment to the next (A, B, hub, A); at the clinics mDNS finds it, at the
//! hub it reaches its one configured peer. Every node runs policy `role`:
//! hubs and mules get everything, a clinic its own events and the hub's.
//! Root only (CI); elsewhere it says why it skipped.

use ferry::datadir::DataDir;
use ferry::pki::Role;
use ferry_tests::netns::{self, Netns, Proc};
use ferry_tests::{held, workload, Deployment};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_field-bench");

struct Site {
    segment: Netns,
    subnet: &'static str,
}

fn run(host: &Netns, dir: &DataDir, log: &Path, extra: &[&str]) -> Proc {
    let mut args = vec!["--policy", "role"];
    args.extend_from_slice(extra);
    netns::ferry_run(host, Path::new(EXE), &dir.root, log, &args).unwrap()
}

fn logs(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|l| format!("== {}\n{}", l.display(), std::fs::read_to_string(l).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_until(what: &str, logs_of: &[PathBuf], mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}\n{}",
            logs(logs_of)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    start.elapsed()
}

#[test]
fn a_mule_carries_events_between_sites_that_never_connect() {
    if let Some(why) = netns::skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let dep = Deployment::new("district").unwrap();
    let a = dep.enroll("clinic-a", Role::Clinic).unwrap();
    let b = dep.enroll("clinic-b", Role::Clinic).unwrap();
    let hub = dep.enroll("hub", Role::Hub).unwrap();
    let mule = dep.enroll("mule", Role::Mule).unwrap();
    // A and B write while isolated; the hub writes for everyone.
    for (dir, name, n, seed) in [(&a, "CLA", 300, 31), (&b, "CLB", 300, 32), (&hub, "HUB", 200, 33)] {
        ferry_tests::fill_wal(dir, &workload(name, n, seed).unwrap()).unwrap();
    }
    let (of_a, of_b, of_hub) = (held(&a), held(&b), held(&hub));
    let union =
        |sets: &[&BTreeSet<String>]| -> BTreeSet<String> { sets.iter().flat_map(|s| s.iter().cloned()).collect() };

    let sites: Vec<Site> = [("a", "10.81.1"), ("b", "10.81.2"), ("hub", "10.81.3")]
        .into_iter()
        .map(|(name, subnet)| {
            let segment = Netns::new(&format!("s{name}")).unwrap();
            segment.make_bridge().unwrap();
            Site { segment, subnet }
        })
        .collect();
    let hosts: Vec<Netns> = ["ha", "hb", "hh", "hm"]
        .iter()
        .map(|t| Netns::new(t).unwrap())
        .collect();
    for (site, host) in sites.iter().zip(&hosts) {
        site.segment.plug(host, "p1", &format!("{}.1/24", site.subnet)).unwrap();
    }
    let log = |n: &str| dep.tmp.path().join(format!("{n}.log"));
    let all_logs: Vec<PathBuf> = ["a", "b", "hub", "mule"].iter().map(|n| log(n)).collect();
    let mut procs = vec![
        run(&hosts[0], &a, &log("a"), &[]),
        run(&hosts[1], &b, &log("b"), &[]),
        // The mule reaches the hub by its address, as over the WAN; the hub
        // also advertises on its LAN, so the pair keeps one of the two ways.
        run(&hosts[2], &hub, &log("hub"), &[]),
        run(&hosts[3], &mule, &log("mule"), &["--peer", "10.81.3.1:7700"]),
    ];

    let visit = |site: &Site| {
        site.segment
            .plug(&hosts[3], "p9", &format!("{}.9/24", site.subnet))
            .unwrap();
        // A laptop's network card keeps its hardware address from place to
        // place; a fresh veth would get a new one, and the clinic's stale
        // ARP entry would hide the mule for seconds.
        hosts[3]
            .ip(&["link", "set", "eth0", "address", "02:00:00:00:00:09"])
            .unwrap();
    };
    let leave = |site: &Site| site.segment.unplug("p9").unwrap();

    // 1. Clinic A: the mule picks up A's events.
    visit(&sites[0]);
    let t1 = wait_until("the mule to hold A's events", &all_logs, || {
        held(&mule).is_superset(&of_a)
    });
    leave(&sites[0]);
    let left_a = Instant::now();
    // 2. Clinic B: the mule picks up B's; B gets nothing of A's (policy).
    visit(&sites[1]);
    let t2 = wait_until("the mule to hold B's events", &all_logs, || {
        held(&mule).is_superset(&of_b)
    });
    leave(&sites[1]);
    // 3. The hub: it gets A's and B's, the mule gets the hub's.
    visit(&sites[2]);
    let t3 = wait_until(
        "the hub to hold A's and B's events, the mule the hub's",
        &all_logs,
        || held(&hub).is_superset(&union(&[&of_a, &of_b])) && held(&mule).is_superset(&of_hub),
    );
    leave(&sites[2]);
    // 4. Clinic A again, once the first visit's connection has timed out
    // (30 s idle on the LAN): the mule has to find A and connect anew.
    std::thread::sleep(Duration::from_secs(32).saturating_sub(left_a.elapsed()));
    visit(&sites[0]);
    let t4 = wait_until("A to hold the hub's events", &all_logs, || {
        held(&a).is_superset(&of_hub)
    });
    // Let any round still running finish before looking for leaks.
    std::thread::sleep(Duration::from_secs(3));
    for p in &mut procs {
        assert_eq!(
            p.stop(),
            Some(0),
            "a node did not shut down cleanly\n{}",
            logs(&all_logs)
        );
    }

    assert_eq!(held(&hub), union(&[&of_a, &of_b, &of_hub]));
    assert_eq!(held(&mule), union(&[&of_a, &of_b, &of_hub]));
    assert_eq!(
        held(&a),
        union(&[&of_a, &of_hub]),
        "A holds what policy does not give it"
    );
    assert_eq!(held(&b), of_b, "B holds what policy does not give it");
    // No clinic ever reached the hub; each met the mule alone.
    for clinic in [&a, &b] {
        let peers = clinic.peers();
        let names: Vec<&str> = peers.values().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["mule"], "{peers:?}");
        assert!(peers
            .values()
            .all(|p| p.found_by == "mdns" || p.found_by == "dialed-us"));
    }
    // Every event crossed once: none arrived where it was held already,
    // and the receivers stored exactly the events policy sends them. (What
    // a node wrote to a connection whose peer had gone, as the mule drove
    // off, counts as sent but never arrived; it is not compared.)
    let total = |f: fn(&ferry::datadir::PeerRecord) -> u64| -> u64 {
        [&a, &b, &hub, &mule]
            .iter()
            .flat_map(|d| d.peers().into_values())
            .map(|p| f(&p))
            .sum()
    };
    let counts: Vec<String> = [("A", &a), ("B", &b), ("hub", &hub), ("mule", &mule)]
        .iter()
        .flat_map(|(n, d)| {
            d.peers().into_values().map(move |p| {
                format!(
                    "{n} with {}: sent {} received {} duplicates {}",
                    p.name, p.events_sent, p.events_received, p.duplicates_received
                )
            })
        })
        .collect();
    assert_eq!(total(|p| p.duplicates_received), 0, "events crossed twice: {counts:#?}");
    // The mule got A, B and the hub (800), the hub A and B (600), A the hub (200).
    assert_eq!(total(|p| p.events_received), 800 + 600 + 200, "{counts:#?}");
    assert!(total(|p| p.events_sent) >= 1600, "{counts:#?}");
    let hub_log = std::fs::read_to_string(log("hub")).unwrap_or_default();
    let kept = hub_log
        .lines()
        .filter(|l| l.contains("mule") && l.contains("connected") && !l.contains("disconnected"))
        .count();
    println!("connections the hub made or accepted with the mule: {kept}");
    println!(
        "mule visits: A {t1:.1?}, B {t2:.1?}, hub {t3:.1?}, A again {t4:.1?}; hub holds {}, A {}, B {}",
        held(&hub).len(),
        held(&a).len(),
        held(&b).len()
    );
}
