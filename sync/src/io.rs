//! The core's boundary: what a driver hands in and what it must carry out.
//!
//! A driver (the QUIC node, or the simulator) owns sockets, streams, timers
//! and the disk. It tells the core what happened with `Replica::handle_*`
//! and carries out the `Action`s that `Replica::poll_action` returns. Time
//! is an argument, never read.

use ferry_proto::{Classes, Event, NodeId, Origin, Role, Summary};
use std::fmt;

/// A point in time in microseconds, on whatever clock the driver keeps
/// (the node: since it started; the simulator: virtual).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    pub const fn from_millis(ms: u64) -> Time {
        Time(ms * 1000)
    }
    pub const fn from_secs(s: u64) -> Time {
        Time(s * 1_000_000)
    }
    pub fn saturating_add(self, d: Time) -> Time {
        Time(self.0.saturating_add(d.0))
    }
    pub fn saturating_sub(self, d: Time) -> Time {
        Time(self.0.saturating_sub(d.0))
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

impl From<std::time::Duration> for Time {
    fn from(d: std::time::Duration) -> Time {
        Time(d.as_micros().min(u64::MAX as u128) as u64)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.as_secs_f64())
    }
}

/// A connection, named by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// A stream within a connection: opened by this side (numbered by the core)
/// or by the peer (numbered by the driver as it accepts them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamId {
    Local(u32),
    Remote(u32),
}

/// Names one append handed to the driver, so its outcome can be reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// What the driver knows of a peer once its certificate is verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub node: NodeId,
    pub role: Role,
    pub name: String,
    /// On this node's LAN: cheaper to pull from than a peer over the WAN.
    pub lan: bool,
    /// This node dialled the connection (and so opens its control stream).
    pub dialer: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// Both ways: the control stream.
    Bidi,
    /// This side sends only: a data stream.
    Uni,
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a stream; `priority`: higher goes first on a thin link.
    Open {
        conn: ConnId,
        stream: StreamId,
        kind: StreamKind,
        priority: i32,
    },
    /// Write these bytes on the stream, in order after earlier sends. On a
    /// data stream the core sends nothing more until `handle_sent`.
    Send {
        conn: ConnId,
        stream: StreamId,
        bytes: Vec<u8>,
    },
    /// End the stream: nothing more will be sent on it.
    Finish { conn: ConnId, stream: StreamId },
    /// Close the connection with an error code (`ErrorCode`) and a reason.
    Close { conn: ConnId, code: u16, reason: String },
    /// Append these events, received on `conn`, durably; then call
    /// `handle_appended`.
    Append {
        conn: ConnId,
        ticket: Ticket,
        events: Vec<Event>,
    },
    /// This node starts a new log for its own events: persist the epoch.
    NewEpoch(Origin),
    /// Something the driver may want to show or record.
    Notice(Notice),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// The peer pulled everything this node's latest summary offered, and
    /// this node everything the peer's latest summary offered: the two are
    /// in step. A one-shot sync closes here.
    InStep { conn: ConnId },
    /// What the peer holds as far as this node knows (its summary plus
    /// everything sent to it since), for the next 0-RTT reconnect.
    PeerHolds {
        conn: ConnId,
        summary: Summary,
        classes: Classes,
    },
    /// A round this node pulled for finished.
    RoundDone { conn: ConnId, received: u64 },
    /// The peer would not serve a want.
    Refused { conn: ConnId, code: u16, message: String },
    /// Events of `origin` `first..=last` the peer sent did not prove
    /// against their writer's signed head (forged, altered, or sent
    /// without a proof): not appended; the rest of the sync goes on.
    Unproved {
        conn: ConnId,
        origin: Origin,
        first: u64,
        last: u64,
        reason: String,
    },
    /// The peer sent a writer's credential this node does not accept (in
    /// a node: a certificate the deployment CA did not sign): that
    /// writer's heads from it will not verify.
    KeyRefused { conn: ConnId, reason: String },
}
