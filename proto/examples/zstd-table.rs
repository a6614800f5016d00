//! Bytes and compressor memory of the event stream at several zstd
//! settings, with the real chunking (flushed every `BATCH_BYTES`).
//!
//! `python3 tests/workload/clinic_events.py --count 5000 --seed 42 --clinic BHU-BENCH > /tmp/wl.jsonl`
//! `cargo run --release -p ferry-proto --example zstd-table -- /tmp/wl.jsonl`

use ferry_proto::batch::{Item, StreamCompressor, Tuning};
use ferry_proto::{Event, Hlc, NodeId, Origin, Priority};

fn main() {
    let path = std::env::args().nth(1).expect("a JSON-lines workload file");
    let text = std::fs::read(&path).expect("readable workload");
    let origin = Origin {
        node: NodeId([0x5a; 16]),
        epoch: 0x1234_5678,
    };
    let events: Vec<Event> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, p)| Event {
            origin,
            seq: i as u64 + 1,
            // Appended in batches of 500, as the field benchmark does.
            hlc: Hlc::new(1_790_000_000_000 + (i as u64 / 500) * 7, (i % 500) as u16),
            topic: "clinic/visit".into(),
            priority: Priority::Normal,
            payload: p.to_vec(),
        })
        .collect();
    let mut chunks: Vec<Vec<Item>> = vec![Vec::new()];
    let mut size = 0;
    for e in &events {
        if size + e.payload.len() > ferry_proto::frame::BATCH_BYTES {
            chunks.push(Vec::new());
            size = 0;
        }
        size += e.payload.len();
        chunks.last_mut().unwrap().push(Item::Event(e.clone())); // one pushed above
    }
    // The ferry/2 encoding before this table: each event a CBOR array.
    for level in [6, 19] {
        let mut c = StreamCompressor::tuned(level, Tuning::default());
        let bytes: usize = chunks
            .iter()
            .map(|ch| {
                let raw: Vec<u8> = ch
                    .iter()
                    .flat_map(|i| match i {
                        Item::Event(e) => ferry_proto::event::encode_event(e),
                        Item::Piece(_) => Vec::new(),
                    })
                    .collect();
                c.compress_raw_for_table(&raw).len()
            })
            .sum();
        println!("CBOR events, level {level}: {bytes} B");
    }
    let payload_only: Vec<u8> = events.iter().flat_map(|e| e.payload.clone()).collect();
    println!(
        "payloads alone, one zstd frame: level 6 {} B, level 19 {} B",
        zstd::bulk::compress(&payload_only, 6).unwrap().len(), // in memory
        zstd::bulk::compress(&payload_only, 19).unwrap().len()
    );
    println!("| level | window log | chain/hash log | bytes | compressor memory |");
    println!("| --- | --- | --- | --- | --- |");
    let rows: &[(i32, u32, Option<u32>)] = &[
        (1, 17, None),
        (3, 17, None),
        (6, 17, None),
        (9, 17, None),
        (12, 17, None),
        (15, 17, None),
        (19, 17, None),
        (12, 17, Some(16)),
        (15, 17, Some(16)),
        (19, 17, Some(16)),
        (19, 17, Some(17)),
        (19, 17, Some(18)),
        (19, 18, Some(17)),
        (19, 20, Some(17)),
        (19, 18, Some(18)),
        (19, 18, Some(19)),
        (19, 17, Some(19)),
        (19, 19, Some(19)),
        (22, 17, Some(18)),
        (19, 18, None),
    ];
    for &(level, window_log, ch) in rows {
        let mut c = StreamCompressor::tuned(
            level,
            Tuning {
                window_log,
                chain_hash_log: ch,
            },
        );
        let t = std::time::Instant::now();
        let bytes: usize = chunks.iter().map(|c2| c.compress(c2).len()).sum();
        println!(
            "| {level} | {window_log} | {} | {bytes} | {:.1} MiB | {:.0} ms",
            ch.map_or("default".into(), |v| v.to_string()),
            c.memory() as f64 / (1 << 20) as f64,
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
}
