//! One record: every version of it this node holds, and what they mean
//! together (the current value, the concurrent siblings, the history).

use crate::write::{Context, VersionId, Write};
use ferry_proto::{Event, Hlc};
use serde::{Deserialize, Serialize};

/// One version of a record, without its value (the value stays in the
/// event, in the log, and is read from there when shown).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub id: VersionId,
    pub hlc: Hlc,
    pub deleted: bool,
    /// What this write supersedes.
    pub context: Context,
}

impl Version {
    pub fn of(event: &Event, write: &Write) -> Version {
        let id = VersionId {
            origin: event.origin,
            seq: event.seq,
        };
        Version {
            id,
            hlc: event.hlc,
            deleted: write.value.is_none(),
            context: write.context.clone().sanitized_for(&id),
        }
    }

    /// The order among concurrent versions: the later HLC wins, then the
    /// greater origin, then (only for a misbehaving writer) the greater seq.
    fn rank(&self) -> (Hlc, VersionId) {
        (self.hlc, self.id)
    }
}

/// Every version of one record held here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Sorted by id, no duplicates: equal sets give equal records.
    versions: Vec<Version>,
}

impl Record {
    /// Adds a version; false if it was already here (the same event again).
    pub fn apply(&mut self, v: Version) -> bool {
        match self.versions.binary_search_by(|x| x.id.cmp(&v.id)) {
            Ok(_) => false,
            Err(at) => {
                self.versions.insert(at, v);
                true
            }
        }
    }

    pub fn get(&self, id: &VersionId) -> Option<&Version> {
        self.versions
            .binary_search_by(|x| x.id.cmp(id))
            .ok()
            .map(|i| &self.versions[i])
    }

    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Everything any version here has seen, plus the versions themselves:
    /// the context of a write that supersedes all of them.
    pub fn context(&self) -> Context {
        let mut c = self.seen();
        for v in &self.versions {
            c.see(&v.id);
        }
        c
    }

    /// The union of the versions' contexts: what has been superseded.
    fn seen(&self) -> Context {
        let mut c = Context::new();
        for v in &self.versions {
            c.merge(&v.context);
        }
        c
    }

    pub fn is_superseded(&self, id: &VersionId) -> bool {
        self.seen().covers(id)
    }

    /// The versions no other version supersedes, winner first. They are
    /// mutually concurrent; more than one is a conflict.
    ///
    /// A version's context never covers the version itself (see
    /// `Context::sanitized_for`), so the union of all contexts covers a
    /// version exactly when some other version supersedes it.
    pub fn live(&self) -> Vec<&Version> {
        let seen = self.seen();
        let mut live: Vec<&Version> = self.versions.iter().filter(|v| !seen.covers(&v.id)).collect();
        if live.is_empty() {
            // Only writers that lie about what they saw can make versions
            // hide each other in a circle; the highest-ranked one stands
            // so that the record still reads the same everywhere.
            live.extend(self.versions.iter().max_by_key(|v| v.rank()));
        }
        live.sort_by_key(|v| std::cmp::Reverse(v.rank()));
        live
    }

    /// The current version: the highest-ranked of the live ones.
    pub fn winner(&self) -> Option<&Version> {
        self.live().into_iter().next()
    }

    /// When the record became conflicted: the HLC of the second of its
    /// concurrent versions to be written. `None` without a conflict.
    pub fn conflict_since(&self) -> Option<Hlc> {
        let mut hlcs: Vec<Hlc> = self.live().iter().map(|v| v.hlc).collect();
        if hlcs.len() < 2 {
            return None;
        }
        hlcs.sort();
        Some(hlcs[1])
    }

    /// Every version, oldest first (by HLC, then id).
    pub fn history(&self) -> Vec<&Version> {
        let mut all: Vec<&Version> = self.versions.iter().collect();
        all.sort_by_key(|v| v.rank());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::{NodeId, Origin};

    fn vid(n: u8, seq: u64) -> VersionId {
        VersionId {
            origin: Origin {
                node: NodeId([n; 16]),
                epoch: 1,
            },
            seq,
        }
    }

    fn version(id: VersionId, hlc: u64, seen: &[VersionId]) -> Version {
        let mut context = Context::new();
        for s in seen {
            context.see(s);
        }
        Version {
            id,
            hlc: Hlc(hlc),
            deleted: false,
            context: context.sanitized_for(&id),
        }
    }

    #[test]
    fn causal_order_beats_the_clock() {
        // b saw a, so b wins though a's clock reads later.
        let mut r = Record::default();
        r.apply(version(vid(1, 1), 500, &[]));
        r.apply(version(vid(2, 1), 100, &[vid(1, 1)]));
        assert_eq!(r.winner().map(|v| v.id), Some(vid(2, 1)));
        assert_eq!(r.live().len(), 1);
        assert_eq!(r.conflict_since(), None);
    }

    #[test]
    fn concurrent_versions_pick_the_later_clock_and_keep_the_loser() {
        let mut r = Record::default();
        r.apply(version(vid(1, 1), 100, &[]));
        r.apply(version(vid(1, 2), 200, &[vid(1, 1)]));
        r.apply(version(vid(2, 5), 150, &[vid(1, 1)]));
        let live: Vec<_> = r.live().iter().map(|v| v.id).collect();
        assert_eq!(live, [vid(1, 2), vid(2, 5)]);
        assert_eq!(r.conflict_since(), Some(Hlc(200)));
        // A write that saw both resolves it.
        r.apply(version(vid(3, 1), 120, &[vid(1, 2), vid(2, 5)]));
        assert_eq!(r.live().len(), 1);
        assert_eq!(r.winner().map(|v| v.id), Some(vid(3, 1)));
        assert_eq!(r.history().len(), 4);
    }

    #[test]
    fn equal_clocks_fall_to_the_origin() {
        let mut r = Record::default();
        r.apply(version(vid(2, 1), 100, &[]));
        r.apply(version(vid(1, 1), 100, &[]));
        assert_eq!(r.winner().map(|v| v.id), Some(vid(2, 1)));
    }

    #[test]
    fn a_version_superseded_by_one_not_yet_received_stays_hidden() {
        // c saw b which saw a; only a and c are here.
        let mut r = Record::default();
        r.apply(version(vid(1, 1), 100, &[]));
        r.apply(version(vid(3, 1), 300, &[vid(1, 1), vid(2, 1)]));
        assert_eq!(r.live().len(), 1);
    }

    #[test]
    fn versions_hiding_each_other_still_give_one_winner() {
        let mut r = Record::default();
        r.apply(version(vid(1, 1), 100, &[vid(2, 1)]));
        r.apply(version(vid(2, 1), 200, &[vid(1, 1)]));
        assert_eq!(r.winner().map(|v| v.id), Some(vid(2, 1)));
    }
}
