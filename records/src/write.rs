//! What one record write carries, and how it is spelled in an event payload.

use ferry_proto::Origin;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Every record event's topic starts with this; the collection follows.
pub const TOPIC_PREFIX: &str = "ferry.record/";
/// Longest collection name, so that the topic fits the protocol's 128 bytes.
pub const MAX_COLLECTION_LEN: usize = 64;
/// Longest key, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 512;
/// The payload format this crate writes; a newer one is refused, not guessed.
const FORMAT: u8 = 1;

/// The topic of a collection's record events.
pub fn topic(collection: &str) -> String {
    format!("{TOPIC_PREFIX}{collection}")
}

/// The collection a topic belongs to, if it is a record topic.
pub fn collection_of_topic(topic: &str) -> Option<&str> {
    topic.strip_prefix(TOPIC_PREFIX)
}

/// A collection is 1 to 64 of `A-Z a-z 0-9 . _ -`: it becomes part of a
/// topic and of URL paths, where anything else needs escaping.
pub fn check_collection(c: &str) -> Result<(), String> {
    if c.is_empty() || c.len() > MAX_COLLECTION_LEN {
        return Err(format!(
            "a collection name is 1 to {MAX_COLLECTION_LEN} characters; '{c}' has {}",
            c.len()
        ));
    }
    if let Some(bad) = c
        .chars()
        .find(|ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')))
    {
        return Err(format!(
            "collection '{c}' holds '{bad}'; use letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// A key is 1 to 512 bytes of UTF-8 without control characters.
pub fn check_key(k: &str) -> Result<(), String> {
    if k.is_empty() || k.len() > MAX_KEY_LEN {
        return Err(format!("a key is 1 to {MAX_KEY_LEN} bytes; this one has {}", k.len()));
    }
    if k.chars().any(char::is_control) {
        return Err("a key may not hold control characters".into());
    }
    Ok(())
}

/// A version of a record: the `(origin, seq)` of the event that wrote it.
/// Spelled `ORIGIN:SEQ`, like event ids everywhere else in ferry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VersionId {
    pub origin: Origin,
    pub seq: u64,
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.seq)
    }
}

impl std::str::FromStr for VersionId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("version '{s}' is not ORIGIN:SEQ (as an ETag or a record's `version` shows it)");
        let (o, seq) = s.rsplit_once(':').ok_or_else(bad)?;
        Ok(VersionId {
            origin: o.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// The causal context of a write: for each origin, the highest sequence
/// number among that origin's versions of this record which the writer had
/// seen, directly or through the contexts of what it saw. A version is
/// superseded by a write exactly when the write's context covers it.
///
/// A version vector rather than a list of version ids, because one origin's
/// versions of a record form a chain (each of its writes saw its own earlier
/// ones), so one number per origin says everything, and it stays one entry
/// per writing node however long the history grows. It also covers a version
/// that a node has not received yet: C superseding B superseding A hides A
/// even where B is still on its way.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Context(BTreeMap<Origin, u64>);

impl Context {
    pub fn new() -> Context {
        Context::default()
    }

    pub fn covers(&self, v: &VersionId) -> bool {
        self.0.get(&v.origin).is_some_and(|s| *s >= v.seq)
    }

    /// Adds one version seen.
    pub fn see(&mut self, v: &VersionId) {
        let e = self.0.entry(v.origin).or_insert(0);
        *e = (*e).max(v.seq);
    }

    /// Adds everything another context saw.
    pub fn merge(&mut self, other: &Context) {
        for (o, s) in &other.0 {
            let e = self.0.entry(*o).or_insert(0);
            *e = (*e).max(*s);
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = VersionId> + '_ {
        self.0.iter().map(|(o, s)| VersionId { origin: *o, seq: *s })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A writer cannot have seen its own later writes: an entry for the
    /// writing origin at or past the write's own number is dropped, so no
    /// version can hide itself.
    pub(crate) fn sanitized_for(mut self, id: &VersionId) -> Context {
        if self.0.get(&id.origin).is_some_and(|s| *s >= id.seq) {
            self.0.remove(&id.origin);
        }
        self
    }
}

/// One record write: what the event payload carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub collection: String,
    pub key: String,
    /// `None` is a tombstone (a delete).
    pub value: Option<Vec<u8>>,
    pub context: Context,
}

/// The payload on the wire: a CBOR array, so field names cost nothing.
#[derive(Serialize, Deserialize)]
struct Wire(u8, String, String, Option<serde_bytes::ByteBuf>, Context);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("the payload is not a record write: {0}")]
    Malformed(String),
    #[error("record payload format {0} is newer than this node understands ({FORMAT}); upgrade ferry")]
    NewerFormat(u8),
    #[error("the record write names collection '{found}' but was sent on topic '{topic}'")]
    WrongTopic { found: String, topic: String },
    #[error("{0}")]
    BadName(String),
}

impl Write {
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire(
            FORMAT,
            self.collection.clone(),
            self.key.clone(),
            self.value.clone().map(serde_bytes::ByteBuf::from),
            self.context.clone(),
        );
        let mut out = Vec::with_capacity(64 + self.value.as_ref().map_or(0, Vec::len));
        // Writing CBOR into a Vec cannot fail: no I/O error is possible and
        // every field is a plain serialisable type.
        ciborium::into_writer(&wire, &mut out).expect("CBOR into a Vec");
        out
    }

    /// Reads a record write from an event's topic and payload.
    pub fn decode(topic: &str, payload: &[u8]) -> Result<Write, DecodeError> {
        let wire: Wire = ciborium::from_reader(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if wire.0 != FORMAT {
            return Err(DecodeError::NewerFormat(wire.0));
        }
        if collection_of_topic(topic) != Some(wire.1.as_str()) {
            return Err(DecodeError::WrongTopic {
                found: wire.1,
                topic: topic.to_string(),
            });
        }
        check_collection(&wire.1).map_err(DecodeError::BadName)?;
        check_key(&wire.2).map_err(DecodeError::BadName)?;
        Ok(Write {
            collection: wire.1,
            key: wire.2,
            value: wire.3.map(serde_bytes::ByteBuf::into_vec),
            context: wire.4,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::NodeId;

    fn origin(n: u8) -> Origin {
        Origin {
            node: NodeId([n; 16]),
            epoch: 1,
        }
    }

    #[test]
    fn a_write_round_trips_and_is_refused_on_another_topic() {
        let mut context = Context::new();
        context.see(&VersionId {
            origin: origin(1),
            seq: 4,
        });
        let w = Write {
            collection: "patients".into(),
            key: "p-17".into(),
            value: Some(b"{\"name\":\"Dorji\"}".to_vec()),
            context,
        };
        let bytes = w.encode();
        assert_eq!(Write::decode("ferry.record/patients", &bytes), Ok(w.clone()));
        assert!(matches!(
            Write::decode("ferry.record/stock", &bytes),
            Err(DecodeError::WrongTopic { .. })
        ));
        assert!(matches!(
            Write::decode("ferry.record/patients", b"not cbor"),
            Err(DecodeError::Malformed(_))
        ));
        let tomb = Write { value: None, ..w };
        assert_eq!(Write::decode("ferry.record/patients", &tomb.encode()), Ok(tomb));
    }

    #[test]
    fn version_ids_parse_as_they_print() {
        let v = VersionId {
            origin: origin(9),
            seq: 12,
        };
        assert_eq!(v.to_string().parse::<VersionId>(), Ok(v));
        assert!("nonsense".parse::<VersionId>().is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_collection("patients.v2_x-y").is_ok());
        assert!(check_collection("").is_err());
        assert!(check_collection("a/b").is_err());
        assert!(check_collection(&"a".repeat(65)).is_err());
        assert!(check_key("p/17 é").is_ok());
        assert!(check_key("a\nb").is_err());
        assert!(check_key("").is_err());
    }
}
