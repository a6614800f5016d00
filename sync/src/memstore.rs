//! An in-memory `Store` with a crash model, for the simulator and tests.
//!
//! Appends are written first and made durable by a later `sync`, in order,
//! as the WAL's group commit does. A crash keeps every synced group and a
//! prefix of the unsynced ones (their bytes may have reached the disk before
//! the power went), and loses the rest: exactly what a torn tail leaves.

use crate::auth::Logs;
use crate::store::{AppendReport, Store, StoreError};
use ferry_proto::merkle::{block_of, BLOCK_EVENTS};
use ferry_proto::{Classes, Clock, Event, Hlc, Origin, Priority, RangeSet, Summary};
use std::collections::{BTreeMap, VecDeque};

/// A group of appends written together, durable once synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupId(pub u64);

#[derive(Clone, Debug, Default)]
struct OriginIndex {
    have: RangeSet,
    urgent: RangeSet,
    bulk: RangeSet,
}

#[derive(Clone)]
pub struct MemStore {
    local: Origin,
    events: BTreeMap<(Origin, u64), Event>,
    index: BTreeMap<Origin, OriginIndex>,
    unsynced: VecDeque<(GroupId, Vec<Event>)>,
    /// The latest synced groups, newest last: a card that lies about fsync
    /// may lose them in a power cut.
    recent_synced: VecDeque<Vec<(Origin, u64)>>,
    next_group: u64,
    clock: Clock,
    /// After a start: the log the next local write starts (as
    /// `Wal::set_unconfirmed_tail`).
    fallback: Option<Origin>,
    /// Verified trees and heads, as durable as the events (`Store::logs`).
    logs: Option<Logs>,
}

/// How many synced groups a lying card can lose at most.
const LIE_DEPTH: usize = 4;

impl MemStore {
    pub fn new(local: Origin) -> Self {
        MemStore {
            local,
            events: BTreeMap::new(),
            index: BTreeMap::new(),
            unsynced: VecDeque::new(),
            recent_synced: VecDeque::new(),
            next_group: 1,
            clock: Clock::default(),
            fallback: None,
            logs: None,
        }
    }

    /// Authenticates logs from now on (`Store::logs`).
    pub fn set_logs(&mut self, logs: Logs) {
        self.logs = Some(logs);
    }

    /// The own log's tail is not vouched for (the node was not shut down
    /// cleanly): the next local write starts the log `next`.
    pub fn set_unconfirmed_tail(&mut self, next: Origin) {
        self.fallback = Some(next);
    }

    fn pending(&self, origin: &Origin, seq: u64) -> bool {
        self.unsynced
            .iter()
            .any(|(_, g)| g.iter().any(|e| e.origin == *origin && e.seq == seq))
    }

    /// Writes this node's own events, numbering and stamping them; durable
    /// once the returned group is synced. `wall_ms`: the node's wall clock.
    pub fn write_local(&mut self, items: Vec<(String, Priority, Vec<u8>)>, wall_ms: u64) -> (GroupId, Vec<Event>) {
        if let Some(next) = self.fallback.take() {
            self.local = next;
        }
        let local = self.local;
        let written = self
            .unsynced
            .iter()
            .flat_map(|(_, g)| g.iter())
            .filter(|e| e.origin == local)
            .map(|e| e.seq)
            .max();
        let mut next = self.have(&local).last().max(written).unwrap_or(0) + 1;
        let events: Vec<Event> = items
            .into_iter()
            .map(|(topic, priority, payload)| {
                let e = Event {
                    origin: local,
                    seq: next,
                    hlc: self.clock.now(wall_ms),
                    topic,
                    priority,
                    payload,
                };
                next += 1;
                e
            })
            .collect();
        (self.push_group(events.clone()), events)
    }

    /// Writes events received from peers, skipping those held or written.
    pub fn write_replicated(&mut self, events: Vec<Event>, wall_ms: u64) -> (GroupId, AppendReport) {
        let mut report = AppendReport::default();
        let mut fresh: Vec<Event> = Vec::new();
        for e in events {
            let dup = self.events.contains_key(&(e.origin, e.seq))
                || self.pending(&e.origin, e.seq)
                || fresh.iter().any(|f| f.origin == e.origin && f.seq == e.seq);
            if dup {
                report.duplicates += 1;
            } else {
                self.clock.observe(e.hlc, wall_ms);
                report.stored += 1;
                fresh.push(e);
            }
        }
        (self.push_group(fresh), report)
    }

    fn push_group(&mut self, events: Vec<Event>) -> GroupId {
        let id = GroupId(self.next_group);
        self.next_group += 1;
        self.unsynced.push_back((id, events));
        id
    }

    /// Makes every group up to and including `id` durable and visible.
    pub fn sync(&mut self, id: GroupId) {
        while self.unsynced.front().is_some_and(|(g, _)| *g <= id) {
            let Some((_, group)) = self.unsynced.pop_front() else {
                break;
            };
            self.recent_synced
                .push_back(group.iter().map(|e| (e.origin, e.seq)).collect());
            if self.recent_synced.len() > LIE_DEPTH {
                self.recent_synced.pop_front();
            }
            if let Some(logs) = &mut self.logs {
                let own: Vec<Event> = group
                    .iter()
                    .filter(|e| e.origin.node == self.local.node)
                    .cloned()
                    .collect();
                logs.wrote(&own);
            }
            for e in group {
                let ix = self.index.entry(e.origin).or_default();
                ix.have.insert(e.seq);
                match e.priority {
                    Priority::Urgent => ix.urgent.insert(e.seq),
                    Priority::Bulk => ix.bulk.insert(e.seq),
                    Priority::Normal => {}
                }
                self.events.insert((e.origin, e.seq), e);
            }
        }
    }

    /// The power goes: `survive` unsynced groups reached the disk anyway,
    /// the rest are lost, and a card that lies about fsync loses its last
    /// `card_loses` synced groups too (at most `LIE_DEPTH`). Returns what the
    /// card lost of what had been synced. The clock restarts from what the
    /// log holds, as the WAL's does. With the `drop_acked_append_on_crash`
    /// fault on, one more synced group is lost and not owned up to.
    pub fn crash(&mut self, survive: usize, card_loses: usize, bugs: &crate::Bugs) -> Vec<(Origin, u64)> {
        self.unsynced.truncate(survive);
        if let Some(&(last, _)) = self.unsynced.back() {
            self.sync(last);
        }
        let mut owned_up = Vec::new();
        for _ in 0..card_loses {
            let Some(group) = self.recent_synced.pop_back() else {
                break;
            };
            owned_up.extend(group);
        }
        let mut lost = owned_up.clone();
        if bugs.on(|b| b.drop_acked_append_on_crash) {
            lost.extend(self.recent_synced.pop_back().unwrap_or_default());
        }
        for &(origin, seq) in &lost {
            self.events.remove(&(origin, seq));
            if let Some(ix) = self.index.get_mut(&origin) {
                let one = RangeSet::from_range(seq, seq);
                ix.have = ix.have.difference(&one);
                ix.urgent = ix.urgent.difference(&one);
                ix.bulk = ix.bulk.difference(&one);
            }
        }
        self.recent_synced.clear();
        self.reopen_trees(&lost);
        let last = self.events.values().map(|e| e.hlc).max().unwrap_or(Hlc::default());
        self.clock = Clock::starting_after(last);
        owned_up
    }

    /// A tree compacts only blocks whose events are all held: one whose
    /// events the card then lost gets the leaves of those still held back,
    /// as a node rebuilding its trees at start has them (node/src/store.rs).
    fn reopen_trees(&mut self, lost: &[(Origin, u64)]) {
        let Some(logs) = &mut self.logs else { return };
        let blocks: std::collections::BTreeSet<(Origin, u64)> =
            lost.iter().map(|(o, seq)| (*o, block_of(*seq))).collect();
        for (origin, block) in blocks {
            let first = block * BLOCK_EVENTS + 1;
            let held: Vec<Event> = self
                .events
                .range((origin, first)..(origin, first + BLOCK_EVENTS))
                .map(|(_, e)| e.clone())
                .collect();
            logs.reopen(origin, block, &held);
        }
    }

    /// Whether the event is held, synced or not yet (for checkers).
    pub fn holds_any(&self, origin: &Origin, seq: u64) -> bool {
        self.events.contains_key(&(*origin, seq)) || self.pending(origin, seq)
    }

    /// The last timestamp the clock issued or merged.
    pub fn last_hlc(&self) -> Hlc {
        self.clock.last()
    }

    /// Every durable event of `origin`, for checkers.
    pub fn events_of(&self, origin: &Origin) -> impl Iterator<Item = &Event> {
        self.events.range((*origin, 0)..=(*origin, u64::MAX)).map(|(_, e)| e)
    }

    pub fn get(&self, origin: &Origin, seq: u64) -> Option<&Event> {
        self.events.get(&(*origin, seq))
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn unsynced_groups(&self) -> usize {
        self.unsynced.len()
    }
}

impl Store for MemStore {
    fn local_origin(&self) -> Origin {
        self.local
    }

    fn set_local_origin(&mut self, origin: Origin) {
        self.local = origin;
        self.fallback = None;
    }

    fn logs(&self) -> Option<&Logs> {
        self.logs.as_ref()
    }

    fn logs_mut(&mut self) -> Option<&mut Logs> {
        self.logs.as_mut()
    }

    fn have(&self, origin: &Origin) -> RangeSet {
        self.index.get(origin).map(|ix| ix.have.clone()).unwrap_or_default()
    }

    fn holds(&self, origin: &Origin, seq: u64) -> bool {
        self.index.get(origin).is_some_and(|ix| ix.have.contains(seq))
    }

    fn summary(&self) -> Summary {
        Summary(
            self.index
                .iter()
                .filter(|(_, ix)| !ix.have.is_empty())
                .map(|(o, ix)| (*o, ix.have.clone()))
                .collect(),
        )
    }

    fn classes(&self) -> Classes {
        let pick = |f: fn(&OriginIndex) -> &RangeSet| {
            self.index
                .iter()
                .filter(|(_, ix)| !f(ix).is_empty())
                .map(|(o, ix)| (*o, f(ix).clone()))
                .collect()
        };
        Classes {
            urgent: pick(|ix| &ix.urgent),
            bulk: pick(|ix| &ix.bulk),
        }
    }

    fn read(
        &self,
        origin: &Origin,
        first: u64,
        last: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, e) in self.events.range((*origin, first)..=(*origin, last)) {
            if out.len() >= max_events || (!out.is_empty() && bytes + e.payload.len() > max_bytes) {
                break;
            }
            bytes += e.payload.len();
            out.push(e.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::NodeId;

    fn origin() -> Origin {
        Origin {
            node: NodeId([1; 16]),
            epoch: 1,
        }
    }

    fn item(n: u8) -> (String, Priority, Vec<u8>) {
        ("t".into(), Priority::Normal, vec![n])
    }

    #[test]
    fn only_synced_groups_are_visible_and_survive() {
        let mut s = MemStore::new(origin());
        let (g1, _) = s.write_local(vec![item(1), item(2)], 1000);
        let (_g2, e2) = s.write_local(vec![item(3)], 1001);
        assert_eq!(e2[0].seq, 3);
        assert!(s.have(&origin()).is_empty());
        s.sync(g1);
        assert_eq!(s.have(&origin()), RangeSet::from_range(1, 2));
        s.crash(0, 0, &crate::Bugs::default());
        assert_eq!(s.have(&origin()), RangeSet::from_range(1, 2));
        let (_, again) = s.write_local(vec![item(4)], 1002);
        assert_eq!(again[0].seq, 3, "an unsynced seq was never acknowledged and is reused");
        assert!(
            again[0].hlc > Hlc::new(1000, 1),
            "the clock restarts after what the log holds"
        );
    }

    #[test]
    fn a_torn_tail_keeps_a_prefix_of_unsynced_groups() {
        let mut s = MemStore::new(origin());
        s.write_local(vec![item(1)], 1);
        s.write_local(vec![item(2)], 2);
        s.write_local(vec![item(3)], 3);
        s.crash(2, 0, &crate::Bugs::default());
        assert_eq!(s.have(&origin()), RangeSet::from_range(1, 2));
        assert_eq!(s.unsynced_groups(), 0);
    }

    #[test]
    fn reads_stop_at_the_byte_cap_but_return_one() {
        let mut s = MemStore::new(origin());
        let (g, _) = s.write_local(
            vec![
                ("t".into(), Priority::Normal, vec![0; 100]),
                ("t".into(), Priority::Normal, vec![0; 100]),
            ],
            1,
        );
        s.sync(g);
        assert_eq!(s.read(&origin(), 1, 2, 10, 150).unwrap().len(), 1);
        assert_eq!(s.read(&origin(), 1, 2, 10, 10).unwrap().len(), 1);
        assert_eq!(s.read(&origin(), 1, 2, 10, 200).unwrap().len(), 2);
    }
}
