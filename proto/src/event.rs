//! The unit of replication.

use crate::{Hlc, Origin};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Priority class of an event. Lower value crosses a thin link first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(into = "u8", try_from = "u8")]
pub enum Priority {
    Urgent = 0,
    #[default]
    Normal = 1,
    Bulk = 2,
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> u8 {
        p as u8
    }
}

impl TryFrom<u8> for Priority {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(Priority::Urgent),
            1 => Ok(Priority::Normal),
            2 => Ok(Priority::Bulk),
            _ => Err(format!("unknown priority class {v}")),
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "urgent" => Ok(Priority::Urgent),
            "normal" => Ok(Priority::Normal),
            "bulk" => Ok(Priority::Bulk),
            _ => Err(format!("unknown priority '{s}': use urgent, normal or bulk")),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Priority::Urgent => "urgent",
            Priority::Normal => "normal",
            Priority::Bulk => "bulk",
        })
    }
}

/// Limits that bound what one event may cost a receiver.
pub const MAX_TOPIC_LEN: usize = 128;
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;

/// One event, addressed by `(origin, seq)`. Serialised as a CBOR array, not a
/// map, so field names cost no bytes on disk or on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub origin: Origin,
    pub seq: u64,
    pub hlc: Hlc,
    pub topic: String,
    pub priority: Priority,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("sequence numbers start at 1")]
    ZeroSeq,
    #[error("topic is {0} bytes; the limit is {MAX_TOPIC_LEN}")]
    TopicTooLong(usize),
    #[error("payload is {0} bytes; the limit is {MAX_PAYLOAD_LEN}")]
    PayloadTooLarge(usize),
}

impl Event {
    /// Checks the limits every node enforces on events it did not write.
    pub fn validate(&self) -> Result<(), EventError> {
        if self.seq == 0 {
            return Err(EventError::ZeroSeq);
        }
        check_limits(&self.topic, &self.payload)
    }
}

pub fn check_limits(topic: &str, payload: &[u8]) -> Result<(), EventError> {
    if topic.len() > MAX_TOPIC_LEN {
        return Err(EventError::TopicTooLong(topic.len()));
    }
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(EventError::PayloadTooLarge(payload.len()));
    }
    Ok(())
}

/// CBOR encoding of one event (the WAL's record plaintext).
pub fn encode_event(e: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + e.payload.len());
    // Writing CBOR into a Vec cannot fail: the only error source is the writer.
    ciborium::into_writer(&EventRepr::from(e), &mut out).expect("CBOR into Vec");
    out
}

pub fn decode_event(bytes: &[u8]) -> Result<Event, String> {
    let repr: EventRepr = ciborium::from_reader(bytes).map_err(|e| e.to_string())?;
    Ok(repr.into())
}

/// Tuple form: a CBOR array of six items.
#[derive(Serialize, Deserialize)]
pub(crate) struct EventRepr(
    Origin,
    u64,
    Hlc,
    String,
    Priority,
    #[serde(with = "serde_bytes")] Vec<u8>,
);

impl From<&Event> for EventRepr {
    fn from(e: &Event) -> Self {
        EventRepr(e.origin, e.seq, e.hlc, e.topic.clone(), e.priority, e.payload.clone())
    }
}

impl From<EventRepr> for Event {
    fn from(r: EventRepr) -> Self {
        Event {
            origin: r.0,
            seq: r.1,
            hlc: r.2,
            topic: r.3,
            priority: r.4,
            payload: r.5,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::NodeId;
    use proptest::prelude::*;

    pub fn arb_event() -> impl Strategy<Value = Event> {
        (
            any::<[u8; 16]>(),
            any::<u32>(),
            1u64..u64::MAX,
            any::<u64>(),
            "[a-z/._-]{0,20}",
            0u8..3,
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(n, epoch, seq, hlc, topic, p, payload)| Event {
                origin: Origin { node: NodeId(n), epoch },
                seq,
                hlc: Hlc(hlc),
                topic,
                priority: Priority::try_from(p).unwrap(), // p < 3
                payload,
            })
    }

    proptest! {
        #[test]
        fn event_round_trips(e in arb_event()) {
            prop_assert_eq!(decode_event(&encode_event(&e)), Ok(e));
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_event(&bytes);
        }
    }

    #[test]
    fn encoding_is_compact() {
        let e = Event {
            origin: Origin {
                node: NodeId([7; 16]),
                epoch: 1,
            },
            seq: 1,
            hlc: Hlc::new(1_700_000_000_000, 0),
            topic: "t".into(),
            priority: Priority::Normal,
            payload: vec![0; 10],
        };
        // array(1) + origin(21) + seq(1) + hlc(9) + topic(2) + prio(1) + payload(11)
        assert_eq!(encode_event(&e).len(), 46);
    }
}
