//! Where events live, as the core sees it: the WAL in a node, `MemStore` in
//! the simulator and in tests.
//!
//! The core only reads through this trait. Appending is asynchronous in a
//! real node (a group commit waits for an fsync), so the core asks for it
//! with `Action::Append` and hears back through `Replica::handle_appended`.

use crate::auth::Logs;
use ferry_proto::merkle::{leaf_hash, Hash, BLOCK_EVENTS};
use ferry_proto::{Classes, Event, Origin, RangeSet, Summary};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendReport {
    pub stored: u64,
    /// Events already held: idempotent no-ops.
    pub duplicates: u64,
}

/// The leaf hashes of the events of one tree block of `origin`, read from
/// the store, for a tree that compacted it (`Known::compact_block`); `None`
/// unless every event of the block is held.
pub fn block_leaves<S: Store + ?Sized>(store: &S, origin: &Origin, block: u64) -> Option<Vec<Hash>> {
    let first = block.checked_mul(BLOCK_EVENTS)?.checked_add(1)?;
    let last = first + BLOCK_EVENTS - 1;
    let events = store
        .read(origin, first, last, BLOCK_EVENTS as usize, usize::MAX)
        .ok()?;
    let whole = events.len() as u64 == BLOCK_EVENTS && events.iter().zip(first..).all(|(e, seq)| e.seq == seq);
    whole.then(|| events.iter().map(leaf_hash).collect())
}

pub trait Store {
    /// The log this node writes its own events to.
    fn local_origin(&self) -> Origin;
    /// Starts a new log for this node's own events.
    fn set_local_origin(&mut self, origin: Origin);
    /// The durable sequence numbers held of one origin.
    fn have(&self, origin: &Origin) -> RangeSet;
    /// Whether one durable event is held.
    fn holds(&self, origin: &Origin, seq: u64) -> bool;
    fn summary(&self) -> Summary;
    /// Which held events are urgent or bulk.
    fn classes(&self) -> Classes;
    /// Held events of `origin` in `first..=last`, ascending: at most
    /// `max_events`, and once their payloads reach `max_bytes` no more
    /// (but always the first one, however large).
    fn read(
        &self,
        origin: &Origin,
        first: u64,
        last: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// What this node knows of each origin's tree, when logs are
    /// authenticated: data frames then carry heads and proofs, and events
    /// are appended only once proved (`auth`). `None`: they are not.
    fn logs(&self) -> Option<&Logs> {
        None
    }
    fn logs_mut(&mut self) -> Option<&mut Logs> {
        None
    }
}
