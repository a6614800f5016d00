//! Writes seed inputs for the fuzz targets into `DIR/<target>/`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/corpus`.
//! Real compressed event streams and real WAL segments give the fuzzer
//! structure it would take long to find alone (zstd frames, CRCs).

use ferry_fuzz::wal_open;
use ferry_proto::batch::StreamCompressor;
use ferry_proto::{Event, Hlc, NodeId, Origin, Priority};
use ferry_wal::{NewEvent, Wal};
use std::path::Path;

fn event(origin: Origin, seq: u64, payload: &[u8]) -> Event {
    Event {
        origin,
        seq,
        hlc: Hlc::new(1_700_000_000_000 + seq, 0),
        topic: "clinic/vitals".into(),
        priority: if seq.is_multiple_of(5) {
            Priority::Urgent
        } else {
            Priority::Normal
        },
        payload: payload.to_vec(),
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!(
        r#"{{"patient":"BT-{:05}","pulse":{}}}"#,
        i * 7919 % 100_000,
        50 + i % 70
    )
    .into_bytes()
}

fn event_chunk_seeds() -> Vec<Vec<u8>> {
    let o = Origin {
        node: NodeId([9; 16]),
        epoch: 3,
    };
    let mut seeds = Vec::new();
    for batches in [1u64, 2, 4] {
        let mut c = StreamCompressor::new();
        let chunks: Vec<Vec<u8>> = (0..batches)
            .map(|b| {
                c.compress(
                    &(b * 10 + 1..=b * 10 + 10)
                        .map(|s| event(o, s, &payload(s)))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        seeds.push(ferry_fuzz::join_chunks(chunks.iter().map(|c| c.as_slice())));
    }
    seeds
}

fn wal_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for encrypted in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        {
            let wal = Wal::open(wal_open::options(&dir, encrypted, false)).unwrap();
            let local = |i: u64| NewEvent {
                topic: "t".into(),
                priority: Priority::Normal,
                payload: payload(i),
            };
            wal.append_local_blocking((1..=3).map(local).collect()).unwrap();
            let remote = Origin {
                node: NodeId([2; 16]),
                epoch: 5,
            };
            wal.append_replicated_blocking(vec![event(remote, 1, b"r1"), event(remote, 2, b"r2")])
                .unwrap();
            wal.append_local_once_blocking("seed-key", vec![local(4), local(5)])
                .unwrap();
        }
        let segment = std::fs::read(dir.join("00000001.seg")).unwrap();
        seeds.extend(wal_open::inputs_for(&segment, encrypted));
    }
    seeds
}

fn write(root: &Path, target: &str, seeds: &[Vec<u8>]) {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
    }
    println!("{} seeds in {}", seeds.len(), dir.display());
}

fn main() {
    let root = std::env::args().nth(1).expect("usage: seeds DIR");
    let root = Path::new(&root);
    write(root, "event_chunks", &event_chunk_seeds());
    write(root, "wal_open", &wal_seeds());
}
