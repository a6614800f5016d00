//! Any interleaving and duplication of the same record events gives the
//! same state: the property every node's index rests on.

use ferry_proto::{Event, Hlc, NodeId, Origin, Priority};
use ferry_records::{converged, topic, State, Write};
use proptest::prelude::*;

const NODES: usize = 3;
const KEYS: [&str; 2] = ["p-1", "p-2"];

fn origin(n: usize) -> Origin {
    Origin {
        node: NodeId([n as u8 + 1; 16]),
        epoch: 1,
    }
}

/// One step of a run: node `node` either writes key `key` (a tombstone if
/// `delete`), or receives everything node `from` holds (a sync).
#[derive(Clone, Debug)]
enum Step {
    Write { node: usize, key: usize, delete: bool },
    Sync { node: usize, from: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..NODES, 0..KEYS.len(), prop::bool::weighted(0.2))
            .prop_map(|(node, key, delete)| Step::Write { node, key, delete }),
        2 => (0..NODES, 0..NODES).prop_map(|(node, from)| Step::Sync { node, from }),
    ]
}

/// Runs the steps as honest nodes would (each write's context is what its
/// node holds), and returns every event written.
fn events_of(steps: &[Step]) -> Vec<Event> {
    let mut held: Vec<Vec<Event>> = vec![Vec::new(); NODES];
    let mut seq = [0u64; NODES];
    let mut clock = 0u64;
    for s in steps {
        match *s {
            Step::Write { node, key, delete } => {
                let state = State::from_events(&held[node]);
                seq[node] += 1;
                // Clocks that disagree: a node's HLC is not global order.
                clock += 1;
                let hlc = Hlc(clock * 7 % 23 + (node as u64) * 5);
                let w = Write {
                    collection: "patients".into(),
                    key: KEYS[key].into(),
                    value: (!delete).then(|| format!("{node}-{}", seq[node]).into_bytes()),
                    context: state.context_for("patients", KEYS[key]),
                };
                held[node].push(Event {
                    origin: origin(node),
                    seq: seq[node],
                    hlc,
                    topic: topic("patients"),
                    priority: Priority::Normal,
                    payload: w.encode(),
                });
            }
            Step::Sync { node, from } => {
                let theirs = held[from].clone();
                for e in theirs {
                    if !held[node].contains(&e) {
                        held[node].push(e);
                    }
                }
            }
        }
    }
    let mut all: Vec<Event> = held.into_iter().flatten().collect();
    all.sort_by_key(|e| (e.origin, e.seq));
    all.dedup();
    all
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_order_and_duplication_gives_the_same_state(
        steps in prop::collection::vec(step(), 1..40),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..120),
        dups in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let events = events_of(&steps);
        let reference = State::from_events(&events);
        // A shuffle driven by the generated indices, then duplicates.
        let mut shuffled = events.clone();
        for (i, ix) in order.iter().enumerate() {
            if shuffled.is_empty() { break; }
            let a = i % shuffled.len();
            let b = ix.index(shuffled.len());
            shuffled.swap(a, b);
        }
        for ix in &dups {
            if events.is_empty() { break; }
            let e = events[ix.index(events.len())].clone();
            let at = ix.index(shuffled.len() + 1);
            shuffled.insert(at, e);
        }
        let other = State::from_events(&shuffled);
        prop_assert_eq!(&reference, &other);
        prop_assert!(converged([("in order", &reference), ("shuffled", &other)]).is_ok());
        // Every record that has versions has exactly one winner.
        for (_, _, r) in reference.records() {
            prop_assert!(r.winner().is_some());
        }
    }

    /// After a write that saw everything, no conflict is left on its key.
    #[test]
    fn a_write_that_saw_everything_resolves(steps in prop::collection::vec(step(), 1..30)) {
        let mut events = events_of(&steps);
        let state = State::from_events(&events);
        let w = Write {
            collection: "patients".into(),
            key: "p-1".into(),
            value: Some(b"resolved".to_vec()),
            context: state.context_for("patients", "p-1"),
        };
        events.push(Event {
            origin: origin(NODES + 1),
            seq: 1,
            hlc: Hlc(0),
            topic: topic("patients"),
            priority: Priority::Normal,
            payload: w.encode(),
        });
        let after = State::from_events(&events);
        let rec = after.record("patients", "p-1").expect("just written");
        prop_assert_eq!(rec.live().len(), 1);
        prop_assert_eq!(rec.winner().map(|v| v.id.origin), Some(origin(NODES + 1)));
    }
}

/// The case of the issue: two clinics write the same record offline; every
/// node that holds both writes shows the same winner and both versions.
#[test]
fn two_offline_writes_are_one_conflict_everywhere() {
    let events = events_of(&[
        Step::Write {
            node: 0,
            key: 0,
            delete: false,
        },
        Step::Sync { node: 1, from: 0 },
        Step::Sync { node: 2, from: 0 },
        Step::Write {
            node: 1,
            key: 0,
            delete: false,
        },
        Step::Write {
            node: 2,
            key: 0,
            delete: false,
        },
    ]);
    let s = State::from_events(&events);
    let conflicts = s.conflicts();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let rec = s.record("patients", "p-1").unwrap();
    assert_eq!(rec.live().len(), 2);
    assert_eq!(rec.history().len(), 3);
    let mut reversed = events.clone();
    reversed.reverse();
    assert!(converged([("a", &s), ("b", &State::from_events(&reversed))]).is_ok());
    let partial = State::from_events(&events[..2]);
    assert!(converged([("full", &s), ("partial", &partial)]).is_err());
}
