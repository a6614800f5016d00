//! `netsim`: run the link simulator between two addresses.
//!
//! Control it from another process over `--control ADDR` (TCP, loopback),
//! one command per line, each answered with one line of JSON:
//! `cut`, `restore`, `rebind [IP]`, `profile NAME`, `stats`.

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry_netsim::{Config, GilbertElliott, Netsim, Profile, PROFILE_NAMES};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser)]
#[command(
    name = "netsim",
    version,
    about = "Make a link behave like rural 2G: a UDP or TCP relay with delay, jitter, bandwidth cap, loss and outages"
)]
struct Args {
    /// Where clients connect.
    #[arg(long)]
    listen: SocketAddr,
    /// Where traffic goes.
    #[arg(long)]
    target: SocketAddr,
    /// bhutan_2g, satellite, urban_3g, edge_lossy or ideal.
    #[arg(long, default_value = "bhutan_2g")]
    profile: String,
    /// Relay TCP instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// One-way delay in ms, both directions (overrides the profile).
    #[arg(long)]
    delay_ms: Option<u64>,
    /// Jitter in ms: each delay is drawn from delay ± jitter.
    #[arg(long)]
    jitter_ms: Option<u64>,
    /// Bandwidth cap in kbit/s per direction; 0 for none.
    #[arg(long)]
    rate_kbps: Option<u64>,
    /// Random loss per packet, 0.0 to 1.0.
    #[arg(long)]
    loss: Option<f64>,
    /// Queue size in bytes before tail drop.
    #[arg(long)]
    queue_bytes: Option<usize>,
    /// Bursty loss (Gilbert-Elliott): chance per packet of entering a burst.
    #[arg(long, requires = "burst_exit")]
    burst_enter: Option<f64>,
    /// Bursty loss: chance per packet of leaving a burst (1 / mean burst length).
    #[arg(long, requires = "burst_enter")]
    burst_exit: Option<f64>,
    /// Bursty loss: loss rate inside a burst.
    #[arg(long, default_value_t = 1.0)]
    burst_loss: f64,
    /// Seed for loss and jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cut the link this many seconds after start ...
    #[arg(long, requires = "cut_for")]
    cut_at: Option<f64>,
    /// ... for this many seconds.
    #[arg(long, requires = "cut_at")]
    cut_for: Option<f64>,
    /// Accept control commands on this TCP address (use loopback).
    #[arg(long)]
    control: Option<SocketAddr>,
}

fn profile(args: &Args) -> Result<Profile> {
    let Some(mut p) = Profile::by_name(&args.profile) else {
        bail!(
            "unknown profile '{}': use one of {}",
            args.profile,
            PROFILE_NAMES.join(", ")
        );
    };
    for d in [&mut p.up, &mut p.down] {
        if let Some(ms) = args.delay_ms {
            d.delay = Duration::from_millis(ms);
        }
        if let Some(ms) = args.jitter_ms {
            d.jitter = Duration::from_millis(ms);
        }
        if let Some(k) = args.rate_kbps {
            d.rate_bps = k * 1000;
        }
        if let Some(l) = args.loss {
            if !(0.0..=1.0).contains(&l) {
                bail!("--loss must be between 0 and 1");
            }
            d.loss = l;
        }
        if let Some(q) = args.queue_bytes {
            d.queue_bytes = q;
        }
        if let (Some(enter), Some(exit)) = (args.burst_enter, args.burst_exit) {
            for (name, v) in [
                ("--burst-enter", enter),
                ("--burst-exit", exit),
                ("--burst-loss", args.burst_loss),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    bail!("{name} must be between 0 and 1");
                }
            }
            d.bursty = Some(GilbertElliott {
                p_good_to_bad: enter,
                p_bad_to_good: exit,
                loss_in_good: 0.0,
                loss_in_bad: args.burst_loss,
            });
        }
    }
    Ok(p)
}

async fn control(sim: Arc<Netsim>, addr: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for control on {addr}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let sim = sim.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = command(&sim, line.trim()).await;
                let text = match reply {
                    Ok(v) => v.to_string(),
                    Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
                };
                if w.write_all(format!("{text}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn command(sim: &Netsim, line: &str) -> Result<serde_json::Value> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("cut"), None) => sim.cut(),
        (Some("restore"), None) => sim.restore(),
        (Some("rebind"), ip) => {
            sim.rebind(ip.map(str::parse).transpose().context("rebind takes an IP address")?)
                .await?
        }
        (Some("profile"), Some(name)) => {
            sim.set_profile(Profile::by_name(name).with_context(|| format!("unknown profile {name}"))?)
        }
        (Some("stats"), None) => {}
        _ => bail!("unknown command '{line}': use cut, restore, rebind [IP], profile NAME, stats"),
    }
    Ok(serde_json::to_value(sim.stats())?)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let cfg = Config {
        listen: args.listen,
        target: args.target,
        profile: profile(&args)?,
        seed: args.seed,
    };
    let mut sim = if args.tcp {
        Netsim::tcp(cfg).await?
    } else {
        Netsim::udp(cfg).await?
    };
    if let (Some(at), Some(dur)) = (args.cut_at, args.cut_for) {
        sim.schedule_cut(Duration::from_secs_f64(at), Duration::from_secs_f64(dur));
    }
    eprintln!(
        "netsim {} {} -> {} ({})",
        if args.tcp { "tcp" } else { "udp" },
        sim.local_addr(),
        args.target,
        args.profile
    );
    let sim = Arc::new(sim);
    if let Some(addr) = args.control {
        let sim = sim.clone();
        tokio::spawn(async move {
            if let Err(e) = control(sim, addr).await {
                eprintln!("control: {e:#}");
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("{}", serde_json::to_string_pretty(&sim.stats())?);
    Ok(())
}
