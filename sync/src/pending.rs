//! Appends handed to the driver and not yet reported durable.

use crate::io::{ConnId, Ticket};
use ferry_proto::{Origin, Priority, RangeSet};
use std::collections::BTreeMap;

#[derive(Debug)]
pub(crate) struct Append {
    pub conn: ConnId,
    pub events: Vec<(Origin, u64, Priority)>,
}

#[derive(Debug, Default)]
pub(crate) struct Pending {
    next: u64,
    by_ticket: BTreeMap<Ticket, Append>,
}

impl Pending {
    pub fn next_ticket(&mut self) -> Ticket {
        self.next += 1;
        Ticket(self.next)
    }

    pub fn insert(&mut self, ticket: Ticket, append: Append) {
        self.by_ticket.insert(ticket, append);
    }

    pub fn take(&mut self, ticket: Ticket) -> Option<Append> {
        self.by_ticket.remove(&ticket)
    }

    /// What `conn` has on its way to disk, by origin.
    pub fn held_by(&self, conn: ConnId) -> BTreeMap<Origin, RangeSet> {
        let mut out: BTreeMap<Origin, RangeSet> = BTreeMap::new();
        for a in self.by_ticket.values().filter(|a| a.conn == conn) {
            for (origin, seq, _) in &a.events {
                out.entry(*origin).or_default().insert(*seq);
            }
        }
        out
    }

    /// Whether `conn` has appends on their way to disk.
    pub fn any_for(&self, conn: ConnId) -> bool {
        self.by_ticket.values().any(|a| a.conn == conn)
    }

    /// Whether an event is on its way to disk, from any connection.
    pub fn contains(&self, origin: &Origin, seq: u64) -> bool {
        self.by_ticket
            .values()
            .any(|a| a.events.iter().any(|(o, s, _)| o == origin && *s == seq))
    }

    pub fn len(&self) -> usize {
        self.by_ticket.len()
    }
}
