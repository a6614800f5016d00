//! The peer manager each simulated node runs, as `ferry run` does: dial the
//! hub over the WAN, dial LAN neighbours with a higher node id, keep one
//! connection per peer, back off after failures.

use crate::world::{Path, World};
use ferry_sync::Time;

/// Dials every peer this node should be connected to and is not.
pub fn manage(w: &mut World, n: usize) {
    if !w.node_up(n) {
        return;
    }
    let mut targets = Vec::new();
    for (i, wan) in w.wans.iter().enumerate() {
        if wan.a == n {
            targets.push((wan.hub, Path::Wan(i)));
        }
    }
    if let Some(seg) = w.nodes[n].segment {
        for m in 0..w.nodes.len() {
            if m != n && w.nodes[m].segment == Some(seg) && w.nodes[n].ident.id < w.nodes[m].ident.id {
                targets.push((m, Path::Lan(seg)));
            }
        }
    }
    let boot = w.nodes[n].boot;
    for (m, path) in targets {
        let connected = w
            .conns
            .values()
            .any(|c| (0..2).any(|e| c.nodes[e] == n && c.nodes[1 - e] == m && c.boots[e] == boot && !c.closed[e]));
        if connected {
            continue;
        }
        let peer = w.nodes[m].ident.id;
        if w.nodes[n].backoff.get(&peer).is_some_and(|(_, until)| *until > w.now) {
            continue;
        }
        w.dial(n, m, path);
    }
}

/// How often a node looks again without being prompted.
pub const EVERY: Time = Time::from_secs(10);
