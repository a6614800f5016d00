//! What each fuzz target does with its input, shared by the targets in
//! `fuzz_targets/` and by the regression tests, which run the inputs saved
//! under `regressions/<target>/` through the same functions.

pub mod replica;
pub mod wal_open;

use ferry_proto::batch::StreamDecompressor;
use ferry_proto::Frame;

/// The frame decoder, on a byte stream as a QUIC stream delivers it and on
/// a single body.
pub fn frame(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((_, used))) = Frame::decode(rest) {
        assert!(
            used > 0 && used <= rest.len(),
            "decode consumed {used} of {} bytes",
            rest.len()
        );
        rest = &rest[used..];
    }
    let _ = Frame::decode_body(data);
}

/// The replication core fed a peer's streams: see `replica`.
pub fn replica(data: &[u8]) {
    replica::run(data)
}

/// The event-chunk decompressor fed a sequence of chunks, as one want
/// stream delivers them: each chunk is `u16 length | bytes`.
pub fn event_chunks(data: &[u8]) {
    let mut d = StreamDecompressor::new();
    for chunk in split_chunks(data) {
        if d.decompress(chunk).is_err() {
            // The receiver ends the stream at the first error.
            return;
        }
    }
}

/// `u16 length | bytes` pieces; a short last piece is taken as it is.
pub fn split_chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [a, b, rest @ ..] = data {
        let n = (u16::from_be_bytes([*a, *b]) as usize).min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

/// Inverse of `split_chunks`, for making seeds.
pub fn join_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        let n = u16::try_from(c.len()).expect("seed chunks are under 64 KiB");
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(c);
    }
    out
}
