//! Range proofs over an origin's log: honest ranges verify however they are
//! cut and relayed; anything altered, reordered, misattributed or forged
//! fails.

#[path = "support/ecdsa.rs"]
mod ecdsa;

use ecdsa::{Key, Keys};
use ferry_proto::merkle::{
    block_of, leaf_hash, AuthError, Hash, Known, Mode, RangeProof, TreeHead, VerifiedHead, BLOCK_EVENTS,
};
use ferry_proto::{Event, Hlc, NodeId, Origin, Priority};
use proptest::prelude::*;

fn origin(b: u8) -> Origin {
    Origin {
        node: NodeId([b; 16]),
        epoch: 1,
    }
}

fn log(o: Origin, n: u64) -> Vec<Event> {
    (1..=n)
        .map(|seq| Event {
            origin: o,
            seq,
            hlc: Hlc::new(1_700_000_000_000 + seq, 0),
            topic: "clinic/visit".into(),
            priority: if seq % 7 == 0 {
                Priority::Urgent
            } else {
                Priority::Normal
            },
            payload: format!("{{\"visit\":{seq}}}").into_bytes(),
        })
        .collect()
}

struct Writer {
    events: Vec<Event>,
    known: Known,
    head: TreeHead,
    keys: Keys,
}

fn writer(o: Origin, n: u64) -> Writer {
    let key = Key::generate();
    let mut keys = Keys::default();
    keys.0.insert(o.node, key.public());
    let events = log(o, n);
    let mut known = Known::new(o);
    for e in &events {
        known.append(e).unwrap();
        // A writer holds its own events: whole blocks are compacted.
        if e.seq % BLOCK_EVENTS == 0 {
            assert!(known.compact_block(block_of(e.seq)));
        }
    }
    let head = known.sign_head(n, &key).unwrap();
    Writer {
        events,
        known,
        head,
        keys,
    }
}

impl Writer {
    fn verified(&self) -> VerifiedHead {
        self.head.clone().verify(&self.keys).unwrap()
    }
    fn range(&self, first: u64, last: u64) -> &[Event] {
        &self.events[(first - 1) as usize..last as usize]
    }
    /// The leaf hashes of a block's events, as a store holding them reads
    /// them (`Known::prove_from`).
    fn block_leaves(&self, block: u64) -> Option<Vec<Hash>> {
        let lo = (block * BLOCK_EVENTS) as usize;
        let events = self.events.get(lo..lo + BLOCK_EVENTS as usize)?;
        Some(events.iter().map(leaf_hash).collect())
    }
}

/// Streams `first..=last` from `from` to `to` in frames ending at `cuts`
/// (seqs inside the range): a fresh proof, then extensions.
fn stream(w: &Writer, from: &Known, to: &mut Known, first: u64, last: u64, cuts: &[u64]) -> Result<(), AuthError> {
    stream_held(w, from, to, first, last, cuts, last)
}

/// `stream`, where the receiver holds durably only the events up to
/// `durable`: it compacts no block past it.
fn stream_held(
    w: &Writer,
    from: &Known,
    to: &mut Known,
    first: u64,
    last: u64,
    cuts: &[u64],
    durable: u64,
) -> Result<(), AuthError> {
    let head = w.verified();
    let mut ends: Vec<u64> = cuts.iter().copied().filter(|c| (first..last).contains(c)).collect();
    ends.sort_unstable();
    ends.dedup();
    ends.push(last);
    let mut at = first;
    for (i, end) in ends.into_iter().enumerate() {
        let mode = if i == 0 { Mode::Fresh } else { Mode::Extend };
        let proof = from.prove_from(&w.head, mode, at, end, &|b| w.block_leaves(b))?;
        // Over the wire and back, in both forms (the stream form as if the
        // frame ran on to `last`).
        let proof = RangeProof::decode(&proof.encode())?;
        let proof = RangeProof::decode_in_stream(&proof.encode_in_stream(last), w.head.len, at, last)?;
        to.verify(&head, &proof, w.range(at, end))?;
        // The receiver now holds these events: the blocks it holds whole
        // compact (`compact_block` asks its caller to hold every event of
        // the block; a leaf known from a proof is not an event held, so a
        // block the frame ends inside waits for the next frame).
        let held = end.min(durable);
        for b in block_of(at)..=block_of(held) {
            if b * BLOCK_EVENTS + 1 >= first && (b + 1) * BLOCK_EVENTS <= held {
                to.compact_block(b);
            }
        }
        at = end + 1;
    }
    Ok(())
}

fn arb_case() -> impl Strategy<Value = (u64, u64, u64, Vec<u64>)> {
    (1u64..700).prop_flat_map(|n| {
        (1..=n).prop_flat_map(move |first| {
            (first..=n).prop_flat_map(move |last| {
                (
                    Just(n),
                    Just(first),
                    Just(last),
                    proptest::collection::vec(first..=last, 0..6),
                )
            })
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_range_in_any_frames_verifies((n, first, last, cuts) in arb_case()) {
        let w = writer(origin(1), n);
        let mut relay = Known::new(origin(1));
        prop_assert_eq!(stream(&w, &w.known, &mut relay, first, last, &cuts), Ok(()));
        // The relay proves any part of what it holds onward, in frames.
        let (a, b) = (first + (last - first) / 3, last - (last - first) / 4);
        let mut next = Known::new(origin(1));
        prop_assert_eq!(stream(&w, &relay, &mut next, a, b, &cuts), Ok(()));
    }

    #[test]
    fn an_altered_event_fails((n, first, last, _cuts) in arb_case(), which in any::<prop::sample::Index>(), how in 0u8..5) {
        let w = writer(origin(1), n);
        let mut events = w.range(first, last).to_vec();
        let i = which.index(events.len());
        match how {
            0 => events[i].payload.push(b' '),
            1 => events[i].hlc = Hlc(events[i].hlc.0 + 1),
            2 => events[i].topic.push('x'),
            3 => events[i].priority = if events[i].priority == Priority::Bulk { Priority::Normal } else { Priority::Bulk },
            _ => events[i].payload = b"{\"forged\":true}".to_vec(),
        }
        let proof = w.known.prove_from(&w.head, Mode::Fresh, first, last, &|b| w.block_leaves(b)).unwrap();
        let mut to = Known::new(origin(1));
        let got = to.verify(&w.verified(), &proof, &events);
        prop_assert!(matches!(got, Err(AuthError::Mismatch { .. })), "{:?}", got);
        prop_assert_eq!(to.nodes(), 0, "nothing kept from a failed check");
    }

    #[test]
    fn reordered_events_fail((n, first, last, _cuts) in arb_case(), i in any::<prop::sample::Index>(), j in any::<prop::sample::Index>()) {
        prop_assume!(last > first);
        let w = writer(origin(1), n);
        let mut events = w.range(first, last).to_vec();
        let (i, j) = (i.index(events.len()), j.index(events.len()));
        prop_assume!(i != j);
        events.swap(i, j);
        let proof = w.known.prove_from(&w.head, Mode::Fresh, first, last, &|b| w.block_leaves(b)).unwrap();
        let mut to = Known::new(origin(1));
        // As sent, the seqs are out of order.
        let got = to.verify(&w.verified(), &proof, &events);
        prop_assert!(matches!(got, Err(AuthError::WrongSeq { .. })), "{:?}", got);
        // Renumbered to look in order, the contents no longer match.
        for (k, e) in events.iter_mut().enumerate() {
            e.seq = first + k as u64;
        }
        let got = to.verify(&w.verified(), &proof, &events);
        prop_assert!(matches!(got, Err(AuthError::Mismatch { .. })), "{:?}", got);
    }

    #[test]
    fn an_altered_proof_hash_fails((n, first, last, _cuts) in arb_case(), which in any::<prop::sample::Index>(), bit in 0usize..256) {
        let w = writer(origin(1), n);
        let mut proof = w.known.prove_from(&w.head, Mode::Fresh, first, last, &|b| w.block_leaves(b)).unwrap();
        prop_assume!(!proof.hashes.is_empty());
        let i = which.index(proof.hashes.len());
        proof.hashes[i][bit / 8] ^= 1 << (bit % 8);
        let mut to = Known::new(origin(1));
        let got = to.verify(&w.verified(), &proof, w.range(first, last));
        prop_assert!(matches!(got, Err(AuthError::Mismatch { .. })), "{:?}", got);
    }
}

#[test]
fn events_of_another_origin_fail() {
    let w = writer(origin(1), 20);
    let proof = w
        .known
        .prove_from(&w.head, Mode::Fresh, 5, 9, &|b| w.block_leaves(b))
        .unwrap();
    let mut events = w.range(5, 9).to_vec();
    events[2].origin = origin(2);
    let mut to = Known::new(origin(1));
    assert!(matches!(
        to.verify(&w.verified(), &proof, &events),
        Err(AuthError::WrongOrigin { .. })
    ));
    // Nor does a head of origin 1 prove anything in origin 2's log.
    let mut other = Known::new(origin(2));
    assert!(matches!(
        other.verify(&w.verified(), &proof, w.range(5, 9)),
        Err(AuthError::WrongOrigin { .. })
    ));
}

#[test]
fn a_forged_or_altered_head_fails() {
    let w = writer(origin(1), 20);
    // A relay with its own enrolled key signs a head in origin 1's name.
    let mallory = Key::generate();
    let mut forged_log = log(origin(1), 20);
    forged_log[4].payload = b"{\"forged\":true}".to_vec();
    let mut forged = Known::new(origin(1));
    for e in &forged_log {
        forged.append(e).unwrap();
    }
    let forged_head = forged.sign_head(20, &mallory).unwrap();
    assert_eq!(
        forged_head.clone().verify(&w.keys),
        Err(AuthError::BadSignature { origin: origin(1) })
    );
    // The honest head with its length or root changed.
    let mut longer = w.head.clone();
    longer.len = 21;
    assert!(longer.verify(&w.keys).is_err());
    let mut other_root = w.head.clone();
    other_root.root = forged_head.root;
    assert!(other_root.verify(&w.keys).is_err());
    // A head of an origin whose key is not known.
    let mut stranger = w.head.clone();
    stranger.origin = origin(9);
    assert!(stranger.verify(&w.keys).is_err());
    // Wire form round-trips and a truncated one is refused.
    let bytes = w.head.encode();
    assert_eq!(TreeHead::decode(&bytes), Ok(w.head.clone()));
    assert!(TreeHead::decode(&bytes[..50]).is_err());
}

#[test]
fn wrong_length_fails() {
    let w = writer(origin(1), 20);
    let head = w.verified();
    let mut to = Known::new(origin(1));
    // A proof made under another length.
    let short = Writer {
        head: w.known.clone().sign_head(12, &Key::generate()).unwrap(),
        ..writer(origin(1), 12)
    };
    let proof = w.known.prove(&short.head, Mode::Fresh, 3, 8).unwrap();
    assert_eq!(
        to.verify(&head, &proof, w.range(3, 8)),
        Err(AuthError::WrongHead { proof: 12, head: 20 })
    );
    // Events beyond the head: a relay fabricating seq 21.
    let mut extra = w.range(18, 20).to_vec();
    let mut fabricated = extra[2].clone();
    fabricated.seq = 21;
    extra.push(fabricated);
    let proof = RangeProof {
        last: 21,
        ..w.known
            .prove_from(&w.head, Mode::Fresh, 18, 20, &|b| w.block_leaves(b))
            .unwrap()
    };
    assert!(matches!(
        to.verify(&head, &proof, &extra),
        Err(AuthError::OutOfRange { .. })
    ));
    // Too few or too many hashes.
    let mut proof = w
        .known
        .prove_from(&w.head, Mode::Fresh, 3, 8, &|b| w.block_leaves(b))
        .unwrap();
    proof.hashes.pop();
    assert!(matches!(
        to.verify(&head, &proof, w.range(3, 8)),
        Err(AuthError::ProofLength { .. })
    ));
}

#[test]
fn an_extension_without_the_frame_before_fails() {
    // Extend assumes the receiver verified the frame before it; one that
    // did not cannot be talked into accepting the range.
    let w = writer(origin(1), 64);
    let proof = w
        .known
        .prove_from(&w.head, Mode::Extend, 20, 30, &|b| w.block_leaves(b))
        .unwrap();
    let mut to = Known::new(origin(1));
    assert!(matches!(
        to.verify(&w.verified(), &proof, w.range(20, 30)),
        Err(AuthError::Missing { .. })
    ));
}

#[test]
fn out_of_order_pieces_then_relayed_whole() {
    let w = writer(origin(1), 1000);
    let mut hub = Known::new(origin(1));
    for (a, b) in [(601, 1000), (1, 200), (201, 600)] {
        stream(&w, &w.known, &mut hub, a, b, &[a + 50, a + 130, a + 131]).unwrap();
    }
    let mut clinic = Known::new(origin(1));
    stream(&w, &hub, &mut clinic, 1, 1000, &[100, 357, 800]).unwrap();
    assert_eq!(clinic.root(1000), Ok(w.head.root));
}

#[test]
fn a_head_after_pushed_events_needs_no_hashes() {
    // Events pushed by their writer over mutual TLS are appended as they
    // come; the head that follows proves them with an empty extension.
    let w = writer(origin(1), 40);
    let mut to = Known::new(origin(1));
    stream(&w, &w.known, &mut to, 1, 25, &[]).unwrap();
    let leaves = to.leaves(26, w.range(26, 40)).unwrap();
    let proof = w
        .known
        .prove_from(&w.head, Mode::Extend, 26, 40, &|b| w.block_leaves(b))
        .unwrap();
    assert!(proof.hashes.is_empty());
    to.verify_leaves(&w.verified(), &proof, &leaves).unwrap();
    assert_eq!(to.head().map(|h| h.head().len), Some(40));
}

#[test]
fn pushed_events_then_the_writers_head() {
    // A clinic takes events 1..=30 pushed by their writer, out of order,
    // then the writer's head: it adopts the head and proves onward.
    let w = writer(origin(1), 30);
    let mut clinic = Known::new(origin(1));
    for e in w.events.iter().rev() {
        clinic.insert_trusted(e).unwrap();
    }
    clinic.adopt(w.verified()).unwrap();
    assert_eq!(clinic.head().map(|h| h.head().len), Some(30));
    let mut next = Known::new(origin(1));
    stream(&w, &clinic, &mut next, 7, 23, &[12]).unwrap();
    // A head whose log differs from the pushed events is not adopted, and
    // an event contradicting what was verified is not kept.
    let mut other = Known::new(origin(1));
    let mut altered = w.events.clone();
    altered[9].payload = b"{}".to_vec();
    for e in &altered {
        other.insert_trusted(e).unwrap();
    }
    assert!(matches!(other.adopt(w.verified()), Err(AuthError::Mismatch { .. })));
    assert!(matches!(
        clinic.insert_trusted(&altered[9]),
        Err(AuthError::Mismatch { .. })
    ));
    // Missing events: the head cannot be checked yet.
    let mut partial = Known::new(origin(1));
    partial.insert_trusted(&w.events[0]).unwrap();
    assert!(matches!(partial.adopt(w.verified()), Err(AuthError::Missing { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// A relay that kept two ranges restarts with its saved tree and the
    /// events it holds, and proves any part of them onward as before.
    #[test]
    fn a_restored_relay_proves_what_it_held((n, first, last, cuts) in arb_case(), lost in any::<prop::sample::Index>()) {
        let w = writer(origin(1), n);
        let mut relay = Known::new(origin(1));
        // The event after `kept` was not durable when the relay stopped.
        let kept = first + lost.index((last - first + 1) as usize) as u64;
        prop_assert_eq!(stream_held(&w, &w.known, &mut relay, first, last, &cuts, kept), Ok(()));
        let held = |seq: u64| (first..=kept).contains(&seq);
        let saved = relay.save(held);
        let events = w.range(first, kept).to_vec();
        let (back, dropped) = Known::restore(origin(1), Some(&saved), &w.keys, events, false).unwrap();
        prop_assert_eq!(dropped, 0);
        let mut next = Known::new(origin(1));
        prop_assert_eq!(stream(&w, &back, &mut next, first, kept, &cuts), Ok(()));
        // The saved form holds the head, the leaves of events not held and
        // a few covering hashes: no leaf of a held event.
        let (bare, _) = Known::restore(origin(1), Some(&saved), &w.keys, Vec::new(), false).unwrap();
        // Without the held events the root cannot be computed: their
        // leaves come from the events, not from the saved form.
        prop_assert!(bare.root(n).is_err(), "held leaves were saved");
        prop_assert!(back.root(n).is_ok());
        let not_held = (last - kept) as usize;
        prop_assert!(saved.len() <= 1 + 4 + (4 + 124) + 4 + 41 * (2 * 64 + not_held));
    }
}

#[test]
fn a_writer_restored_from_its_events_alone_signs_on() {
    let w = writer(origin(2), 40);
    let (mut back, dropped) = Known::restore(origin(2), None, &w.keys, w.events.clone(), true).unwrap();
    assert_eq!((back.appended(), dropped), (40, 0));
    assert_eq!(back.root(40), w.known.root(40));
    // A gap ends what counts as the writer's own: nothing after it is
    // appended, so no head can be signed over a log with a hole.
    let holed: Vec<Event> = w.events.iter().filter(|e| e.seq != 7).cloned().collect();
    let (holed, _) = Known::restore(origin(2), None, &w.keys, holed, true).unwrap();
    assert_eq!(holed.appended(), 6);
    back.append(&log(origin(2), 41)[40]).unwrap();
}

#[test]
fn a_damaged_saved_tree_proves_less_and_accepts_nothing_more() {
    let w = writer(origin(3), 64);
    let mut relay = Known::new(origin(3));
    stream(&w, &w.known, &mut relay, 20, 30, &[25]).unwrap();
    let saved = relay.save(|seq| (20..=30).contains(&seq));
    let held = w.range(20, 30).to_vec();
    // A head whose signature no longer checks is dropped.
    let mut bad_sig = saved.clone();
    let at = 1 + 4 + 4 + 60; // the first signature byte of the first head
    bad_sig[at] ^= 1;
    let (back, dropped) = Known::restore(origin(3), Some(&bad_sig), &w.keys, held.clone(), false).unwrap();
    assert_eq!(dropped, 1);
    assert!(back.head().is_none());
    // A saved node altered: the head no longer matches and is dropped.
    let mut bad_node = saved.clone();
    let last = bad_node.len() - 1;
    bad_node[last] ^= 1;
    let (back, dropped) = Known::restore(origin(3), Some(&bad_node), &w.keys, held.clone(), false).unwrap();
    assert_eq!((dropped, back.head().is_none()), (1, true));
    // Cut short or with bytes after it: refused as malformed.
    for broken in [&saved[..saved.len() - 3], &[saved.as_slice(), &[0]].concat()[..]] {
        let got = Known::restore(origin(3), Some(broken), &w.keys, held.clone(), false);
        assert!(matches!(got, Err(AuthError::Malformed { .. })));
    }
    // Events without the saved hashes cannot be proved under the head.
    let (bare, _) = Known::restore(origin(3), None, &w.keys, held, false).unwrap();
    assert!(bare.prove(&w.head, Mode::Fresh, 20, 30).is_err());
}

#[test]
fn a_forked_log_cannot_replace_what_was_verified() {
    // The writer's card is restored from an old image holding 1..=4; the
    // relay already verified 1..=8. The writer writes 5..=10 anew (other
    // payloads, same key) and pushes 9..=10 with a fresh proof, whose left
    // cover names its own [0, 8). The signature is the writer's, so only
    // what the relay verified before can tell.
    let o = origin(1);
    let key = Key::generate();
    let mut keys = Keys::default();
    keys.0.insert(o.node, key.public());
    let original = log(o, 8);
    let mut first = Known::new(o);
    for e in &original {
        first.append(e).unwrap();
    }
    let head8 = first.sign_head(8, &key).unwrap().verify(&keys).unwrap();
    let mut relay = Known::new(o);
    let proof = first.prove(head8.head(), Mode::Fresh, 1, 8).unwrap();
    relay.verify(&head8, &proof, &original).unwrap();

    let mut forked_events = log(o, 10);
    for e in &mut forked_events[4..] {
        e.payload = format!("{{\"visit\":{},\"after_restore\":true}}", e.seq).into_bytes();
    }
    let mut forked = Known::new(o);
    for e in &forked_events {
        forked.append(e).unwrap();
    }
    let head10 = forked.sign_head(10, &key).unwrap().verify(&keys).unwrap();
    let proof = forked.prove(head10.head(), Mode::Fresh, 9, 10).unwrap();
    let got = relay.verify(&head10, &proof, &forked_events[8..]);
    assert!(matches!(got, Err(AuthError::Forked { lo: 0, hi: 8 })), "{got:?}");
    // The relay still proves its original events under the head it had.
    let mut next = Known::new(o);
    let proof = relay.prove(head8.head(), Mode::Fresh, 5, 8).unwrap();
    next.verify(&head8, &proof, &original[4..]).unwrap();
}

#[test]
fn a_tree_keeps_about_one_node_per_64_events_it_holds() {
    let w = writer(origin(1), 5000);
    // Whole blocks keep their own node and those above; the open block
    // its leaves: 5000 events, 39 whole blocks of 128.
    assert!(w.known.nodes() < 5000 / 64 + 2 * 128, "{} nodes", w.known.nodes());
    let mut relay = Known::new(origin(1));
    stream(&w, &w.known, &mut relay, 1, 5000, &[1000, 2048, 3333]).unwrap();
    assert!(relay.nodes() < 5000 / 64 + 2 * 128, "{} nodes", relay.nodes());
    // It proves any range onward, hashing compacted blocks from its events.
    let mut next = Known::new(origin(1));
    stream(&w, &relay, &mut next, 777, 4321, &[1500, 2600]).unwrap();
    // Events that do not give a block's node prove nothing.
    let mut altered = w.block_leaves(3).unwrap();
    altered[5][0] ^= 1;
    let got = relay.prove_from(&w.head, Mode::Fresh, 390, 400, &|b| {
        if b == 3 {
            Some(altered.clone())
        } else {
            w.block_leaves(b)
        }
    });
    assert!(matches!(got, Err(AuthError::Forked { .. })), "{got:?}");
    // And a store that cannot read them leaves the range unproved here.
    let got = relay.prove_from(&w.head, Mode::Fresh, 390, 400, &|_| None);
    assert!(matches!(got, Err(AuthError::Missing { .. })), "{got:?}");
}

/// A writer's key and the keys that verify it.
fn keyed(o: Origin) -> (Key, Keys) {
    let key = Key::generate();
    let mut keys = Keys::default();
    keys.0.insert(o.node, key.public());
    (key, keys)
}

/// The leaf hashes of block `b` of `events` (a log from seq 1), as a store
/// holding them reads them.
fn leaves_of(events: &[Event], b: u64) -> Option<Vec<Hash>> {
    let lo = (b * BLOCK_EVENTS) as usize;
    Some(
        events
            .get(lo..lo + BLOCK_EVENTS as usize)?
            .iter()
            .map(leaf_hash)
            .collect(),
    )
}

/// A receiver that already holds a whole block past the end of a job's
/// head (it got those events first, under a longer head) keeps only that
/// block's node, not the nodes inside it that the job's first proof gave.
/// The job's next frame extends that proof and leaves them out, so the
/// receiver hashes the block again from its events: the block the head
/// ends in is expanded too (the simulator's seed 517 stalled without it).
#[test]
fn an_extension_under_a_head_ending_in_a_compacted_block_verifies() {
    let o = origin(1);
    let (key, keys) = keyed(o);
    let events = log(o, 400);
    let mut writer = Known::new(o);
    let mut short = None;
    for e in &events {
        writer.append(e).unwrap();
        if e.seq == 352 {
            short = Some(writer.sign_head(352, &key).unwrap());
        }
        if e.seq % BLOCK_EVENTS == 0 {
            assert!(writer.compact_block(block_of(e.seq)));
        }
    }
    let long = writer.sign_head(400, &key).unwrap();
    let short = short.unwrap();
    let leaves = |b: u64| leaves_of(&events, b);
    let range = |first: u64, last: u64| &events[(first - 1) as usize..last as usize];

    // The receiver gets block 2 (seqs 257..=384) first and compacts it.
    let mut receiver = Known::new(o);
    let long_v = long.clone().verify(&keys).unwrap();
    let proof = writer.prove_from(&long, Mode::Fresh, 257, 384, &leaves).unwrap();
    receiver.verify(&long_v, &proof, range(257, 384)).unwrap();
    assert!(receiver.compact_block(2));

    // Then a job under the shorter head: a fresh frame, then an extension.
    let short_v = short.clone().verify(&keys).unwrap();
    let first = writer.prove_from(&short, Mode::Fresh, 129, 200, &leaves).unwrap();
    receiver.verify(&short_v, &first, range(129, 200)).unwrap();
    let next = writer.prove_from(&short, Mode::Extend, 201, 256, &leaves).unwrap();
    let around_only = receiver.expand(201, 256, &[], &leaves);
    let got = receiver
        .clone()
        .verify_expanded(&short_v, &next, range(201, 256), &around_only);
    assert!(matches!(got, Err(AuthError::Missing { .. })), "{got:?}");
    let with_head_end = receiver.expand(201, 256, &[352], &leaves);
    receiver
        .verify_expanded(&short_v, &next, range(201, 256), &with_head_end)
        .unwrap();
}

/// A writer whose card lost the tail of a compacted block gets the leaves
/// of the events it still holds back (`Known::reopen_block`) and signs its
/// log again where it now ends. Its head over the lost events stays but
/// proves nothing of that block, so the shorter head must be kept beside
/// it (the simulator's seeds 255, 265 and 282 stalled without it).
#[test]
fn a_writer_that_lost_a_blocks_tail_proves_the_rest_under_a_shorter_head() {
    let o = origin(4);
    let (key, keys) = keyed(o);
    let events = log(o, 418);
    let mut writer = Known::new(o);
    for e in &events {
        writer.append(e).unwrap();
        if e.seq % BLOCK_EVENTS == 0 {
            assert!(writer.compact_block(block_of(e.seq)));
        }
    }
    writer.sign_head(418, &key).unwrap();
    // Seqs 383..=418 are lost; block 2 (257..=384) held them in part.
    writer.reopen_block(2, &events[256..382]).unwrap();
    assert_eq!(writer.appended(), 382);
    let short = writer.sign_head(382, &key).unwrap();
    let lens: Vec<u64> = writer.heads_for(382).map(|h| h.head().len).collect();
    assert!(lens.contains(&382), "heads kept: {lens:?}");
    let leaves = |b: u64| leaves_of(&events, b);
    let proof = writer.prove_from(&short, Mode::Fresh, 256, 382, &leaves).unwrap();
    let mut receiver = Known::new(o);
    receiver
        .verify(&short.verify(&keys).unwrap(), &proof, &events[255..382])
        .unwrap();
}

/// Found by `any_range_in_any_frames_verifies` in CI: the test's receiver
/// compacted block 1 (seqs 129..=256) after a frame ending at 255, holding
/// seq 256's leaf from the proof but not its event, and the next frame
/// could not be checked (`Missing { lo: 128, hi: 129 }`). A node compacts
/// only blocks whose every event its store holds (`Replica::compact_trees`).
#[test]
fn a_relay_proves_a_range_it_received_in_frames_cut_inside_a_block() {
    let w = writer(origin(1), 506);
    let mut relay = Known::new(origin(1));
    assert_eq!(stream(&w, &w.known, &mut relay, 111, 264, &[255]), Ok(()));
    let (a, b) = (111 + (264 - 111) / 3, 264 - (264 - 111) / 4);
    let mut next = Known::new(origin(1));
    assert_eq!(stream(&w, &relay, &mut next, a, b, &[255]), Ok(()));
}
