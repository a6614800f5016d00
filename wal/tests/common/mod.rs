//! Helpers shared by the WAL's integration tests.
#![allow(dead_code)] // each test file uses its own subset

use ferry_proto::{Event, NodeId, Origin, Priority};
use ferry_wal::{NewEvent, Wal, WallClock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub fn origin(n: u8) -> Origin {
    Origin {
        node: NodeId([n; 16]),
        epoch: 7,
    }
}

pub fn new_event(payload: impl Into<Vec<u8>>) -> NewEvent {
    NewEvent {
        topic: "clinic/vitals".into(),
        priority: Priority::Normal,
        payload: payload.into(),
    }
}

pub fn all_events(wal: &Wal) -> Vec<Event> {
    let mut out = Vec::new();
    for (o, set) in wal.summary().0 {
        for &(a, b) in set.ranges() {
            out.extend(wal.read_range(&o, a, b, usize::MAX).expect("read"));
        }
    }
    out
}

/// A wall clock the test sets by hand.
#[derive(Clone)]
pub struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    pub fn at(ms: u64) -> Self {
        FakeClock(Arc::new(AtomicU64::new(ms)))
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn source(&self) -> WallClock {
        let c = self.0.clone();
        Arc::new(move || c.load(Ordering::SeqCst))
    }
}

pub const DAY_MS: u64 = 24 * 3600 * 1000;
