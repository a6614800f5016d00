//! Invariants, checked as the simulation runs and at its end. Each check
//! watches the bytes and actions between nodes, not the core's own
//! bookkeeping, so a bug in the core cannot hide itself.

use ferry_proto::batch::{Assembly, Item, StreamDecompressor};
use ferry_proto::merkle::{leaf_hash, Hash};
use ferry_proto::{Event, Frame, Hlc, NodeId, Origin, RangeSet, Role};
use ferry_sync::{FrameReader, Policy, StreamId};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Who a node is, as the checks need it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub id: NodeId,
    pub role: Role,
    pub policy: Policy,
}

/// A data stream as seen arriving at one end.
#[derive(Default)]
struct DataTap {
    reader: FrameReader,
    dec: StreamDecompressor,
    assembly: Assembly,
    opened: bool,
}

/// What crossed one connection into one node.
#[derive(Default)]
pub struct Tap {
    data: BTreeMap<StreamId, DataTap>,
    control_out: FrameReader,
    received: BTreeSet<(Origin, u64)>,
}

#[derive(Default)]
pub struct Checker {
    /// Per node: events acknowledged to their writer (local) or reported
    /// durable (replicated): they must survive every crash.
    acked: Vec<BTreeSet<(Origin, u64)>>,
    /// Per node: the highest HLC it has stamped on its own events since it
    /// last restarted from its log.
    last_hlc: Vec<Hlc>,
    /// Events a restored data directory or a card that lost fsynced writes
    /// took from a node (they come back if a peer holds them).
    pub lost_to_restore: u64,
    /// Every event any node wrote, by its leaf hash (over all its fields):
    /// one content per `(origin, seq)` (a second is a forked log), and a
    /// replicated event must be that one (anything else is forged).
    written: HashMap<(Origin, u64), Hash>,
    /// Numbers whose every holder lost the event: the next write under one
    /// replaces what `written` says (a copy still in flight then counts as
    /// forged, as it would be a fork).
    freed: BTreeSet<(Origin, u64)>,
    /// Events that arrived at a node already holding them (any connection).
    pub duplicates: u64,
    pub events_received: u64,
    /// Events refused because they did not prove against their writer's
    /// head (`Notice::Unproved`).
    pub events_unproved: u64,
}

impl Checker {
    pub fn new(nodes: usize) -> Self {
        Checker {
            acked: vec![BTreeSet::new(); nodes],
            last_hlc: vec![Hlc::default(); nodes],
            ..Default::default()
        }
    }

    /// One content per `(origin, seq)` written.
    fn same_content(&mut self, e: &Event) -> Result<(), String> {
        let digest = leaf_hash(e);
        match self.written.entry((e.origin, e.seq)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(digest);
                Ok(())
            }
            std::collections::hash_map::Entry::Occupied(o) if *o.get() == digest => Ok(()),
            std::collections::hash_map::Entry::Occupied(mut o) if self.freed.remove(&(e.origin, e.seq)) => {
                o.insert(digest);
                Ok(())
            }
            std::collections::hash_map::Entry::Occupied(_) => Err(format!(
                "{}:{} exists with two different contents: the log forked (a sequence number was given out twice)",
                e.origin, e.seq
            )),
        }
    }

    /// No node holds the event any more: its number may be given out again.
    pub fn forget_content(&mut self, o: &Origin, s: u64) {
        self.freed.insert((*o, s));
    }

    /// A node's own events were written: their stamps must move forward,
    /// and their numbers must be new.
    pub fn local_written(&mut self, node: usize, events: &[Event]) -> Result<(), String> {
        for e in events {
            self.same_content(e)?;
            if e.hlc <= self.last_hlc[node] {
                return Err(format!(
                    "HLC went backwards at node {node}: {}:{} stamped {:?} after {:?}",
                    e.origin, e.seq, e.hlc, self.last_hlc[node]
                ));
            }
            self.last_hlc[node] = e.hlc;
        }
        Ok(())
    }

    /// Events from a peer are about to be appended at `node`: each must be
    /// exactly what its writer wrote. No forged event accepted.
    pub fn accepting(&self, node: usize, events: &[Event]) -> Result<(), String> {
        for e in events {
            let ok = self.written.get(&(e.origin, e.seq)).is_some_and(|h| *h == leaf_hash(e));
            if !ok {
                return Err(format!(
                    "node {node} accepted a forged event {}:{}: its writer never wrote it so",
                    e.origin, e.seq
                ));
            }
        }
        Ok(())
    }

    /// Events are durable at `node` and were acknowledged as such.
    pub fn acked(&mut self, node: usize, keys: impl IntoIterator<Item = (Origin, u64)>) {
        self.acked[node].extend(keys);
    }

    /// After a crash: everything acknowledged must still be there. The
    /// node's clock restarts from its durable log (`last_hlc`), so it may
    /// stamp below events of a group the crash lost: those never reached
    /// the disk, were never acknowledged and never left the node.
    /// `card_lost`: acknowledged events the card lost although it had
    /// reported them synced; the node no longer owes them (the rest of the
    /// deployment may give them back).
    pub fn after_crash(
        &mut self,
        node: usize,
        holds: impl Fn(&Origin, u64) -> bool,
        last_hlc: Hlc,
        card_lost: &[(Origin, u64)],
    ) -> Result<(), String> {
        for k in card_lost {
            if self.acked[node].remove(k) {
                self.lost_to_restore += 1;
            }
        }
        if let Some((o, s)) = self.acked[node].iter().find(|(o, s)| !holds(o, *s)) {
            return Err(format!(
                "node {node} lost {o}:{s}, which it had acknowledged, in a crash"
            ));
        }
        self.last_hlc[node] = last_hlc;
        Ok(())
    }

    /// A data directory was replaced by an older copy: what it acknowledged
    /// since is no longer owed by that node; its clock restarts from the copy.
    pub fn after_restore(&mut self, node: usize, holds: impl Fn(&Origin, u64) -> bool, last_hlc: Hlc) {
        self.acked[node].retain(|(o, s)| holds(o, *s));
        self.last_hlc[node] = last_hlc;
    }

    pub fn acked_count(&self, node: usize) -> usize {
        self.acked.get(node).map_or(0, |a| a.len())
    }

    /// Not yet sized for the deployment.
    pub fn is_empty(&self) -> bool {
        self.acked.is_empty()
    }

    /// Bytes a node sends on its control stream: it never asks for events
    /// it holds.
    pub fn control_out(
        &mut self,
        tap: &mut Tap,
        bytes: &[u8],
        have: impl Fn(&Origin) -> RangeSet,
    ) -> Result<(), String> {
        for f in tap
            .control_out
            .push(bytes)
            .map_err(|e| format!("node sent a bad frame: {e}"))?
        {
            if let Frame::Want(w) = f {
                let held = have(&w.origin).intersection(&RangeSet::from_range(w.first, w.last));
                if !held.is_empty() {
                    return Err(format!(
                        "asked for {}:{}..={} while holding {:?} of it",
                        w.origin, w.first, w.last, held
                    ));
                }
            }
        }
        Ok(())
    }

    /// Bytes arrived on a data stream: no event twice on one connection,
    /// and only what the sender's policy lets the receiver have.
    pub fn data_in(
        &mut self,
        tap: &mut Tap,
        stream: StreamId,
        bytes: &[u8],
        sender: &Identity,
        sender_hubs: &BTreeSet<NodeId>,
        receiver: &Identity,
    ) -> Result<(), String> {
        let t = tap.data.entry(stream).or_default();
        let frames = t
            .reader
            .push(bytes)
            .map_err(|e| format!("bad frame on the wire: {e}"))?;
        let mut events = Vec::new();
        for f in frames {
            match f {
                Frame::Open { .. } => t.opened = true,
                Frame::Events(chunk) => {
                    for item in t.dec.decompress(&chunk).map_err(|e| format!("bad chunk: {e}"))? {
                        match item {
                            Item::Event(e) => events.push(e),
                            Item::Piece(p) => {
                                if let Some(e) = t.assembly.add(p)? {
                                    events.push(e);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        for e in events {
            if !tap.received.insert((e.origin, e.seq)) {
                return Err(format!("{}:{} arrived twice on one connection", e.origin, e.seq));
            }
            if !sender
                .policy
                .allows(&receiver.id, receiver.role, &e.origin, sender_hubs)
            {
                return Err(format!(
                    "{:?} policy of {} let {} have {}:{}",
                    sender.policy, sender.id, receiver.id, e.origin, e.seq
                ));
            }
        }
        Ok(())
    }
}

/// What every node should hold once links heal: what it holds and,
/// repeatedly, whatever a neighbour holds and its policy lets the node
/// have. (What arrived earlier by paths now gone stays; each delivery was
/// checked against policy when it happened.) A node's own events held
/// elsewhere are not expected back unless a path brings them: a card that
/// lost them leaves them only where they went, perhaps a clinic that gives
/// nobody else's events away and that the node no longer meets (seed 1219).
///
/// Revocations as each node holds them now: two nodes one of which holds a
/// revocation of the other never connect, and a node does not take what
/// the revoked node stamped after the cutoff (`hlc` gives an event's stamp).
/// Where a revocation has yet to arrive, the revocation event itself is
/// lacking, so the check goes on until it is held.
///
/// `intact(from, origin)`: whether node `from` passes events of `origin`
/// on unaltered (a forging relay's are refused wherever they go).
pub fn expected(
    identities: &[Identity],
    edges: &[(usize, usize)],
    holdings: &[BTreeSet<(Origin, u64)>],
    revoked: &[BTreeMap<NodeId, Hlc>],
    hlc: impl Fn(&Origin, u64) -> Option<Hlc>,
    intact: impl Fn(usize, &Origin) -> bool,
) -> Vec<BTreeSet<(Origin, u64)>> {
    let refused = |to: usize, (o, s): &(Origin, u64)| {
        revoked[to]
            .get(&o.node)
            .is_some_and(|cutoff| hlc(o, *s).is_some_and(|h| h > *cutoff))
    };
    let talk =
        |a: usize, b: usize| !revoked[a].contains_key(&identities[b].id) && !revoked[b].contains_key(&identities[a].id);
    let hubs: BTreeSet<NodeId> = identities
        .iter()
        .filter(|i| i.role == Role::Hub)
        .map(|i| i.id)
        .collect();
    let mut reach: Vec<BTreeSet<(Origin, u64)>> = holdings.to_vec();
    loop {
        let mut changed = false;
        for &(a, b) in edges.iter().filter(|(a, b)| talk(*a, *b)) {
            for (from, to) in [(a, b), (b, a)] {
                let give: Vec<(Origin, u64)> = reach[from]
                    .iter()
                    .filter(|(o, _)| {
                        identities[from]
                            .policy
                            .allows(&identities[to].id, identities[to].role, o, &hubs)
                    })
                    .filter(|k| !reach[to].contains(k) && !refused(to, k) && intact(from, &k.0))
                    .copied()
                    .collect();
                changed |= !give.is_empty();
                reach[to].extend(give);
            }
        }
        if !changed {
            return reach;
        }
    }
}
