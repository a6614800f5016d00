//! Peer discovery for ferry: what a node learns about possible peers.
//!
//! `mdns` advertises this node on the LAN and turns what it hears into
//! `PeerEvent`s. Advertisements are claims: the daemon dials only peers of
//! its own deployment and checks the claimed node id against the
//! certificate at the handshake.

pub mod mdns;

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
    pub deployment: Option<String>,
    pub source: Source,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    Found(PeerAd),
    Changed(PeerAd),
    Lost(NodeId),
}
