//! Harness for end-to-end tests: a deployment CA, enrolled nodes in temp
//! directories, nodes started on loopback, and the clinic workload.

pub mod netns;

use anyhow::{Context, Result};
use ferry::datadir::{DataDir, Policy};
use ferry::node::{open_ctx, Node};
use ferry::pki::{self, Role};
use ferry::transport::TransportProfile;
use ferry_proto::{event::encode_event, Origin, Priority};
use ferry_wal::{NewEvent, Wal};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Logs to the test output when `FERRY_TEST_LOG` is set (e.g. `info`).
pub fn init_logging() {
    if let Ok(filter) = std::env::var("FERRY_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// When the bench binaries are re-executed as `BIN __ferry ARGS` they are
/// exactly the `ferry` CLI, so a test or benchmark can start real node
/// processes (and measure each one's own RSS). Returns the exit code then.
pub fn embedded_cli() -> Option<std::process::ExitCode> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) != Some("__ferry") {
        return None;
    }
    let cli = <ferry::cli::Cli as clap::Parser>::parse_from(
        std::iter::once("ferry".to_string()).chain(argv[2..].iter().cloned()),
    );
    ferry::cli::init_logging(&cli);
    Some(match ferry::commands::dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    })
}

/// A deployment: one CA and the nodes enrolled under it, in a temp dir.
pub struct Deployment {
    pub tmp: tempfile::TempDir,
    pub ca_dir: PathBuf,
}

impl Deployment {
    pub fn new(name: &str) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let ca_dir = tmp.path().join("ca");
        pki::ca_init(&ca_dir, name)?;
        Ok(Deployment { tmp, ca_dir })
    }

    /// `ferry init` and `ferry ca enroll` for a new node.
    pub fn enroll(&self, name: &str, role: Role) -> Result<DataDir> {
        let dir = DataDir::new(self.tmp.path().join(name));
        dir.init(name, true)?;
        dir.enroll_locally(&self.ca_dir, role)?;
        Ok(dir)
    }
}

/// Opens the data directory and starts its node on an ephemeral loopback port.
pub async fn start(dir: &DataDir, policy: Option<Policy>) -> Result<Arc<Node>> {
    start_with(dir, policy, &TransportProfile::lan()).await
}

/// As `start`, with a transport profile (`wan` for nodes behind netsim).
pub async fn start_with(dir: &DataDir, policy: Option<Policy>, profile: &TransportProfile) -> Result<Arc<Node>> {
    let (ctx, tls) = open_ctx(dir, policy)?;
    Ok(Arc::new(Node::start(ctx, &tls, "127.0.0.1:0".parse()?, profile)?))
}

/// As `start_with`, sending at most `kbps` (the node's bandwidth cap): a
/// peer that serves slowly enough for a test to act mid-transfer.
pub fn start_capped(dir: &DataDir, kbps: u64, profile: &TransportProfile) -> Result<Arc<Node>> {
    let overrides = ferry::node::Overrides {
        bandwidth_kbps: Some(kbps),
        ..Default::default()
    };
    let (ctx, tls) = ferry::node::open_ctx_with(dir, overrides)?;
    Ok(Arc::new(Node::start(ctx, &tls, "127.0.0.1:0".parse()?, profile)?))
}

/// A netsim UDP relay in front of `node`, with the given profile.
pub async fn link_to(node: &Node, profile: ferry_netsim::Profile, seed: u64) -> Result<ferry_netsim::Netsim> {
    let mut cfg = ferry_netsim::Config::new("127.0.0.1:0".parse()?, node.local_addr()?, profile);
    cfg.seed = seed;
    ferry_netsim::Netsim::udp(cfg).await
}

/// Polls `cond` every 100 ms until it holds; fails after `limit`.
pub async fn eventually(what: &str, limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let start = std::time::Instant::now();
    while !cond() {
        anyhow::ensure!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

pub fn workload_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workload/clinic_events.py")
}

/// Deterministic clinic events (JSON lines) from the shared generator.
pub fn workload(clinic: &str, count: usize, seed: u64) -> Result<Vec<Vec<u8>>> {
    let out = std::process::Command::new("python3")
        .arg(workload_script())
        .args([
            "--count",
            &count.to_string(),
            "--seed",
            &seed.to_string(),
            "--clinic",
            clinic,
        ])
        .output()
        .context("could not run python3 for the workload generator")?;
    anyhow::ensure!(
        out.status.success(),
        "workload generator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// Appends payloads as local events in batches, as an application would.
pub async fn write_events(wal: &Wal, payloads: Vec<Vec<u8>>, priority: Priority) -> Result<()> {
    let mut it = payloads.into_iter().peekable();
    while it.peek().is_some() {
        let batch: Vec<NewEvent> = it
            .by_ref()
            .take(500)
            .map(|payload| NewEvent {
                topic: "clinic/visit".into(),
                priority,
                payload,
            })
            .collect();
        wal.append_local(batch).await?;
    }
    Ok(())
}

/// Appends `payloads` as normal local events to a node that is not
/// running (its own process will open the WAL), in batches of 500.
pub fn fill_wal(dir: &DataDir, payloads: &[Vec<u8>]) -> Result<()> {
    let wal = dir.open_wal(false)?;
    for chunk in payloads.chunks(500) {
        let batch = chunk
            .iter()
            .map(|p| NewEvent {
                topic: "clinic/visit".into(),
                priority: Priority::Normal,
                payload: p.clone(),
            })
            .collect();
        wal.append_local_blocking(batch)?;
    }
    Ok(())
}

/// Every `origin:seq` a stopped (or running) node holds, read from its WAL.
pub fn held(dir: &DataDir) -> std::collections::BTreeSet<String> {
    let Ok(wal) = dir.open_wal(true) else {
        return Default::default();
    };
    wal.summary()
        .0
        .iter()
        .flat_map(|(o, r)| {
            r.ranges()
                .iter()
                .flat_map(move |&(a, b)| (a..=b).map(move |s| format!("{o}:{s}")))
        })
        .collect()
}

/// Every stored event as its canonical bytes, keyed by `(origin, seq)`.
pub fn all_events(wal: &Wal) -> Result<BTreeMap<(Origin, u64), Vec<u8>>> {
    let mut out = BTreeMap::new();
    for (origin, set) in wal.summary().0 {
        for &(a, b) in set.ranges() {
            for e in wal.read_range(&origin, a, b, usize::MAX)? {
                out.insert((e.origin, e.seq), encode_event(&e));
            }
        }
    }
    Ok(out)
}

/// A hub and a clinic enrolled in `dep`, both on the WAN profile (they talk
/// through netsim). The hub applies `hub_policy`.
pub async fn wan_pair(dep: &Deployment, hub_policy: Option<Policy>) -> Result<(Arc<Node>, Arc<Node>)> {
    let wan = TransportProfile::wan();
    let hub = start_with(&dep.enroll("hub", Role::Hub)?, hub_policy, &wan).await?;
    let clinic = start_with(&dep.enroll("clinic", Role::Clinic)?, None, &wan).await?;
    Ok((hub, clinic))
}

/// `node.sync_once(addr)` in the background, so a test can act mid-transfer.
pub fn spawn_sync(
    node: &Arc<Node>,
    addr: std::net::SocketAddr,
) -> tokio::task::JoinHandle<Result<ferry::node::SyncReport, ferry::sync_error::SyncError>> {
    let node = node.clone();
    tokio::spawn(async move { node.sync_once(addr).await })
}

/// Starts `ferry run` (`cmd`, not yet spawned) as its own process and
/// returns it with the QUIC address it took, once it says it listens. Its
/// log lines before that go to this process's stderr, and so do those
/// after, read by a thread so the daemon never blocks on a full pipe.
pub fn spawn_daemon(mut cmd: std::process::Command) -> Result<(netns::Proc, String)> {
    use std::io::BufRead;
    cmd.stderr(std::process::Stdio::piped());
    let mut proc = netns::Proc::spawn(cmd)?;
    let stderr = proc.child.stderr.take().context("no stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().context("the daemon exited before it listened")??;
        match line.split("listening on ").nth(1) {
            Some(rest) => {
                break rest
                    .split_whitespace()
                    .next()
                    .with_context(|| format!("no address in {line:?}"))?
                    .to_string()
            }
            None => eprintln!("{line}"),
        }
    };
    std::thread::spawn(move || {
        for line in lines.map_while(std::result::Result::ok) {
            eprintln!("{line}");
        }
    });
    Ok((proc, addr))
}

/// Whether the event `ORIGIN:SEQ` is readable through the local API at
/// `base` (`http://HOST:PORT`).
pub fn readable(agent: &ureq::Agent, base: &str, id: &str) -> Result<bool> {
    let (origin, seq) = id.rsplit_once(':').context("bad event id")?;
    let seq: u64 = seq.parse()?;
    let v: serde_json::Value = agent
        .get(&format!("{base}/v1/events"))
        .query("origin", origin)
        .query("after", &seq.saturating_sub(1).to_string())
        .query("limit", "1")
        .call()?
        .into_json()?;
    Ok(v["events"].as_array().is_some_and(|e| !e.is_empty()))
}
