//! In-memory index: per origin, the have-set and a sparse map from sequence
//! numbers to file positions.
//!
//! A chunk covers up to `CHUNK_MAX` consecutive sequence numbers of one origin
//! stored in one segment within a short span of bytes. Chunk seq ranges are
//! disjoint (each (origin, seq) is stored once), so a `BTreeMap` keyed by the
//! first seq finds the chunks of any range. Logs that arrive in order cost one
//! chunk per 128 events: by arithmetic (not measured), a hub with ten million
//! events keeps about 3 MB.

use ferry_proto::{Classes, Origin, Priority, RangeSet, Summary};
use std::collections::BTreeMap;

pub const CHUNK_MAX: u32 = 128;
/// Other origins' records a chunk may skip over, so reading it stays cheap.
pub const CHUNK_MAX_SPAN: u64 = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub segment: u32,
    pub count: u32,
    /// File offsets: first record's start, and end of the last record.
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Default)]
pub struct OriginIndex {
    pub have: RangeSet,
    /// The held events that are not of normal priority (few, usually none).
    pub urgent: RangeSet,
    pub bulk: RangeSet,
    pub chunks: BTreeMap<u64, Chunk>,
    /// First seq of the chunk that may still grow.
    open_chunk: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Index {
    pub origins: BTreeMap<Origin, OriginIndex>,
    pub events: u64,
}

impl Index {
    pub fn contains(&self, origin: &Origin, seq: u64) -> bool {
        self.origins.get(origin).is_some_and(|o| o.have.contains(seq))
    }

    pub fn add(&mut self, origin: Origin, seq: u64, priority: Priority, segment: u32, start: u64, end: u64) {
        let o = self.origins.entry(origin).or_default();
        o.have.insert(seq);
        match priority {
            Priority::Urgent => o.urgent.insert(seq),
            Priority::Bulk => o.bulk.insert(seq),
            Priority::Normal => {}
        }
        self.events += 1;
        if let Some(first) = o.open_chunk {
            if let Some(c) = o.chunks.get_mut(&first) {
                if c.segment == segment
                    && seq.checked_sub(first) == Some(c.count as u64)
                    && c.count < CHUNK_MAX
                    && start >= c.end
                    && end - c.start <= CHUNK_MAX_SPAN
                {
                    c.count += 1;
                    c.end = end;
                    return;
                }
            }
        }
        o.chunks.insert(
            seq,
            Chunk {
                segment,
                count: 1,
                start,
                end,
            },
        );
        o.open_chunk = Some(seq);
    }

    /// Chunks holding any of `origin`'s events in `first..=last`, in seq order.
    pub fn chunks_for(&self, origin: &Origin, first: u64, last: u64) -> Vec<(u64, Chunk)> {
        let Some(o) = self.origins.get(origin) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some((&s, c)) = o.chunks.range(..first).next_back() {
            // A chunk holds at least one seq; its last is `s + count - 1`,
            // which exists even when it is u64::MAX.
            if s + (c.count as u64 - 1) >= first {
                out.push((s, *c));
            }
        }
        out.extend(o.chunks.range(first..=last).map(|(s, c)| (*s, *c)));
        out
    }

    pub fn have(&self, origin: &Origin) -> ferry_proto::RangeSet {
        self.origins.get(origin).map(|o| o.have.clone()).unwrap_or_default()
    }

    pub fn summary(&self) -> Summary {
        Summary(self.origins.iter().map(|(o, i)| (*o, i.have.clone())).collect())
    }

    pub fn classes(&self) -> Classes {
        let pick = |f: fn(&OriginIndex) -> &RangeSet| {
            self.origins
                .iter()
                .filter(|(_, i)| !f(i).is_empty())
                .map(|(o, i)| (*o, f(i).clone()))
                .collect()
        };
        Classes {
            urgent: pick(|i| &i.urgent),
            bulk: pick(|i| &i.bulk),
        }
    }

    #[cfg(test)]
    pub fn chunk_count(&self) -> usize {
        self.origins.values().map(|o| o.chunks.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::NodeId;

    #[test]
    fn in_order_appends_share_chunks_and_lookups_find_them() {
        let o = Origin {
            node: NodeId([1; 16]),
            epoch: 0,
        };
        let mut idx = Index::default();
        for seq in 1..=1000u64 {
            idx.add(o, seq, Priority::Normal, 1, seq * 100, seq * 100 + 100);
        }
        assert_eq!(idx.chunk_count(), 1000usize.div_ceil(CHUNK_MAX as usize));
        let found = idx.chunks_for(&o, 130, 300);
        let covered: u64 = found.iter().map(|(_, c)| c.count as u64).sum();
        assert!(found.first().unwrap().0 <= 130); // non-empty: 130 is stored
        assert!(covered >= 171);
        assert!(idx.chunks_for(&o, 2000, 3000).is_empty());
    }

    #[test]
    fn out_of_order_arrivals_start_new_chunks() {
        let o = Origin {
            node: NodeId([1; 16]),
            epoch: 0,
        };
        let mut idx = Index::default();
        idx.add(o, 5, Priority::Normal, 1, 0, 10);
        idx.add(o, 1, Priority::Normal, 1, 10, 20);
        idx.add(o, 2, Priority::Normal, 1, 20, 30);
        assert_eq!(idx.chunks_for(&o, 1, 5).len(), 2);
        assert_eq!(idx.chunks_for(&o, 5, 5).len(), 1);
        assert_eq!(idx.origins[&o].have.ranges(), &[(1, 2), (5, 5)]);
    }
}
