//! Version summaries (what a node holds, per origin) and gap computation.

use crate::{Origin, Priority, RangeSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a node holds: per origin, the set of sequence numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Summary(pub BTreeMap<Origin, RangeSet>);

/// Which held events are not of normal priority. Most events are normal,
/// so only the exceptions travel: for a log of normal events this is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classes {
    pub urgent: BTreeMap<Origin, RangeSet>,
    pub bulk: BTreeMap<Origin, RangeSet>,
}

impl Classes {
    pub fn filtered(&self, allow: impl Fn(&Origin) -> bool) -> Classes {
        let keep = |m: &BTreeMap<Origin, RangeSet>| {
            m.iter()
                .filter(|(o, _)| allow(o))
                .map(|(o, r)| (*o, r.clone()))
                .collect()
        };
        Classes {
            urgent: keep(&self.urgent),
            bulk: keep(&self.bulk),
        }
    }

    /// Splits `lacking` (of `origin`) by priority class.
    pub fn split(&self, origin: &Origin, lacking: &RangeSet) -> [(Priority, RangeSet); 3] {
        let empty = RangeSet::new();
        let urgent = lacking.intersection(self.urgent.get(origin).unwrap_or(&empty));
        // A seq a (confused or dishonest) peer lists in both classes is
        // urgent: every lacking seq lands in exactly one gap.
        let bulk = lacking
            .intersection(self.bulk.get(origin).unwrap_or(&empty))
            .difference(&urgent);
        let normal = lacking.difference(&urgent).difference(&bulk);
        [
            (Priority::Urgent, urgent),
            (Priority::Normal, normal),
            (Priority::Bulk, bulk),
        ]
    }
}

/// One range this node lacks and the peer has, all of one priority class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    pub origin: Origin,
    pub first: u64,
    pub last: u64,
    pub priority: Priority,
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

    /// Everything either summary holds.
    pub fn union(&self, other: &Summary) -> Summary {
        let mut out = self.clone();
        for (origin, set) in &other.0 {
            let merged = out.0.get(origin).map_or_else(|| set.clone(), |mine| mine.union(set));
            out.0.insert(*origin, merged);
        }
        out
    }

    /// Marks `gaps` as held (or already asked for), so a later gap
    /// computation does not ask for them again.
    pub fn with_gaps(&self, gaps: &[Gap]) -> Summary {
        let mut out = self.clone();
        for g in gaps {
            out.0.entry(g.origin).or_default().insert_range(g.first, g.last);
        }
        out
    }

    /// What to ask a peer for before hearing its current summary, as 0-RTT
    /// data on a reconnect: the gaps against what it held when last seen,
    /// and, for up to `tails` of those origins, everything after the
    /// highest seq either side knew of (open-ended: the peer sends what it
    /// has). New events of known origins then arrive one round trip after
    /// the reconnect; origins the peer learnt of since wait for its summary.
    pub fn early_wants(&self, remembered: &Summary, classes: &Classes, tails: usize) -> Vec<Gap> {
        let mut out = self.gaps(remembered, classes, |_| true);
        for (origin, theirs) in remembered.0.iter().take(tails) {
            let ours = self.0.get(origin).and_then(RangeSet::last).unwrap_or(0);
            let after = ours.max(theirs.last().unwrap_or(0));
            if after < u64::MAX {
                out.push(Gap {
                    origin: *origin,
                    first: after + 1,
                    last: u64::MAX,
                    priority: Priority::Normal,
                });
            }
        }
        out
    }

    /// How many events `theirs` holds that `self` lacks.
    pub fn lacking(&self, theirs: &Summary) -> u64 {
        let empty = RangeSet::new();
        theirs
            .0
            .iter()
            .map(|(o, set)| set.difference(self.0.get(o).unwrap_or(&empty)).count())
            .sum()
    }

    /// The ranges `theirs` holds that `self` lacks, for origins `want` accepts,
    /// split by the priority classes the peer reported: urgent gaps first,
    /// then normal, then bulk; by origin and ascending sequence within each.
    pub fn gaps(&self, theirs: &Summary, classes: &Classes, want: impl Fn(&Origin) -> bool) -> Vec<Gap> {
        let empty = RangeSet::new();
        let mut out = Vec::new();
        for (origin, their_set) in &theirs.0 {
            if !want(origin) {
                continue;
            }
            let lacking = their_set.difference(self.0.get(origin).unwrap_or(&empty));
            for (priority, set) in classes.split(origin, &lacking) {
                for &(first, last) in set.ranges() {
                    out.push(Gap {
                        origin: *origin,
                        first,
                        last,
                        priority,
                    });
                }
            }
        }
        out.sort_by_key(|g| (g.priority, g.origin, g.first));
        out
    }
}

/// A summary and its classes as a change to an earlier pair
/// (`Frame::SummaryChange`): every origin whose set or classes differ,
/// with its whole new set (empty: nothing of it now), urgent and bulk sets.
/// `change_to(before, after)` applied to `before` gives `after`.
pub fn change_to(before: &(Summary, Classes), after: &(Summary, Classes)) -> (Summary, Classes) {
    let ((bs, bc), (s, c)) = (before, after);
    let origins: std::collections::BTreeSet<&Origin> = bs.0.keys().chain(s.0.keys()).collect();
    let mut changed = Summary::default();
    let mut classes = Classes::default();
    for origin in origins {
        let differs = bs.0.get(origin) != s.0.get(origin)
            || bc.urgent.get(origin) != c.urgent.get(origin)
            || bc.bulk.get(origin) != c.bulk.get(origin);
        if !differs {
            continue;
        }
        changed.0.insert(*origin, s.0.get(origin).cloned().unwrap_or_default());
        if let Some(u) = c.urgent.get(origin) {
            classes.urgent.insert(*origin, u.clone());
        }
        if let Some(b) = c.bulk.get(origin) {
            classes.bulk.insert(*origin, b.clone());
        }
    }
    (changed, classes)
}

/// Applies a change made by `change_to` to `base`, in place. Origins the
/// change does not name keep their sets and classes; classes are kept only
/// for origins held, so what a peer's changes build stays as large as the
/// summary it describes.
pub fn apply_change(base: &mut (Summary, Classes), changed: Summary, mut classes: Classes) {
    let (summary, base_classes) = base;
    for (origin, set) in changed.0 {
        base_classes.urgent.remove(&origin);
        base_classes.bulk.remove(&origin);
        if set.is_empty() {
            summary.0.remove(&origin);
            continue;
        }
        if let Some(u) = classes.urgent.remove(&origin) {
            base_classes.urgent.insert(origin, u);
        }
        if let Some(b) = classes.bulk.remove(&origin) {
            base_classes.bulk.insert(origin, b);
        }
        summary.0.insert(origin, set);
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

    fn arb_pair() -> impl Strategy<Value = (Summary, Classes)> {
        (arb_summary(), arb_summary(), arb_summary()).prop_map(|(s, u, b)| {
            // Classes within what is held, as a sender's are.
            let within = |m: Summary| {
                m.0.into_iter()
                    .filter_map(|(o, set)| {
                        let set = set.intersection(s.get(&o)?);
                        (!set.is_empty()).then_some((o, set))
                    })
                    .collect()
            };
            let classes = Classes {
                urgent: within(u),
                bulk: within(b),
            };
            (s.filtered(|_| true), classes)
        })
    }

    proptest! {
        /// A change applied to the pair it was made against gives the new
        /// pair, and names only the origins that differ.
        #[test]
        fn a_change_applied_gives_the_new_summary(before in arb_pair(), after in arb_pair()) {
            let (changed, classes) = change_to(&before, &after);
            for o in changed.0.keys() {
                let (b, a) = (&before, &after);
                prop_assert!(
                    b.0.get(o) != a.0.get(o) || b.1.urgent.get(o) != a.1.urgent.get(o) || b.1.bulk.get(o) != a.1.bulk.get(o)
                );
            }
            let mut rebuilt = before.clone();
            apply_change(&mut rebuilt, changed, classes);
            prop_assert_eq!(rebuilt, after.clone());
            // Nothing changed: an empty change.
            let (none, none_classes) = change_to(&after, &after);
            prop_assert!(none.0.is_empty() && none_classes == Classes::default());
        }

        /// Pulling every gap brings me exactly to the union of what we both hold
        /// (for the origins I want), and no gap asks for anything I already hold.
        #[test]
        fn pulling_all_gaps_converges(mine in arb_summary(), theirs in arb_summary()) {
            let allow = |o: &Origin| o.node.0[0] != 3;
            let gaps = mine.gaps(&theirs, &Classes::default(), allow);
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
            prop_assert!(after.gaps(&theirs, &Classes::default(), allow).is_empty());
        }

        /// Split by class, the gaps cover exactly what is lacking, each with
        /// the class the peer reported, urgent ones first.
        #[test]
        fn gaps_carry_priority_classes(mine in arb_summary(), theirs in arb_summary(), urgent in arb_summary(), bulk in arb_summary()) {
            let classes = Classes { urgent: urgent.0, bulk: bulk.0 };
            let plain = mine.gaps(&theirs, &Classes::default(), |_| true);
            let split = mine.gaps(&theirs, &classes, |_| true);
            let cover = |gaps: &[Gap]| {
                let mut m: BTreeMap<Origin, RangeSet> = BTreeMap::new();
                for g in gaps { m.entry(g.origin).or_default().insert_range(g.first, g.last); }
                m
            };
            prop_assert_eq!(cover(&plain), cover(&split));
            prop_assert!(split.windows(2).all(|w| w[0].priority <= w[1].priority));
            let empty = RangeSet::new();
            for g in &split {
                let r = RangeSet::from_range(g.first, g.last);
                let in_urgent = !r.intersection(classes.urgent.get(&g.origin).unwrap_or(&empty)).is_empty();
                let in_bulk = !r.difference(classes.urgent.get(&g.origin).unwrap_or(&empty)).intersection(classes.bulk.get(&g.origin).unwrap_or(&empty)).is_empty();
                match g.priority {
                    Priority::Urgent => prop_assert!(r.difference(classes.urgent.get(&g.origin).unwrap_or(&empty)).is_empty()),
                    Priority::Bulk => prop_assert!(!in_urgent && r.difference(classes.bulk.get(&g.origin).unwrap_or(&empty)).is_empty()),
                    Priority::Normal => prop_assert!(!in_urgent && !in_bulk),
                }
            }
        }
    }

    #[test]
    fn early_wants_ask_known_gaps_and_open_tails_once() {
        let mut mine = Summary::default();
        mine.0.insert(origin(1), RangeSet::from_ranges([(1, 5), (8, 9)]));
        let mut remembered = Summary::default();
        remembered.0.insert(origin(1), RangeSet::from_range(1, 12));
        remembered.0.insert(origin(2), RangeSet::from_range(1, 3));
        remembered.0.insert(origin(3), RangeSet::from_range(1, 3));
        let wants = mine.early_wants(&remembered, &Classes::default(), 2);
        let spans: Vec<_> = wants.iter().map(|g| (g.origin, g.first, g.last)).collect();
        assert_eq!(
            spans,
            vec![
                (origin(1), 6, 7),
                (origin(1), 10, 12),
                (origin(2), 1, 3),
                (origin(3), 1, 3),
                (origin(1), 13, u64::MAX),
                (origin(2), 4, u64::MAX),
            ]
        );
        // Once asked, nothing of it is asked again when the summary comes.
        let asked = mine.with_gaps(&wants);
        let mut now = remembered.clone();
        now.0.insert(origin(1), RangeSet::from_range(1, 40));
        now.0.insert(origin(4), RangeSet::from_range(1, 2));
        let later: Vec<_> = asked
            .gaps(&now, &Classes::default(), |_| true)
            .iter()
            .map(|g| (g.origin, g.first, g.last))
            .collect();
        assert_eq!(later, vec![(origin(4), 1, 2)]);
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
