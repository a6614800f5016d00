//! Writes seed inputs for the fuzz targets into `DIR/<target>/`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/corpus`.
//! Real compressed event streams and real WAL segments give the fuzzer
//! structure it would take long to find alone (zstd frames, CRCs).

use ferry_fuzz::replica::{self, Step};
use ferry_fuzz::wal_open;
use ferry_proto::batch::{Item, StreamCompressor};
use ferry_proto::{Event, Hlc, NodeId, Origin, Priority};
use ferry_sync::{StreamId, Time};
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
        let mut c = StreamCompressor::new(ferry_proto::batch::LEVEL_WAN);
        let chunks: Vec<Vec<u8>> = (0..batches)
            .map(|b| {
                c.compress(
                    &(b * 10 + 1..=b * 10 + 10)
                        .map(|s| Item::Event(event(o, s, &payload(s))))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        seeds.push(ferry_fuzz::join_chunks(chunks.iter().map(|c| c.as_slice())));
    }
    seeds
}

/// What a clinic with events of its own sends a hub in a whole sync, as
/// the `replica` target's steps: a real Hello, summary, wants and batches.
fn replica_seeds() -> Vec<Vec<u8>> {
    let (mut hub, mut clinic) = (replica::hub(), replica::clinic());
    let items = (0..20)
        .map(|i| ("clinic/vitals".to_string(), Priority::Normal, payload(i)))
        .collect();
    let (group, _) = clinic.store_mut().write_local(items, 1_700_000_000_000);
    clinic.store_mut().sync(group);
    let now = Time::from_secs(1);
    let conn = ferry_sync::ConnId(1);
    hub.connect(now, conn, replica::peer_info(true), None);
    clinic.connect(now, conn, replica::peer_info(false), None);
    let mut steps = Vec::new();
    let deliver = |to: &mut ferry_sync::Replica<ferry_sync::MemStore>, sent: Vec<(StreamId, Vec<u8>)>| {
        let mut steps = Vec::new();
        for (id, bytes) in sent {
            // Its own streams arrive as the peer's; the peer's control
            // stream, answered on, arrives as its own.
            let (n, (remote, kind)) = match id {
                StreamId::Local(n) => (n, replica::stream(n as u8)),
                StreamId::Remote(n) => (n, (StreamId::Local(n), ferry_sync::StreamKind::Bidi)),
            };
            if bytes.is_empty() {
                to.handle_stream_end(now, conn, remote);
                steps.push(Step::End(n as u8));
            } else {
                to.handle_stream_data(now, conn, remote, kind, &bytes);
                steps.push(Step::Data(n as u8, bytes));
            }
        }
        steps
    };
    // What the hub sends, as the clinic sees it: the hub's own streams are
    // the clinic's remote ones, in the order opened; its answers on the
    // control stream arrive on the clinic's own.
    let to_clinic = |clinic: &mut ferry_sync::Replica<ferry_sync::MemStore>, sent: Vec<(StreamId, Vec<u8>)>| {
        for (id, bytes) in sent {
            let (stream, kind) = match id {
                StreamId::Local(n) => (StreamId::Remote(n), ferry_sync::StreamKind::Uni),
                StreamId::Remote(n) => (StreamId::Local(n), ferry_sync::StreamKind::Bidi),
            };
            if bytes.is_empty() {
                clinic.handle_stream_end(now, conn, stream);
            } else {
                clinic.handle_stream_data(now, conn, stream, kind, &bytes);
            }
        }
    };
    for _ in 0..50 {
        let from_clinic = replica::drain(&mut clinic, now);
        let from_hub = replica::drain(&mut hub, now);
        if from_clinic.is_empty() && from_hub.is_empty() {
            break;
        }
        steps.extend(deliver(&mut hub, from_clinic));
        to_clinic(&mut clinic, from_hub);
    }
    assert!(hub.store().len() >= 30, "the seed exchange did not sync");
    let whole = replica::encode(&steps);
    let mut with_wait = steps.clone();
    with_wait.push(Step::Wait(40));
    // Then a round after new events: the clinic's summary goes as a
    // `SummaryChange`.
    let items = (20..23)
        .map(|i| ("clinic/vitals".to_string(), Priority::Normal, payload(i)))
        .collect();
    let (group, _) = clinic.store_mut().write_local(items, 1_700_000_001_000);
    clinic.store_mut().sync(group);
    clinic.start_round(now, conn);
    let mut with_round = steps.clone();
    for _ in 0..50 {
        let from_clinic = replica::drain(&mut clinic, now);
        let from_hub = replica::drain(&mut hub, now);
        if from_clinic.is_empty() && from_hub.is_empty() {
            break;
        }
        with_round.extend(deliver(&mut hub, from_clinic));
        to_clinic(&mut clinic, from_hub);
    }
    assert!(hub.store().len() >= 33, "the seed's second round did not sync");
    let rounds = hub.session(conn).map_or(0, |s| s.stats.rounds);
    assert_eq!(rounds, 2, "the hub took the clinic's second summary");
    vec![
        whole,
        replica::encode(&with_wait),
        replica::encode(&steps[..steps.len().min(2)]),
        replica::encode(&with_round),
    ]
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
    write(root, "replica", &replica_seeds());
}
