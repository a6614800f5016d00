//! Bytes of the event stream when every chunk is its own zstd frame that
//! starts from the last `P` bytes of the stream (a prefix both ends keep),
//! against one long frame flushed per chunk (a context kept per lane).
//!
//! `python3 ../shared/workload/clinic_events.py --count 5000 --seed 1 --clinic BHU-A > /tmp/wl.jsonl`
//! `cargo run --release -p ferry-proto --example prefix-frames -- /tmp/wl.jsonl`

use zstd::zstd_safe::{CCtx, CParameter as P, InBuffer, OutBuffer};

fn context<'a>(level: i32) -> CCtx<'a> {
    let mut c = CCtx::create();
    c.set_parameter(P::CompressionLevel(level)).unwrap();
    c.set_parameter(P::WindowLog(17)).unwrap();
    if level > 9 {
        c.set_parameter(P::ChainLog(18)).unwrap();
        c.set_parameter(P::HashLog(18)).unwrap();
    }
    c.set_parameter(P::ContentSizeFlag(false)).unwrap();
    c
}

fn flush(c: &mut CCtx<'_>, raw: &[u8], end: bool) -> usize {
    use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective as D;
    let mut out: Vec<u8> = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()) + 64);
    let mut input = InBuffer::around(raw);
    let mut ob = OutBuffer::around(&mut out);
    let d = if end { D::ZSTD_e_end } else { D::ZSTD_e_flush };
    let left = c.compress_stream2(&mut ob, &mut input, d).unwrap();
    assert_eq!(left, 0);
    ob.pos()
}

fn main() {
    let path = std::env::args().nth(1).expect("a JSON-lines workload file");
    let text = std::fs::read(&path).expect("readable workload");
    let events: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    // Bulk: chunks of about 32 KiB; trickle: one event a chunk, after a
    // bulk of 1,000 events as history.
    let mut bulk: Vec<Vec<u8>> = vec![Vec::new()];
    for e in &events {
        if bulk.last().unwrap().len() + e.len() > 32 << 10 {
            bulk.push(Vec::new());
        }
        bulk.last_mut().unwrap().extend_from_slice(e);
    }
    let history: Vec<u8> = events[..1000].concat();
    let trickle: Vec<Vec<u8>> = events[1000..1300].iter().map(|e| e.to_vec()).collect();
    for (name, chunks, level) in [
        ("bulk, level 19", &bulk, 19),
        ("bulk, level 1", &bulk, 1),
        ("trickle, level 19", &trickle, 19),
    ] {
        let pre = if name.starts_with("trickle") {
            history.clone()
        } else {
            Vec::new()
        };
        let n = chunks.len();
        // One frame, flushed per chunk.
        let mut c = context(level);
        flush(&mut c, &pre, false);
        let t = std::time::Instant::now();
        let kept: usize = chunks.iter().map(|ch| flush(&mut c, ch, false)).sum();
        let kept_t = t.elapsed();
        println!(
            "{name}: one frame kept: {kept} B ({:.1} B/chunk), {kept_t:?}",
            kept as f64 / n as f64
        );
        for p in [0usize, 4 << 10, 16 << 10, 32 << 10, 64 << 10, 128 << 10] {
            let mut stream = pre.clone();
            let t = std::time::Instant::now();
            let total: usize = chunks
                .iter()
                .map(|ch| {
                    let len = {
                        let prefix = &stream[stream.len().saturating_sub(p)..];
                        let mut c = context(level);
                        if !prefix.is_empty() {
                            c.ref_prefix(prefix).unwrap();
                        }
                        flush(&mut c, ch, true)
                    };
                    stream.extend_from_slice(ch);
                    len
                })
                .sum();
            println!(
                "{name}: frame per chunk, prefix {:>3} KiB: {total} B ({:.1} B/chunk), {:?}",
                p >> 10,
                total as f64 / n as f64,
                t.elapsed()
            );
        }
    }
}
