//! Sets of sequence numbers as sorted, disjoint, non-adjacent inclusive ranges.
//!
//! Events of one origin can arrive out of order (several peers, a mule), so a
//! node's knowledge of an origin is a set with holes, not a high-water mark.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct RangeSet {
    /// Invariant: sorted by start, `start <= end`, and `prev.end + 1 < next.start`.
    ranges: Vec<(u64, u64)>,
}

impl std::fmt::Debug for RangeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ranges.iter().map(|(a, b)| a..=b)).finish()
    }
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_range(first: u64, last: u64) -> Self {
        let mut s = Self::new();
        s.insert_range(first, last);
        s
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of members (not of ranges).
    pub fn count(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| b - a + 1).sum()
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    pub fn last(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.1)
    }

    pub fn contains(&self, x: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 < x);
        self.ranges.get(i).is_some_and(|r| r.0 <= x)
    }

    pub fn insert(&mut self, x: u64) {
        self.insert_range(x, x)
    }

    /// Adds `first..=last` (ignored when `first > last`).
    pub fn insert_range(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        // The common case, appending right after the end, is O(1).
        if let Some(tail) = self.ranges.last_mut() {
            if first > tail.1 && first - tail.1 <= 1 {
                tail.1 = tail.1.max(last);
                return;
            }
        }
        // Ranges that overlap or touch [first, last] form a contiguous run [lo, hi).
        let lo = self.ranges.partition_point(|r| r.1.saturating_add(1) < first);
        let hi = self.ranges.partition_point(|r| r.0 <= last.saturating_add(1));
        let (mut a, mut b) = (first, last);
        if lo < hi {
            a = a.min(self.ranges[lo].0);
            b = b.max(self.ranges[hi - 1].1);
        }
        self.ranges.splice(lo..hi, std::iter::once((a, b)));
    }

    pub fn union(&self, other: &RangeSet) -> RangeSet {
        let mut out = self.clone();
        for &(a, b) in &other.ranges {
            out.insert_range(a, b);
        }
        out
    }

    /// Members of `self` not in `other`: "what you have that I lack".
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::new();
        let mut j = 0;
        for &(a, b) in &self.ranges {
            let mut start = a;
            while j < other.ranges.len() && other.ranges[j].1 < start {
                j += 1;
            }
            let mut k = j;
            loop {
                match other.ranges.get(k) {
                    Some(&(oa, ob)) if oa <= b => {
                        if oa > start {
                            out.push((start, oa - 1));
                        }
                        if ob >= b {
                            break;
                        }
                        start = ob + 1;
                        k += 1;
                    }
                    _ => {
                        out.push((start, b));
                        break;
                    }
                }
            }
        }
        RangeSet { ranges: out }
    }

    pub fn intersection(&self, other: &RangeSet) -> RangeSet {
        self.difference(&self.difference(other))
    }

    /// Builds from ranges that may be unsorted or overlapping.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> RangeSet {
        let mut s = RangeSet::new();
        for (a, b) in ranges {
            s.insert_range(a, b);
        }
        s
    }
}

/// On the wire a set is a flat array of varints: the gap before each range and
/// its length minus one. A contiguous log of a million events is 2 small ints.
impl Serialize for RangeSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut flat = Vec::with_capacity(self.ranges.len() * 2);
        let mut prev_end = 0u64;
        for (i, &(a, b)) in self.ranges.iter().enumerate() {
            // Ranges after the first are non-adjacent, so a - prev_end >= 2.
            flat.push(if i == 0 { a } else { a - prev_end - 2 });
            flat.push(b - a);
            prev_end = b;
        }
        flat.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RangeSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let flat: Vec<u64> = Deserialize::deserialize(d)?;
        if !flat.len().is_multiple_of(2) {
            return Err(D::Error::custom("range set needs an even number of integers"));
        }
        let mut ranges = Vec::with_capacity(flat.len() / 2);
        let mut prev_end: Option<u64> = None;
        for pair in flat.chunks_exact(2) {
            let a = match prev_end {
                None => pair[0],
                Some(p) => p
                    .checked_add(2)
                    .and_then(|x| x.checked_add(pair[0]))
                    .ok_or_else(|| D::Error::custom("range set overflows u64"))?,
            };
            let b = a
                .checked_add(pair[1])
                .ok_or_else(|| D::Error::custom("range set overflows u64"))?;
            ranges.push((a, b));
            prev_end = Some(b);
        }
        Ok(RangeSet { ranges })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn model(s: &RangeSet) -> BTreeSet<u64> {
        s.ranges.iter().flat_map(|&(a, b)| a..=b).collect()
    }

    fn arb_set() -> impl Strategy<Value = RangeSet> {
        proptest::collection::vec((0u64..200, 0u64..20), 0..12)
            .prop_map(|v| RangeSet::from_ranges(v.into_iter().map(|(a, l)| (a, a + l))))
    }

    fn well_formed(s: &RangeSet) -> bool {
        s.ranges.iter().all(|r| r.0 <= r.1) && s.ranges.windows(2).all(|w| w[0].1 + 1 < w[1].0)
    }

    proptest! {
        #[test]
        fn union_matches_model(a in arb_set(), b in arb_set()) {
            let u = a.union(&b);
            prop_assert!(well_formed(&u));
            let want: BTreeSet<u64> = model(&a).union(&model(&b)).copied().collect();
            prop_assert_eq!(model(&u), want);
        }

        #[test]
        fn difference_matches_model(a in arb_set(), b in arb_set()) {
            let d = a.difference(&b);
            prop_assert!(well_formed(&d));
            let want: BTreeSet<u64> = model(&a).difference(&model(&b)).copied().collect();
            prop_assert_eq!(model(&d), want);
        }

        #[test]
        fn intersection_and_algebra(a in arb_set(), b in arb_set()) {
            let i = a.intersection(&b);
            let want: BTreeSet<u64> = model(&a).intersection(&model(&b)).copied().collect();
            prop_assert_eq!(model(&i), want);
            // (a - b) + b == a + b, and (a - b) shares nothing with b
            prop_assert_eq!(a.difference(&b).union(&b), a.union(&b));
            prop_assert!(a.difference(&b).intersection(&b).is_empty());
            prop_assert_eq!(a.count(), model(&a).len() as u64);
        }

        #[test]
        fn inserts_match_model(xs in proptest::collection::vec(0u64..100, 0..80)) {
            let mut s = RangeSet::new();
            for &x in &xs { s.insert(x); }
            prop_assert!(well_formed(&s));
            prop_assert_eq!(model(&s), xs.iter().copied().collect::<BTreeSet<_>>());
            for x in 0..100 { prop_assert_eq!(s.contains(x), xs.contains(&x)); }
        }

        #[test]
        fn cbor_round_trip(a in arb_set()) {
            let mut buf = Vec::new();
            ciborium::into_writer(&a, &mut buf).unwrap(); // into Vec cannot fail
            let back: RangeSet = ciborium::from_reader(buf.as_slice()).unwrap(); // we just wrote it
            prop_assert_eq!(back, a);
        }

        #[test]
        fn cbor_decode_never_panics(v in proptest::collection::vec(any::<u64>(), 0..10)) {
            let mut buf = Vec::new();
            ciborium::into_writer(&v, &mut buf).unwrap(); // into Vec cannot fail
            if let Ok(s) = ciborium::from_reader::<RangeSet, _>(buf.as_slice()) {
                prop_assert!(well_formed(&s));
            }
        }
    }

    #[test]
    fn extremes() {
        let full = RangeSet::from_range(0, u64::MAX);
        assert!(full.difference(&full).is_empty());
        assert_eq!(
            full.difference(&RangeSet::from_range(5, 10)).ranges(),
            &[(0, 4), (11, u64::MAX)]
        );
        let mut s = RangeSet::from_range(u64::MAX - 1, u64::MAX);
        s.insert(0);
        assert_eq!(s.ranges(), &[(0, 0), (u64::MAX - 1, u64::MAX)]);
    }

    #[test]
    fn contiguous_log_is_two_integers_on_the_wire() {
        let mut buf = Vec::new();
        ciborium::into_writer(&RangeSet::from_range(1, 1_000_000), &mut buf).unwrap(); // into Vec
        assert_eq!(buf.len(), 1 + 1 + 5);
    }
}
