//! peers.json kept current while connections are open, not only when they
//! end: `ferry peers`, `ferry status`, `/metrics` and the dashboard read it.

use crate::ctx::NodeCtx;
use crate::datadir::unix_now;
use crate::link::Link;
use std::time::Duration;

/// How often connected peers' counts and lag are written out.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Notes a new connection: peers.json's counts so far, and who it is.
pub fn record_start(ctx: &NodeCtx, link: &Link) {
    let Some(dir) = &ctx.data_dir else { return };
    let prior = dir.peers().remove(&link.peer.node_id.to_string()).unwrap_or_default();
    *link.base.lock().unwrap_or_else(|p| p.into_inner()) = prior;
    let _ = dir.record_peer(link.peer.node_id, |p| p.connected_since_unix = Some(unix_now()));
    write(ctx, link, false, None, true);
}

/// The connection's counts and lag so far; `synced`: it is in step with
/// its peer (a sync completed).
pub fn record(ctx: &NodeCtx, link: &Link, synced: bool) {
    write(ctx, link, synced, None, true);
}

/// The connection ended; `error` unless it ended cleanly.
pub fn record_end(ctx: &NodeCtx, link: &Link, error: Option<String>) {
    write(ctx, link, false, error, false);
}

fn write(ctx: &NodeCtx, link: &Link, synced: bool, error: Option<String>, connected: bool) {
    let Some(dir) = &ctx.data_dir else { return };
    let base = link.base.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let view = link.last_view();
    let udp = link.conn.stats();
    let result = dir.record_peer(link.peer.node_id, |p| {
        p.name = link.peer.name.clone();
        p.role = link.peer.role;
        p.verified = true;
        if p.found_by.is_empty() {
            p.found_by = if link.inbound { "dialed-us" } else { "static" }.into();
        }
        p.foreign = false;
        p.connected = connected;
        if !connected {
            p.connected_since_unix = None;
        }
        p.bytes_received = base.bytes_received + udp.udp_rx.bytes;
        p.bytes_sent = base.bytes_sent + udp.udp_tx.bytes;
        // Where the peer is now: a migrated connection has moved on.
        p.addr = link.conn.remote_address().to_string();
        if let Some(v) = &view {
            p.events_received = base.events_received + v.stats.events_received;
            p.events_sent = base.events_sent + v.stats.events_sent;
            p.duplicates_received = base.duplicates_received + v.stats.duplicates_received;
            p.we_lack = Some(v.we_lack);
            p.they_lack = Some(v.they_lack);
        }
        if synced {
            p.last_sync_unix = Some(unix_now());
        }
        if !connected || error.is_some() {
            p.last_error = error.clone();
        }
    });
    if let Err(e) = result {
        tracing::warn!("could not record peer state: {e:#}");
    }
}
