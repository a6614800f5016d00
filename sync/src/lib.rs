//! ferry's replication protocol as a state machine, with no I/O.
//!
//! A `Replica` holds one node's view: its store, its sessions with peers,
//! the ranges being fetched (claims) and its policy. A driver feeds it what
//! happened (`handle_*`: bytes on a stream, a connection up or down, an
//! append made durable, a timer) and carries out what it asks
//! (`poll_action`: open a stream, send bytes, append events, close). Time,
//! randomness and storage come from outside, so the same code runs in the
//! QUIC node and, in virtual time, in the simulator (`ferry-sim`).
//!
//! Layout: `io` is the boundary; `replica` the node-level state; `session`
//! one connection, with `pull` (what to ask for, what arrives) and `serve`
//! (answering wants, pushing new events) through `lane`s; `claims` and
//! `pending` are shared between sessions; `store` and `memstore` are where
//! events live; `policy` says who may have what; `trust`
//! which nodes are revoked and what of theirs is refused.

pub mod auth;
mod claims;
mod config;
mod forge;
mod io;
mod lane;
mod memstore;
mod pending;
mod policy;
mod pull;
mod reader;
mod replica;
mod rng;
mod serve;
mod session;
#[cfg(any(test, feature = "fault-injection"))]
pub mod stand_in;
mod store;
mod summaries;
mod trust;

pub use config::{Bugs, Config};
pub use io::{Action, ConnId, Notice, PeerInfo, StreamId, StreamKind, Ticket, Time};
pub use memstore::{GroupId, MemStore};
pub use policy::Policy;
pub use reader::FrameReader;
pub use replica::{Replica, SessionView};
pub use session::SessionStats;
pub use store::{AppendReport, Store, StoreError};
pub use trust::Trust;
