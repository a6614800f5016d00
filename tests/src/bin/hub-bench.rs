//! The hub benchmark: one hub and many clinic daemons, every node its own
//! process, every clinic behind its own netsim link to the hub. Prints one
//! JSON line.
//!
//! `cargo run --release -p ferry-tests --bin hub-bench -- --clinics 100 --events 200`
//!
//! Every node holds `--events` workload events of its own before it starts.
//! The hub runs `--policy role` (as a district hub does), so each clinic
//! receives the hub's events and the hub every clinic's. Converged means
//! exactly that, checked through each node's local API; the benchmark fails
//! if it does not happen within `--timeout`. With all clinics connected, it
//! then times the hub's `GET /v1/status` and a new clinic's first sync.
//!
//! Nodes are driven only through the `ferry` CLI (this binary re-executed as
//! `hub-bench __ferry ARGS`) and the local HTTP API, so the benchmark does
//! not depend on how the sync protocol is built.

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use ferry_netsim::{Config, Netsim, Profile};
use ferry_tests::netns::Proc;
use ferry_tests::workload;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "One hub, many clinic daemons over netsim links: convergence, hub memory and CPU")]
struct Args {
    /// Clinic daemons, each its own process with its own link.
    #[arg(long, default_value_t = 100)]
    clinics: usize,
    /// Workload events each node (the hub too) holds at the start.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// netsim profile of every clinic's link.
    #[arg(long, default_value = "bhutan_2g")]
    profile: String,
    /// Seed of the links' loss and jitter (link i uses seed + i).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The hub's policy: `role` (clinics get the hub's events and their
    /// own) or `all` (every clinic gets every clinic's events).
    #[arg(long, default_value = "role")]
    hub_policy: String,
    /// Give up (and fail) if the nodes have not converged by then.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Keep everything connected this long after the checks, before
    /// reading memory (keep-alives and timers of idle connections).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// How long the idle clinic (clinic 0, restarted once everything has
    /// converged) stays connected before its peak RSS is read; 30 s spans
    /// a keep-alive.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// KEY=VALUE set in the hub's environment only, e.g. to profile it:
    /// `--hub-env LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so
    /// --hub-env DUMP_HEAPTRACK_OUTPUT=/tmp/hub.raw` (a dynamically linked
    /// build), then `heaptrack_interpret < /tmp/hub.raw`.
    #[arg(long, value_parser = parse_env)]
    hub_env: Vec<(String, String)>,
    /// Run the hub from this `ferry` binary (e.g. the size-tuned `dist`
    /// build) instead of this benchmark re-executed, so the hub's resident
    /// code is what a deployment maps.
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// Run the clinic daemons from this `ferry` binary (as `--hub-bin`
    /// does the hub), so that their resident sets hold the code a clinic
    /// ships with.
    #[arg(long)]
    clinic_bin: Option<PathBuf>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// This binary as the `ferry` CLI.
fn ferry(args: &[&str]) -> Result<Command> {
    let mut c = Command::new(std::env::current_exe().context("own path")?);
    c.arg("__ferry").args(args);
    Ok(c)
}

fn ok(args: &[&str]) -> Result<String> {
    let out = ferry(args)?.output()?;
    ensure!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 temporary path")
}

/// `ferry init`, `ferry ca enroll` and `ferry push` of `payloads`.
fn make_node(root: &Path, ca: &str, name: &str, role: &str, payloads: &[Vec<u8>]) -> Result<PathBuf> {
    let dir = root.join(name);
    let d = path_str(&dir)?;
    ok(&["init", "--data-dir", d, "--name", name])?;
    ok(&["--data-dir", d, "ca", "enroll", "--ca-dir", ca, "--role", role])?;
    let mut push = ferry(&["push", "--data-dir", d])?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        let mut stdin = push.stdin.take().context("push stdin")?;
        for p in payloads {
            stdin.write_all(p)?;
            stdin.write_all(b"\n")?;
        }
    }
    let out = push.wait_with_output()?;
    ensure!(
        out.status.success(),
        "push into {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    ensure!(
        written == payloads.len(),
        "{name}: pushed {written} of {} events",
        payloads.len()
    );
    Ok(dir)
}

struct Daemon {
    proc: Proc,
    name: String,
    dir: PathBuf,
    started: Instant,
}

/// Starts `ferry run`; does not wait for it.
fn spawn_daemon(
    dir: &Path,
    name: &str,
    extra: &[&str],
    env: &[(String, String)],
    bin: Option<&Path>,
) -> Result<Daemon> {
    let mut args = vec![
        "run",
        "--data-dir",
        path_str(dir)?,
        "--listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--no-mdns",
    ];
    args.extend_from_slice(extra);
    let mut cmd = match bin {
        Some(bin) => {
            let mut c = Command::new(bin);
            c.args(&args);
            c
        }
        None => ferry(&args)?,
    };
    cmd.stderr(Stdio::piped()).envs(env.iter().map(|(k, v)| (k, v)));
    Ok(Daemon {
        proc: Proc::spawn(cmd)?,
        name: name.to_string(),
        dir: dir.to_path_buf(),
        started: Instant::now(),
    })
}

impl Daemon {
    /// Waits until it listens; returns its UDP address. Keeps draining its
    /// stderr so it never blocks on a full pipe.
    fn listening(&mut self) -> Result<SocketAddr> {
        let stderr = self.proc.child.stderr.take().context("stderr already taken")?;
        let mut lines = BufReader::new(stderr).lines();
        let first = lines
            .next()
            .with_context(|| format!("{} exited at start", self.name))??;
        let addr = first
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .with_context(|| format!("{} said {first:?}", self.name))?;
        std::thread::spawn(move || for _ in lines {});
        Ok(addr.parse()?)
    }

    /// Its local API's base URL, from `api.addr` in its data directory.
    fn api(&self) -> Result<String> {
        let start = Instant::now();
        loop {
            if let Ok(a) = std::fs::read_to_string(self.dir.join("api.addr")) {
                if !a.trim().is_empty() {
                    return Ok(format!("http://{}", a.trim()));
                }
            }
            ensure!(
                start.elapsed() < Duration::from_secs(60),
                "{} wrote no api.addr",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.proc.child.id()
    }
}

/// Waits until the clinic's `ferry peers` shows the hub connected.
fn wait_connected(name: &str, dir: &Path) -> Result<()> {
    let start = Instant::now();
    loop {
        let peers: Value = serde_json::from_str(&ok(&["peers", "--data-dir", path_str(dir)?, "--json"])?)?;
        let up = peers.as_object().is_some_and(|m| {
            m.values()
                .any(|p| p["role"] == json!("hub") && p["connected"] == json!(true))
        });
        if up {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "{name} is not connected to the hub: {peers}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get_status(agent: &ureq::Agent, api: &str) -> Result<Value> {
    Ok(agent.get(&format!("{api}/v1/status")).call()?.into_json()?)
}

/// Whether a `/v1/status` answer holds events 1..=n of `origin`.
fn holds(status: &Value, origin: &str, n: u64) -> bool {
    status["have"][origin].as_array().is_some_and(|ranges| {
        ranges
            .iter()
            .any(|r| r[0].as_u64().is_some_and(|a| a <= 1) && r[1].as_u64().is_some_and(|b| b >= n))
    })
}

/// What the clinics' links carried, summed: bytes offered up and down,
/// and of the downlinks the packets offered and those dropped by a full
/// queue and by loss.
#[derive(Default)]
struct Wire {
    up: u64,
    down: u64,
    down_packets: u64,
    down_dropped_queue: u64,
    down_dropped_loss: u64,
}

fn wire_totals(links: &[Netsim]) -> Wire {
    links.iter().map(Netsim::stats).fold(Wire::default(), |w, s| Wire {
        up: w.up + s.up.offered_bytes,
        down: w.down + s.down.offered_bytes,
        down_packets: w.down_packets + s.down.offered_packets,
        down_dropped_queue: w.down_dropped_queue + s.down.dropped_queue,
        down_dropped_loss: w.down_dropped_loss + s.down.dropped_loss,
    })
}

/// Events the hub says it sent, summed over the peers it has recorded
/// (`/metrics`): more than the clinics lack means some went twice.
fn hub_events_sent(agent: &ureq::Agent, api: &str) -> Result<u64> {
    let text = agent.get(&format!("{api}/metrics")).call()?.into_string()?;
    let family = "ferry_peer_events_sent_total{";
    Ok(text
        .lines()
        .filter(|l| l.starts_with(family))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// Connections the hub gave up because a clinic stopped answering
/// (`/metrics`): on loopback through netsim, any is a false alarm.
fn hub_connections_silent(agent: &ureq::Agent, api: &str) -> Result<u64> {
    let text = agent.get(&format!("{api}/metrics")).call()?.into_string()?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("ferry_connections_silent_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

fn proc_field(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of a running process.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn link(rt: &tokio::runtime::Runtime, hub: SocketAddr, profile: &Profile, seed: u64) -> Result<Netsim> {
    let mut cfg = Config::new("127.0.0.1:0".parse()?, hub, profile.clone());
    cfg.seed = seed;
    rt.block_on(Netsim::udp(cfg))
}

fn run(args: &Args) -> Result<Value> {
    let profile = Profile::by_name(&args.profile).with_context(|| format!("unknown profile {}", args.profile))?;
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let ca = root.join("ca");
    ok(&["ca", "init", "--ca-dir", path_str(&ca)?, "--name", "hub-bench"])?;
    let ca = path_str(&ca)?.to_string();
    let n = args.events;
    let load = |name: &str, seed: u64| workload(name, n as usize, seed);

    let hub_dir = make_node(root, &ca, "hub", "hub", &load("HUB-DISTRICT", args.seed * 100_000)?)?;
    let mut clinic_dirs = Vec::new();
    for i in 0..args.clinics {
        let name = format!("clinic-{i:03}");
        let payloads = load(&format!("BHU-{i:03}"), args.seed * 100_000 + 1 + i as u64)?;
        clinic_dirs.push((name.clone(), make_node(root, &ca, &name, "clinic", &payloads)?));
    }
    let newcomer = make_node(
        root,
        &ca,
        "clinic-new",
        "clinic",
        &load("BHU-NEW", args.seed * 100_000 + 99_999)?,
    )?;

    let mut hub = spawn_daemon(
        &hub_dir,
        "hub",
        &["--policy", &args.hub_policy],
        &args.hub_env,
        args.hub_bin.as_deref(),
    )?;
    let hub_addr = hub.listening()?;
    let hub_api = hub.api()?;
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    let hub_origin = get_status(&agent, &hub_api)?["local_origin"]
        .as_str()
        .context("hub status has no local_origin")?
        .to_string();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut links = Vec::new();
    for i in 0..args.clinics {
        links.push(link(&rt, hub_addr, &profile, args.seed + i as u64)?);
    }

    // Every clinic at once, as after a district-wide power cut.
    let t0 = Instant::now();
    let mut clinics = Vec::new();
    for ((name, dir), sim) in clinic_dirs.iter().zip(&links) {
        let peer = sim.local_addr().to_string();
        clinics.push(spawn_daemon(
            dir,
            name,
            &["--peer", &peer],
            &[],
            args.clinic_bin.as_deref(),
        )?);
    }
    let mut apis = Vec::new();
    let mut origins = Vec::new();
    for c in &mut clinics {
        c.listening()?;
        let api = c.api()?;
        let origin = get_status(&agent, &api)?["local_origin"]
            .as_str()
            .with_context(|| format!("{} status has no local_origin", c.name))?
            .to_string();
        apis.push(api);
        origins.push(origin);
    }

    // Seconds from each clinic's start until both sides hold each other's
    // events (polled, so late by up to one pass over the clinics).
    let mut done: Vec<Option<f64>> = vec![None; clinics.len()];
    let deadline = Duration::from_secs(args.timeout_secs);
    while done.iter().any(Option::is_none) {
        if t0.elapsed() > deadline {
            let missing: Vec<&str> = clinics
                .iter()
                .zip(&done)
                .filter(|(_, d)| d.is_none())
                .map(|(c, _)| c.name.as_str())
                .collect();
            bail!(
                "not converged after {} s: {} of {} clinics still lack the hub's events or are missing at the hub: {missing:?}",
                args.timeout_secs,
                missing.len(),
                clinics.len()
            );
        }
        let hub_status = get_status(&agent, &hub_api)?;
        for (i, c) in clinics.iter().enumerate() {
            if done[i].is_some() || !holds(&hub_status, &origins[i], n) {
                continue;
            }
            if holds(&get_status(&agent, &apis[i])?, &hub_origin, n) {
                done[i] = Some(c.started.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let converged = t0.elapsed().as_secs_f64();
    let wire = wire_totals(&links);
    let hub_events_sent = hub_events_sent(&agent, &hub_api)?;
    let hub_connections_silent = hub_connections_silent(&agent, &hub_api)?;
    let hub_cpu_converged = cpu_seconds(hub.pid()).unwrap_or(f64::NAN);
    for c in &mut clinics {
        if let Ok(Some(status)) = c.proc.child.try_wait() {
            bail!("{} exited during the run: {status}", c.name);
        }
    }

    // With every clinic connected (as each clinic's `ferry peers` says once
    // its first round is over; a hub records peers that dialed it only when
    // they leave): the hub's own API, and a newcomer.
    let mut connected = 0;
    for (name, dir) in &clinic_dirs {
        wait_connected(name, dir)?;
        connected += 1;
    }
    let mut api_ms = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let s = get_status(&agent, &hub_api)?;
        api_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(s["local_origin"] == json!(hub_origin), "hub status answered {s}");
    }
    api_ms.sort_by(f64::total_cmp);
    let new_link = link(&rt, hub_addr, &profile, args.seed + args.clinics as u64)?;
    let t = Instant::now();
    let sync = ok(&[
        "sync",
        "--data-dir",
        path_str(&newcomer)?,
        "--peer",
        &new_link.local_addr().to_string(),
        "--json",
    ])?;
    let new_sync_seconds = t.elapsed().as_secs_f64();
    let sync: Value = serde_json::from_str(&sync).with_context(|| format!("sync printed {sync:?}"))?;
    let new_status: Value = serde_json::from_str(&ok(&["status", "--data-dir", path_str(&newcomer)?, "--json"])?)?;
    let new_origin = new_status["local_origin"].as_str().context("newcomer origin")?;
    ensure!(
        holds(&new_status, &hub_origin, n),
        "the new clinic lacks the hub's events after its sync"
    );
    ensure!(
        holds(&get_status(&agent, &hub_api)?, new_origin, n),
        "the hub lacks the new clinic's events after its sync"
    );

    // An idle clinic: clinic 0 again, started after it already holds
    // everything, so its peak is a daemon connected to the hub with nothing
    // to sync (a keep-alive or two included), not the sync it did before.
    let idle_rss = {
        let (name, dir) = &clinic_dirs[0];
        clinics[0].proc.stop();
        let peer = links[0].local_addr().to_string();
        let mut idle = spawn_daemon(dir, name, &["--peer", &peer], &[], args.clinic_bin.as_deref())?;
        idle.listening()?;
        wait_connected(name, dir)?;
        std::thread::sleep(Duration::from_secs(args.idle_secs));
        let rss = proc_field(idle.pid(), "VmHWM:").context("idle clinic VmHWM")?;
        // What of it is the process's own (heap, stacks), not the pages of
        // its binary that it shares with the page cache.
        let anon = proc_field(idle.pid(), "RssAnon:").context("idle clinic RssAnon")?;
        clinics[0] = idle;
        (rss, anon)
    };

    std::thread::sleep(Duration::from_secs(args.hold_secs));
    let hub_rss = proc_field(hub.pid(), "VmHWM:").context("hub VmHWM")?;
    let hub_rss_now = proc_field(hub.pid(), "VmRSS:").context("hub VmRSS")?;
    let hub_anon_now = proc_field(hub.pid(), "RssAnon:").context("hub RssAnon")?;
    let hub_cpu = cpu_seconds(hub.pid()).context("hub CPU time")?;
    let mut clinic_rss: Vec<f64> = clinics
        .iter()
        .filter_map(|c| proc_field(c.pid(), "VmHWM:"))
        .map(|k| k as f64)
        .collect();
    clinic_rss.sort_by(f64::total_cmp);
    let mut clinic_rss_now: Vec<f64> = clinics
        .iter()
        .filter_map(|c| proc_field(c.pid(), "VmRSS:"))
        .map(|k| k as f64)
        .collect();
    clinic_rss_now.sort_by(f64::total_cmp);
    let mut times: Vec<f64> = done.into_iter().flatten().collect();
    times.sort_by(f64::total_cmp);

    for c in &mut clinics {
        c.proc.stop();
    }
    let hub_exit = hub.proc.stop();
    ensure!(hub_exit == Some(0), "the hub exited with {hub_exit:?} on SIGTERM");
    Ok(json!({
        "clinics": args.clinics,
        "events_per_node": n,
        "profile": args.profile,
        "hub_policy": args.hub_policy,
        "nodes_as_processes": true,
        "hub_binary": args.hub_bin.as_ref().map_or("this benchmark".to_string(), |p| p.display().to_string()),
        "clinic_binary": args.clinic_bin.as_ref().map_or("this benchmark".to_string(), |p| p.display().to_string()),
        "seconds_to_converge": round(converged, 2),
        "slowest_clinic_seconds": round(times.last().copied().unwrap_or(f64::NAN), 2),
        "median_clinic_seconds": round(percentile(&times, 50), 2),
        "hub_rss_peak_kib": hub_rss,
        "hub_rss_end_kib": hub_rss_now,
        "hub_rss_anon_end_kib": hub_anon_now,
        "hub_cpu_seconds_converged": round(hub_cpu_converged, 2),
        "hub_cpu_seconds": round(hub_cpu, 2),
        "wire_bytes_up": wire.up,
        "wire_bytes_down": wire.down,
        "wire_down_packets": wire.down_packets,
        "wire_down_dropped_queue": wire.down_dropped_queue,
        "wire_down_dropped_loss": wire.down_dropped_loss,
        "hub_events_sent": hub_events_sent,
        "hub_connections_silent": hub_connections_silent,
        "clinics_converged": times.len(),
        "clinics_connected_to_hub": connected,
        "hub_api_status_answers": api_ms.len(),
        "hub_api_status_ms": { "p50": round(percentile(&api_ms, 50), 1), "max": round(api_ms.last().copied().unwrap_or(f64::NAN), 1) },
        "new_clinic_sync_seconds": round(new_sync_seconds, 2),
        "new_clinic_events_received": sync["events_received"],
        "idle_clinic_rss_peak_kib": idle_rss.0,
        "idle_clinic_rss_anon_kib": idle_rss.1,
        "clinic_rss_peak_kib": { "median": percentile(&clinic_rss, 50), "max": clinic_rss.last() },
        "clinic_rss_end_kib": { "median": percentile(&clinic_rss_now, 50), "max": clinic_rss_now.last() },
    }))
}

fn main() -> std::process::ExitCode {
    if let Some(code) = ferry_tests::embedded_cli() {
        return code;
    }
    let args = Args::parse();
    match run(&args) {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hub-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
