//! Notices when this machine's addresses change and moves outgoing
//! connections to a fresh socket, so they migrate at once.
//!
//! A dialling socket bound to the wildcard address already sends from
//! whatever address the kernel picks, but a connection that is only
//! receiving sends nothing after its address is removed: the peer keeps
//! sending to an address that is gone until a keep-alive (25 s on the WAN)
//! reveals the new one. Rebinding makes quinn switch to a fresh connection
//! ID and probe the path straight away; the peer validates the new path and
//! the connection carries on without a new handshake.

use crate::ctx::NodeCtx;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// How often interfaces are read: a netlink subscription would be quicker,
/// but one second is small against a 2G round trip and costs nothing.
const POLL: Duration = Duration::from_secs(1);

/// The machine's addresses, loopback aside.
pub fn local_addresses() -> BTreeSet<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(list) => list.into_iter().filter(|i| !i.is_loopback()).map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::debug!("could not list network interfaces: {e}");
            BTreeSet::new()
        }
    }
}

/// Rebinds `dialer` to a new socket on `bind` whenever the set of local
/// addresses changes, until the node stops.
pub async fn watch(ctx: Arc<NodeCtx>, dialer: quinn::Endpoint, bind: SocketAddr) {
    let mut known = local_addresses();
    loop {
        tokio::select! {
            _ = ctx.stopping.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let now = local_addresses();
        if now == known {
            continue;
        }
        ctx.addresses.send_modify(|n| *n += 1);
        let gone: Vec<_> = known.difference(&now).collect();
        let new: Vec<_> = now.difference(&known).collect();
        match std::net::UdpSocket::bind(bind).and_then(|s| dialer.rebind(s)) {
            Ok(()) => {
                ctx.totals.rebinds.fetch_add(1, Relaxed);
                tracing::info!(
                    ?gone,
                    ?new,
                    "local addresses changed; outgoing connections moved to a new socket"
                );
            }
            Err(e) => tracing::warn!(?gone, ?new, "local addresses changed but rebinding failed: {e}"),
        }
        known = now;
    }
}

/// Whether `peer` is on one of this machine's subnets (loopback aside):
/// a LAN peer, cheaper to pull from than one across the WAN.
pub fn on_link(peer: IpAddr) -> bool {
    let Ok(list) = if_addrs::get_if_addrs() else {
        return false;
    };
    list.iter().filter(|i| !i.is_loopback()).any(|i| match (&i.addr, peer) {
        (if_addrs::IfAddr::V4(a), IpAddr::V4(p)) => {
            let mask = u32::from(a.netmask);
            u32::from(a.ip) & mask == u32::from(p) & mask
        }
        (if_addrs::IfAddr::V6(a), IpAddr::V6(p)) => {
            let mask = u128::from(a.netmask);
            u128::from(a.ip) & mask == u128::from(p) & mask
        }
        _ => false,
    })
}
