//! Ranges being fetched right now, and by which connection.
//!
//! Before a `Want` goes out its range is claimed here, less what the store
//! holds and what another connection has claimed; events pushed to this
//! node are claimed as they arrive. A claim is released once its events are
//! durably appended, when the sender says it has sent all it holds of the
//! want (`End`), or when the connection ends, whichever comes first. So a
//! range is asked for at most once at a time, never again once held, and a
//! dead connection leaves nothing claimed.

use crate::io::ConnId;
use ferry_proto::{Origin, RangeSet};
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Claims {
    by_origin: BTreeMap<Origin, BTreeMap<ConnId, RangeSet>>,
}

impl Claims {
    /// Everything anyone has claimed of `origin`.
    pub fn claimed(&self, origin: &Origin) -> RangeSet {
        self.by_origin
            .get(origin)
            .map(|owners| owners.values().fold(RangeSet::new(), |all, r| all.union(r)))
            .unwrap_or_default()
    }

    /// What `conn` has claimed of `origin`.
    pub fn owned(&self, conn: ConnId, origin: &Origin) -> RangeSet {
        self.by_origin
            .get(origin)
            .and_then(|owners| owners.get(&conn))
            .cloned()
            .unwrap_or_default()
    }

    /// Claims for `conn` what of `wanted` nobody else holds a claim on;
    /// returns that part. The caller has already taken out what is held.
    pub fn claim(&mut self, conn: ConnId, origin: Origin, wanted: &RangeSet) -> RangeSet {
        let free = wanted.difference(&self.claimed(&origin));
        if !free.is_empty() {
            let mine = self.by_origin.entry(origin).or_default().entry(conn).or_default();
            *mine = mine.union(&free);
        }
        self.check(&origin);
        free
    }

    /// Releases `done` of what `conn` claimed of `origin`.
    pub fn release(&mut self, conn: ConnId, origin: &Origin, done: &RangeSet) {
        let Some(owners) = self.by_origin.get_mut(origin) else {
            return;
        };
        if let Some(mine) = owners.get_mut(&conn) {
            *mine = mine.difference(done);
            if mine.is_empty() {
                owners.remove(&conn);
            }
        }
        if owners.is_empty() {
            self.by_origin.remove(origin);
        }
    }

    /// Releases everything `conn` claimed except `keep` (appends still on
    /// their way to disk).
    pub fn release_all_but(&mut self, conn: ConnId, keep: &BTreeMap<Origin, RangeSet>) {
        let origins: Vec<Origin> = self.by_origin.keys().copied().collect();
        for origin in origins {
            let mine = self.owned(conn, &origin);
            let kept = keep.get(&origin).cloned().unwrap_or_default();
            self.release(conn, &origin, &mine.difference(&kept));
        }
    }

    /// Connections holding any claim.
    pub fn owners(&self) -> std::collections::BTreeSet<ConnId> {
        self.by_origin.values().flat_map(|o| o.keys().copied()).collect()
    }

    /// Sequence numbers claimed, over all origins and owners (an
    /// open-ended claim counts as all that remain: saturating).
    pub fn total(&self) -> u64 {
        self.by_origin
            .values()
            .flat_map(|owners| owners.values())
            .map(RangeSet::count)
            .fold(0, u64::saturating_add)
    }

    /// Owners' claims never overlap: a range has one fetcher.
    fn check(&self, origin: &Origin) {
        let Some(owners) = self.by_origin.get(origin) else {
            return;
        };
        let mut seen = RangeSet::new();
        for r in owners.values() {
            assert!(
                seen.intersection(r).is_empty(),
                "claims of {origin} overlap: {seen:?} and {r:?}"
            );
            seen = seen.union(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::NodeId;

    fn o() -> Origin {
        Origin {
            node: NodeId([7; 16]),
            epoch: 1,
        }
    }

    #[test]
    fn a_claimed_range_is_not_claimed_again_until_released() {
        let mut c = Claims::default();
        let (a, b) = (ConnId(1), ConnId(2));
        assert_eq!(
            c.claim(a, o(), &RangeSet::from_range(1, 100)),
            RangeSet::from_range(1, 100)
        );
        assert_eq!(
            c.claim(b, o(), &RangeSet::from_range(50, 150)),
            RangeSet::from_range(101, 150)
        );
        c.release(a, &o(), &RangeSet::from_range(1, 100));
        assert_eq!(
            c.claim(b, o(), &RangeSet::from_range(1, 150)),
            RangeSet::from_range(1, 100)
        );
        assert_eq!(c.total(), 150);
    }

    #[test]
    fn a_dead_connection_leaves_only_its_pending_appends() {
        let mut c = Claims::default();
        c.claim(ConnId(1), o(), &RangeSet::from_range(1, 100));
        let keep = BTreeMap::from([(o(), RangeSet::from_range(1, 10))]);
        c.release_all_but(ConnId(1), &keep);
        assert_eq!(c.claimed(&o()), RangeSet::from_range(1, 10));
        c.release_all_but(ConnId(1), &BTreeMap::new());
        assert_eq!(c.total(), 0);
    }
}
