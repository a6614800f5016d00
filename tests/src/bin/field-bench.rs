//! The field benchmark: a clinic holding workload events syncs to a hub
//! through netsim, each node its own process. Prints one JSON object.
//!
//! `cargo run --release -p ferry-tests --bin field-bench -- --profile bhutan_2g --events 5000`
//!
//! The nodes are this same binary re-executed as `field-bench __ferry ARGS`,
//! which is exactly the `ferry` CLI, so each node's peak RSS is its own.

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry::node::ZeroRtt;
use ferry::pki::Role;
use ferry_netsim::{Config, Netsim, Profile};
use ferry_tests::{workload, Deployment};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

#[path = "field-bench/trickle.rs"]
mod trickle;

#[derive(Parser)]
#[command(about = "Measure a clinic-to-hub transfer through netsim")]
struct Args {
    /// netsim profile of the link.
    #[arg(long, default_value = "bhutan_2g")]
    profile: String,
    /// Workload events the clinic holds.
    #[arg(long, default_value_t = 5000)]
    events: usize,
    /// Skip the comparison run on urban_3g.
    #[arg(long)]
    no_compare: bool,
    /// Seed of the link's loss and jitter: compare settings over several.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Instead of a bulk sync: this many events appended one at a time at
    /// a clinic daemon connected to a hub daemon, each timed until the
    /// hub can read it.
    #[arg(long)]
    trickle: Option<usize>,
    /// Seconds between trickled events.
    #[arg(long, default_value_t = 3.0)]
    interval: f64,
    /// Seconds of an idle connection measured before the trickle, for the
    /// baseline that is subtracted and the idle cost per hour.
    #[arg(long, default_value_t = 120)]
    idle: u64,
    /// Passed to both daemons as `--keep-alive` (seconds), if given.
    #[arg(long)]
    keep_alive: Option<u64>,
    /// Run the nodes from this `ferry` binary (e.g. the `dist` build a
    /// deployment ships) instead of this benchmark re-executed: their
    /// resident set then holds that binary's code, not the benchmark's.
    #[arg(long)]
    ferry_bin: Option<std::path::PathBuf>,
}

/// `Args::ferry_bin`, set once at start.
static FERRY_BIN: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// What the nodes run, for the report.
fn node_binary() -> String {
    match FERRY_BIN.get().and_then(Option::as_ref) {
        Some(p) => p.display().to_string(),
        None => "this benchmark".to_string(),
    }
}

/// Peak RSS in KiB of a running process. `VmHWM` belongs to the process's
/// own address space; `ru_maxrss` from wait4 would not do, as Linux carries
/// the forking parent's high-water mark across exec.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples a child's peak RSS until it exits; returns the last reading.
fn watch_rss(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        peak
    })
}

fn wait_status(child: &mut Child) -> Result<i32> {
    Ok(child.wait()?.code().unwrap_or(-1))
}

/// Runs `ferry sync` from the clinic. Returns its report, the seconds until
/// the report (convergence; the clean close after it is not counted) and
/// the process's peak RSS.
fn sync_session(clinic_dir: &str, peer: std::net::SocketAddr) -> Result<(serde_json::Value, f64, u64)> {
    let t0 = Instant::now();
    let mut proc = node(&["sync", "--data-dir", clinic_dir, "--peer", &peer.to_string(), "--json"])
        .stdout(Stdio::piped())
        .spawn()?;
    let watch = watch_rss(proc.id());
    // The pretty JSON report ends with a lone "}".
    let mut out = String::new();
    let mut lines = BufReader::new(proc.stdout.take().context("clinic stdout")?).lines();
    for line in lines.by_ref() {
        let line = line?;
        out.push_str(&line);
        if line == "}" {
            break;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    for _ in lines {}
    // Sample once more before reaping, while the process still exists.
    let last = peak_rss_kib(proc.id()).unwrap_or(0);
    let status = wait_status(&mut proc)?;
    if status != 0 {
        bail!("the clinic's sync failed (status {status})");
    }
    let rss = watch.join().unwrap_or(0).max(last);
    Ok((serde_json::from_str(&out)?, seconds, rss))
}

/// Pushes one event into the running hub (through its local API).
fn push_probe(hub_dir: &str, n: usize) -> Result<()> {
    let body = format!(r#"{{"type":"notice","text":"reconnect probe {n}"}}"#);
    let pushed = node(&["push", "--data-dir", hub_dir, &body]).output()?;
    if !pushed.status.success() {
        bail!(
            "could not push into the hub: {}",
            String::from_utf8_lossy(&pushed.stderr)
        );
    }
    Ok(())
}

/// The cost of getting one new event after the link comes back, three
/// ways: a node with no session to resume (full handshake), the same node
/// again (TLS resumption, round opened in 0-RTT), and a connection that
/// stays up while the clinic's address changes (migration; the round is
/// started right after the change). Each row: time from the reconnect (or
/// the address change) to the first byte of an event batch, in seconds and
/// in RTTs of the profile, and the bytes the whole exchange put on the link.
async fn reconnect_costs(
    clinic: &ferry::datadir::DataDir,
    hub_dir: &str,
    sim: &Netsim,
    rtt: f64,
) -> Result<serde_json::Value> {
    let node = ferry_tests::start_with(clinic, None, &ferry::transport::TransportProfile::wan()).await?;
    let addr = sim.local_addr();
    let row = |first: Option<std::time::Duration>, before: &ferry_netsim::Stats, received: u64| {
        let after = sim.stats();
        let secs = first.map_or(f64::NAN, |d| d.as_secs_f64());
        json!({
            "events_received": received,
            "seconds_to_first_event": (secs * 100.0).round() / 100.0,
            "rtts_to_first_event": (secs / rtt * 10.0).round() / 10.0,
            "bytes_up": after.up.offered_bytes - before.up.offered_bytes,
            "bytes_down": after.down.offered_bytes - before.down.offered_bytes,
        })
    };
    let mut rows = serde_json::Map::new();
    for (n, name) in [(1, "full_handshake"), (2, "zero_rtt")] {
        push_probe(hub_dir, n)?;
        let before = sim.stats();
        let r = node.sync_once(addr).await?;
        let expected = if n == 1 { ZeroRtt::NotTried } else { ZeroRtt::Accepted };
        if r.zero_rtt != expected || r.events_received != 1 {
            bail!("{name} reconnect: {r:?}");
        }
        let first = r.first_event_ms.map(std::time::Duration::from_millis);
        rows.insert(name.into(), row(first, &before, r.events_received));
    }
    let migration = async {
        let opened = node.open(addr, false).await?;
        let link = opened.link.clone();
        if !link.wait_in_step().await {
            bail!("migration reconnect: the first sync did not complete");
        }
        // The connection opened in 0-RTT: a round can finish before the
        // server has the client's Finished (it may still sit in netsim's
        // queue on 2G). Until the handshake is confirmed the server drops
        // packets from a new address (RFC 9000 section 9), so this row
        // moves the address of an established connection only.
        tokio::time::sleep(std::time::Duration::from_secs_f64(rtt * 4.0)).await;
        push_probe(hub_dir, 3)?;
        let before = sim.stats();
        let moved = Instant::now();
        sim.rebind(None).await?;
        let received_before = node
            .ctx
            .totals
            .events_received
            .load(std::sync::atomic::Ordering::Relaxed);
        node.driver.with_core(|core, now| core.start_round(now, link.id()));
        let got = ferry_tests::eventually("the probe after migrating", std::time::Duration::from_secs(60), || {
            node.ctx
                .totals
                .events_received
                .load(std::sync::atomic::Ordering::Relaxed)
                > received_before
        })
        .await;
        let first = link
            .first_event_after()
            .map(|d| d.saturating_sub(moved.duration_since(link.started)));
        if got.is_err() || sim.stats().rebinds != 1 {
            bail!("migration reconnect: no event after the address change");
        }
        link.conn.close(0u32.into(), b"done");
        Ok::<_, anyhow::Error>(row(first, &before, 1))
    }
    .await;
    // A failed row is reported beside the others.
    let migration = migration.unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
    rows.insert("migration".into(), migration);
    node.shutdown().await;
    Ok(rows.into())
}

fn node(args: &[&str]) -> Command {
    match FERRY_BIN.get().and_then(Option::as_ref) {
        Some(bin) => {
            let mut c = Command::new(bin);
            c.args(args);
            c
        }
        None => {
            let mut c = Command::new(std::env::current_exe().expect("own path"));
            c.arg("__ferry").args(args);
            c
        }
    }
}

fn run(profile_name: &str, events: usize, seed: u64) -> Result<serde_json::Value> {
    let profile = Profile::by_name(profile_name).with_context(|| format!("unknown profile {profile_name}"))?;
    let dep = Deployment::new("bench")?;
    let hub = dep.enroll("hub", Role::Hub)?;
    let clinic = dep.enroll("clinic", Role::Clinic)?;
    let payloads = workload("BHU-BENCH", events, 42)?;
    ferry_tests::fill_wal(&clinic, &payloads)?;
    let payload_bytes: usize = payloads.iter().map(Vec::len).sum();
    let stream = payloads.join(&b'\n');
    let zstd19 = zstd::bulk::compress(&stream, 19)?.len();

    let hub_dir = hub.root.to_str().context("path")?.to_string();
    let clinic_dir = clinic.root.to_str().context("path")?.to_string();
    let hub_cmd = node(&[
        "run",
        "--data-dir",
        &hub_dir,
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--no-mdns",
    ]);
    // Stopped when this run ends, whichever way.
    let (mut hub_proc, hub_addr) = ferry_tests::spawn_daemon(hub_cmd)?;

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut cfg = Config::new("127.0.0.1:0".parse()?, hub_addr.parse()?, profile.clone());
    cfg.seed = seed;
    let sim = rt.block_on(Netsim::udp(cfg))?;
    let (report, seconds, clinic_rss) = sync_session(&clinic_dir, sim.local_addr())?;
    let transfer = sim.stats();

    let rtt = profile.base_rtt().as_secs_f64().max(1e-3);
    // A failed reconnect row is reported, not fatal: the transfer's
    // figures stand on their own.
    let reconnect = rt
        .block_on(reconnect_costs(&clinic, &hub_dir, &sim, rtt))
        .unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
    let hub_rss = peak_rss_kib(hub_proc.child.id()).unwrap_or(0);
    hub_proc.stop();
    let held = hub.open_wal(true)?.stats().events;
    // The workload plus at most one probe per reconnect row.
    if held < events as u64 || held > events as u64 + 3 {
        bail!("the hub holds {held} events, expected {} to {}", events, events + 3);
    }
    let stats = transfer;
    let ideal = zstd19 as f64 * 8.0 / profile.up.rate_bps.max(1) as f64;
    Ok(json!({
        "profile": profile_name,
        "seed": seed,
        "events": events,
        "payload_bytes": payload_bytes,
        "zstd19_bytes": zstd19,
        "wire_bytes_up": stats.up.offered_bytes,
        "wire_bytes_down": stats.down.offered_bytes,
        "packets_up": stats.up.offered_packets,
        "packets_down": stats.down.offered_packets,
        "dropped": { "loss": stats.up.dropped_loss + stats.down.dropped_loss, "queue": stats.up.dropped_queue + stats.down.dropped_queue },
        "wire_bytes_per_event": stats.up.offered_bytes as f64 / events as f64,
        "seconds": (seconds * 10.0).round() / 10.0,
        "ideal_seconds": (ideal * 10.0).round() / 10.0,
        "efficiency": ((ideal / seconds) * 1000.0).round() / 1000.0,
        "events_per_s": (events as f64 / seconds).round(),
        "rss_peak_kib": { "hub": hub_rss, "clinic": clinic_rss },
        "node_binary": node_binary(),
        "events_sent": report["events_sent"],
        // Log authentication's share of the bulk bytes (issue: < 2 %).
        "auth_bytes_up": report["auth_bytes_sent"],
        "auth_share_of_wire_up": report["auth_bytes_sent"].as_f64().map(|a| (a / stats.up.offered_bytes as f64 * 10000.0).round() / 10000.0),
        "reconnect": reconnect,
    }))
}

fn main() -> std::process::ExitCode {
    if let Some(code) = ferry_tests::embedded_cli() {
        return code;
    }
    let args = Args::parse();
    FERRY_BIN.get_or_init(|| args.ferry_bin.clone());
    if let Some(n) = args.trickle {
        return match trickle::run(&args.profile, n, args.interval, args.idle, args.seed, args.keep_alive) {
            Ok(r) => {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("field-bench trickle on {}: {e:#}", args.profile);
                std::process::ExitCode::FAILURE
            }
        };
    }
    let mut runs = Vec::new();
    let mut profiles = vec![args.profile.clone()];
    if !args.no_compare && args.profile != "urban_3g" {
        profiles.push("urban_3g".into());
    }
    for p in profiles {
        match run(&p, args.events, args.seed) {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("field-bench on {p}: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "runs": runs })).unwrap_or_default()
    );
    std::process::ExitCode::SUCCESS
}
