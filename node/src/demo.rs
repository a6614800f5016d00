//! `ferry demo`: a CA, a hub and two clinics on this machine, replicating
//! real-looking clinic events over QUIC with mutual TLS, in a few seconds.

use crate::datadir::DataDir;
use crate::node::{open_ctx, Node};
use crate::pki::{self, Role};
use crate::transport::TransportProfile;
use anyhow::Result;
use ferry_proto::Priority;
use ferry_wal::NewEvent;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A line of the demo's story. A closed pipe (`ferry demo | head`) ends the
/// output with an error the binary treats as the end, not a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?;
    }};
}

const GASA: &str = include_str!("../demo/gasa.jsonl");
const LAYA: &str = include_str!("../demo/laya.jsonl");

fn enroll(root: &Path, ca: &Path, name: &str, role: Role) -> Result<DataDir> {
    let dir = DataDir::new(root.join(name));
    dir.init(name, true)?;
    dir.enroll_locally(ca, role)?;
    Ok(dir)
}

async fn write(node: &Node, lines: &str) -> Result<()> {
    let batch = lines
        .lines()
        .map(|l| NewEvent {
            topic: "clinic/visit".into(),
            priority: Priority::Normal,
            payload: l.as_bytes().to_vec(),
        })
        .collect();
    node.ctx.wal.append_local(batch).await?;
    Ok(())
}

fn show(nodes: &[(&str, &Arc<Node>)]) -> Result<()> {
    for (label, n) in nodes {
        let s = n.ctx.wal.summary();
        say!(
            "    {label:<9} holds {:>3} events from {} origin(s)",
            s.total_events(),
            s.0.len()
        );
    }
    Ok(())
}

pub fn run(dir: Option<PathBuf>) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = dir.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            say!("ferry demo in {}\n", root.display());
            let ca = root.join("ca");
            pki::ca_init(&ca, "demo")?;
            say!("1.  made a deployment CA, and enrolled a hub and two clinics under it");
            let mut nodes = Vec::new();
            for (name, role) in [
                ("hub", Role::Hub),
                ("bhu-gasa", Role::Clinic),
                ("bhu-laya", Role::Clinic),
            ] {
                let (ctx, tls) = open_ctx(&enroll(&root, &ca, name, role)?, None)?;
                let node = Arc::new(Node::start(
                    ctx,
                    &tls,
                    "127.0.0.1:0".parse()?,
                    &TransportProfile::lan(),
                )?);
                say!(
                    "    {name:<9} {:<6} node {}  listening on {}",
                    role.to_string(),
                    node.ctx.node_id,
                    node.local_addr()?
                );
                nodes.push(node);
            }
            let (hub, gasa, laya) = (&nodes[0], &nodes[1], &nodes[2]);
            write(gasa, GASA).await?;
            write(laya, LAYA).await?;
            say!("\n2.  each clinic wrote 150 events locally (no network needed)");
            show(&[("hub", hub), ("bhu-gasa", gasa), ("bhu-laya", laya)])?;

            say!("\n3.  the clinics sync with the hub (QUIC, mutual TLS, pulls of exactly the missing ranges)");
            for (label, clinic) in [("bhu-gasa", gasa), ("bhu-laya", laya), ("bhu-gasa", gasa)] {
                let r = clinic.sync_once(hub.local_addr()?).await?;
                say!(
                    "    {label:<9} <-> hub: sent {:>3}, received {:>3} events, {:>6} bytes on the wire",
                    r.events_sent,
                    r.events_received,
                    r.udp_tx_bytes + r.udp_rx_bytes
                );
            }
            show(&[("hub", hub), ("bhu-gasa", gasa), ("bhu-laya", laya)])?;

            let r = gasa.sync_once(hub.local_addr()?).await?;
            say!(
                "\n4.  syncing again moves nothing: sent {}, received {}",
                r.events_sent,
                r.events_received
            );
            let same =
                hub.ctx.wal.summary() == gasa.ctx.wal.summary() && gasa.ctx.wal.summary() == laya.ctx.wal.summary();
            say!(
                "\n{}",
                if same {
                    "all three nodes hold the same 300 events."
                } else {
                    "the nodes did NOT converge"
                }
            );
            for n in &nodes {
                n.shutdown().await;
            }
            if tmp.path() != root {
                say!(
                    "\nexplore: ferry status --data-dir {}/bhu-gasa ; ferry log --data-dir {}/hub --limit 3",
                    root.display(),
                    root.display()
                );
            }
            anyhow::ensure!(same, "demo nodes did not converge");
            Ok(())
        })
}
