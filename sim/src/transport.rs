//! QUIC as the simulator sees it: per connection and direction, streams of
//! bytes cut into packets, scheduled by stream priority (round robin among
//! equals), sent through a netsim `Pipe` (rate, delay, jitter, loss, queue)
//! under a congestion window, and resent after a probe timeout when lost.
//! What is modelled and what is not is listed in docs/architecture.md.

use ferry_sync::{StreamId, StreamKind};
use std::collections::{BTreeMap, VecDeque};

/// Stream bytes per packet, and what each packet costs beyond them (QUIC
/// short header, stream frame header, AEAD tag; netsim adds UDP and IP).
pub const MSS: usize = 1160;
pub const PACKET_OVERHEAD: usize = 40;
/// A data stream takes more from the core once less than this is unsent
/// (what quinn's send buffer does for `write_all`).
pub const SEND_BUFFER: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub enum Payload {
    Stream {
        /// As the sender names it.
        stream: StreamId,
        kind: StreamKind,
        offset: u64,
        bytes: Vec<u8>,
    },
    Ping,
    /// CONNECTION_CLOSE, or a stateless reset from a node that lost the
    /// connection's state.
    Close,
}

impl Payload {
    pub fn wire_size(&self) -> usize {
        match self {
            Payload::Stream { bytes, .. } => bytes.len() + PACKET_OVERHEAD,
            Payload::Ping | Payload::Close => PACKET_OVERHEAD,
        }
    }
}

struct SendStream {
    kind: StreamKind,
    priority: i32,
    unsent: VecDeque<u8>,
    offset: u64,
    /// The core waits for `handle_sent` on this stream.
    waiting: bool,
}

#[derive(Default)]
struct RecvStream {
    next: u64,
    early: BTreeMap<u64, Vec<u8>>,
}

/// One end's sending and receiving state.
#[derive(Default)]
pub struct End {
    send: BTreeMap<StreamId, SendStream>,
    recv: BTreeMap<StreamId, RecvStream>,
    pub in_flight: usize,
    turn: u64,
}

fn peer_name(s: StreamId) -> StreamId {
    match s {
        StreamId::Local(i) => StreamId::Remote(i),
        StreamId::Remote(i) => StreamId::Local(i),
    }
}

impl End {
    pub fn open(&mut self, stream: StreamId, kind: StreamKind, priority: i32) {
        self.send.insert(
            stream,
            SendStream {
                kind,
                priority,
                unsent: VecDeque::new(),
                offset: 0,
                waiting: false,
            },
        );
    }

    /// Queues bytes; true when the core may send more on this stream at
    /// once (control streams always).
    pub fn write(&mut self, stream: StreamId, bytes: &[u8]) -> bool {
        let s = self.send.entry(stream).or_insert_with(|| SendStream {
            kind: StreamKind::Bidi,
            priority: 10,
            unsent: VecDeque::new(),
            offset: 0,
            waiting: false,
        });
        s.unsent.extend(bytes);
        if s.kind == StreamKind::Bidi {
            return false;
        }
        if s.unsent.len() < SEND_BUFFER {
            true
        } else {
            s.waiting = true;
            false
        }
    }

    /// The next packet to send, by stream priority, round robin among
    /// streams of equal priority; and streams whose buffer drained enough
    /// for the core to send more.
    pub fn next_packet(&mut self) -> Option<(Payload, Option<StreamId>)> {
        let best = self
            .send
            .values()
            .filter(|s| !s.unsent.is_empty())
            .map(|s| s.priority)
            .max()?;
        let ready: Vec<StreamId> = self
            .send
            .iter()
            .filter(|(_, s)| !s.unsent.is_empty() && s.priority == best)
            .map(|(id, _)| *id)
            .collect();
        let id = ready[(self.turn as usize) % ready.len()];
        self.turn += 1;
        let s = self.send.get_mut(&id)?;
        let n = s.unsent.len().min(MSS);
        let bytes: Vec<u8> = s.unsent.drain(..n).collect();
        let payload = Payload::Stream {
            stream: id,
            kind: s.kind,
            offset: s.offset,
            bytes,
        };
        s.offset += n as u64;
        let drained = (s.waiting && s.unsent.len() < SEND_BUFFER).then(|| {
            s.waiting = false;
            id
        });
        Some((payload, drained))
    }

    /// Bytes arrived: returns the stream as this end names it and the bytes
    /// now contiguous, if any.
    pub fn receive(&mut self, stream: StreamId, offset: u64, bytes: Vec<u8>) -> Option<(StreamId, Vec<u8>)> {
        let name = peer_name(stream);
        let r = self.recv.entry(name).or_default();
        if offset + bytes.len() as u64 <= r.next {
            return None;
        }
        r.early.insert(offset, bytes);
        let mut out = Vec::new();
        while let Some((&off, _)) = r.early.iter().next() {
            if off > r.next {
                break;
            }
            let Some(chunk) = r.early.remove(&off) else { break };
            let skip = (r.next - off) as usize;
            if skip < chunk.len() {
                out.extend_from_slice(&chunk[skip..]);
                r.next += (chunk.len() - skip) as u64;
            }
        }
        (!out.is_empty()).then_some((name, out))
    }

    pub fn has_unsent(&self) -> bool {
        self.send.values().any(|s| !s.unsent.is_empty())
    }
}
