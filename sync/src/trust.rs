//! Which nodes are revoked, and what that means for the events they wrote.
//!
//! The driver verifies a revocation (the CA's signature is no business of
//! the core) and calls `Replica::revoke(node, cutoff)`. From then on this
//! node holds no session with the revoked node, and refuses any event of
//! its origins stamped after `cutoff`. HLC rises with seq within an origin,
//! so the first refused seq bounds the origin: nothing at or after it is
//! accepted or asked for again, from any peer. What the node wrote up to
//! the cutoff stays, and is still fetched and served like any event.

use ferry_proto::{Event, Hlc, NodeId, Origin, RangeSet};
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct Trust {
    /// Revoked nodes and the last timestamp accepted from each.
    revoked: BTreeMap<NodeId, Hlc>,
    /// Origins of revoked nodes: the lowest seq refused.
    barred: BTreeMap<Origin, u64>,
    /// Events refused since the replica started.
    refused: u64,
}

impl Trust {
    /// Records a revocation. Two revocations of one node keep the earlier
    /// cutoff. Returns whether anything changed.
    pub fn revoke(&mut self, node: NodeId, cutoff: Hlc) -> bool {
        match self.revoked.get(&node) {
            Some(c) if *c <= cutoff => false,
            _ => {
                self.revoked.insert(node, cutoff);
                true
            }
        }
    }

    pub fn is_revoked(&self, node: &NodeId) -> bool {
        self.revoked.contains_key(node)
    }

    /// The revoked nodes and their cutoffs.
    pub fn revoked(&self) -> &BTreeMap<NodeId, Hlc> {
        &self.revoked
    }

    /// Whether an arriving event may be stored. A refusal bars its origin
    /// from its seq on.
    pub fn admits(&mut self, e: &Event) -> bool {
        let Some(cutoff) = self.revoked.get(&e.origin.node) else {
            return true;
        };
        let barred = self.barred.get(&e.origin).is_some_and(|b| e.seq >= *b);
        if !barred && e.hlc <= *cutoff {
            return true;
        }
        let b = self.barred.entry(e.origin).or_insert(e.seq);
        *b = (*b).min(e.seq);
        self.refused += 1;
        false
    }

    /// Sequence numbers of `origin` this node will never accept: to be
    /// treated as held when working out what to ask for.
    pub fn barred(&self, origin: &Origin) -> RangeSet {
        match self.barred.get(origin) {
            Some(first) => RangeSet::from_range(*first, u64::MAX),
            None => RangeSet::default(),
        }
    }

    /// The lowest refused seq of each barred origin.
    pub fn barred_origins(&self) -> &BTreeMap<Origin, u64> {
        &self.barred
    }

    pub fn refused(&self) -> u64 {
        self.refused
    }
}
