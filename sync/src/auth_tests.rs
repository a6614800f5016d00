//! A relay serving jobs that take turns on a stream, honest and not.

use super::*;
use ferry_proto::{Hlc, NodeId, Priority};

use crate::stand_in::{StandInKey, StandInKeys as Keys, HONEST};

/// The key `o`'s writer signs with.
fn honest(o: Origin) -> StandInKey {
    StandInKey {
        node: o.node,
        secret: HONEST,
    }
}

fn origin(b: u8) -> Origin {
    Origin {
        node: NodeId([b; 16]),
        epoch: 1,
    }
}

fn events(o: Origin, n: u64) -> Vec<Event> {
    (1..=n)
        .map(|seq| Event {
            origin: o,
            seq,
            hlc: Hlc::new(1_800_000_000_000 + seq, 0),
            topic: "clinic/visit".into(),
            priority: Priority::Normal,
            payload: format!("{{\"visit\":{seq}}}").into_bytes(),
        })
        .collect()
}

/// The writer's tree of `log`, with a head over all of it.
fn writer_tree(log: &[Event], key: &StandInKey) -> Known {
    let mut tree = Known::new(log[0].origin);
    for e in log {
        tree.append(e).unwrap();
    }
    tree.sign_head(log.len() as u64, key).unwrap();
    tree
}

#[derive(Debug)]
enum Wire {
    Head(TreeHead),
    Events(Vec<Event>),
    Proof(Vec<u8>),
}

/// What a sender puts on one stream for `jobs`, in frames of `size`
/// events taking turns as the lane's jobs do; `tamper` may change a
/// frame's events after its proof was made (a relay altering them).
fn send(
    tree: &Known,
    log: &[Event],
    jobs: &[(u64, u64)],
    size: u64,
    tamper: impl Fn(usize, &mut Vec<Event>),
) -> Vec<Wire> {
    let mut out = Outbound::default();
    let keys = Logs::new(Arc::new(Keys::everyone()), None);
    let mut wire = Vec::new();
    let mut turns: std::collections::VecDeque<(u64, u64)> = jobs.iter().copied().collect();
    let mut frame = 0;
    while let Some((at, last)) = turns.pop_front() {
        let end = (at + size - 1).min(last);
        let (lead, proof) = match out
            .frames(&keys, tree, at, end, end < last, false, None, &|_| None)
            .unwrap()
        {
            (lead, Frame::Proof(p)) => (lead, p),
            other => panic!("not a proof: {other:?}"),
        };
        for f in lead {
            match f {
                Frame::Head(h) => wire.push(Wire::Head(h)),
                Frame::Credential(_) => {}
                other => panic!("leads a frame: {other:?}"),
            }
        }
        let mut evs = log[(at - 1) as usize..end as usize].to_vec();
        tamper(frame, &mut evs);
        wire.push(Wire::Events(evs));
        wire.push(Wire::Proof(proof));
        frame += 1;
        if end < last {
            turns.push_back((end + 1, last));
        }
    }
    wire
}

/// The receiver: what it may append, and what it refused.
fn receive(logs: &mut Logs, wire: Vec<Wire>) -> (Vec<Event>, Vec<Refusal>) {
    let mut inb = Inbound::default();
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for w in wire {
        match w {
            Wire::Head(h) => refused.extend(inb.on_head(logs, h).err()),
            Wire::Events(e) => refused.extend(inb.on_events(e)),
            Wire::Proof(p) => match inb.on_proof(logs, &p, &Default::default()) {
                Ok(e) => ok.extend(e),
                Err(r) => refused.push(r),
            },
        }
    }
    refused.extend(inb.finish());
    (ok, refused)
}

fn seqs(events: &[Event]) -> Vec<u64> {
    let mut s: Vec<u64> = events.iter().map(|e| e.seq).collect();
    s.sort_unstable();
    s
}

const JOBS: [(u64, u64); 3] = [(1, 200), (201, 400), (401, 600)];

#[test]
fn jobs_taking_turns_verify_and_relay_onward() {
    let a = origin(1);
    let log = events(a, 600);
    let writer = writer_tree(&log, &honest(a));
    // Writer to hub, then the hub from what it verified to a clinic.
    let mut hub = Logs::new(Arc::new(Keys::everyone()), None);
    let (got, refused) = receive(&mut hub, send(&writer, &log, &JOBS, 37, |_, _| {}));
    assert_eq!(refused, vec![]);
    assert_eq!(seqs(&got), (1..=600).collect::<Vec<_>>());
    let mut clinic = Logs::new(Arc::new(Keys::everyone()), None);
    let relayed = send(hub.tree(&a).unwrap(), &log, &[(401, 600), (1, 400)], 53, |_, _| {});
    let (got, refused) = receive(&mut clinic, relayed);
    assert_eq!(refused, vec![]);
    assert_eq!(seqs(&got), (1..=600).collect::<Vec<_>>());
}

#[test]
fn an_altered_frame_is_refused_and_the_rest_arrive() {
    let a = origin(1);
    let log = events(a, 600);
    let writer = writer_tree(&log, &honest(a));
    // Frames go job 1, 2, 3, 1, 2, 3, ...: frame 4 is job 2's second.
    let wire = send(&writer, &log, &JOBS, 37, |frame, evs| {
        if frame == 4 {
            evs[5].payload = b"{\"visit\":\"forged\"}".to_vec();
        }
    });
    let mut hub = Logs::new(Arc::new(Keys::everyone()), None);
    let (got, refused) = receive(&mut hub, wire);
    // Against the root, or against a node an earlier proof verified.
    assert!(
        matches!(refused[0].error, AuthError::Mismatch { .. } | AuthError::Forked { .. }),
        "{refused:?}"
    );
    // Job 2 is refused from its first unproved seq on; nothing of the
    // altered event is appended; jobs 1 and 3 arrive whole.
    let first_refused = refused[0].first;
    assert!((201..=238).contains(&first_refused), "{first_refused}");
    assert!(refused
        .iter()
        .all(|r| r.origin == a && r.first >= first_refused && r.last <= 400));
    let got = seqs(&got);
    let want: Vec<u64> = (1..first_refused).chain(401..=600).collect();
    assert_eq!(got, want);
    assert!(!got.contains(&(237 + 6)));
}

#[test]
fn events_fabricated_for_another_origin_are_refused() {
    let (a, b) = (origin(1), origin(2));
    // The relay writes a log in b's name and signs its head with its own
    // secret; then tries b's events under a's honest head.
    let forged = events(b, 50);
    let mallory = writer_tree(
        &forged,
        &StandInKey {
            node: b.node,
            secret: b"mallory",
        },
    );
    let mut clinic = Logs::new(Arc::new(Keys::everyone()), None);
    let (got, refused) = receive(&mut clinic, send(&mallory, &forged, &[(1, 50)], 20, |_, _| {}));
    assert_eq!(got, vec![]);
    assert!(
        matches!(refused[0].error, AuthError::BadSignature { .. }),
        "{refused:?}"
    );
    assert!(refused[1..].iter().all(|r| r.origin == b));

    let log = events(a, 50);
    let writer = writer_tree(&log, &honest(a));
    let wire = send(&writer, &log, &[(1, 50)], 20, |_, evs| {
        for e in evs.iter_mut() {
            e.origin = b;
        }
    });
    let (got, refused) = receive(&mut clinic, wire);
    assert_eq!(got, vec![]);
    assert!(
        !refused.is_empty() && refused.iter().all(|r| r.origin == b),
        "{refused:?}"
    );
}

#[test]
fn a_frame_without_its_proof_is_refused() {
    let a = origin(1);
    let log = events(a, 100);
    let writer = writer_tree(&log, &honest(a));
    let mut wire = send(&writer, &log, &[(1, 100)], 30, |_, _| {});
    // Drop the second frame's proof.
    let second_proof = wire
        .iter()
        .enumerate()
        .filter(|(_, w)| matches!(w, Wire::Proof(_)))
        .nth(1)
        .map(|(i, _)| i)
        .unwrap();
    wire.remove(second_proof);
    let mut hub = Logs::new(Arc::new(Keys::everyone()), None);
    let (got, refused) = receive(&mut hub, wire);
    assert!(
        seqs(&got).iter().all(|&s| s <= 32),
        "only the first frame's proved part: {:?}",
        seqs(&got)
    );
    assert!(!refused.is_empty());
}

#[test]
fn events_pushed_by_their_writer_are_proved_by_its_next_head() {
    let a = origin(1);
    let log = events(a, 40);
    let key = StandInKey {
        node: a.node,
        secret: HONEST,
    };
    let writer = writer_tree(&log, &key);
    // The hub takes 1..=40 straight from the writer, then its head.
    let mut hub = Logs::new(Arc::new(Keys::everyone()), None);
    for e in &log {
        hub.trusted(e).unwrap();
    }
    let head = writer.head().unwrap().head().clone();
    Inbound::default().on_head(&mut hub, head).unwrap();
    assert_eq!(hub.tree(&a).and_then(|t| t.head()).map(|h| h.head().len), Some(40));
    // It relays 11..=30 to a clinic, which checks them.
    let mut clinic = Logs::new(Arc::new(Keys::everyone()), None);
    let (got, refused) = receive(
        &mut clinic,
        send(hub.tree(&a).unwrap(), &log, &[(11, 30)], 7, |_, _| {}),
    );
    assert_eq!(refused, vec![]);
    assert_eq!(seqs(&got), (11..=30).collect::<Vec<_>>());
    // A head of another version of the log is refused at the hub.
    let mut other = log.clone();
    other[3].payload = b"{}".to_vec();
    let forked = writer_tree(&other, &key).head().unwrap().head().clone();
    let r = Inbound::default().on_head(&mut hub, forked).unwrap_err();
    assert!(matches!(r.error, AuthError::Mismatch { .. }), "{r:?}");
}

#[test]
fn frames_out_of_order_or_from_seq_zero_are_refused_not_panics() {
    let a = origin(1);
    let log = events(a, 10);
    let writer = writer_tree(&log, &honest(a));
    let mut hub = Logs::new(Arc::new(Keys::everyone()), None);
    for evs in [
        vec![log[4].clone(), log[2].clone()],
        vec![Event {
            seq: 0,
            ..log[0].clone()
        }],
        vec![
            log[0].clone(),
            Event {
                origin: origin(2),
                ..log[1].clone()
            },
        ],
    ] {
        let mut inb = Inbound::default();
        inb.on_head(&mut hub, writer.head().unwrap().head().clone()).unwrap();
        assert_eq!(inb.on_events(evs), None);
        let r = inb.on_proof(&mut hub, &[0], &Default::default()).unwrap_err();
        assert!(matches!(r.error, AuthError::Malformed { .. }), "{r:?}");
    }
}

/// Frames of `size` events over `first..=last` as one job, each proved to
/// its end; `continues` marks them as the lane does (or never, as if each
/// frame were a job of its own). Returns the wire and the proof bytes.
fn one_job(tree: &Known, log: &[Event], first: u64, last: u64, size: u64, continues: bool) -> (Vec<Wire>, usize) {
    let mut out = Outbound::default();
    let keys = Logs::new(Arc::new(Keys::everyone()), None);
    let (mut wire, mut proof_bytes) = (Vec::new(), 0);
    let mut at = first;
    while at <= last {
        let end = (at + size - 1).min(last);
        let (lead, proof) = out
            .frames(&keys, tree, at, end, continues && end < last, false, None, &|_| None)
            .unwrap();
        for f in lead {
            if let Frame::Head(h) = f {
                wire.push(Wire::Head(h));
            }
        }
        wire.push(Wire::Events(log[(at - 1) as usize..end as usize].to_vec()));
        let Frame::Proof(p) = proof else { panic!("not a proof") };
        proof_bytes += p.len();
        wire.push(Wire::Proof(p));
        at = end + 1;
    }
    (wire, proof_bytes)
}

#[test]
fn a_jobs_later_frames_extend_its_proof_for_a_few_hashes() {
    let a = origin(1);
    let log = events(a, 5000);
    let writer = writer_tree(&log, &honest(a));
    let (wire, extended) = one_job(&writer, &log, 1, 5000, 114, true);
    let mut hub = Logs::new(Arc::new(Keys::everyone()), None);
    let (got, refused) = receive(&mut hub, wire);
    assert_eq!((got.len(), refused), (5000, vec![]));
    // The same frames each with a fresh proof name both covers every time.
    let head = writer.head().unwrap().head().clone();
    let fresh: usize = (0..5000u64.div_ceil(114))
        .map(|i| {
            let (at, end) = (i * 114 + 1, ((i + 1) * 114).min(5000));
            writer
                .prove(&head, Mode::Fresh, at, end)
                .unwrap()
                .encode_in_stream(end)
                .len()
        })
        .sum();
    assert!(extended * 2 < fresh, "extended {extended} B, fresh {fresh} B");
}

/// A writer pushing one event at a time to a peer that holds the rest of
/// its log sends no `Head`: the head over exactly its events so far rides
/// in the proof as its signature alone (`SIGNED`), the proof itself is a
/// few bytes (`Mode::Append`), however long the log, and the receiver
/// computes the root from the leaves it holds and checks the signature.
/// An altered event then fails the signature.
#[test]
fn a_push_to_a_peer_that_holds_the_log_before_it_costs_a_few_bytes() {
    let a = origin(1);
    let log = events(a, 300);
    let keys = Logs::new(Arc::new(Keys::everyone()), None);
    let mut writer = Known::new(a);
    let mut out = Outbound::default();
    let mut hub = Logs::new(Arc::new(Keys::everyone()), None);
    let mut inb = Inbound::default();
    // The hub held the first 200 events when the session began.
    for e in &log[..200] {
        writer.append(e).unwrap();
        hub.tree_mut(a).insert_trusted(e).unwrap();
    }
    let held = RangeSet::from_range(1, 200);
    let mut biggest = 0;
    for e in &log[200..] {
        writer.append(e).unwrap();
        let head = writer.sign_head(e.seq, &honest(a)).unwrap();
        let (lead, proof) = out
            .frames(&keys, &writer, e.seq, e.seq, false, true, Some(&held), &|_| None)
            .unwrap();
        assert_eq!(lead, vec![], "no Head frame");
        let Frame::Proof(p) = proof else { panic!("not a proof") };
        assert_eq!(p[0], SIGNED, "the head rides in the proof");
        let proof_bytes = p.len() - 2 - head.signature.len();
        biggest = biggest.max(proof_bytes);
        if e.seq == 250 {
            let mut altered = e.clone();
            altered.payload = b"{}".to_vec();
            assert_eq!(inb.on_events(vec![altered]), None);
            let r = inb.on_proof(&mut hub, &p, &Default::default()).unwrap_err();
            assert!(matches!(r.error, AuthError::BadSignature { .. }), "{r:?}");
        }
        assert_eq!(inb.on_events(vec![e.clone()]), None);
        assert_eq!(
            inb.on_proof(&mut hub, &p, &Default::default()).map(|v| v.len()),
            Ok(1),
            "push {}",
            e.seq
        );
    }
    assert!(biggest <= 2, "a push's proof is {biggest} bytes besides its signature");
    let head = hub.tree(&a).and_then(|t| t.head()).map(|h| h.head().len);
    assert_eq!(head, Some(300), "the receiver holds the writer's head");
    // A peer that does not hold what came before gets a fresh proof.
    let mut stranger = Outbound::default();
    let (_, proof) = stranger
        .frames(&keys, &writer, 300, 300, false, true, None, &|_| None)
        .unwrap();
    let Frame::Proof(p) = proof else { panic!("not a proof") };
    let inner = &p[2 + usize::from(p[1])..];
    assert_eq!((p[0], inner[0]), (SIGNED, Mode::Fresh.code()));
}

/// Jobs whose next frame never comes (the peer got the rest elsewhere) are
/// forgotten by both ends alike: a later frame at a forgotten job's seq is
/// sent with a fresh proof, one at a remembered job's seq extends it, and
/// the receiver verifies both.
#[test]
fn jobs_that_never_go_on_are_forgotten_alike_at_both_ends() {
    let a = origin(1);
    let log = events(a, 1000);
    let writer = writer_tree(&log, &honest(a));
    let keys = Logs::new(Arc::new(Keys::everyone()), None);
    let mut out = Outbound::default();
    let mut wire = Vec::new();
    let mut frame = |out: &mut Outbound, first: u64, last: u64, continues: bool| {
        let (lead, proof) = out
            .frames(&keys, &writer, first, last, continues, false, None, &|_| None)
            .unwrap();
        for f in lead {
            if let Frame::Head(h) = f {
                wire.push(Wire::Head(h));
            }
        }
        wire.push(Wire::Events(log[(first - 1) as usize..last as usize].to_vec()));
        let Frame::Proof(p) = proof else { panic!("not a proof") };
        let mode = p[0] & 1;
        wire.push(Wire::Proof(p));
        mode
    };
    // 70 jobs each send their first 5 events and say they go on.
    for i in 0..70 {
        frame(&mut out, 10 * i + 1, 10 * i + 5, true);
    }
    // The first six were forgotten (64 kept): fresh. The last extends.
    assert_ne!(frame(&mut out, 6, 10, false), 1, "a forgotten job is not extended");
    assert_eq!(frame(&mut out, 696, 700, false), 1, "a remembered job extends");
    let mut hub = Logs::new(Arc::new(Keys::everyone()), None);
    let (got, refused) = receive(&mut hub, wire);
    assert_eq!(refused, vec![]);
    assert_eq!(got.len(), 70 * 5 + 10);
}

/// A receiver that cannot compute the root a `SIGNED` proof needs (its
/// summary said it held the log before the frame, its tree does not) keeps
/// no head; a later job under the same head then brings a `Head` frame
/// and verifies.
#[test]
fn a_signed_proof_the_receiver_could_not_check_is_not_counted_as_carried() {
    let a = origin(1);
    let log = events(a, 20);
    let keys = Logs::new(Arc::new(Keys::everyone()), None);
    let writer = writer_tree(&log, &honest(a));
    let mut out = Outbound::default();
    let mut hub = Logs::new(Arc::new(Keys::everyone()), None);
    let mut inb = Inbound::default();
    let claimed = RangeSet::from_range(1, 19);
    let (lead, proof) = out
        .frames(&keys, &writer, 20, 20, false, true, Some(&claimed), &|_| None)
        .unwrap();
    assert_eq!(lead, vec![]);
    let Frame::Proof(p) = proof else { panic!("not a proof") };
    assert_eq!(inb.on_events(vec![log[19].clone()]), None);
    assert!(inb.on_proof(&mut hub, &p, &Default::default()).is_err());

    let (lead, proof) = out.frames(&keys, &writer, 1, 19, false, true, None, &|_| None).unwrap();
    for f in lead {
        if let Frame::Head(h) = f {
            assert_eq!(inb.on_head(&mut hub, h), Ok(()));
        }
    }
    let Frame::Proof(p) = proof else { panic!("not a proof") };
    assert_eq!(inb.on_events(log[..19].to_vec()), None);
    let got = inb.on_proof(&mut hub, &p, &Default::default()).map(|v| v.len());
    assert_eq!(got, Ok(19));
}
