//! Live replication latency between daemons on one LAN (loopback here):
//! an event pushed through one daemon's local API, until the other
//! daemon's local API can read it. Three daemons, each its own process:
//! clinics A and B both dial the hub.
//!
//! `cargo run --release -p ferry-tests --bin live-bench -- --events 50`
//!
//! Paths measured: A to hub (written on the dialing side), hub to A
//! (written on the accepting side), and A to B through the hub.

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry::api::Client;
use ferry::datadir::DataDir;
use ferry::pki::Role;
use ferry_proto::Priority;
use ferry_tests::netns::Proc;
use ferry_tests::{workload, Deployment};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Measure how long a pushed event takes to be readable at another daemon")]
struct Args {
    /// Events timed on each path.
    #[arg(long, default_value_t = 50)]
    events: usize,
}

/// `ferry run` as its own process; returns it once it listens.
fn daemon(dir: &DataDir, peers: &[String]) -> Result<(Proc, String)> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("__ferry").args(["run", "--data-dir"]).arg(&dir.root).args([
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--no-mdns",
    ]);
    for p in peers {
        cmd.args(["--peer", p]);
    }
    ferry_tests::spawn_daemon(cmd)
}

/// Whether `origin:seq` is readable through the daemon of `dir`.
fn readable(dir: &DataDir, id: &str) -> Result<bool> {
    let addr = std::fs::read_to_string(dir.path(ferry::api::ADDR_FILE))?;
    ferry_tests::readable(&ureq::agent(), &format!("http://{}", addr.trim()), id)
}

fn time_path(from: &DataDir, to: &DataDir, payloads: &[Vec<u8>]) -> Result<Vec<Duration>> {
    let client = Client::find(from).context("no local API")?;
    let mut out = Vec::new();
    for p in payloads {
        let start = Instant::now();
        let id = client.append("bench/live", Priority::Normal, std::slice::from_ref(p))?;
        let id = id.first().context("no event id")?.clone();
        while !readable(to, &id)? {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("{id} did not arrive within 30 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        out.push(start.elapsed());
        // Apart, so each event is its own round rather than a burst.
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<std::process::ExitCode> {
    if let Some(code) = ferry_tests::embedded_cli() {
        return Ok(code);
    }
    let args = Args::parse();
    let dep = Deployment::new("live-bench")?;
    let hub = dep.enroll("hub", Role::Hub)?;
    let a = dep.enroll("clinic-a", Role::Clinic)?;
    let b = dep.enroll("clinic-b", Role::Clinic)?;
    let (_hub_proc, hub_addr) = daemon(&hub, &[])?;
    let (_a_proc, _) = daemon(&a, std::slice::from_ref(&hub_addr))?;
    let (_b_proc, _) = daemon(&b, std::slice::from_ref(&hub_addr))?;
    // Both clinics connected and through their first round.
    let warm = workload("WARM", 2, 1)?;
    time_path(&a, &hub, &warm[..1])?;
    time_path(&b, &hub, &warm[1..])?;

    let payloads = workload("LIVE", args.events * 3, 2)?;
    let n = args.events;
    let paths = [
        ("clinic to hub (dialing side writes)", &a, &hub, &payloads[..n]),
        ("hub to clinic (accepting side writes)", &hub, &a, &payloads[n..2 * n]),
        ("clinic to clinic through the hub", &a, &b, &payloads[2 * n..]),
    ];
    println!(
        "{:<40} {:>8} {:>8} {:>8} {:>8}",
        "path", "p50 ms", "p95 ms", "max ms", "< 1 s"
    );
    for (name, from, to, p) in paths {
        let mut t = time_path(from, to, p)?;
        t.sort();
        let within = t.iter().filter(|d| **d < Duration::from_secs(1)).count();
        println!(
            "{name:<40} {:>8.1} {:>8.1} {:>8.1} {:>5}/{}",
            ms(t[t.len() / 2]),
            ms(t[(t.len() * 95 / 100).min(t.len() - 1)]),
            ms(t[t.len() - 1]),
            within,
            t.len()
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}
