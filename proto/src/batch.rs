//! Compression of the events answering one `Want`.
//!
//! One zstd context per want stream, flushed after every batch: each frame
//! is decodable the moment it arrives (so events are appended as they come
//! and a cut loses only what was in flight), yet each batch is compressed
//! with everything earlier on the stream as context. Clinic events share
//! most of their structure, so this is far smaller than compressing each
//! batch alone. A stream is ordered and reliable, which is all this needs.

use crate::event::EventRepr;
use crate::frame::{FrameError, MAX_BATCH_DECOMPRESSED};
use crate::Event;
use std::io::Write;
use zstd::stream::raw::CParameter;

/// zstd level: most of the gain of level 19 at a cost a Pi can pay.
pub const LEVEL: i32 = 6;
/// 2^17 = 128 KiB of history: plenty for events of a few hundred bytes, and
/// it bounds the decoder's memory on a small node.
pub const WINDOW_LOG: u32 = 17;

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
    pub fn new() -> Self {
        // Creating a context and setting documented parameters to valid
        // constants only fails when out of memory.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), LEVEL).expect("zstd context");
        enc.set_parameter(CParameter::WindowLog(WINDOW_LOG))
            .expect("zstd window");
        StreamCompressor { enc }
    }

    /// The next chunk of the stream, carrying `events`.
    pub fn compress(&mut self, events: &[Event]) -> Vec<u8> {
        let reprs: Vec<EventRepr> = events.iter().map(EventRepr::from).collect();
        let mut raw = Vec::new();
        // Into a Vec: cannot fail.
        ciborium::into_writer(&reprs, &mut raw).expect("CBOR into Vec");
        // Writing into and flushing to a Vec cannot fail either.
        self.enc.write_all(&raw).expect("zstd write");
        self.enc.flush().expect("zstd flush");
        std::mem::take(self.enc.get_mut())
    }
}

impl Default for StreamCompressor {
    fn default() -> Self {
        Self::new()
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
    pub fn decompress(&mut self, chunk: &[u8]) -> Result<Vec<Event>, FrameError> {
        self.dec.write_all(chunk).map_err(malformed)?;
        self.dec.flush().map_err(malformed)?;
        let raw = std::mem::take(&mut self.dec.get_mut().0);
        let reprs: Vec<EventRepr> = ciborium::from_reader(raw.as_slice()).map_err(malformed)?;
        let events: Vec<Event> = reprs.into_iter().map(Event::from).collect();
        for e in &events {
            e.validate()
                .map_err(|err| malformed(format!("event {}:{}: {err}", e.origin, e.seq)))?;
        }
        Ok(events)
    }
}

impl Default for StreamDecompressor {
    fn default() -> Self {
        Self::new()
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
            let mut c = StreamCompressor::new();
            let mut d = StreamDecompressor::new();
            for batch in batches {
                let batch: Vec<Event> = batch.into_iter().map(|mut e| { e.topic.truncate(100); e }).collect();
                prop_assert_eq!(d.decompress(&c.compress(&batch)).unwrap(), batch);
            }
        }

        #[test]
        fn garbage_chunks_are_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = StreamDecompressor::new().decompress(&bytes);
        }
    }

    #[test]
    fn shared_context_beats_separate_batches() {
        let events: Vec<Event> = (0..1024).map(clinic_event).collect();
        let mut c = StreamCompressor::new();
        let streamed: usize = events.chunks(128).map(|b| c.compress(b).len()).sum();
        let separate: usize = events
            .chunks(128)
            .map(|b| {
                let reprs: Vec<EventRepr> = b.iter().map(EventRepr::from).collect();
                let mut raw = Vec::new();
                ciborium::into_writer(&reprs, &mut raw).unwrap(); // into a Vec
                zstd::bulk::compress(&raw, LEVEL).unwrap().len() // in memory, valid level
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
}
