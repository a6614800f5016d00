//! mDNS (DNS-SD) on the LAN with mdns-sd: one advertisement for this node,
//! one browse for every other node, reported as `PeerEvent`s.

use crate::{PeerAd, PeerEvent, Source, SERVICE_TYPE};
use ferry_proto::NodeId;
use mdns_sd::{IfKind, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::sync::mpsc;

/// What this node says about itself.
#[derive(Clone, Debug)]
pub struct Advert {
    pub node_id: NodeId,
    pub role: String,
    /// Fingerprint of the deployment CA.
    pub deployment: String,
    /// The UDP port the node listens on.
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum MdnsError {
    #[error("mDNS failed: {0}; is multicast allowed on this interface?")]
    Daemon(#[from] mdns_sd::Error),
}

/// A running advertisement and browse; stopped when dropped.
pub struct Mdns {
    daemon: ServiceDaemon,
}

impl Mdns {
    /// Advertises `ad` and browses for peers on `interfaces` (names, e.g.
    /// `eth0`; empty: every interface but loopback). Events from other
    /// nodes arrive on the returned channel; this node's own are dropped.
    pub fn start(ad: &Advert, interfaces: &[String]) -> Result<(Mdns, mpsc::Receiver<PeerEvent>), MdnsError> {
        let daemon = ServiceDaemon::new()?;
        daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
        if !interfaces.is_empty() {
            daemon.disable_interface(IfKind::All)?;
            let names: Vec<IfKind> = interfaces.iter().map(|n| IfKind::Name(n.clone())).collect();
            daemon.enable_interface(names)?;
        }
        let instance = ad.node_id.to_string();
        let host = format!("ferry-{}.local.", ad.node_id.short());
        let props = [
            ("id", instance.as_str()),
            ("role", ad.role.as_str()),
            ("ca", ad.deployment.as_str()),
        ];
        let info = ServiceInfo::new(SERVICE_TYPE, &instance, &host, "", ad.port, &props[..])?.enable_addr_auto();
        daemon.register(info)?;
        let browse = daemon.browse(SERVICE_TYPE)?;
        let (tx, rx) = mpsc::channel(64);
        let me = ad.node_id;
        std::thread::Builder::new()
            .name("ferry-mdns".into())
            .spawn(move || forward(browse, tx, me))
            .map_err(|e| MdnsError::Daemon(mdns_sd::Error::Msg(e.to_string())))?;
        Ok((Mdns { daemon }, rx))
    }
}

impl Drop for Mdns {
    fn drop(&mut self) {
        // Sends goodbye packets, so peers see this node leave at once.
        let _ = self.daemon.shutdown();
    }
}

fn forward(browse: mdns_sd::Receiver<ServiceEvent>, tx: mpsc::Sender<PeerEvent>, me: NodeId) {
    // fullname -> the last ad it resolved to
    let mut known: HashMap<String, PeerAd> = HashMap::new();
    while let Ok(event) = browse.recv() {
        let out = match event {
            ServiceEvent::ServiceResolved(svc) => {
                let Some(ad) = peer_ad(&svc) else {
                    tracing::debug!(name = %svc.fullname, "ignoring an advertisement without a valid node id");
                    continue;
                };
                if ad.node_id == Some(me) {
                    continue;
                }
                match known.insert(svc.fullname.clone(), ad.clone()) {
                    None => PeerEvent::Found(ad),
                    Some(old) if old != ad => PeerEvent::Changed(ad),
                    Some(_) => continue,
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => match known.remove(&fullname).and_then(|ad| ad.node_id) {
                Some(id) => PeerEvent::Lost(id),
                None => continue,
            },
            _ => continue,
        };
        if tx.blocking_send(out).is_err() {
            return;
        }
    }
}

/// What an advertisement claims, if it names a node id.
pub fn peer_ad(svc: &ResolvedService) -> Option<PeerAd> {
    let node_id: NodeId = svc.get_property_val_str("id")?.parse().ok()?;
    // A link-local IPv6 address needs its interface, which the
    // advertisement does not carry: only addresses that can be dialed as
    // they are, IPv4 first.
    let mut addrs: Vec<SocketAddr> = svc
        .addresses
        .iter()
        .map(|ip| ip.to_ip_addr())
        .filter(|ip| !matches!(ip, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .map(|ip| SocketAddr::new(ip, svc.port))
        .collect();
    addrs.sort_by_key(|a| (a.is_ipv6(), *a));
    Some(PeerAd {
        node_id: Some(node_id),
        role: svc.get_property_val_str("role").map(str::to_string),
        addrs,
        deployment: svc.get_property_val_str("ca").map(str::to_string),
        source: Source::Mdns,
    })
}
