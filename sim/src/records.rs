//! Keyed records in the simulation: some writes edit a few shared records
//! (so that clinics edit the same one while apart), each node keeps the
//! record state its index would show, and at convergence every node that
//! holds the same events must show the same records, whatever order they
//! arrived in.

use ferry_proto::{Event, Priority};
use ferry_records::{State, Write};
use ferry_sync::{MemStore, Store};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const COLLECTION: &str = "patients";

/// A write to one of four patient records: usually a new value, sometimes
/// a delete, superseding what this node has seen of the record.
pub fn edit(rng: &mut ChaCha8Rng, seen: &State) -> (String, Priority, Vec<u8>) {
    let key = format!("p-{}", rng.gen_range(0..4));
    let value = (!rng.gen_bool(0.05)).then(|| format!("{{\"pulse\":{}}}", rng.gen_range(40..140)).into_bytes());
    let write = Write {
        collection: COLLECTION.into(),
        key: key.clone(),
        value,
        context: seen.context_for(COLLECTION, &key),
    };
    (ferry_records::topic(COLLECTION), Priority::Normal, write.encode())
}

/// Every event a store holds.
fn events(store: &MemStore) -> Vec<&Event> {
    store.summary().0.keys().flat_map(|o| store.events_of(o)).collect()
}

/// The record state of what a store holds, applied in log order.
pub fn rebuild(store: &MemStore) -> State {
    State::from_events(events(store))
}

/// Each node's state, applied as events arrived, equals the state of what
/// it holds; and nodes holding the same events show the same records.
pub fn check(nodes: &[(&str, &State, &MemStore)]) -> Result<(), String> {
    for (name, state, store) in nodes {
        let full = rebuild(store);
        if full != **state {
            return Err(format!(
                "{name}'s records, applied as events arrived, differ from those of its log: {:?} against {:?}",
                state.view(),
                full.view()
            ));
        }
    }
    let mut groups: Vec<Vec<(&str, &State)>> = Vec::new();
    let mut keys: Vec<ferry_proto::Summary> = Vec::new();
    for (name, state, store) in nodes {
        let summary = store.summary();
        match keys.iter().position(|k| *k == summary) {
            Some(i) => groups[i].push((name, state)),
            None => {
                keys.push(summary);
                groups.push(vec![(name, state)]);
            }
        }
    }
    for group in groups {
        ferry_records::converged(group)?;
    }
    Ok(())
}
