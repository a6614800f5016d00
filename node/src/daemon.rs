//! `ferry run`: listen, keep a connection to every configured peer and to
//! neighbours found on the LAN, until stopped. What flows on a connection is
//! the sync core's business (see `driver`); this file decides whom to dial.

use crate::node::Node;
use anyhow::Context;
use anyhow::Result;
use ferry_discovery::mdns::{Advert, Mdns};
use ferry_discovery::PeerEvent;
use ferry_proto::NodeId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

pub struct DaemonOptions {
    pub peers: Vec<String>,
    pub interval: Duration,
    /// mDNS on these interfaces (empty: all but loopback); `None`: off.
    pub mdns: Option<Vec<String>>,
}

/// Addresses the peer advertises, shared with its loop.
type LanAddrs = Arc<Mutex<Vec<SocketAddr>>>;
/// Peers found on the LAN that this node dials: their addresses, their
/// loops, and how to wake a loop waiting to retry.
type LanPeers = HashMap<NodeId, (LanAddrs, tokio::task::AbortHandle, Arc<Notify>)>;

/// Whom a peer loop keeps in touch with.
#[derive(Clone)]
enum Target {
    /// From config or flags: an address or DNS name, over the WAN.
    Static(String),
    /// Found by mDNS: the node it claims to be, at the addresses it advertises.
    Lan(NodeId, LanAddrs),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Static(s) => f.write_str(s),
            Target::Lan(id, _) => write!(f, "{} (mDNS)", id.short()),
        }
    }
}

/// How long a connection must have lasted to be dialled again at once when
/// it ends. The simulator models the same rule (`sim/src/world.rs`).
pub const REDIAL_AT_ONCE_AFTER: Duration = Duration::from_secs(10);

/// Capped, jittered exponential backoff: 1 s, 2 s, 4 s ... up to 60 s, each
/// drawn from the upper half so a fleet of clinics does not retry in step.
pub fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_secs(60).min(Duration::from_secs(1) * 2u32.saturating_pow(attempt.min(6)));
    cap / 2 + cap.mul_f64(rand::random::<f64>() / 2.0)
}

pub async fn run(node: Arc<Node>, opts: DaemonOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    node.serve_live(opts.interval);
    let mut tasks = tokio::task::JoinSet::new();
    for peer in opts.peers {
        tasks.spawn(peer_loop(
            node.clone(),
            Target::Static(peer),
            opts.interval,
            Default::default(),
        ));
    }
    let mut lan = opts.mdns.and_then(|interfaces| match start_mdns(&node, &interfaces) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!("LAN discovery is off: {e:#}");
            None
        }
    });
    let mut found: LanPeers = HashMap::new();
    tokio::pin!(shutdown);
    loop {
        let event = async {
            match lan.as_mut() {
                Some((_, events)) => events.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            event = event => match event {
                Some(event) => on_lan_event(&node, event, &mut found, &mut tasks, opts.interval),
                None => lan = None,
            },
        }
    }
    tracing::info!("shutting down");
    drop(lan);
    tasks.shutdown().await;
    node.shutdown().await;
    if let Some(dir) = &node.ctx.data_dir {
        // Peer loops were stopped mid-connection: nothing is connected now.
        let _ = dir.update_peers(|peers| peers.values_mut().for_each(|p| p.connected = false));
        let _ = std::fs::remove_file(dir.path(crate::api::ADDR_FILE));
    }
    Ok(())
}

fn start_mdns(node: &Node, interfaces: &[String]) -> Result<(Mdns, tokio::sync::mpsc::Receiver<PeerEvent>)> {
    let dir = node.ctx.data_dir.as_ref().context("no data directory")?;
    let ca = dir.identity()?.ca_pem.context("no ca.crt")?;
    let advert = Advert {
        node_id: node.ctx.node_id,
        role: node.ctx.role.to_string(),
        deployment: crate::pki::deployment_fingerprint(&ca)?,
        port: node.local_addr()?.port(),
    };
    let (mdns, events) = Mdns::start(&advert, interfaces)?;
    tracing::info!(deployment = %advert.deployment, "advertising on the LAN and looking for peers (mDNS)");
    *node.ctx.deployment.lock().unwrap_or_else(|p| p.into_inner()) = Some(advert.deployment);
    Ok((mdns, events))
}

fn on_lan_event(
    node: &Arc<Node>,
    event: PeerEvent,
    found: &mut LanPeers,
    tasks: &mut tokio::task::JoinSet<()>,
    interval: Duration,
) {
    let ad = match event {
        PeerEvent::Found(ad) | PeerEvent::Changed(ad) => ad,
        PeerEvent::Lost(id) => {
            if let Some((_, task, _)) = found.remove(&id) {
                tracing::info!(peer = %id.short(), "peer left the LAN");
                task.abort();
            }
            return;
        }
    };
    let Some(id) = ad.node_id else { return };
    let ours = node.ctx.deployment.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let role = ad.role.clone().unwrap_or_default();
    node.ctx.seen(id, &role, &ad.addrs, ad.deployment == ours);
    if ad.deployment != ours {
        tracing::info!(peer = %id.short(), addrs = ?ad.addrs, "a node of another deployment is on the LAN; not dialing it");
        return;
    }
    if let Some((addrs, task, wake)) = found.get(&id) {
        if !task.is_finished() {
            *addrs.lock().unwrap_or_else(|p| p.into_inner()) = ad.addrs;
            // Announced again (back on the LAN, or moved): retry now.
            wake.notify_one();
            return;
        }
    }
    // One connection per pair: the lower node id dials, the other accepts.
    if node.ctx.node_id > id {
        tracing::info!(peer = %id.short(), "found on the LAN; it will dial this node");
        return;
    }
    tracing::info!(peer = %id.short(), addrs = ?ad.addrs, "found on the LAN; dialing");
    let addrs = Arc::new(Mutex::new(ad.addrs));
    let wake = Arc::new(Notify::new());
    let task = tasks.spawn(peer_loop(
        node.clone(),
        Target::Lan(id, addrs.clone()),
        interval,
        wake.clone(),
    ));
    found.insert(id, (addrs, task, wake));
}

async fn resolve(peer: &str) -> Result<SocketAddr> {
    let with_port = if peer.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        peer.to_string()
    } else {
        format!("{peer}:{}", crate::datadir::DEFAULT_PORT)
    };
    let mut addrs = tokio::net::lookup_host(with_port.as_str()).await?;
    addrs
        .next()
        .ok_or_else(|| anyhow::anyhow!("{peer} resolved to no address"))
}

async fn dial(node: &Node, target: &Target) -> Result<crate::node::Opened> {
    match target {
        Target::Static(peer) => Ok(node.open(resolve(peer).await?, false).await?),
        Target::Lan(id, addrs) => {
            let addrs = addrs.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut last = anyhow::anyhow!("{} advertised no address", id.short());
            for addr in addrs {
                match node.open(addr, true).await {
                    Ok(o) if o.link.peer.node_id == *id => return Ok(o),
                    Ok(o) => {
                        o.link.conn.close(
                            crate::link::code(ferry_proto::ErrorCode::Protocol),
                            b"not the advertised node",
                        );
                        last = anyhow::anyhow!(
                            "{addr} advertised node {id} but its certificate is for {}",
                            o.link.peer.node_id
                        );
                    }
                    Err(e) => last = e.into(),
                }
            }
            Err(last)
        }
    }
}

/// Sleeps `wait` before a retry, cut short when the peer announces itself
/// again or this machine's addresses change (a mule arriving somewhere).
async fn retry_after(node: &Node, wait: Duration, wake: &Notify) {
    let mut moved = node.ctx.addresses.subscribe();
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = wake.notified() => {}
        _ = moved.changed() => {}
    }
}

/// Dials `target`, or gives up (`None`) to dial again at once when this
/// machine's addresses change or the peer announces itself again: a dial
/// begun before a mule arrived somewhere, or before the peer came back,
/// would otherwise wait out its whole timeout.
async fn dial_unless_moved(node: &Node, target: &Target, wake: &Notify) -> Option<Result<crate::node::Opened>> {
    let mut moved = node.ctx.addresses.subscribe();
    tokio::select! {
        opened = dial(node, target) => Some(opened),
        _ = moved.changed() => {
            tracing::info!(peer = %target, "local addresses changed while connecting; dialing again");
            None
        }
        _ = async {
            // Not at once: the announcement that started this dial may
            // have left a wake-up behind.
            tokio::time::sleep(Duration::from_secs(1)).await;
            wake.notified().await
        } => {
            tracing::info!(peer = %target, "peer announced itself again while connecting; dialing again");
            None
        }
    }
}

async fn peer_loop(node: Arc<Node>, target: Target, interval: Duration, wake: Arc<Notify>) {
    let peer = target.to_string();
    let mut attempt = 0u32;
    loop {
        if let Target::Lan(id, _) = &target {
            if node.driver.connected_to(id) {
                // Already connected: it dialed this node, or it is also a
                // static peer. One connection per peer; look again later.
                retry_after(&node, interval, &wake).await;
                continue;
            }
        }
        let opened = match dial_unless_moved(&node, &target, &wake).await {
            None => continue,
            Some(Ok(o)) => o,
            Some(Err(e)) => {
                let wait = backoff(attempt);
                tracing::info!(%peer, "cannot reach peer ({e:#}); retrying in {wait:?}");
                attempt += 1;
                retry_after(&node, wait, &wake).await;
                continue;
            }
        };
        attempt = 0;
        let link = opened.link;
        if matches!(target, Target::Static(_)) && node.driver.lan_link_to(&link) {
            // The static peer is on the LAN and already connected there.
            tracing::info!(%peer, name = %link.peer.name, "already connected on the LAN; not keeping a second connection");
            link.conn
                .close(crate::link::code(ferry_proto::ErrorCode::Done), b"already connected");
            retry_after(&node, interval, &wake).await;
            continue;
        }
        tracing::info!(%peer, name = %link.peer.name, zero_rtt = ?opened.zero_rtt, "connected");
        let since = std::time::Instant::now();
        let why = link.conn.closed().await;
        tracing::info!(%peer, "connection ended ({why}); dialing again");
        // A connection that served a while and then ended (the peer
        // restarted and answered with a stateless reset, or the path
        // failed) is dialled again at once: waiting would only delay
        // what was written meanwhile. One that ended soon after it opened
        // (the peer keeps refusing it) waits, so a refusal is no busy loop.
        if since.elapsed() < REDIAL_AT_ONCE_AFTER {
            retry_after(&node, backoff(0), &wake).await;
        }
    }
}
