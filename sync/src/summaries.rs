//! The frames that carry a node's summary to a peer: whole, as a change to
//! the one before on the connection, or in parts when it does not fit one
//! frame. A deployment whose nodes start a new log epoch after every power
//! cut gathers tens of thousands of logs in a year or two, and a hub's or a
//! mule's summary names them all (about 24 bytes each): past 1 MiB
//! (`MAX_FRAME_LEN`) it went into no frame at all.

use ferry_proto::frame::MAX_FRAME_LEN;
use ferry_proto::{apply_change, change_to, Classes, Frame, Summary};

/// A node's summary and the classes that go with it.
pub(crate) type Pair = (Summary, Classes);

/// The frames, encoded, that bring a peer holding `before` of this node's
/// summaries (`None`: none yet on this connection) to `now`, with ids from
/// `last_id + 1`; only the last asks for the peer's summary when `ask`.
/// One frame when it fits: the whole summary, or the change when that is
/// shorter. Otherwise parts, each a share of the logs: the first is a whole
/// `Summary` if the peer holds none yet, every other a `SummaryChange`.
/// Also returns what the peer holds after the last: `now`, except a log
/// whose sets alone exceed a frame, of which only the leading ranges that
/// fit are named (a summary may claim less than is held, never more).
pub(crate) fn summary_frames(before: Option<&Pair>, now: &Pair, last_id: u32, ask: bool) -> (Vec<Vec<u8>>, Pair) {
    let id = last_id.wrapping_add(1);
    let whole = summary(id, ask, now.clone());
    let (single, changed) = match before {
        None => (whole, now.clone()),
        Some(before) => {
            let changed = change_to(before, now);
            let change = change_frame(id, ask, changed.clone());
            (if change.len() < whole.len() { change } else { whole }, changed)
        }
    };
    if single.len() <= MAX_FRAME_LEN {
        return (vec![single], now.clone());
    }
    let parts = split(changed);
    let count = parts.len();
    let mut held = before.cloned().unwrap_or_default();
    let mut frames = Vec::with_capacity(count);
    for (i, part) in parts.into_iter().enumerate() {
        let (id, ask) = (id.wrapping_add(i as u32), ask && i + 1 == count);
        let frame = if i == 0 && before.is_none() {
            held = part.clone();
            summary(id, ask, part)
        } else {
            apply_change(&mut held, part.0.clone(), part.1.clone());
            change_frame(id, ask, part)
        };
        debug_assert!(frame.len() <= MAX_FRAME_LEN, "a summary part within the frame limit");
        frames.push(frame);
    }
    (frames, held)
}

fn summary(id: u32, ask: bool, (summary, classes): Pair) -> Vec<u8> {
    Frame::Summary {
        id,
        ask,
        summary,
        classes,
    }
    .encode()
}

fn change_frame(id: u32, ask: bool, (changed, classes): Pair) -> Vec<u8> {
    Frame::SummaryChange {
        id,
        ask,
        changed,
        classes,
    }
    .encode()
}

/// Whether `part` fits one `SummaryChange` frame.
fn fits(part: &Pair) -> bool {
    change_frame(u32::MAX, true, part.clone()).len() <= MAX_FRAME_LEN
}

/// `changed` in shares of its logs, in origin order, that each fit a frame.
fn split(changed: Pair) -> Vec<Pair> {
    let mut todo = vec![changed];
    let mut done = Vec::new();
    while let Some(mut left) = todo.pop() {
        if fits(&left) {
            done.push(left);
            continue;
        }
        let Some(&mid) = left.0 .0.keys().nth(left.0 .0.len() / 2) else {
            done.push(left);
            continue;
        };
        if left.0 .0.len() == 1 {
            done.push(trimmed(left));
            continue;
        }
        // A change's classes name only logs it names, so one key splits all.
        let right = (
            Summary(left.0 .0.split_off(&mid)),
            Classes {
                urgent: left.1.urgent.split_off(&mid),
                bulk: left.1.bulk.split_off(&mid),
            },
        );
        // Right first on the stack, so parts go out in origin order.
        todo.push(right);
        todo.push(left);
    }
    done
}

/// One log whose sets exceed a frame: its leading ranges that fit, and no
/// classes (every event then counts as normal to the peer).
fn trimmed(mut part: Pair) -> Pair {
    part.1 = Classes::default();
    while !fits(&part) {
        let Some(set) = part.0 .0.values_mut().next() else {
            break;
        };
        let ranges = set.ranges();
        *set = ferry_proto::RangeSet::from_ranges(ranges[..ranges.len() / 2].iter().copied());
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::{NodeId, Origin, RangeSet};

    fn logs(n: u32, holes: u64) -> Pair {
        let summary = (0..n)
            .map(|epoch| {
                let set = RangeSet::from_ranges((0..holes).map(|i| (3 * i + 1, 3 * i + 1)));
                (
                    Origin {
                        node: NodeId([7; 16]),
                        epoch,
                    },
                    set,
                )
            })
            .collect();
        (Summary(summary), Classes::default())
    }

    fn decoded(frames: &[Vec<u8>]) -> Vec<Frame> {
        frames
            .iter()
            .map(|b| Frame::decode(b).expect("a frame").expect("whole").0)
            .collect()
    }

    fn replay(frames: &[Vec<u8>], before: Option<&Pair>) -> Pair {
        let mut held = before.cloned().unwrap_or_default();
        for f in decoded(frames) {
            match f {
                Frame::Summary { summary, classes, .. } => held = (summary, classes),
                Frame::SummaryChange { changed, classes, .. } => apply_change(&mut held, changed, classes),
                other => panic!("{other:?}"),
            }
        }
        held
    }

    #[test]
    fn a_summary_that_fits_is_one_frame() {
        let now = logs(3, 2);
        let (frames, held) = summary_frames(None, &now, 0, true);
        assert!(matches!(
            decoded(&frames)[..],
            [Frame::Summary { id: 1, ask: true, .. }]
        ));
        assert_eq!(held, now);
    }

    #[test]
    fn a_summary_larger_than_a_frame_goes_in_parts_that_rebuild_it() {
        let now = logs(60_000, 1);
        let (frames, held) = summary_frames(None, &now, 4, true);
        assert!(frames.len() >= 2, "{} frames", frames.len());
        assert!(frames.iter().all(|f| f.len() <= MAX_FRAME_LEN));
        let ids: Vec<(u32, bool)> = decoded(&frames)
            .iter()
            .map(|f| match f {
                Frame::Summary { id, ask, .. } | Frame::SummaryChange { id, ask, .. } => (*id, *ask),
                _ => unreachable!("only summaries"),
            })
            .collect();
        let want: Vec<(u32, bool)> = (0..frames.len())
            .map(|i| (5 + i as u32, i + 1 == frames.len()))
            .collect();
        assert_eq!(ids, want, "ids follow on, and only the last asks");
        assert!(matches!(decoded(&frames)[0], Frame::Summary { .. }));
        assert_eq!(replay(&frames, None), now);
        assert_eq!(held, now);
        // A later summary that changed little is one small change.
        let mut later = now.clone();
        later.0 .0.values_mut().next().unwrap().insert_range(900, 901);
        let (frames, held) = summary_frames(Some(&now), &later, 9, false);
        assert!(matches!(decoded(&frames)[..], [Frame::SummaryChange { id: 10, .. }]));
        assert!(frames[0].len() < 64);
        assert_eq!(held, later);
    }

    #[test]
    fn one_log_larger_than_a_frame_is_named_in_part() {
        let now = logs(1, 700_000);
        let (frames, held) = summary_frames(None, &now, 0, true);
        assert!(frames.iter().all(|f| f.len() <= MAX_FRAME_LEN));
        assert_eq!(replay(&frames, None), held);
        let (sent, all) = (&held.0 .0, &now.0 .0);
        let (sent, all) = (sent.values().next().unwrap(), all.values().next().unwrap());
        assert!(sent.count() > 0 && sent.count() < all.count());
        assert_eq!(sent.difference(all).count(), 0, "claims no more than is held");
    }
}
