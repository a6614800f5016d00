//! Version summaries (what a node holds, per origin) and gap computation.

use crate::{Origin, RangeSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a node holds: per origin, the set of sequence numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Summary(pub BTreeMap<Origin, RangeSet>);

/// One range this node lacks and the peer has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub origin: Origin,
    pub first: u64,
    pub last: u64,
}

impl Gap {
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Summary {
    pub fn get(&self, origin: &Origin) -> Option<&RangeSet> {
        self.0.get(origin)
    }

    pub fn total_events(&self) -> u64 {
        self.0.values().map(RangeSet::count).sum()
    }

    /// Keeps only the origins `allow` accepts: what a sender advertises to a
    /// peer is already cut down to what its policy lets that peer receive.
    pub fn filtered(&self, allow: impl Fn(&Origin) -> bool) -> Summary {
        Summary(
            self.0
                .iter()
                .filter(|(o, r)| allow(o) && !r.is_empty())
                .map(|(o, r)| (*o, r.clone()))
                .collect(),
        )
    }

    /// The ranges `theirs` holds that `self` lacks, for origins `want` accepts,
    /// in origin order and ascending sequence within an origin.
    pub fn gaps(&self, theirs: &Summary, want: impl Fn(&Origin) -> bool) -> Vec<Gap> {
        let empty = RangeSet::new();
        let mut out = Vec::new();
        for (origin, their_set) in &theirs.0 {
            if !want(origin) {
                continue;
            }
            let mine = self.0.get(origin).unwrap_or(&empty);
            for &(first, last) in their_set.difference(mine).ranges() {
                out.push(Gap {
                    origin: *origin,
                    first,
                    last,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;
    use proptest::prelude::*;

    fn origin(n: u8) -> Origin {
        Origin {
            node: NodeId([n; 16]),
            epoch: 0,
        }
    }

    fn arb_summary() -> impl Strategy<Value = Summary> {
        proptest::collection::btree_map(
            (0u8..4).prop_map(origin),
            proptest::collection::vec((1u64..100, 0u64..10), 0..6)
                .prop_map(|v| RangeSet::from_ranges(v.into_iter().map(|(a, l)| (a, a + l)))),
            0..4,
        )
        .prop_map(Summary)
    }

    proptest! {
        /// Pulling every gap brings me exactly to the union of what we both hold
        /// (for the origins I want), and no gap asks for anything I already hold.
        #[test]
        fn pulling_all_gaps_converges(mine in arb_summary(), theirs in arb_summary()) {
            let allow = |o: &Origin| o.node.0[0] != 3;
            let gaps = mine.gaps(&theirs, allow);
            let mut after = mine.clone();
            for g in &gaps {
                let held = mine.get(&g.origin).cloned().unwrap_or_default();
                prop_assert!(held.intersection(&RangeSet::from_range(g.first, g.last)).is_empty());
                prop_assert!(allow(&g.origin));
                after.0.entry(g.origin).or_default().insert_range(g.first, g.last);
            }
            for (o, theirs_set) in &theirs.0 {
                let have = after.get(o).cloned().unwrap_or_default();
                if allow(o) {
                    prop_assert!(theirs_set.difference(&have).is_empty());
                }
            }
            prop_assert!(after.gaps(&theirs, allow).is_empty());
        }
    }

    #[test]
    fn policy_filter_removes_origins() {
        let mut s = Summary::default();
        s.0.insert(origin(1), RangeSet::from_range(1, 5));
        s.0.insert(origin(2), RangeSet::from_range(1, 5));
        let f = s.filtered(|o| *o == origin(2));
        assert_eq!(f.0.len(), 1);
        assert_eq!(f.total_events(), 5);
    }
}
