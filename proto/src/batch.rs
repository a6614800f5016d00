//! Compression of the events on one data stream.
//!
//! One zstd context per data stream, flushed after every chunk: each frame
//! is decodable the moment it arrives (so events are appended as they come
//! and a cut loses only what was in flight), yet each chunk is compressed
//! with everything earlier on the stream as context. Clinic events share
//! most of their structure, so this is far smaller than compressing each
//! chunk alone. A stream is ordered and reliable, which is all this needs.
//!
//! A chunk holds whole events, or one piece of an event larger than
//! `BATCH_BYTES`: a photo crosses a thin link as pieces that take turns with
//! small events instead of one frame that blocks its stream for minutes.

use crate::event::EventRepr;
use crate::frame::{FrameError, MAX_BATCH_DECOMPRESSED};
use crate::{Event, Hlc, Origin, Priority};
use serde::{Deserialize, Serialize};
use std::io::Write;
use zstd::stream::raw::CParameter;

/// zstd level for links where bytes are dear.
pub const LEVEL_WAN: i32 = 6;
/// zstd level for a LAN or loopback: speed matters more than bytes.
pub const LEVEL_LAN: i32 = 1;
/// 2^17 = 128 KiB of history: plenty for events of a few hundred bytes, and
/// it bounds the decoder's memory on a small node.
pub const WINDOW_LOG: u32 = 17;

/// One piece of an event larger than a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub origin: Origin,
    pub seq: u64,
    pub hlc: Hlc,
    pub topic: String,
    pub priority: Priority,
    /// The whole payload's length, and where this piece starts in it.
    pub total: u32,
    pub offset: u32,
    pub bytes: Vec<u8>,
}

/// What a chunk carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Event(Event),
    Piece(Piece),
}

impl Item {
    pub fn origin(&self) -> Origin {
        match self {
            Item::Event(e) => e.origin,
            Item::Piece(p) => p.origin,
        }
    }
    pub fn seq(&self) -> u64 {
        match self {
            Item::Event(e) => e.seq,
            Item::Piece(p) => p.seq,
        }
    }
}

#[derive(Serialize, Deserialize)]
enum ItemRepr {
    E(EventRepr),
    P(
        Origin,
        u64,
        Hlc,
        String,
        Priority,
        u32,
        u32,
        #[serde(with = "serde_bytes")] Vec<u8>,
    ),
}

impl From<&Item> for ItemRepr {
    fn from(i: &Item) -> Self {
        match i {
            Item::Event(e) => ItemRepr::E(EventRepr::from(e)),
            Item::Piece(p) => ItemRepr::P(
                p.origin,
                p.seq,
                p.hlc,
                p.topic.clone(),
                p.priority,
                p.total,
                p.offset,
                p.bytes.clone(),
            ),
        }
    }
}

impl From<ItemRepr> for Item {
    fn from(r: ItemRepr) -> Self {
        match r {
            ItemRepr::E(e) => Item::Event(e.into()),
            ItemRepr::P(origin, seq, hlc, topic, priority, total, offset, bytes) => Item::Piece(Piece {
                origin,
                seq,
                hlc,
                topic,
                priority,
                total,
                offset,
                bytes,
            }),
        }
    }
}

fn malformed(detail: impl ToString) -> FrameError {
    FrameError::Malformed {
        kind: "event chunk",
        detail: detail.to_string(),
    }
}

pub struct StreamCompressor {
    enc: zstd::stream::write::Encoder<'static, Vec<u8>>,
}

impl StreamCompressor {
    pub fn new(level: i32) -> Self {
        // Creating a context and setting documented parameters to valid
        // constants only fails when out of memory.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level).expect("zstd context");
        enc.set_parameter(CParameter::WindowLog(WINDOW_LOG))
            .expect("zstd window");
        StreamCompressor { enc }
    }

    /// The next chunk of the stream, carrying `items`.
    pub fn compress(&mut self, items: &[Item]) -> Vec<u8> {
        let reprs: Vec<ItemRepr> = items.iter().map(ItemRepr::from).collect();
        let mut raw = Vec::new();
        // Into a Vec: cannot fail.
        ciborium::into_writer(&reprs, &mut raw).expect("CBOR into Vec");
        // Writing into and flushing to a Vec cannot fail either.
        self.enc.write_all(&raw).expect("zstd write");
        self.enc.flush().expect("zstd flush");
        std::mem::take(self.enc.get_mut())
    }
}

/// A Vec that refuses to grow past a limit: one chunk may not decompress to
/// more than `MAX_BATCH_DECOMPRESSED`.
struct Bounded(Vec<u8>);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_BATCH_DECOMPRESSED {
            return Err(std::io::Error::other("chunk decompresses beyond the limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct StreamDecompressor {
    dec: zstd::stream::write::Decoder<'static, Bounded>,
}

impl StreamDecompressor {
    pub fn new() -> Self {
        // As above: only fails when out of memory.
        let mut dec = zstd::stream::write::Decoder::new(Bounded(Vec::new())).expect("zstd context");
        dec.window_log_max(WINDOW_LOG).expect("zstd window");
        StreamDecompressor { dec }
    }

    /// Decodes the next chunk of the stream. After an error the stream is
    /// unusable: the caller ends it.
    pub fn decompress(&mut self, chunk: &[u8]) -> Result<Vec<Item>, FrameError> {
        let result = self.dec.write_all(chunk).and_then(|()| self.dec.flush());
        let raw = std::mem::take(&mut self.dec.get_mut().0);
        result.map_err(malformed)?;
        let reprs: Vec<ItemRepr> = ciborium::from_reader(raw.as_slice()).map_err(malformed)?;
        let items: Vec<Item> = reprs.into_iter().map(Item::from).collect();
        for item in &items {
            match item {
                Item::Event(e) => e
                    .validate()
                    .map_err(|err| malformed(format!("event {}:{}: {err}", e.origin, e.seq)))?,
                Item::Piece(p) => {
                    let end = p.offset as u64 + p.bytes.len() as u64;
                    let shell = Event {
                        origin: p.origin,
                        seq: p.seq,
                        hlc: p.hlc,
                        topic: p.topic.clone(),
                        priority: p.priority,
                        payload: Vec::new(),
                    };
                    shell
                        .validate()
                        .map_err(|err| malformed(format!("piece {}:{}: {err}", p.origin, p.seq)))?;
                    if p.total as usize > crate::event::MAX_PAYLOAD_LEN || end > p.total as u64 || p.bytes.is_empty() {
                        return Err(malformed(format!(
                            "piece {}:{} covers {}..{end} of {} bytes",
                            p.origin, p.seq, p.offset, p.total
                        )));
                    }
                }
            }
        }
        Ok(items)
    }
}

impl Default for StreamDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

/// The piece of a large event starting at `offset`, at most `BATCH_BYTES`
/// long; `None` past its end.
pub fn piece(e: &Event, offset: usize) -> Option<Piece> {
    let end = offset.checked_add(crate::frame::BATCH_BYTES)?.min(e.payload.len());
    let bytes = e.payload.get(offset..end).filter(|b| !b.is_empty())?;
    Some(Piece {
        origin: e.origin,
        seq: e.seq,
        hlc: e.hlc,
        topic: e.topic.clone(),
        priority: e.priority,
        total: e.payload.len() as u32,
        offset: offset as u32,
        bytes: bytes.to_vec(),
    })
}

/// Every piece of an event, in order.
pub fn pieces(e: &Event) -> Vec<Piece> {
    (0..e.payload.len())
        .step_by(crate::frame::BATCH_BYTES)
        .filter_map(|offset| piece(e, offset))
        .collect()
}

/// Puts an event back together from its pieces as they arrive, in order.
#[derive(Debug, Default)]
pub struct Assembly {
    partial: Option<(Piece, Vec<u8>)>,
}

impl Assembly {
    /// Takes the next piece; the whole event once its last piece is in.
    pub fn add(&mut self, p: Piece) -> Result<Option<Event>, String> {
        let (head, buf) = match self.partial.take() {
            None if p.offset == 0 => {
                let mut buf = Vec::with_capacity(p.total as usize);
                buf.extend_from_slice(&p.bytes);
                (p, buf)
            }
            None => {
                return Err(format!(
                    "piece of {}:{} at offset {} without its start",
                    p.origin, p.seq, p.offset
                ))
            }
            Some((head, mut buf)) => {
                if (p.origin, p.seq, p.total) != (head.origin, head.seq, head.total) || p.offset as usize != buf.len() {
                    return Err(format!(
                        "piece of {}:{} at {} interrupts {}:{} at {}",
                        p.origin,
                        p.seq,
                        p.offset,
                        head.origin,
                        head.seq,
                        buf.len()
                    ));
                }
                buf.extend_from_slice(&p.bytes);
                (head, buf)
            }
        };
        if buf.len() < head.total as usize {
            self.partial = Some((head, buf));
            return Ok(None);
        }
        Ok(Some(Event {
            origin: head.origin,
            seq: head.seq,
            hlc: head.hlc,
            topic: head.topic,
            priority: head.priority,
            payload: buf,
        }))
    }

    /// Whether an event is half received.
    pub fn in_progress(&self) -> Option<(Origin, u64)> {
        self.partial.as_ref().map(|(p, _)| (p.origin, p.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::arb_event;
    use crate::{Hlc, NodeId, Origin, Priority};
    use proptest::prelude::*;

    fn clinic_event(i: u64) -> Event {
        let payload = format!(
            r#"{{"type":"vitals","clinic":"BHU-GASA","patient_id":"BT-TH-{:06}","systolic":{},"pulse":{},"recorded_by":"Sonam Lhamo"}}"#,
            (i * 7919) % 1_000_000,
            90 + i % 90,
            48 + (i * 31) % 80
        );
        Event {
            origin: Origin {
                node: NodeId([3; 16]),
                epoch: 1,
            },
            seq: i + 1,
            hlc: Hlc::new(1_700_000_000_000 + i * 1000, 0),
            topic: "clinic/visit".into(),
            priority: Priority::Normal,
            payload: payload.into_bytes(),
        }
    }

    proptest! {
        #[test]
        fn chunks_decode_in_order(batches in proptest::collection::vec(proptest::collection::vec(arb_event(), 0..6), 1..6)) {
            let mut c = StreamCompressor::new(LEVEL_WAN);
            let mut d = StreamDecompressor::new();
            for batch in batches {
                let items: Vec<Item> = batch.into_iter().map(|mut e| { e.topic.truncate(100); Item::Event(e) }).collect();
                prop_assert_eq!(d.decompress(&c.compress(&items)).unwrap(), items);
            }
        }

        #[test]
        fn garbage_chunks_are_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = StreamDecompressor::new().decompress(&bytes);
        }

        #[test]
        fn pieces_reassemble(len in 1usize..200_000, seed in any::<u8>()) {
            let mut e = clinic_event(1);
            e.payload = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
            let mut a = Assembly::default();
            let ps = pieces(&e);
            let n = ps.len();
            for (i, p) in ps.into_iter().enumerate() {
                let out = a.add(p).unwrap();
                prop_assert_eq!(out.is_some(), i + 1 == n);
                if let Some(back) = out { prop_assert_eq!(&back, &e); }
            }
        }
    }

    #[test]
    fn shared_context_beats_separate_batches() {
        let events: Vec<Event> = (0..1024).map(clinic_event).collect();
        let mut c = StreamCompressor::new(LEVEL_WAN);
        let items: Vec<Item> = events.iter().cloned().map(Item::Event).collect();
        let streamed: usize = items.chunks(128).map(|b| c.compress(b).len()).sum();
        let separate: usize = events
            .chunks(128)
            .map(|b| {
                let reprs: Vec<EventRepr> = b.iter().map(EventRepr::from).collect();
                let mut raw = Vec::new();
                ciborium::into_writer(&reprs, &mut raw).unwrap(); // into a Vec
                zstd::bulk::compress(&raw, LEVEL_WAN).unwrap().len() // in memory, valid level
            })
            .sum();
        println!("1024 events in 8 batches: {streamed} bytes streamed, {separate} separately");
        assert!(
            streamed * 10 < separate * 9,
            "streamed {streamed} vs separate {separate}"
        );
    }

    #[test]
    fn a_bomb_is_refused() {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        enc.write_all(&vec![0u8; MAX_BATCH_DECOMPRESSED + 1]).unwrap();
        let z = enc.finish().unwrap();
        assert!(StreamDecompressor::new().decompress(&z).is_err());
    }

    #[test]
    fn out_of_order_pieces_are_refused() {
        let mut e = clinic_event(1);
        e.payload = vec![7; 3 * crate::frame::BATCH_BYTES];
        let ps = pieces(&e);
        assert!(Assembly::default().add(ps[1].clone()).is_err());
        let mut a = Assembly::default();
        a.add(ps[0].clone()).unwrap();
        assert!(a.add(ps[2].clone()).is_err());
    }
}
