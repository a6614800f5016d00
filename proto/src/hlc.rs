//! Hybrid logical clock (Kulkarni et al. 2014).
//!
//! A timestamp is 48 bits of wall-clock milliseconds and 16 bits of logical
//! counter. It never goes backwards, whatever the wall clock does (NTP
//! correcting a Pi after days offline), and it moves past every timestamp the
//! node has received, so causally later events sort later everywhere.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hlc(pub u64);

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MAX: u64 = (1 << LOGICAL_BITS) - 1;

/// A remote timestamp further ahead of our wall clock than this is not merged:
/// one peer with a clock set to 2099 must not drag every node's clock along.
pub const MAX_FORWARD_DRIFT_MS: u64 = 24 * 3600 * 1000;

impl Hlc {
    pub fn new(wall_ms: u64, logical: u16) -> Self {
        Hlc((wall_ms << LOGICAL_BITS) | logical as u64)
    }
    pub fn wall_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }
    pub fn logical(self) -> u16 {
        (self.0 & LOGICAL_MAX) as u16
    }
}

/// The clock state of one node. Wall-clock readings are passed in, so the
/// logic is testable without time.
#[derive(Debug, Default, Clone)]
pub struct Clock {
    last: Hlc,
}

impl Clock {
    /// Starts after `last`, e.g. the highest timestamp found in the WAL, so a
    /// restart with a clock that went backwards still issues later stamps.
    pub fn starting_after(last: Hlc) -> Self {
        Clock { last }
    }

    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A timestamp for a local event.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        self.advance(wall_ms, self.last)
    }

    /// Merges a received timestamp; returns false (and only ticks) when the
    /// remote stamp is implausibly far ahead of our wall clock.
    pub fn observe(&mut self, remote: Hlc, wall_ms: u64) -> bool {
        if remote.wall_ms() > wall_ms.saturating_add(MAX_FORWARD_DRIFT_MS) {
            self.now(wall_ms);
            return false;
        }
        let base = self.last.max(remote);
        self.advance(wall_ms, base);
        true
    }

    fn advance(&mut self, wall_ms: u64, base: Hlc) -> Hlc {
        let next = if wall_ms > base.wall_ms() {
            Hlc::new(wall_ms, 0)
        } else if base.logical() as u64 == LOGICAL_MAX {
            // 65,536 events in one millisecond: borrow the next millisecond.
            Hlc::new(base.wall_ms() + 1, 0)
        } else {
            Hlc(base.0 + 1)
        };
        self.last = next;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wall_clock_jumping_back_does_not_move_time_back() {
        let mut c = Clock::default();
        let a = c.now(1_000_000);
        let b = c.now(10); // NTP corrected a clock that ran days ahead
        assert!(b > a);
        assert_eq!(b.wall_ms(), 1_000_000);
        assert_eq!(b.logical(), 1);
        let d = c.now(2_000_000);
        assert_eq!(d, Hlc::new(2_000_000, 0));
    }

    #[test]
    fn received_stamps_are_overtaken() {
        let mut c = Clock::default();
        c.now(100);
        assert!(c.observe(Hlc::new(5_000, 7), 200));
        assert!(c.now(201) > Hlc::new(5_000, 7));
    }

    #[test]
    fn absurd_remote_stamps_are_not_merged() {
        let mut c = Clock::default();
        let far = Hlc::new(1_000 + MAX_FORWARD_DRIFT_MS + 1, 0);
        assert!(!c.observe(far, 1_000));
        assert!(c.now(1_001) < far);
    }

    #[test]
    fn logical_overflow_borrows_a_millisecond() {
        let mut c = Clock::starting_after(Hlc::new(50, u16::MAX));
        assert_eq!(c.now(50), Hlc::new(51, 0));
    }

    proptest! {
        #[test]
        fn strictly_monotonic(steps in proptest::collection::vec((any::<bool>(), 0u64..1u64 << 40, any::<u64>()), 1..200)) {
            let mut c = Clock::default();
            let mut prev = c.last();
            for (remote, wall, r) in steps {
                if remote {
                    c.observe(Hlc(r >> 1), wall);
                } else {
                    c.now(wall);
                }
                prop_assert!(c.last() > prev);
                prev = c.last();
            }
        }
    }
}
