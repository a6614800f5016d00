//! What each CLI command does.

use crate::cli::{CaCommand, CertCommand, Cli, Command, LogArgs, PushArgs, RunArgs, WalCommand};
use crate::datadir::DataDir;
use crate::node::{open_ctx_with, Node, Overrides};
use crate::pki;
use crate::transport::TransportProfile;
use anyhow::{bail, Context, Result};
use ferry_proto::Event;
use ferry_wal::{NewEvent, Wal, WalError};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

pub fn dispatch(cli: Cli) -> Result<()> {
    let data_dir = || -> Result<DataDir> {
        cli.data_dir
            .clone()
            .map(DataDir::new)
            .context("no data directory: pass --data-dir DIR or set FERRY_DATA_DIR")
    };
    match cli.command {
        Command::Demo { ref dir } => crate::demo::run(dir.clone()),
        Command::Init { ref name, no_encrypt } => {
            let dir = data_dir()?;
            let id = dir.init(name, !no_encrypt)?;
            println!("{id}");
            eprintln!("initialised {} as '{name}'. Next: enrol it (`ferry ca enroll --ca-dir CA --data-dir {} --role clinic`, or `ferry csr` to send a request to the CA)", dir.root.display(), dir.root.display());
            Ok(())
        }
        Command::Ca(ref c) => ca(c, cli.data_dir.clone()),
        Command::Csr { ref out } => {
            let dir = data_dir()?;
            let id = dir.identity()?;
            let csr = pki::make_csr(&id.key, &dir.config()?.name)?;
            write_out(out.as_ref(), &csr)
        }
        Command::Cert(CertCommand::Install { ref cert }) => {
            let dir = data_dir()?;
            let info = dir.install_cert(&read_input(cert)?)?;
            eprintln!(
                "installed: node {} '{}' role {}",
                info.node_id,
                info.name,
                info.role.map(|r| r.to_string()).unwrap_or_default()
            );
            Ok(())
        }
        Command::Push(ref args) => push(&data_dir()?, args),
        Command::Log(ref args) => log(&data_dir()?, args),
        Command::Status { json } => crate::status::print(&data_dir()?, json),
        Command::Peers { json } => crate::status::print_peers(&data_dir()?, json),
        Command::Sync {
            ref peer,
            policy,
            bandwidth_kbps,
            json,
        } => {
            let dir = data_dir()?;
            runtime()?.block_on(async {
                let (ctx, tls) = open_ctx_with(&dir, Overrides { policy, bandwidth_kbps }).map_err(locked_hint)?;
                show_progress(&ctx);
                let node = Node::start(ctx, &tls, "0.0.0.0:0".parse()?, &TransportProfile::wan())?;
                let addr = tokio::net::lookup_host(peer)
                    .await?
                    .next()
                    .with_context(|| format!("{peer} resolved to no address"))?;
                let result = node.sync_once(addr).await;
                // Report as soon as the session is done; the clean close
                // below may take a few round trips on a slow link.
                if let Ok(report) = &result {
                    if json {
                        println!("{}", serde_json::to_string_pretty(report)?);
                    } else {
                        println!(
                            "synced with {} ({}, {}): received {} events, sent {}",
                            report.peer_name, report.peer_role, report.addr, report.events_received, report.events_sent
                        );
                    }
                    std::io::stdout().flush()?;
                }
                node.shutdown().await;
                result?;
                Ok(())
            })
        }
        Command::Run(ref args) => run(&data_dir()?, args),
        Command::Wal(WalCommand::Rekey) => rekey(&data_dir()?),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Turns "WAL locked" into what to do about it.
/// Transfers draw progress on stderr when it is a terminal.
fn show_progress(ctx: &crate::ctx::NodeCtx) {
    if let Some(bars) = crate::progress::terminal() {
        let _ = ctx.progress.set(bars);
    }
}

fn locked_hint(e: anyhow::Error) -> anyhow::Error {
    if matches!(e.downcast_ref::<WalError>(), Some(WalError::Locked { .. })) {
        return e.context("a `ferry run` daemon holds this data directory; it already syncs with its peers. Stop it first to use this command");
    }
    e
}

fn read_input(path: &std::path::Path) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        return Ok(s);
    }
    pki::read(path)
}

fn write_out(out: Option<&PathBuf>, text: &str) -> Result<()> {
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("could not write {}", p.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn ca(c: &CaCommand, data_dir: Option<PathBuf>) -> Result<()> {
    match c {
        CaCommand::Init { ca_dir, name } => {
            let info = pki::ca_init(ca_dir, name)?;
            println!("{}", info.node_id);
            eprintln!(
                "created deployment CA '{name}' in {}; keep ca.key offline. CA fingerprint above.",
                ca_dir.display()
            );
            Ok(())
        }
        CaCommand::Sign {
            ca_dir,
            csr,
            role,
            name,
            out,
        } => {
            let bundle = pki::ca_sign(ca_dir, &read_input(csr)?, *role, name.as_deref())?;
            write_out(out.as_ref(), &bundle)
        }
        CaCommand::Enroll { ca_dir, role } => {
            let dir = DataDir::new(data_dir.context("pass --data-dir of the node to enrol")?);
            let info = dir.enroll_locally(ca_dir, *role)?;
            println!("{}", info.node_id);
            eprintln!("enrolled '{}' as {role}", info.name);
            Ok(())
        }
    }
}

fn is_locked(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<WalError>(), Some(WalError::Locked { .. }))
}

/// Where `push` appends: the WAL itself, or the daemon that holds it.
enum Sink {
    Wal(Wal),
    Daemon(crate::api::Client),
}

impl Sink {
    fn open(dir: &DataDir) -> Result<Sink> {
        match dir.open_wal(false) {
            Ok(wal) => Ok(Sink::Wal(wal)),
            Err(e) if is_locked(&e) => crate::api::Client::find(dir).map(Sink::Daemon).context(
                "a `ferry run` daemon holds this data directory but left no local API address (api.addr); restart it",
            ),
            Err(e) => Err(e),
        }
    }

    /// Appends payloads durably; returns `origin:seq` of each.
    fn append(&self, args: &PushArgs, payloads: Vec<Vec<u8>>) -> Result<Vec<String>> {
        match self {
            Sink::Wal(wal) => {
                let items = payloads
                    .into_iter()
                    .map(|payload| NewEvent {
                        topic: args.topic.clone(),
                        priority: args.priority,
                        payload,
                    })
                    .collect();
                Ok(wal
                    .append_local_blocking(items)?
                    .iter()
                    .map(|e| format!("{}:{}", e.origin, e.seq))
                    .collect())
            }
            Sink::Daemon(client) => client.append(&args.topic, args.priority, &payloads),
        }
    }
}

fn push(dir: &DataDir, args: &PushArgs) -> Result<()> {
    let sink = Sink::open(dir)?;
    let mut out = std::io::stdout().lock();
    let mut append = |payloads: Vec<Vec<u8>>| -> Result<()> {
        for id in sink.append(args, payloads)? {
            writeln!(out, "{id}")?;
        }
        out.flush()?;
        Ok(())
    };
    if let Some(p) = &args.payload {
        return append(vec![p.clone().into_bytes()]);
    }
    if let Some(f) = &args.file {
        return append(vec![
            std::fs::read(f).with_context(|| format!("could not read {}", f.display()))?
        ]);
    }
    // Lines on stdin: whatever has arrived while the last batch was being
    // made durable goes into the next batch (group commit from one process).
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<String>>(4096);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Ok(first) = rx.recv() {
        let mut lines = vec![first?];
        while lines.len() < 1024 {
            match rx.try_recv() {
                Ok(l) => lines.push(l?),
                Err(_) => break,
            }
        }
        let batch: Vec<Vec<u8>> = lines
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .map(String::into_bytes)
            .collect();
        if !batch.is_empty() {
            append(batch)?;
        }
    }
    Ok(())
}

/// The WAL for reading: our own, or, if a daemon holds it, a read-only view.
pub fn open_for_reading(dir: &DataDir) -> Result<Wal> {
    match dir.open_wal(false) {
        Err(e) if is_locked(&e) => dir.open_wal(true),
        other => other,
    }
}

fn log(dir: &DataDir, args: &LogArgs) -> Result<()> {
    let wal = open_for_reading(dir)?;
    let summary = wal.summary();
    let mut out = std::io::stdout().lock();
    let mut left = args.limit;
    for (origin, have) in &summary.0 {
        if args.origin.is_some_and(|o| o != *origin) {
            continue;
        }
        for &(a, b) in have.ranges() {
            if b <= args.after || left == 0 {
                continue;
            }
            for e in wal.read_range(origin, a.max(args.after + 1), b, left)? {
                left -= 1;
                if args.json {
                    writeln!(out, "{}", serde_json::to_string(&event_json(&e))?)?;
                } else {
                    let time = e.hlc.wall_ms() / 1000;
                    writeln!(
                        out,
                        "{}:{}\t{}\t{}\t{}\t{}",
                        e.origin,
                        e.seq,
                        time,
                        e.topic,
                        e.priority,
                        String::from_utf8_lossy(&e.payload)
                    )?;
                }
            }
        }
    }
    Ok(())
}

pub fn event_json(e: &Event) -> serde_json::Value {
    let payload = match std::str::from_utf8(&e.payload) {
        Ok(s) => {
            serde_json::from_str::<serde_json::Value>(s).unwrap_or_else(|_| serde_json::Value::String(s.to_string()))
        }
        Err(_) => {
            serde_json::json!({ "hex": e.payload.iter().map(|b| format!("{b:02x}")).collect::<String>() })
        }
    };
    serde_json::json!({
        "origin": e.origin.to_string(),
        "seq": e.seq,
        "hlc": e.hlc.0,
        "time_ms": e.hlc.wall_ms(),
        "topic": e.topic,
        "priority": e.priority.to_string(),
        "payload": payload,
    })
}

fn run(dir: &DataDir, args: &RunArgs) -> Result<()> {
    let cfg = dir.config()?;
    let listen = args.listen.clone().unwrap_or(cfg.listen.clone());
    let mut peers = cfg.peers.clone();
    peers.extend(args.peer.iter().cloned());
    let interval = std::time::Duration::from_secs(args.interval.unwrap_or(cfg.sync_interval_secs).max(1));
    runtime()?.block_on(async {
        let overrides = Overrides {
            policy: args.policy,
            bandwidth_kbps: args.bandwidth_kbps,
        };
        let (ctx, tls) = open_ctx_with(dir, overrides).map_err(locked_hint)?;
        show_progress(&ctx);
        let addr = listen
            .parse()
            .with_context(|| format!("--listen {listen} is not an IP:PORT"))?;
        let node = Arc::new(Node::start(ctx, &tls, addr, &TransportProfile::wan())?);
        let api_listen = args
            .api_listen
            .clone()
            .or(cfg.api_listen.clone())
            .unwrap_or(crate::api::DEFAULT_LISTEN.into());
        let api_addr = api_listen
            .parse()
            .with_context(|| format!("--api-listen {api_listen} is not an IP:PORT"))?;
        let api = crate::api::start(node.ctx.clone(), api_addr).await?;
        eprintln!(
            "ferry node {} '{}' listening on {} (udp), local API http://{api}, peers: {}",
            node.ctx.node_id,
            node.ctx.name,
            node.local_addr()?,
            if peers.is_empty() {
                "none".into()
            } else {
                peers.join(", ")
            }
        );
        let mdns = (cfg.mdns && !args.no_mdns).then(|| {
            if args.mdns_interfaces.is_empty() {
                cfg.mdns_interfaces.clone()
            } else {
                args.mdns_interfaces.clone()
            }
        });
        let opts = crate::daemon::DaemonOptions { peers, interval, mdns };
        crate::daemon::run(node.clone(), opts, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn rekey(dir: &DataDir) -> Result<()> {
    let cfg = dir.config()?;
    if !cfg.encrypt_wal {
        bail!("this node's WAL is not encrypted (encrypt_wal = false in config.toml)");
    }
    let key_path = dir.wal_key_path(&cfg);
    let next_path = key_path.with_extension("key.next");
    // Resume an interrupted rekey with the key it started; else make one.
    let next = if next_path.exists() {
        ferry_wal::WalKey::load(&next_path)?
    } else {
        let k = ferry_wal::WalKey::generate();
        k.save_new(&next_path)?;
        k
    };
    let old = dir.keyring(&cfg)?;
    let n = ferry_wal::rekey(&dir.wal_dir(), &old, &next).map_err(|e| locked_hint(e.into()))?;
    // Every segment is under the new key now; one atomic rename retires the old.
    std::fs::rename(&next_path, &key_path)?;
    eprintln!("re-encrypted {n} segment(s) under a new key");
    Ok(())
}
