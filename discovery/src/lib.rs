//! Peer discovery for ferry: what a node learns about possible peers.
//!
//! Only the public types exist so far; mDNS browsing/advertising (mdns-sd)
//! and static peer resolution arrive with the discovery issue. The daemon
//! dials static peers from config directly until then.

use ferry_proto::NodeId;
use std::net::SocketAddr;

/// mDNS service type every ferry node advertises.
pub const SERVICE_TYPE: &str = "_ferry._udp.local.";

/// How a peer became known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Seen on the LAN by mDNS.
    Mdns,
    /// Configured by address or DNS name (the hub).
    Static,
}

/// What an advertisement or a config entry says about a peer. Claims are
/// checked against the peer's certificate at the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAd {
    pub node_id: Option<NodeId>,
    pub role: Option<String>,
    pub addrs: Vec<SocketAddr>,
    /// Fingerprint of the deployment CA the peer claims to belong to.
    pub deployment: Option<NodeId>,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    Found(PeerAd),
    Changed(PeerAd),
    Lost(NodeId),
}
