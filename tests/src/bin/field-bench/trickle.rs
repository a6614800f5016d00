//! Trickle mode: a clinic daemon connected to a hub daemon through netsim,
//! events appended at the clinic one at a time on the idle connection.
//!
//! `cargo run --release -p ferry-tests --bin field-bench -- --profile bhutan_2g --trickle 60 --interval 3`
//!
//! Measures, in this order: the idle connection's bytes over `--idle`
//! seconds (the baseline, also reported per hour); then each event's
//! latency from the append being answered to the hub's API returning it,
//! and the bytes the trickle put on the link beyond the idle baseline,
//! per event.

use super::{node, peak_rss_kib};
use anyhow::{bail, Context, Result};
use ferry::api::Client;
use ferry::datadir::DataDir;
use ferry::pki::Role;
use ferry_netsim::{Config, Netsim, Profile, Stats};
use ferry_proto::Priority;
use ferry_tests::netns::Proc;
use ferry_tests::{workload, Deployment};
use serde_json::json;
use std::time::{Duration, Instant};

/// `ferry run` as its own process; returns it and its QUIC address once it
/// listens.
fn daemon(dir: &DataDir, peer: Option<&str>, keep_alive: Option<u64>) -> Result<(Proc, String)> {
    let root = dir.root.to_str().context("data directory path")?;
    let mut args = vec![
        "run",
        "--data-dir",
        root,
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--no-mdns",
    ];
    let ka = keep_alive.map(|k| k.to_string());
    if let Some(k) = &ka {
        args.extend(["--keep-alive", k]);
    }
    if let Some(p) = peer {
        args.extend(["--peer", p]);
    }
    ferry_tests::spawn_daemon(node(&args))
}

/// Appends one payload at the clinic; waits until the hub returns it.
/// Returns the time from the append being answered to readable.
fn one(client: &Client, agent: &ureq::Agent, hub_api: &str, payload: &[u8]) -> Result<Duration> {
    let id = client.append("clinic/visit", Priority::Normal, &[payload.to_vec()])?;
    let start = Instant::now();
    let id = id.first().context("no event id")?.clone();
    while !ferry_tests::readable(agent, hub_api, &id)? {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{id} did not reach the hub within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(start.elapsed())
}

fn delta(a: &Stats, b: &Stats) -> (u64, u64, u64, u64) {
    (
        b.up.offered_bytes - a.up.offered_bytes,
        b.down.offered_bytes - a.down.offered_bytes,
        b.up.offered_packets - a.up.offered_packets,
        b.down.offered_packets - a.down.offered_packets,
    )
}

fn pct(sorted: &[Duration], p: usize) -> f64 {
    let i = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    (sorted.get(i).map_or(f64::NAN, Duration::as_secs_f64) * 1000.0).round() / 1000.0
}

pub fn run(
    profile_name: &str,
    n: usize,
    interval: f64,
    idle: u64,
    seed: u64,
    keep_alive: Option<u64>,
) -> Result<serde_json::Value> {
    let profile = Profile::by_name(profile_name).with_context(|| format!("unknown profile {profile_name}"))?;
    let dep = Deployment::new("trickle")?;
    let hub = dep.enroll("hub", Role::Hub)?;
    let clinic = dep.enroll("clinic", Role::Clinic)?;
    let payloads = workload("BHU-TRICKLE", n + 1, 7)?;
    let mean_payload = payloads[1..].iter().map(Vec::len).sum::<usize>() as f64 / n.max(1) as f64;

    let (mut hub_proc, hub_addr) = daemon(&hub, None, keep_alive)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut cfg = Config::new("127.0.0.1:0".parse()?, hub_addr.parse()?, profile.clone());
    cfg.seed = seed;
    let sim = rt.block_on(Netsim::udp(cfg))?;
    let (mut clinic_proc, _) = daemon(&clinic, Some(&sim.local_addr().to_string()), keep_alive)?;
    let client = Client::find(&clinic).context("the clinic's API")?;
    let hub_api = Client::find(&hub).context("the hub's API")?.base().to_string();
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();

    // Connected and through the first round; then let it settle.
    one(&client, &agent, &hub_api, &payloads[0]).context("the warm-up event")?;
    std::thread::sleep(Duration::from_secs(5));

    let idle_start = sim.stats();
    std::thread::sleep(Duration::from_secs(idle));
    let idle_end = sim.stats();
    let (iu, id, ipu, ipd) = delta(&idle_start, &idle_end);
    let per_sec = |b: u64| b as f64 / idle as f64;

    let t0 = Instant::now();
    let before = sim.stats();
    let mut lat = Vec::with_capacity(n);
    for (i, p) in payloads[1..].iter().enumerate() {
        let due = t0 + Duration::from_secs_f64(interval * i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        lat.push(one(&client, &agent, &hub_api, p)?);
    }
    // Until the next event would have been due: the last one's
    // acknowledgements are in.
    let end = t0 + Duration::from_secs_f64(interval * n as f64);
    if let Some(wait) = end.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let after = sim.stats();
    let window = t0.elapsed().as_secs_f64();
    let (tu, td, tpu, tpd) = delta(&before, &after);
    let per_event = |total: u64, idle_bytes: u64| {
        let extra = total as f64 - idle_bytes as f64 / idle as f64 * window;
        (extra / n as f64 * 10.0).round() / 10.0
    };
    let clinic_rss = peak_rss_kib(clinic_proc.child.id()).unwrap_or(0);
    let hub_rss = peak_rss_kib(hub_proc.child.id()).unwrap_or(0);
    clinic_proc.stop();
    hub_proc.stop();
    lat.sort();
    let mean_ms = lat.iter().map(Duration::as_secs_f64).sum::<f64>() / lat.len().max(1) as f64 * 1000.0;
    Ok(json!({
        "profile": profile_name,
        "seed": seed,
        "mode": "trickle",
        "events": n,
        "interval_s": interval,
        "keep_alive_s": keep_alive,
        "mean_payload_bytes": (mean_payload * 10.0).round() / 10.0,
        "bytes_per_event_up": per_event(tu, iu),
        "bytes_per_event_down": per_event(td, id),
        "packets_per_event_up": ((tpu as f64 - ipu as f64 / idle as f64 * window) / n as f64 * 100.0).round() / 100.0,
        "packets_per_event_down": ((tpd as f64 - ipd as f64 / idle as f64 * window) / n as f64 * 100.0).round() / 100.0,
        "trickle_bytes": { "up": tu, "down": td, "seconds": (window * 10.0).round() / 10.0 },
        "latency_s": {
            "p50": pct(&lat, 50),
            "p95": pct(&lat, 95),
            "max": pct(&lat, 100),
            "mean": (mean_ms).round() / 1000.0,
        },
        "idle": {
            "seconds": idle,
            "bytes_up": iu,
            "bytes_down": id,
            "packets_up": ipu,
            "packets_down": ipd,
            "bytes_per_hour_up": (per_sec(iu) * 3600.0).round(),
            "bytes_per_hour_down": (per_sec(id) * 3600.0).round(),
            "bytes_per_hour_total": (per_sec(iu + id) * 3600.0).round(),
        },
        "rss_peak_kib": { "hub": hub_rss, "clinic": clinic_rss },
        "node_binary": super::node_binary(),
    }))
}
