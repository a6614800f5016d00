//! Revocations in the simulated deployment, as the node's driver handles
//! them: one is written at the hub as an event, travels like any event, and
//! each node that holds it tells its core (`Replica::revoke`) and refuses
//! the revoked node's handshake. The CA signature is the driver's business
//! (tested on real processes in tests/tests/revocation.rs), so the payload
//! here is only the node and the cutoff.
//!
//! The checks: no node sends to a node it has revoked, and none accepts an
//! event the revoked node stamped after the cutoff once it holds the
//! revocation ("no revoked node served after its revocation is held").
//! Both hold from the core's next decision on: what it queued before it
//! learned of the revocation (the rest of the batch that brought it) is
//! the window docs/architecture.md states.

use crate::world::World;
use ferry_proto::{Event, Hlc, NodeId, Priority};
use ferry_sync::{MemStore, Store, Time};
use std::collections::BTreeMap;

pub const TOPIC: &str = "ferry.revocation";

fn encode(node: NodeId, cutoff: Hlc) -> Vec<u8> {
    let mut b = node.0.to_vec();
    b.extend_from_slice(&cutoff.0.to_be_bytes());
    b
}

fn decode(e: &Event) -> Option<(NodeId, Hlc)> {
    if e.topic != TOPIC || e.payload.len() != 24 {
        return None;
    }
    let node = NodeId(e.payload[..16].try_into().ok()?);
    let cutoff = Hlc(u64::from_be_bytes(e.payload[16..].try_into().ok()?));
    Some((node, cutoff))
}

/// Every revocation a store holds (at boot, as the driver rebuilds them).
pub fn held(store: &MemStore) -> BTreeMap<NodeId, Hlc> {
    let mut out = BTreeMap::new();
    for (origin, set) in store.summary().0 {
        for &(a, b) in set.ranges() {
            for seq in a..=b {
                if let Some((node, cutoff)) = store.get(&origin, seq).and_then(decode) {
                    keep(&mut out, node, cutoff);
                }
            }
        }
    }
    out
}

/// Two revocations of one node keep the earlier cutoff, as the core does.
fn keep(set: &mut BTreeMap<NodeId, Hlc>, node: NodeId, cutoff: Hlc) -> bool {
    match set.get(&node) {
        Some(c) if *c <= cutoff => false,
        _ => {
            set.insert(node, cutoff);
            true
        }
    }
}

impl World {
    /// The hub revokes `victim` now, cut off at the hub's clock.
    pub fn revoke(&mut self, hub: usize, victim: usize) {
        if self.nodes[hub].replica.is_none() {
            let line = format!(
                "{} is down: no revocation of {}",
                self.nodes[hub].name, self.nodes[victim].name
            );
            self.trace.line(self.now, &line);
            return;
        };
        // As `ferry ca revoke` stamps it: the last accepted timestamp is
        // the revocation's wall-clock millisecond (the hub's clock here).
        let cutoff = Hlc::new(self.wall_ms(hub), u16::MAX);
        let node = self.nodes[victim].ident.id;
        let line = format!("{} revokes {}", self.nodes[hub].name, self.nodes[victim].name);
        self.trace.line(self.now, &line);
        let item = (TOPIC.to_string(), Priority::Urgent, encode(node, cutoff));
        self.write_items(hub, vec![item]);
    }

    /// Events now held at `n` (written or received): revocations among them
    /// reach its core. The caller drains the actions that follow (the
    /// connections to the revoked node closing).
    pub fn observe(&mut self, n: usize, events: &[Event]) {
        for (node, cutoff) in events.iter().filter_map(decode) {
            if !keep(&mut self.nodes[n].revoked, node, cutoff) {
                continue;
            }
            let victim = self.name_of(&node);
            let line = format!("{} holds the revocation of {victim}", self.nodes[n].name);
            self.trace.line(self.now, &line);
            let now = self.now;
            if let Some(r) = self.nodes[n].replica.as_mut() {
                r.revoke(now, node, cutoff);
            }
        }
    }

    /// At boot: the revocations on the node's disk, back into its core.
    pub fn restore_revocations(&mut self, n: usize) {
        let Some(r) = self.nodes[n].replica.as_mut() else {
            return;
        };
        let set = held(r.store());
        for (node, cutoff) in &set {
            r.revoke(Time(0), *node, *cutoff);
        }
        self.nodes[n].enforced = set.clone();
        self.nodes[n].revoked = set;
    }

    /// Whether a TLS handshake between the two fails: either end holds a
    /// revocation of the other (both verifiers check).
    pub fn handshake_refused(&self, a: usize, b: usize) -> bool {
        self.nodes[a].revoked.contains_key(&self.nodes[b].ident.id)
            || self.nodes[b].revoked.contains_key(&self.nodes[a].ident.id)
    }

    /// An event `n` is about to accept: refused if it holds a revocation of
    /// the writer and the event was stamped after the cutoff.
    pub fn check_not_revoked(&self, n: usize, e: &Event) -> Result<(), String> {
        match self.nodes[n].enforced.get(&e.origin.node) {
            Some(cutoff) if e.hlc > *cutoff => Err(format!(
                "{} accepted {}:{} written by {} after its revocation, which it holds",
                self.nodes[n].name,
                e.origin,
                e.seq,
                self.name_of(&e.origin.node)
            )),
            _ => Ok(()),
        }
    }

    /// Data sent by `n` to `peer`: a node it holds a revocation of must
    /// get nothing from it.
    pub fn check_not_serving_revoked(&self, n: usize, peer: usize) -> Result<(), String> {
        if self.nodes[n].enforced.contains_key(&self.nodes[peer].ident.id) {
            return Err(format!(
                "{} sent data to {} after holding its revocation",
                self.nodes[n].name, self.nodes[peer].name
            ));
        }
        Ok(())
    }

    fn name_of(&self, node: &NodeId) -> String {
        self.nodes
            .iter()
            .find(|m| m.ident.id == *node)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| node.to_string())
    }
}
