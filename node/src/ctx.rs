//! This node as its sessions see it: WAL, identity, policy, counters, and
//! what it knows of its peers (hubs met, LAN links, pulls in flight).

use crate::datadir::{DataDir, Policy};
use crate::inflight::InFlight;
use crate::pki::{CertInfo, Role};
use crate::session::Link;
use anyhow::Result;
use ferry_proto::{Classes, Frame, Hello, NodeId, Origin, Summary, PROTOCOL_VERSION};
use ferry_wal::Wal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};

#[derive(Debug, Default)]
pub struct Counters {
    pub events_sent: AtomicU64,
    pub events_received: AtomicU64,
    pub duplicates_received: AtomicU64,
    pub bad_streams: AtomicU64,
    /// Handshakes completed with peers that dialed us.
    pub connections_accepted: AtomicU64,
    /// Reconnects whose opening the peer took as 0-RTT data, and those it did not.
    pub zero_rtt_accepted: AtomicU64,
    pub zero_rtt_rejected: AtomicU64,
    /// Times the dialling socket moved because local addresses changed.
    pub rebinds: AtomicU64,
}

impl Counters {
    pub(crate) fn add(&self, f: impl Fn(&Counters) -> &AtomicU64, n: u64, also: &Counters) {
        f(self).fetch_add(n, Relaxed);
        f(also).fetch_add(n, Relaxed);
    }
}

/// This node, as sessions see it.
pub struct NodeCtx {
    pub wal: Arc<Wal>,
    pub node_id: NodeId,
    pub name: String,
    pub role: Role,
    pub policy: Policy,
    /// Where to persist a new log epoch; `None` in tests without a data dir.
    pub data_dir: Option<DataDir>,
    pub totals: Counters,
    /// Every task serving this node, so shutdown can wait for all of them
    /// and the WAL is closed when it returns.
    pub tasks: tokio_util::task::TaskTracker,
    /// Cap on what this node sends, shared by all its peers.
    pub budget: Option<crate::budget::Budget>,
    /// Cancelled when the node shuts down, for tasks that do not end by
    /// themselves (the local API).
    pub stopping: tokio_util::sync::CancellationToken,
    /// This deployment's CA fingerprint, once mDNS advertises it.
    pub deployment: Mutex<Option<String>>,
    /// Ranges being pulled right now, by any round.
    pub inflight: Arc<InFlight>,
    /// Every connection made or accepted: to keep one per peer, and so that
    /// what LAN peers offer is not pulled over the WAN.
    pub links: Mutex<Vec<Weak<Link>>>,
    /// A daemon: connections stay open and either side starts a round when
    /// it holds events the other lacks, also on connections the peer opened.
    pub live: AtomicBool,
    /// Nodes whose certificates say `hub` (this one too, if it is a hub).
    pub hubs: Mutex<std::collections::BTreeSet<NodeId>>,
    /// Bumped when this machine's addresses change.
    pub addresses: tokio::sync::watch::Sender<u64>,
    /// Where transfer progress is drawn, when stderr is a terminal.
    pub progress: OnceLock<indicatif::MultiProgress>,
}

impl NodeCtx {
    /// Notes a node heard on the LAN, for `ferry peers`.
    pub fn seen(&self, id: NodeId, role: &str, addrs: &[SocketAddr], same_deployment: bool) {
        let Some(dir) = &self.data_dir else { return };
        let result = dir.record_peer(id, |p| {
            if p.found_by.is_empty() || p.found_by == "dialed-us" {
                p.found_by = "mdns".into();
            }
            p.foreign = !same_deployment;
            if p.role.is_none() {
                p.role = role.parse().ok();
            }
            if let Some(a) = addrs.first() {
                p.addr = a.to_string();
            }
        });
        if let Err(e) = result {
            tracing::warn!("could not record a LAN peer: {e:#}");
        }
    }

    /// Takes a new connection into account: its peer's role (from a
    /// verified certificate), the set of open links, and its progress.
    pub(crate) fn adopt(&self, link: &Arc<Link>) {
        self.note_role(link.peer.node_id, link.peer.role);
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.retain(|l| l.upgrade().is_some_and(|l| l.conn.close_reason().is_none()));
        links.push(Arc::downgrade(link));
        drop(links);
        crate::progress::track(self, link);
    }

    fn open_links(&self) -> Vec<Arc<Link>> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|l| l.conn.close_reason().is_none())
            .collect()
    }

    /// Whether a connection to `peer` is open, either way.
    pub fn connected_to(&self, peer: &NodeId) -> bool {
        self.open_links().iter().any(|l| l.peer.node_id == *peer)
    }

    /// Whether another open connection reaches the same peer as `link` on the LAN.
    pub fn lan_link_to(&self, link: &Arc<Link>) -> bool {
        self.open_links()
            .iter()
            .any(|l| l.lan && l.peer.node_id == link.peer.node_id && !Arc::ptr_eq(l, link))
    }

    /// What open connections to LAN peers offer, by their last summaries.
    pub fn lan_offers(&self) -> Summary {
        self.open_links()
            .iter()
            .filter(|l| l.lan)
            .fold(Summary::default(), |mut all, l| {
                if let Some((last, _)) = &*l.last_summary.lock().unwrap_or_else(|p| p.into_inner()) {
                    all = all.union(last);
                }
                if let Some(offered) = &*l.offered.lock().unwrap_or_else(|p| p.into_inner()) {
                    all = all.union(offered);
                }
                all
            })
    }

    /// Events this node may send the peer that, by its last summary, it
    /// lacks; 0 before the first round, which the dialer always starts.
    pub fn news_for(&self, link: &Link) -> u64 {
        let last = link.last_summary.lock().unwrap_or_else(|p| p.into_inner());
        let Some((theirs, _)) = last.as_ref() else { return 0 };
        theirs.lacking(&self.wal.summary().filtered(|o| self.allows(&link.peer, o)))
    }

    pub fn allows(&self, peer: &CertInfo, origin: &Origin) -> bool {
        match self.policy {
            Policy::All => true,
            Policy::Own => origin.node == peer.node_id,
            Policy::Role => match peer.role {
                Some(Role::Hub | Role::Mule) => true,
                Some(Role::Clinic) | None => {
                    origin.node == peer.node_id
                        || self
                            .hubs
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .contains(&origin.node)
                }
            },
        }
    }

    /// Learns a peer's role from its verified certificate.
    fn note_role(&self, id: NodeId, role: Option<Role>) {
        if role == Some(Role::Hub) {
            self.hubs.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
        }
    }

    pub(crate) fn hello(&self) -> Frame {
        Frame::Hello(Hello {
            node: self.node_id,
            role: self.role.to_string(),
            name: self.name.clone(),
            version: PROTOCOL_VERSION,
        })
    }

    /// What we hold, cut down to what policy lets this peer receive.
    pub(crate) fn summary_for(&self, peer: &CertInfo) -> (Summary, Classes) {
        let allow = |o: &Origin| self.allows(peer, o);
        (self.wal.summary().filtered(allow), self.wal.classes().filtered(allow))
    }

    /// A peer holding more of our own current log than we do means our data
    /// directory was restored from an old backup: continuing would reuse
    /// sequence numbers. Start a new log; the old one comes back as any other.
    pub(crate) fn check_restored(&self, ours: &Summary, theirs: &Summary) -> Result<()> {
        let local = self.wal.local_origin();
        let their_last = theirs.get(&local).and_then(|r| r.last()).unwrap_or(0);
        let our_last = ours.get(&local).and_then(|r| r.last()).unwrap_or(0);
        if their_last > our_last {
            let epoch = rand::random::<u32>();
            tracing::warn!(%local, our_last, their_last, new_epoch = format!("{epoch:08x}"),
                "a peer holds more of this node's log than this node: the data directory was restored from a backup; starting a new log epoch");
            if let Some(dir) = &self.data_dir {
                dir.set_log_epoch(epoch)?;
            }
            self.wal.set_local_origin(Origin {
                node: self.node_id,
                epoch,
            });
        }
        Ok(())
    }
}
