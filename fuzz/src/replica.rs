//! The replication core fed whatever a peer might send: the `replica`
//! target. A hub replica holding a few events accepts one connection from
//! a clinic, then takes the input as a sequence of stream events from that
//! peer. The core must never panic, and its invariants must hold after
//! every step (`Replica::check_invariants`).
//!
//! Input: records of `op | stream | u16 length | bytes`. `op % 4`: 0 and 1
//! deliver the bytes on the stream, 2 ends the stream, 3 lets time pass
//! (the byte count, in seconds) and fires the core's timers. Stream 0 is
//! the peer's control stream (both ways), others its data streams.
//!
//! Both replicas authenticate logs (stand-in signatures), so heads,
//! proofs and the events held until proved are fuzzed too.

use ferry_proto::merkle::HeadKeys;
use ferry_proto::{NodeId, Origin, Priority, Role};
use ferry_sync::auth::Logs;
use ferry_sync::stand_in::{StandInKey, StandInKeys, HONEST};
use ferry_sync::{Action, Config, ConnId, MemStore, PeerInfo, Replica, StreamId, StreamKind, Time};
use std::collections::BTreeSet;
use std::sync::Arc;

const HUB: NodeId = NodeId([1; 16]);
const CLINIC: NodeId = NodeId([2; 16]);
const CONN: ConnId = ConnId(1);

/// One step of the input, as `records` reads it and `encode` writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Data(u8, Vec<u8>),
    End(u8),
    Wait(u16),
}

pub fn records(mut data: &[u8]) -> Vec<Step> {
    let mut out = Vec::new();
    while let [op, stream, a, b, rest @ ..] = data {
        let n = (u16::from_be_bytes([*a, *b]) as usize).min(rest.len());
        let stream = stream % 8;
        out.push(match op % 4 {
            0 | 1 => Step::Data(stream, rest[..n].to_vec()),
            2 => Step::End(stream),
            _ => Step::Wait(n as u16),
        });
        data = &rest[n..];
    }
    out
}

/// Inverse of `records`, for making seeds. A `Wait(s)` takes `s` bytes of
/// padding, so keep waits short.
pub fn encode(steps: &[Step]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in steps {
        let (op, stream, bytes): (u8, u8, Vec<u8>) = match s {
            Step::Data(st, b) => (0, *st, b.clone()),
            Step::End(st) => (2, *st, Vec::new()),
            Step::Wait(secs) => (3, 0, vec![0; *secs as usize]),
        };
        let n = u16::try_from(bytes.len()).expect("seed records are under 64 KiB");
        out.extend_from_slice(&[op, stream]);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

/// A store whose logs are authenticated with `node`'s stand-in key.
fn store(node: NodeId) -> MemStore {
    let mut store = MemStore::new(Origin { node, epoch: 1 });
    let key = StandInKey { node, secret: HONEST };
    // Both ends know each other's key, as after the handshake.
    let keys = StandInKeys::new(node);
    for n in [HUB, CLINIC] {
        let _ = keys.learn(&ferry_sync::stand_in::credential(n));
    }
    store.set_logs(Logs::new(Arc::new(keys), Some(Arc::new(key))));
    store
}

/// The hub the input talks to: holds ten events of its own.
pub fn hub() -> Replica<MemStore> {
    let mut store = store(HUB);
    let items = (0..10)
        .map(|i| {
            (
                "clinic/visit".to_string(),
                Priority::Normal,
                format!("{{\"i\":{i}}}").into_bytes(),
            )
        })
        .collect();
    let (group, _) = store.write_local(items, 1_700_000_000_000);
    store.sync(group);
    Replica::new(Config::new(HUB, Role::Hub, "hub"), store, 1, BTreeSet::new())
}

/// The clinic that talks to `hub()`, for making seeds.
pub fn clinic() -> Replica<MemStore> {
    let store = store(CLINIC);
    Replica::new(Config::new(CLINIC, Role::Clinic, "clinic"), store, 2, BTreeSet::new())
}

pub fn peer_info(of_hub: bool) -> PeerInfo {
    PeerInfo {
        node: if of_hub { CLINIC } else { HUB },
        role: if of_hub { Role::Clinic } else { Role::Hub },
        name: if of_hub { "clinic" } else { "hub" }.into(),
        lan: false,
        dialer: !of_hub,
    }
}

pub fn stream(n: u8) -> (StreamId, StreamKind) {
    let kind = if n == 0 { StreamKind::Bidi } else { StreamKind::Uni };
    (StreamId::Remote(n as u32), kind)
}

/// Carries out the replica's actions as a perfect driver would; returns
/// what it sent, per local stream.
pub fn drain(r: &mut Replica<MemStore>, now: Time) -> Vec<(StreamId, Vec<u8>)> {
    let mut sent = Vec::new();
    while let Some(action) = r.poll_action() {
        match action {
            Action::Append { ticket, events, .. } => {
                let (group, report) = r.store_mut().write_replicated(events, 1_700_000_000_000);
                r.store_mut().sync(group);
                r.handle_appended(now, ticket, Ok(report));
            }
            Action::Send { stream, bytes, .. } => {
                r.handle_sent(now, CONN, stream);
                sent.push((stream, bytes));
            }
            Action::Finish { stream, .. } => sent.push((stream, Vec::new())),
            _ => {}
        }
    }
    sent
}

pub fn run(data: &[u8]) {
    let mut r = hub();
    let mut now = Time::from_secs(1);
    r.connect(now, CONN, peer_info(true), None);
    drain(&mut r, now);
    for step in records(data) {
        now = now.saturating_add(Time::from_millis(10));
        match step {
            Step::Data(n, bytes) => {
                let (id, kind) = stream(n);
                r.handle_stream_data(now, CONN, id, kind, &bytes);
            }
            Step::End(n) => r.handle_stream_end(now, CONN, stream(n).0),
            Step::Wait(secs) => {
                now = now.saturating_add(Time::from_secs(secs as u64));
                r.handle_timeout(now);
            }
        }
        drain(&mut r, now);
        r.check_invariants();
    }
    r.handle_closed(now, CONN);
    drain(&mut r, now);
    r.check_invariants();
    assert_eq!(r.claimed(), 0, "claims outlived their connection");
}
