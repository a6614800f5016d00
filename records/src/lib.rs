//! Keyed records on ferry's event log: a record write is an ordinary event
//! on the reserved topic `ferry.record/<collection>`, so it replicates, is
//! durable and is authenticated like any other. This crate is the pure part:
//! the payload format, versions and their causal contexts, and how a set of
//! versions becomes a current value, concurrent siblings and a history.
//!
//! The state of a record is a function of the *set* of its versions, never
//! of the order or the number of times they were applied, so every node
//! that holds the same events shows the same state (see `State` and
//! `converged`). The design is in docs/records.md.

mod record;
mod state;
mod write;

pub use record::{Record, Version};
pub use state::{converged, Applied, State};
pub use write::{
    check_collection, check_key, collection_of_topic, topic, Context, DecodeError, VersionId, Write,
    MAX_COLLECTION_LEN, MAX_KEY_LEN, TOPIC_PREFIX,
};
