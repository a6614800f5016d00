//! Ranges being pulled right now, by any round on any connection.
//!
//! Two rounds can run at once: one each way on a connection (both sides
//! start rounds when they have news), or one per peer. Before a `Want` goes
//! out its range is claimed here, less what the WAL already holds and what
//! another pull has claimed; the claim is released when that pull ends,
//! after everything it received is appended. So a range is asked for at
//! most once at a time, and once held it is never asked for again: nothing
//! is sent twice.

use ferry_proto::{Gap, Origin, RangeSet};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct InFlight {
    claimed: Mutex<HashMap<Origin, RangeSet>>,
}

/// One claimed range, released when dropped (also when its pull task is
/// aborted).
pub struct Claim {
    owner: Arc<InFlight>,
    pub gap: Gap,
}

impl InFlight {
    /// Claims what of `gap` nobody holds or is pulling: one claim per
    /// remaining contiguous range. `held` is read under the lock, so a pull
    /// that appended and released is seen as held, never as free.
    pub fn claim(self: &Arc<Self>, gap: &Gap, held: impl FnOnce(&Origin) -> RangeSet) -> Vec<Claim> {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        let busy = claimed.entry(gap.origin).or_default();
        let free = RangeSet::from_range(gap.first, gap.last)
            .difference(&held(&gap.origin))
            .difference(busy);
        *busy = busy.union(&free);
        free.ranges()
            .iter()
            .map(|&(first, last)| Claim {
                owner: self.clone(),
                gap: Gap { first, last, ..*gap },
            })
            .collect()
    }

    /// Ranges claimed now, for tests and status.
    pub fn claimed(&self) -> u64 {
        let claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        claimed.values().map(|r| r.count()).sum()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut claimed = self.owner.claimed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(busy) = claimed.get_mut(&self.gap.origin) {
            *busy = busy.difference(&RangeSet::from_range(self.gap.first, self.gap.last));
            if busy.is_empty() {
                claimed.remove(&self.gap.origin);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::{NodeId, Priority};

    fn gap(first: u64, last: u64) -> Gap {
        Gap {
            origin: Origin {
                node: NodeId([7; 16]),
                epoch: 1,
            },
            first,
            last,
            priority: Priority::Normal,
        }
    }

    #[test]
    fn a_claimed_range_is_not_claimed_again_until_released() {
        let f = Arc::new(InFlight::default());
        let none = |_: &Origin| RangeSet::new();
        let a = f.claim(&gap(1, 100), none);
        assert_eq!(a.len(), 1);
        let b = f.claim(&gap(50, 150), none);
        assert_eq!(
            b.iter().map(|c| (c.gap.first, c.gap.last)).collect::<Vec<_>>(),
            vec![(101, 150)]
        );
        drop(a);
        let c = f.claim(&gap(1, 150), none);
        assert_eq!(
            c.iter().map(|c| (c.gap.first, c.gap.last)).collect::<Vec<_>>(),
            vec![(1, 100)]
        );
        drop((b, c));
        assert_eq!(f.claimed(), 0);
    }

    #[test]
    fn held_events_are_never_claimed() {
        let f = Arc::new(InFlight::default());
        let held = |_: &Origin| RangeSet::from_ranges([(10, 20), (30, 40)]);
        let got: Vec<_> = f
            .claim(&gap(1, 50), held)
            .iter()
            .map(|c| (c.gap.first, c.gap.last))
            .collect();
        assert_eq!(got, vec![(1, 9), (21, 29), (41, 50)]);
        assert!(f.claim(&gap(10, 20), held).is_empty());
    }
}
