//! What log authentication costs on the wire: signed heads and range proofs
//! next to the compressed events they prove, with the lane's chunking
//! (at most 512 events or `BATCH_BYTES` of payload a frame, wants of 2048
//! events taking turns on one stream, one zstd context per stream at the
//! WAN level). Every proof is checked by a receiver as it goes.
//!
//! `cargo run --release -p ferry-proto --example auth-cost -- --events 5000 --seed 1`

#[path = "../tests/support/ecdsa.rs"]
mod ecdsa;

use ferry_proto::batch::{Item, StreamCompressor, LEVEL_WAN};
use ferry_proto::frame::{Frame, BATCH_BYTES};
use ferry_proto::merkle::{checkpoint, Known, Mode, RangeProof, TreeHead, VerifiedHead};
use ferry_proto::{Event, Hlc, NodeId, Origin, Priority};
use std::collections::VecDeque;

/// As `sync::lane`: events per chunk, and wants per gap.
const CHUNK_EVENTS: usize = 512;
const WANT_MAX_EVENTS: u64 = 2048;
const ACTIVE_JOBS: usize = 4;
/// Frame header (length and type) of the head and proof frames.
const FRAME_HEADER: usize = 5;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number")))
        .unwrap_or(default)
}

fn workload(count: u64, seed: u64) -> Vec<Vec<u8>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/workload/clinic_events.py");
    let out = std::process::Command::new("python3")
        .args([
            script,
            "--count",
            &count.to_string(),
            "--seed",
            &seed.to_string(),
            "--clinic",
            "BHU-BENCH",
        ])
        .output()
        .expect("python3 runs the workload generator");
    assert!(
        out.status.success(),
        "workload generator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

#[derive(Default, Clone, Copy)]
struct Cost {
    events: u64,
    bulk: usize,
    heads: usize,
    proofs: usize,
    frames: usize,
    /// Most events a receiver held unverified after a frame.
    held: usize,
}

impl Cost {
    fn line(&self, name: &str) {
        let auth = self.heads + self.proofs;
        println!(
            "{name:<46} {:>6} {:>9} {:>6} {:>7} {:>7} {:>6.2} % {:>6.2} B/ev {:>5}",
            self.events,
            self.bulk,
            self.frames,
            self.heads,
            self.proofs,
            100.0 * auth as f64 / self.bulk as f64,
            auth as f64 / self.events as f64,
            self.held,
        );
    }
}

/// How the sender picks where each proved prefix ends.
#[derive(Clone, Copy)]
enum Checkpoints {
    /// At the end of every frame: no events held back by the receiver.
    FrameEnd,
    /// At the best-aligned seq of every frame (`merkle::checkpoint`).
    Aligned,
}

/// One data stream from `from` to `to`: `wants` served in turns of one
/// chunk each, as the lane does, each want's proof fresh then extended.
/// Returns the cost and the seconds spent verifying.
fn serve(
    events: &[Event],
    head: (&TreeHead, &VerifiedHead),
    from: &Known,
    to: &mut Known,
    wants: &[(u64, u64)],
    policy: Checkpoints,
) -> (Cost, f64) {
    let mut cost = Cost {
        heads: FRAME_HEADER + head.0.encode().len(),
        ..Cost::default()
    };
    let mut verifying = 0.0;
    let mut enc = StreamCompressor::new(LEVEL_WAN);
    // (next seq to send, last seq proved, want)
    let mut jobs: VecDeque<(u64, u64, (u64, u64))> = wants.iter().map(|&(a, b)| (a, a - 1, (a, b))).collect();
    let mut held = 0usize;
    while let Some((at, verified, want)) = jobs.pop_front() {
        let last = want.1;
        let mut end = at;
        let mut bytes = 0;
        while end <= last && ((end - at) as usize) < CHUNK_EVENTS && bytes < BATCH_BYTES {
            bytes += events[(end - 1) as usize].payload.len();
            end += 1;
        }
        let frame_last = end - 1;
        let chunk = &events[(at - 1) as usize..frame_last as usize];
        let items: Vec<Item> = chunk.iter().cloned().map(Item::Event).collect();
        cost.bulk += Frame::Events(enc.compress(&items)).encode().len();
        cost.events += chunk.len() as u64;
        cost.frames += 1;
        let q = match policy {
            Checkpoints::FrameEnd => frame_last,
            Checkpoints::Aligned => checkpoint(verified, at, frame_last, last),
        };
        let mode = if verified < want.0 { Mode::Fresh } else { Mode::Extend };
        let proof = from
            .prove(head.0, mode, verified + 1, q)
            .expect("the sender proves what it holds");
        let wire = proof.encode_in_stream(frame_last);
        cost.proofs += FRAME_HEADER + wire.len();
        let proof = RangeProof::decode_in_stream(&wire, head.0.len, verified + 1, frame_last).expect("own encoding");
        let t = std::time::Instant::now();
        to.verify(head.1, &proof, &events[verified as usize..q as usize])
            .expect("an honest frame verifies");
        verifying += t.elapsed().as_secs_f64();
        held = held.max((frame_last - q) as usize);
        if end <= last {
            let at = jobs.len().min(ACTIVE_JOBS - 1);
            jobs.insert(at, (end, q, want));
        }
    }
    cost.held = held;
    (cost, verifying)
}

fn wants(first: u64, last: u64) -> Vec<(u64, u64)> {
    (first..=last)
        .step_by(WANT_MAX_EVENTS as usize)
        .map(|a| (a, (a + WANT_MAX_EVENTS - 1).min(last)))
        .collect()
}

/// Events pushed one at a time, a head every `every` events, each head
/// proving the events since the last with an empty extension. Also returns
/// what a head with every event would have cost.
fn trickle(events: &[Event], key: &ecdsa::Key, keys: &ecdsa::Keys, every: u64) -> (Cost, usize) {
    let origin = events[0].origin;
    let n = events.len() as u64;
    let mut live = Known::new(origin);
    let mut enc = StreamCompressor::new(LEVEL_WAN);
    let mut own = Known::new(origin);
    let mut c = Cost::default();
    let mut per_event_head = 0;
    let mut since = 1;
    for e in events {
        own.append(e).expect("in order");
        c.bulk += Frame::Events(enc.compress(&[Item::Event(e.clone())])).encode().len();
        c.events += 1;
        c.frames += 1;
        let h = own.sign_head(e.seq, key).expect("own tree");
        per_event_head += FRAME_HEADER + h.encode().len();
        if e.seq % every == 0 || e.seq == n {
            let proof = own.prove(&h, Mode::Extend, since, e.seq).expect("own tree");
            assert!(proof.hashes.is_empty());
            let leaves = live
                .leaves(since, &events[(since - 1) as usize..e.seq as usize])
                .expect("in order");
            let vh = h.clone().verify(keys).expect("own signature");
            live.verify_leaves(&vh, &proof, &leaves)
                .expect("pushed events match the head");
            c.heads += FRAME_HEADER + h.encode().len();
            since = e.seq + 1;
        }
    }
    (c, per_event_head)
}

fn main() {
    let n = arg("--events", 5000);
    let seed = arg("--seed", 1);
    // A head a minute and one every five (the live round) at the field
    // benchmark's trickle of an event every 3 s.
    let head_every = arg("--head-every", 20);
    let origin = Origin {
        node: NodeId([0x5a; 16]),
        epoch: 1,
    };
    let events: Vec<Event> = workload(n, seed)
        .into_iter()
        .enumerate()
        .map(|(i, payload)| Event {
            origin,
            seq: i as u64 + 1,
            // Appended in batches of 500, as the field benchmark does.
            hlc: Hlc::new(1_790_000_000_000 + (i as u64 / 500) * 7, (i % 500) as u16),
            topic: "clinic/visit".into(),
            priority: Priority::Normal,
            payload,
        })
        .collect();
    let key = ecdsa::Key::generate();
    let mut keys = ecdsa::Keys::default();
    keys.0.insert(origin.node, key.public());
    let mut writer = Known::new(origin);
    let t = std::time::Instant::now();
    for e in &events {
        writer.append(e).expect("own events in order");
    }
    let head = writer.sign_head(n, &key).expect("own tree");
    let build = t.elapsed();
    let verified = head.clone().verify(&keys).expect("own signature");
    println!(
        "{n} events, {} payload bytes; tree built and head signed in {:.1} ms; {} nodes held by the writer",
        events.iter().map(|e| e.payload.len()).sum::<usize>(),
        build.as_secs_f64() * 1e3,
        writer.nodes(),
    );
    println!(
        "{:<46} {:>6} {:>9} {:>6} {:>7} {:>7} {:>8} {:>9} {:>5}",
        "case", "events", "bulk B", "frames", "head B", "proof B", "auth", "auth/ev", "held"
    );

    // (a) the whole log from its writer.
    let mut verify_secs = 0.0;
    for (policy, name) in [
        (Checkpoints::FrameEnd, "every frame end"),
        (Checkpoints::Aligned, "aligned"),
    ] {
        let mut hub = Known::new(origin);
        let (a, secs) = serve(&events, (&head, &verified), &writer, &mut hub, &wants(1, n), policy);
        verify_secs = secs;
        a.line(&format!("(a) writer -> hub, proofs at {name}"));
    }

    // (b) a hub that received the log in three pieces out of order, each
    // its own session (a head each), relays it whole to a clinic from what
    // it verified.
    for (policy, name) in [
        (Checkpoints::FrameEnd, "every frame end"),
        (Checkpoints::Aligned, "aligned"),
    ] {
        let mut relay = Known::new(origin);
        let third = n / 3;
        let mut inbound = Cost::default();
        for (a, b) in [(third * 2 + 1, n), (1, third), (third + 1, third * 2)] {
            let (c, _) = serve(&events, (&head, &verified), &writer, &mut relay, &wants(a, b), policy);
            inbound.events += c.events;
            inbound.bulk += c.bulk;
            inbound.frames += c.frames;
            inbound.proofs += c.proofs;
            inbound.heads += c.heads;
            inbound.held = inbound.held.max(c.held);
        }
        inbound.line(&format!("(b) writer -> hub in 3 pieces, {name}"));
        let mut clinic = Known::new(origin);
        let (b, _) = serve(&events, (&head, &verified), &relay, &mut clinic, &wants(1, n), policy);
        b.line(&format!("(b) hub -> clinic relayed, {name}"));
        assert_eq!(clinic.root(n), Ok(head.root), "the relayed log is the writer's");
    }

    // (c) live pushes of one event at a time from the writer over mutual
    // TLS: no proof per event; a head now and then proves them all.
    for every in [head_every, 100] {
        let (c, per_event_head) = trickle(&events, &key, &keys, every);
        c.line(&format!("(c) trickle from writer, head every {every}"));
        if every == head_every {
            Cost {
                heads: per_event_head,
                ..c
            }
            .line("(c') trickle, a head with every event");
        }
    }
    println!(
        "receiver verified the {n} events of (a) in {:.1} ms; ECDSA P-256 signature {} B, head {} B on the wire",
        verify_secs * 1e3,
        head.signature.len(),
        FRAME_HEADER + head.encode().len(),
    );
}
