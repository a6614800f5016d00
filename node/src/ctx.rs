//! This node as its parts see it: WAL, identity, policy, counters, the
//! tasks to wait for at shutdown, and the hubs it has met.

use crate::datadir::{DataDir, Policy};
use crate::pki::{CertInfo, Role};
use ferry_proto::NodeId;
use ferry_wal::Wal;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

/// Node-wide counters. Events are counted by the core; the driver copies
/// its totals here after every step.
#[derive(Debug, Default)]
pub struct Counters {
    pub events_sent: AtomicU64,
    pub events_received: AtomicU64,
    pub duplicates_received: AtomicU64,
    /// Handshakes completed with peers that dialed us.
    pub connections_accepted: AtomicU64,
    /// Reconnects whose opening the peer took as 0-RTT data, and those it did not.
    pub zero_rtt_accepted: AtomicU64,
    pub zero_rtt_rejected: AtomicU64,
    /// Times the dialling socket moved because local addresses changed.
    pub rebinds: AtomicU64,
    /// Connections given up because the peer left what this node sent
    /// unanswered (`silence`); shared with the local API's `/metrics`.
    pub silent_peers: Arc<AtomicU64>,
}

/// This node, as its parts see it.
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
    /// themselves (the local API, timers).
    pub stopping: tokio_util::sync::CancellationToken,
    /// This deployment's CA fingerprint, once mDNS advertises it.
    pub deployment: Mutex<Option<String>>,
    /// Nodes whose verified certificates say `hub` (this one too, if it is a
    /// hub), for the policy `role`.
    pub hubs: Mutex<std::collections::BTreeSet<NodeId>>,
    /// Bumped when this machine's addresses change.
    pub addresses: tokio::sync::watch::Sender<u64>,
    /// Where transfer progress is drawn, when stderr is a terminal.
    pub progress: OnceLock<indicatif::MultiProgress>,
    /// The revocations this node holds (shared with its TLS verifiers).
    pub revocations: Arc<crate::revocation::Revocations>,
    /// Writers' keys and this node's own, for authenticated logs.
    pub writer_keys: Arc<crate::logauth::WriterKeys>,
    pub signer: Arc<crate::logauth::NodeSigner>,
    /// Deliberate faults (`Overrides::faults`); none outside tests.
    pub faults: ferry_sync::Bugs,
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

    /// Learns a peer's role from its verified certificate.
    pub fn note_role(&self, peer: &CertInfo) {
        if peer.role == Some(Role::Hub) {
            self.hubs.lock().unwrap_or_else(|p| p.into_inner()).insert(peer.node_id);
        }
    }
}

impl From<Policy> for ferry_sync::Policy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::All => ferry_sync::Policy::All,
            Policy::Own => ferry_sync::Policy::Own,
            Policy::Role => ferry_sync::Policy::Role,
        }
    }
}
