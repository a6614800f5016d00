//! Frames out of a stream's bytes, however the bytes were cut up in transit.

use ferry_proto::{Frame, FrameError};

#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Takes the next bytes of the stream; returns the frames they complete.
    /// A frame's length is checked against the limit as soon as its prefix
    /// is in, before its body is buffered.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut used = 0;
        while let Some((frame, n)) = Frame::decode(&self.buf[used..])? {
            frames.push(frame);
            used += n;
        }
        self.buf.drain(..used);
        Ok(frames)
    }

    /// Bytes of a frame not yet complete: a stream that ends with some has
    /// been cut in the middle of a frame.
    pub fn partial(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frames_survive_any_cutting(cuts in proptest::collection::vec(1usize..40, 1..20), n in 1u64..10) {
            let frames: Vec<Frame> = (0..n).map(|i| Frame::Done { summary: i as u32, received: i * 1000 }).collect();
            let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
            let mut r = FrameReader::default();
            let mut out = Vec::new();
            let mut pos = 0;
            for c in cuts.iter().cycle() {
                if pos >= bytes.len() { break; }
                let end = (pos + c).min(bytes.len());
                out.extend(r.push(&bytes[pos..end]).unwrap());
                pos = end;
            }
            prop_assert_eq!(out, frames);
            prop_assert_eq!(r.partial(), 0);
        }
    }
}
