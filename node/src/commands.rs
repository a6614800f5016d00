//! What each CLI command does.

use crate::api::{Body, Client, EventJson};
use crate::cli::{CaCommand, CertCommand, Cli, Command, LogArgs, PushArgs, RunArgs, WalCommand};
use crate::datadir::DataDir;
use crate::node::{open_ctx_with, Node, Overrides};
use crate::pki;
use crate::transport::TransportProfile;
use anyhow::{bail, Context, Result};
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
        Command::Init {
            ref name,
            no_encrypt,
            ref key,
            ref cert,
            ref restore_from,
        } => {
            let dir = data_dir()?;
            let id = match key {
                Some(key) => dir.init_with_key(name, !no_encrypt, &pki::read(key)?)?,
                None => dir.init(name, !no_encrypt)?,
            };
            writeln!(std::io::stdout(), "{id}")?;
            let Some(cert) = cert else {
                eprintln!("initialised {} as '{name}'. Next: enrol it (`ferry ca enroll --ca-dir CA --data-dir {} --role clinic`, or `ferry csr` to send a request to the CA)", dir.root.display(), dir.root.display());
                return Ok(());
            };
            let info = dir.install_cert(&read_input(cert)?)?;
            eprintln!(
                "initialised {} as '{name}' with its earlier key and certificate (node {})",
                dir.root.display(),
                info.node_id
            );
            if let Some(peer) = restore_from {
                restore(&dir, peer)?;
            }
            Ok(())
        }
        Command::Ca(ref c) => ca(c, cli.data_dir.clone()),
        Command::Csr { ref out, renew } => {
            let dir = data_dir()?;
            let id = dir.identity()?;
            let name = match (&id.cert, renew) {
                (Some(cert), true) => {
                    eprintln!(
                        "renewal request for node {} '{}' ({}); the certificate it has {}",
                        id.node_id,
                        cert.name,
                        cert.role.map(|r| r.to_string()).unwrap_or_default(),
                        crate::status::expiry_text(&id).unwrap_or_default()
                    );
                    cert.name.clone()
                }
                (None, true) => {
                    bail!("this node has no certificate to renew; send `ferry csr` without --renew to the CA")
                }
                (_, false) => dir.config()?.name,
            };
            let csr = pki::make_csr(&id.key, &name)?;
            write_out(out.as_ref(), &csr)
        }
        Command::Cert(CertCommand::Install { ref cert }) => {
            let dir = data_dir()?;
            let renewal = dir.identity()?.cert.is_some();
            let info = dir.install_cert(&read_input(cert)?)?;
            eprintln!(
                "installed: node {} '{}' role {}; {}{}",
                info.node_id,
                info.name,
                info.role.map(|r| r.to_string()).unwrap_or_default(),
                crate::status::expiry_text(&dir.identity()?).unwrap_or_default(),
                if renewal {
                    ". A running `ferry run` presents it after a restart"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Command::Cert(CertCommand::Publish { ref file }) => publish_cert(&data_dir()?, file),
        Command::Revoke { ref file } => revoke(&data_dir()?, file),
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
            sync_with(
                &dir,
                peer,
                Overrides {
                    policy,
                    bandwidth_kbps,
                    ..Default::default()
                },
                |report| {
                    let mut out = std::io::stdout();
                    if json {
                        writeln!(out, "{}", serde_json::to_string_pretty(report)?)?;
                    } else {
                        writeln!(
                            out,
                            "synced with {} ({}, {}): received {} events, sent {}",
                            report.peer_name, report.peer_role, report.addr, report.events_received, report.events_sent
                        )?;
                    }
                    out.flush()?;
                    Ok(())
                },
            )
        }
        Command::Run(ref args) => run(&data_dir()?, args),
        Command::Record(ref c) => crate::records::cli::run(&data_dir()?, c),
        Command::Wal(WalCommand::Rekey) => rekey(&data_dir()?),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "ferry", &mut script);
            let mut out = std::io::stdout().lock();
            out.write_all(&script)?;
            Ok(out.flush()?)
        }
        Command::Man { ref dir } => man(dir.as_deref()),
    }
}

/// The manual: `ferry.1` on stdout, or every command's page into `dir`.
fn man(dir: Option<&std::path::Path>) -> Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        return Ok(out.flush()?);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("could not write manual pages into {}", dir.display()))?;
    Ok(())
}

/// The runtime of `ferry run` and `ferry sync`. A one-thread runtime
/// measured 0.9 MiB less peak RSS on an idle clinic (docs/memory.md), but
/// under load it changed which LAN peer serves an event often enough to
/// break the discovery test's lag figures, and was left out until that is
/// understood; the malloc settings below stay.
fn runtime() -> Result<tokio::runtime::Runtime> {
    // glibc gives each thread that mallocs its own arena, up to 8 per core,
    // and keeps what each arena once held. One arena for the whole process:
    // a node's threads mostly wait on I/O and take turns without contention
    // worth an arena each.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt sets a malloc parameter; it is called before the
    // runtime starts any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // A zstd context is megabytes, freed when a lane falls idle: such
        // blocks come from mmap and go back to the kernel when freed. By
        // default glibc raises this threshold to the size of the first
        // mmapped block freed, after which contexts stay in the heap.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
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
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            Ok(out.flush()?)
        }
    }
}

fn ca(c: &CaCommand, data_dir: Option<PathBuf>) -> Result<()> {
    match c {
        CaCommand::Init { ca_dir, name } => {
            let info = pki::ca_init(ca_dir, name)?;
            writeln!(std::io::stdout(), "{}", info.node_id)?;
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
            days,
            out,
        } => {
            let csr = read_input(csr)?;
            let bundle = pki::ca_sign(ca_dir, &csr, *role, name.as_deref(), *days)?;
            eprintln!(
                "signed node {} as {role}, valid for {days} days",
                pki::csr_node_id(&csr)?
            );
            write_out(out.as_ref(), &bundle)
        }
        CaCommand::Revoke {
            ca_dir,
            node,
            reason,
            out,
        } => {
            let (bytes, r) = crate::revocation::sign(ca_dir, *node, reason)?;
            std::fs::write(out, bytes).with_context(|| format!("could not write {}", out.display()))?;
            eprintln!(
                "revoked node {node} (serial {}). Put it into the log at a hub: `ferry revoke --file {}`",
                r.serial,
                out.display()
            );
            Ok(())
        }
        CaCommand::Enroll { ca_dir, role, days } => {
            let dir = DataDir::new(data_dir.context("pass --data-dir of the node to enrol")?);
            let info = dir.enroll_locally_for(ca_dir, *role, *days)?;
            writeln!(std::io::stdout(), "{}", info.node_id)?;
            eprintln!("enrolled '{}' as {role}", info.name);
            Ok(())
        }
    }
}

fn is_locked(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<WalError>(), Some(WalError::Locked { .. }))
}

/// The API of the daemon running on `dir`, if one answers as this node:
/// an `api.addr` left behind by a killed daemon may name a port another
/// process has since taken.
fn running_daemon(dir: &DataDir) -> Option<Client> {
    let client = Client::find(dir)?;
    let ours = dir.identity().ok()?.node_id.to_string();
    (client.node_id().as_deref() == Some(ours.as_str())).then_some(client)
}

/// Where `push` appends: the WAL itself, or the daemon that holds it.
enum Sink {
    Wal(Wal),
    Daemon(Client),
}

impl Sink {
    fn open(dir: &DataDir) -> Result<Sink> {
        // Ask a running daemon first: opening the WAL takes the writer's
        // lock, if only for a moment, and a daemon starting in that moment
        // would find it taken.
        if let Some(c) = running_daemon(dir) {
            return Ok(Sink::Daemon(c));
        }
        match dir.open_wal(false) {
            Ok(wal) => Ok(Sink::Wal(wal)),
            Err(e) if is_locked(&e) => {
                // A daemon holds the WAL but its API is not up yet: it is starting.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while std::time::Instant::now() < deadline {
                    if let Some(c) = running_daemon(dir) {
                        return Ok(Sink::Daemon(c));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e).context("a `ferry run` daemon holds this data directory, but its local API does not answer (see api.addr); is it still starting, or stuck?")
            }
            Err(e) => Err(e),
        }
    }

    /// Appends payloads durably, one event each; returns `origin:seq` of each.
    fn append(&self, args: &PushArgs, payloads: Vec<Vec<u8>>, json_lines: bool) -> Result<Vec<String>> {
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
                let ids: Vec<(ferry_proto::Origin, u64)> = match &args.idempotency_key {
                    Some(key) => wal.append_local_once_blocking(key, items)?.events,
                    None => wal
                        .append_local_blocking(items)?
                        .iter()
                        .map(|e| (e.origin, e.seq))
                        .collect(),
                };
                Ok(ids.iter().map(|(o, s)| format!("{o}:{s}")).collect())
            }
            Sink::Daemon(client) => {
                let body = match (json_lines, payloads.as_slice()) {
                    (false, [one]) => Body::One(one),
                    (true, lines) => Body::JsonLines(lines),
                    (false, _) => bail!("several payloads are sent as JSON lines"),
                };
                client.append_body(&args.topic, args.priority, body, args.idempotency_key.as_deref())
            }
        }
    }
}

/// One urgent event of a reserved topic straight into the WAL (no daemon
/// runs; it reads the event at its next start). Returns `origin:seq`.
fn append_urgent(wal: &ferry_wal::Wal, topic: &str, payload: Vec<u8>) -> Result<String> {
    let written = wal.append_local_blocking(vec![NewEvent {
        topic: topic.into(),
        priority: ferry_proto::Priority::Urgent,
        payload,
    }])?;
    let e = written.first().context("the WAL wrote no event")?;
    Ok(format!("{}:{}", e.origin, e.seq))
}

/// A file an operator hands in, and this node's CA certificate (PEM) to
/// check it against.
fn file_and_ca(dir: &DataDir, file: &std::path::Path, what: &str) -> Result<(Vec<u8>, String)> {
    let bytes = std::fs::read(file).with_context(|| format!("could not read {}", file.display()))?;
    let ca_pem = dir
        .identity()?
        .ca_pem
        .with_context(|| format!("this node is not enrolled, so it has no CA to check the {what} against"))?;
    Ok((bytes, ca_pem))
}

/// `ferry revoke --file`: checks the revocation against this node's CA,
/// then writes it as an urgent event on the revocation topic, through the
/// daemon if one runs (it acts on it at once) or into the WAL (read at the
/// next start).
fn revoke(dir: &DataDir, file: &std::path::Path) -> Result<()> {
    let (bytes, ca_pem) = file_and_ca(dir, file, "revocation")?;
    let ca = pki::parse_pem_certs(&ca_pem)?;
    let ca = ca.first().context("this node's ca.crt holds no certificate")?;
    let r = crate::revocation::verify(&bytes, ca)?;
    let id = match Sink::open(dir)? {
        Sink::Daemon(client) => client.revoke(&bytes)?,
        Sink::Wal(wal) => append_urgent(&wal, crate::revocation::TOPIC, bytes)?,
    };
    writeln!(std::io::stdout(), "{id}")?;
    eprintln!(
        "revocation of node {} (serial {}, '{}') is in the log; it travels to every site with it",
        r.node, r.serial, r.reason
    );
    Ok(())
}

/// `ferry cert publish`: a renewed certificate into the log, checked
/// against this node's CA first so nothing unusable travels.
fn publish_cert(dir: &DataDir, file: &std::path::Path) -> Result<()> {
    let (bytes, ca_pem) = file_and_ca(dir, file, "certificate")?;
    let (info, _) = crate::renewal::check(&bytes, &ca_pem)?;
    let urgent = ferry_proto::Priority::Urgent;
    let id = match Sink::open(dir)? {
        Sink::Daemon(client) => client
            .append_body(crate::renewal::TOPIC, urgent, Body::One(&bytes), None)?
            .into_iter()
            .next()
            .context("the daemon answered without the event's id")?,
        Sink::Wal(wal) => append_urgent(&wal, crate::renewal::TOPIC, bytes)?,
    };
    writeln!(std::io::stdout(), "{id}")?;
    eprintln!(
        "the certificate of node {} '{}' is in the log; that node installs it when the event reaches it",
        info.node_id, info.name
    );
    Ok(())
}

fn push(dir: &DataDir, args: &PushArgs) -> Result<()> {
    let sink = Sink::open(dir)?;
    let mut out = std::io::stdout().lock();
    let mut append = |payloads: Vec<Vec<u8>>, json_lines: bool| -> Result<()> {
        for id in sink.append(args, payloads, json_lines)? {
            writeln!(out, "{id}")?;
        }
        out.flush()?;
        Ok(())
    };
    if let Some(p) = &args.payload {
        return append(vec![p.clone().into_bytes()], false);
    }
    if let Some(f) = &args.file {
        // The whole file is one event, whatever bytes it holds.
        let bytes = std::fs::read(f).with_context(|| format!("could not read {}", f.display()))?;
        return append(vec![bytes], false);
    }
    if args.idempotency_key.is_some() {
        bail!("--idempotency-key names one write: give the payload as an argument or with --file, not as lines on standard input");
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
    let mut line_no = 0usize;
    while let Ok(first) = rx.recv() {
        let mut lines = vec![first?];
        while lines.len() < 1024 {
            match rx.try_recv() {
                Ok(l) => lines.push(l?),
                Err(_) => break,
            }
        }
        let mut batch = Vec::with_capacity(lines.len());
        for line in lines {
            line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&line) {
                bail!("line {line_no} of standard input is not JSON ({e}); each line is one JSON event. Push other payloads one at a time, as an argument or with --file");
            }
            batch.push(line.into_bytes());
        }
        if !batch.is_empty() {
            append(batch, true)?;
        }
    }
    Ok(())
}

/// Parses `ORIGIN:SEQ`.
fn parse_event_id(id: &str) -> Result<(ferry_proto::Origin, u64)> {
    let (origin, seq) = id
        .rsplit_once(':')
        .with_context(|| format!("'{id}' is not an event id; it is ORIGIN:SEQ as `ferry push` prints"))?;
    let origin = origin
        .parse()
        .map_err(|e| anyhow::anyhow!("'{origin}' is not an origin: {e}"))?;
    let seq = seq
        .parse()
        .with_context(|| format!("'{seq}' is not a sequence number"))?;
    Ok((origin, seq))
}

fn log(dir: &DataDir, args: &LogArgs) -> Result<()> {
    let wal = dir.open_wal_for_reading()?;
    let events = match &args.id {
        Some(id) => {
            let (origin, seq) = parse_event_id(id)?;
            let found = wal.read_range(&origin, seq, seq, 1)?;
            if found.is_empty() {
                bail!("this node holds no event {id}");
            }
            found
        }
        None => crate::api::list_events(&wal, args.origin, args.after, args.limit, None)?,
    };
    let mut out = std::io::stdout().lock();
    for e in &events {
        if args.raw {
            out.write_all(&e.payload)?;
        } else if args.json {
            serde_json::to_writer(&mut out, &EventJson::of(e))?;
            out.write_all(b"\n")?;
        } else {
            writeln!(
                out,
                "{}:{}\t{}\t{}\t{}\t{}",
                e.origin,
                e.seq,
                e.hlc.wall_ms() / 1000,
                e.topic,
                e.priority,
                String::from_utf8_lossy(&e.payload)
            )?;
        }
    }
    Ok(out.flush()?)
}

fn run(dir: &DataDir, args: &RunArgs) -> Result<()> {
    let cfg = dir.config()?;
    let listen = args.listen.clone().unwrap_or(cfg.listen.clone());
    let mut peers = cfg.peers.clone();
    peers.extend(args.peer.iter().cloned());
    // Without a port, a peer is reached on ferry's default one.
    let peers: Vec<String> = peers.iter().map(|p| crate::datadir::with_default_port(p)).collect();
    let interval = std::time::Duration::from_secs(args.interval.unwrap_or(cfg.sync_interval_secs).max(1));
    runtime()?.block_on(async {
        let stop = shutdown_signal()?;
        let overrides = Overrides {
            policy: args.policy,
            bandwidth_kbps: args.bandwidth_kbps,
            ..Default::default()
        };
        let (ctx, tls) = open_ctx_with(dir, overrides).map_err(locked_hint)?;
        show_progress(&ctx);
        let addr = listen
            .parse()
            .with_context(|| format!("--listen {listen} is not an IP:PORT"))?;
        let mut profile = TransportProfile::wan();
        if let Some(secs) = args.keep_alive.or(cfg.keep_alive_secs) {
            let keep_alive = std::time::Duration::from_secs(secs.max(1));
            if keep_alive >= profile.idle_timeout {
                anyhow::bail!(
                    "keep-alive of {secs} s is not below the idle timeout of {} s: the connection would time out first; choose less",
                    profile.idle_timeout.as_secs()
                );
            }
            profile.keep_alive = keep_alive;
        }
        let node = Arc::new(Node::start(ctx, &tls, addr, &profile)?);
        let api_listen = args
            .api_listen
            .clone()
            .or(cfg.api_listen.clone())
            .unwrap_or(crate::api::DEFAULT_LISTEN.into());
        let api_addr = api_listen
            .parse()
            .with_context(|| format!("--api-listen {api_listen} is not an IP:PORT"))?;
        let api_opts = crate::api::ApiOptions {
            listen: api_addr,
            max_body_bytes: args
                .api_max_body_bytes
                .or(cfg.api_max_body_bytes)
                .unwrap_or(crate::api::DEFAULT_MAX_BODY),
        };
        let api = crate::api::start(&node.ctx, api_opts).await?;
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
        if !api.ip().is_loopback() {
            eprintln!(
                "the local API listens beyond loopback: requests need the token in {}",
                dir.path(crate::api::TOKEN_FILE).display()
            );
        }
        let mdns = (cfg.mdns && !args.no_mdns).then(|| {
            if args.mdns_interfaces.is_empty() {
                cfg.mdns_interfaces.clone()
            } else {
                args.mdns_interfaces.clone()
            }
        });
        let opts = crate::daemon::DaemonOptions { peers, interval, mdns };
        crate::daemon::run(node.clone(), opts, stop).await
    })
}

/// SIGTERM or SIGINT. Registered at once, not when first awaited: a signal
/// that comes while the node is still starting must stop it cleanly too.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("could not watch for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("could not watch for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
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

/// One sync with `peer` (HOST or HOST:PORT), then exit; `report` shows the
/// outcome as soon as the session is done (the clean close after it may
/// take a few round trips on a slow link).
fn sync_with(
    dir: &DataDir,
    peer: &str,
    overrides: Overrides,
    report: impl FnOnce(&crate::node::SyncReport) -> Result<()>,
) -> Result<()> {
    runtime()?.block_on(async {
        let (ctx, tls) = open_ctx_with(dir, overrides).map_err(locked_hint)?;
        show_progress(&ctx);
        let node = Node::start(ctx, &tls, "0.0.0.0:0".parse()?, &TransportProfile::wan())?;
        let with_port = crate::datadir::with_default_port(peer);
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("could not resolve {with_port}"))?
            .next()
            .with_context(|| format!("{peer} resolved to no address"))?;
        let result = node.sync_once(addr).await;
        let shown = match &result {
            Ok(r) => report(r),
            Err(_) => Ok(()),
        };
        node.shutdown().await;
        result?;
        shown
    })
}

/// `ferry init --restore-from`: a node rebuilt with its earlier key gets
/// back what it wrote (its earlier log epochs) and what it held.
fn restore(dir: &DataDir, peer: &str) -> Result<()> {
    sync_with(dir, peer, Overrides::default(), |report| {
        let me = dir.identity()?.node_id;
        let wal = dir.open_wal_for_reading()?;
        let own: u64 = wal
            .summary()
            .0
            .iter()
            .filter(|(o, _)| o.node == me)
            .map(|(_, set)| set.count())
            .sum();
        writeln!(
            std::io::stdout(),
            "restored from {} ({}): {} events, {own} of them written by this node before",
            report.peer_name,
            report.addr,
            report.events_received
        )?;
        Ok(())
    })
    .context("the node is initialised, but restoring its events failed; run `ferry sync --peer HOST` to try again")
}
