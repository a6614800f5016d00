//! ferry's wire protocol and replication logic, with no I/O and no async.
//!
//! Everything here is driven by the caller handing in bytes and wall-clock
//! readings, so it is tested with plain unit and property tests (the
//! quinn-proto / rustls "sans-I/O" style).

pub mod batch;
pub mod event;
pub mod frame;
pub mod hlc;
pub mod id;
pub mod merkle;
pub mod rangeset;
pub mod role;
pub mod summary;
mod varint;

pub use event::{Event, Priority};
pub use frame::{ErrorCode, Frame, FrameError, Hello, Subscription, Want};
pub use hlc::{Clock, Hlc};
pub use id::{NodeId, Origin, ParseIdError};
pub use rangeset::RangeSet;
pub use role::{ParseRoleError, Role};
pub use summary::{apply_change, change_to, Classes, Gap, Summary};

/// ALPN protocol id and the version carried in `Hello`.
pub const ALPN: &[u8] = b"ferry/5";
pub const PROTOCOL_VERSION: u32 = 5;
