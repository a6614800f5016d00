//! The `relay-forges` fault: a store, as the lanes read it, that alters
//! every event written by another node that it passes on.
//! Log authentication must refuse them all at the receiver, and the rest
//! of each sync must go on: the simulator expects everything else to
//! converge.

use crate::store::{Store, StoreError};
use ferry_proto::{Classes, Event, Origin, RangeSet, Summary};

pub(crate) struct Forging<'a, S>(pub &'a S);

impl<S: Store> Store for Forging<'_, S> {
    fn local_origin(&self) -> Origin {
        self.0.local_origin()
    }
    fn set_local_origin(&mut self, _origin: Origin) {
        // Lanes only read; a new epoch goes to the real store.
    }
    fn have(&self, origin: &Origin) -> RangeSet {
        self.0.have(origin)
    }
    fn holds(&self, origin: &Origin, seq: u64) -> bool {
        self.0.holds(origin, seq)
    }
    fn logs(&self) -> Option<&crate::auth::Logs> {
        self.0.logs()
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
        let mut events = self.0.read(origin, first, last, max_events, max_bytes)?;
        if origin.node != self.0.local_origin().node {
            for e in &mut events {
                e.payload.extend_from_slice(b" (altered by a relay)");
            }
        }
        Ok(events)
    }
}
