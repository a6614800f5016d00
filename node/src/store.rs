//! The WAL as the sync core's `Store`.

use ferry_proto::{Classes, Event, Origin, RangeSet, Summary};
use ferry_sync::{Store, StoreError};
use ferry_wal::Wal;
use std::sync::Arc;

pub struct WalStore(pub Arc<Wal>);

impl Store for WalStore {
    fn local_origin(&self) -> Origin {
        self.0.local_origin()
    }

    fn set_local_origin(&mut self, origin: Origin) {
        self.0.set_local_origin(origin);
    }

    fn have(&self, origin: &Origin) -> RangeSet {
        self.0.have(origin)
    }

    fn holds(&self, origin: &Origin, seq: u64) -> bool {
        self.0.holds(origin, seq)
    }

    fn summary(&self) -> Summary {
        self.0.summary()
    }

    fn classes(&self) -> Classes {
        self.0.classes()
    }

    fn read(
        &self,
        origin: &Origin,
        first: u64,
        last: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.0
            .read_range_capped(origin, first, last, max_events, max_bytes)
            .map_err(|e| StoreError(e.to_string()))
    }
}
