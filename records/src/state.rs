//! The records of a whole log, held in memory: the reference model that the
//! node's on-disk index follows, and the invariant the simulator checks.

use crate::record::{Record, Version};
use crate::write::{collection_of_topic, Context, DecodeError, VersionId, Write};
use ferry_proto::{Event, Hlc};
use std::collections::BTreeMap;

/// What applying one event did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Not on a record topic: not a record write.
    NotARecord,
    /// On a record topic but unreadable; it stays in the log, and no node
    /// shows it as a version.
    Invalid(DecodeError),
    /// A version already held (the same event again).
    Duplicate,
    /// A new version of this record.
    New { collection: String, key: String },
}

impl Applied {
    /// Reads an event as a record version, if it is one.
    pub fn decode(e: &Event) -> Result<Option<(Write, Version)>, DecodeError> {
        if collection_of_topic(&e.topic).is_none() {
            return Ok(None);
        }
        let w = Write::decode(&e.topic, &e.payload)?;
        let v = Version::of(e, &w);
        Ok(Some((w, v)))
    }
}

/// Every record of a log: (collection, key) to its versions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    records: BTreeMap<(String, String), Record>,
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// The state a set of events gives, whatever their order or repeats.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> State {
        let mut s = State::new();
        for e in events {
            s.apply(e);
        }
        s
    }

    pub fn apply(&mut self, e: &Event) -> Applied {
        match Applied::decode(e) {
            Ok(None) => Applied::NotARecord,
            Err(err) => Applied::Invalid(err),
            Ok(Some((w, v))) => {
                let rec = self.records.entry((w.collection.clone(), w.key.clone())).or_default();
                if rec.apply(v) {
                    Applied::New {
                        collection: w.collection,
                        key: w.key,
                    }
                } else {
                    Applied::Duplicate
                }
            }
        }
    }

    pub fn record(&self, collection: &str, key: &str) -> Option<&Record> {
        self.records.get(&(collection.to_string(), key.to_string()))
    }

    /// The context a new write of this record carries here: everything held.
    pub fn context_for(&self, collection: &str, key: &str) -> Context {
        self.record(collection, key).map(Record::context).unwrap_or_default()
    }

    pub fn records(&self) -> impl Iterator<Item = (&str, &str, &Record)> {
        self.records.iter().map(|((c, k), r)| (c.as_str(), k.as_str(), r))
    }

    /// Records with concurrent versions, oldest conflict first.
    pub fn conflicts(&self) -> Vec<(Hlc, &str, &str)> {
        let mut out: Vec<_> = self
            .records()
            .filter_map(|(c, k, r)| r.conflict_since().map(|since| (since, c, k)))
            .collect();
        out.sort();
        out
    }

    /// Per record: the winner and the concurrent versions, the part of the
    /// state users see.
    pub fn view(&self) -> BTreeMap<(String, String), Vec<VersionId>> {
        self.records
            .iter()
            .map(|(ck, r)| (ck.clone(), r.live().iter().map(|v| v.id).collect()))
            .collect()
    }
}

/// Checks that nodes holding the same events show the same records: the
/// same versions, the same winner and the same concurrent siblings. Returns
/// a description of the first difference, naming the nodes.
pub fn converged<'a>(states: impl IntoIterator<Item = (&'a str, &'a State)>) -> Result<(), String> {
    let mut iter = states.into_iter();
    let Some((first_name, first)) = iter.next() else {
        return Ok(());
    };
    let first_view = first.view();
    for (name, s) in iter {
        if s == first {
            continue;
        }
        let view = s.view();
        for (ck, live) in &first_view {
            match view.get(ck) {
                None => {
                    return Err(format!(
                        "{first_name} holds record {}/{} and {name} does not",
                        ck.0, ck.1
                    ))
                }
                Some(other) if other != live => {
                    return Err(format!(
                        "record {}/{}: {first_name} shows {} and {name} shows {}",
                        ck.0,
                        ck.1,
                        list(live),
                        list(other)
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(ck) = view.keys().find(|ck| !first_view.contains_key(*ck)) {
            return Err(format!(
                "{name} holds record {}/{} and {first_name} does not",
                ck.0, ck.1
            ));
        }
        return Err(format!(
            "{first_name} and {name} show the same winners but hold different versions"
        ));
    }
    Ok(())
}

fn list(ids: &[VersionId]) -> String {
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(" > ")
}
