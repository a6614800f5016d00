//! LAN discovery in network namespaces: nodes on one bridge, with no peer
//! addresses configured anywhere, find each other by mDNS and converge; a
//! node of another deployment on the same LAN is seen but never dialed.
//! Root only (CI); elsewhere it says why it skipped.

use ferry::datadir::DataDir;
use ferry::pki::Role;
use ferry_tests::netns::{self, Netns, Proc};
use ferry_tests::{held, workload, Deployment};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn fill(dir: &DataDir, clinic: &str, n: usize, seed: u64) {
    ferry_tests::fill_wal(dir, &workload(clinic, n, seed).unwrap()).unwrap();
}

/// A `ferry run` in `ns` with no peers configured: mDNS only.
fn daemon(ns: &Netns, dir: &DataDir, log: PathBuf) -> Proc {
    netns::ferry_run(ns, Path::new(env!("CARGO_BIN_EXE_field-bench")), &dir.root, &log, &[]).unwrap()
}

#[test]
fn nodes_on_a_bridge_find_each_other_and_a_foreign_node_is_ignored() {
    if let Some(why) = netns::skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let dep = Deployment::new("district").unwrap();
    let other = Deployment::new("elsewhere").unwrap();
    let nodes: Vec<DataDir> = ["a", "b", "c"]
        .iter()
        .map(|n| dep.enroll(n, Role::Clinic).unwrap())
        .collect();
    let foreign = other.enroll("intruder", Role::Clinic).unwrap();
    for (i, dir) in nodes.iter().enumerate() {
        fill(dir, &format!("LAN{i}"), 100, i as u64 + 20);
    }
    fill(&foreign, "FOREIGN", 50, 99);
    let before: Vec<BTreeSet<String>> = nodes.iter().map(held).collect();
    let foreign_own = held(&foreign);

    let lan = Netns::new("lan").unwrap();
    lan.make_bridge().unwrap();
    let hosts: Vec<Netns> = (0..4).map(|i| Netns::new(&format!("h{i}")).unwrap()).collect();
    for (i, h) in hosts.iter().enumerate() {
        lan.plug(h, &format!("p{i}"), &format!("10.78.0.{}/24", i + 1)).unwrap();
    }
    let logs: Vec<PathBuf> = (0..4).map(|i| dep.tmp.path().join(format!("node{i}.log"))).collect();
    let mut procs: Vec<Proc> = nodes
        .iter()
        .chain(std::iter::once(&foreign))
        .enumerate()
        .map(|(i, d)| daemon(&hosts[i], d, logs[i].clone()))
        .collect();

    let everything: BTreeSet<String> = before.iter().flatten().cloned().collect();
    let start = Instant::now();
    while !nodes.iter().all(|d| held(d) == everything) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no convergence by mDNS; logs:\n{}",
            logs.iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = start.elapsed();
    // Let any stray dial of the foreign node happen before looking.
    std::thread::sleep(Duration::from_secs(3));
    for p in &mut procs {
        assert_eq!(p.stop(), Some(0), "a node did not shut down cleanly");
    }

    for d in &nodes {
        assert_eq!(held(d), everything, "a node stored something of the foreign deployment");
        let peers = d.peers();
        let f = peers
            .iter()
            .find(|(_, p)| p.foreign)
            .expect("the foreign node was not seen on the LAN");
        assert_eq!(f.1.last_sync_unix, None, "the foreign node was synced with");
        assert_eq!(peers.values().filter(|p| p.found_by == "mdns" && !p.foreign).count(), 2);
    }
    let listing = std::process::Command::new(env!("CARGO_BIN_EXE_field-bench"))
        .args(["__ferry", "peers", "--data-dir"])
        .arg(&nodes[0].root)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert_eq!(listing.matches(" mdns ").count(), 3, "{listing}");
    assert!(listing.contains("foreign") && listing.contains("0/0"), "{listing}");
    println!("{listing}");
    assert_eq!(held(&foreign), foreign_own);
    let foreign_log = std::fs::read_to_string(&logs[3]).unwrap();
    assert!(
        !foreign_log.contains("peer connected"),
        "someone dialed the foreign node:\n{foreign_log}"
    );
    println!("three nodes converged by mDNS in {took:?}; the foreign node was seen by all and dialed by none");
}
