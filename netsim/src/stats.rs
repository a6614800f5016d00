//! Counters, readable while running and printed as JSON on exit.

use crate::pipe::{DropCause, Verdict};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default, Debug)]
pub struct DirCounters {
    offered_packets: AtomicU64,
    offered_bytes: AtomicU64,
    delivered_packets: AtomicU64,
    delivered_bytes: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_cut: AtomicU64,
    dropped_cut_bytes: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DirStats {
    /// What the sender put on the link.
    pub offered_packets: u64,
    pub offered_bytes: u64,
    /// What came out at the far end.
    pub delivered_packets: u64,
    pub delivered_bytes: u64,
    pub dropped_loss: u64,
    pub dropped_queue: u64,
    pub dropped_cut: u64,
    pub dropped_cut_bytes: u64,
}

impl DirCounters {
    pub fn record(&self, size: usize, verdict: &Verdict) {
        self.offered_packets.fetch_add(1, Relaxed);
        self.offered_bytes.fetch_add(size as u64, Relaxed);
        match verdict {
            Verdict::Deliver(_) => {}
            Verdict::Drop(DropCause::Loss) => drop(self.dropped_loss.fetch_add(1, Relaxed)),
            Verdict::Drop(DropCause::Queue) => drop(self.dropped_queue.fetch_add(1, Relaxed)),
            Verdict::Drop(DropCause::Cut) => {
                self.dropped_cut.fetch_add(1, Relaxed);
                self.dropped_cut_bytes.fetch_add(size as u64, Relaxed);
            }
        }
    }

    pub fn delivered(&self, size: usize) {
        self.delivered_packets.fetch_add(1, Relaxed);
        self.delivered_bytes.fetch_add(size as u64, Relaxed);
    }

    pub fn snapshot(&self) -> DirStats {
        DirStats {
            offered_packets: self.offered_packets.load(Relaxed),
            offered_bytes: self.offered_bytes.load(Relaxed),
            delivered_packets: self.delivered_packets.load(Relaxed),
            delivered_bytes: self.delivered_bytes.load(Relaxed),
            dropped_loss: self.dropped_loss.load(Relaxed),
            dropped_queue: self.dropped_queue.load(Relaxed),
            dropped_cut: self.dropped_cut.load(Relaxed),
            dropped_cut_bytes: self.dropped_cut_bytes.load(Relaxed),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub profile: String,
    pub cut: bool,
    pub rebinds: u64,
    /// Client to target.
    pub up: DirStats,
    /// Target to client.
    pub down: DirStats,
}
