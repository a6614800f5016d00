//! The sending half of a connection's data: one lane per priority class,
//! each a data stream with its own compression context, held while the
//! lane has work (or for the connection's life, if so configured).
//!
//! A lane serves jobs (a want the peer sent, or new events the peer
//! subscribed to) a frame at a time, taking turns among the first few jobs,
//! so a want of large events does not hold back the small events of
//! another. Events larger than a chunk go in pieces, one piece per turn.
//! Nothing the peer holds or was already sent on this connection is sent.

use crate::auth::Outbound;
use crate::io::Time;
use crate::store::{Store, StoreError};
use ferry_proto::batch::{piece, Item, StreamCompressor};
use ferry_proto::frame::BATCH_BYTES;
use ferry_proto::{Event, Frame, Origin, Priority, RangeSet, Summary, Want};
use std::collections::{BTreeMap, VecDeque};

/// Jobs that take turns; later ones wait.
const ACTIVE_JOBS: usize = 4;
/// Events per chunk at most (a chunk of tiny events is still bounded).
const CHUNK_EVENTS: usize = 512;
/// With authenticated logs every frame carries a proof (a hash or two and
/// seven bytes of framing), so frames of whole events hold twice
/// `BATCH_BYTES`: half as many proofs, 1.3 % of a 2G bulk sync instead of
/// 2.4 %. Pieces of large events stay `BATCH_BYTES`, and a receiver holds
/// at most one frame's events before its proof.
const PROVED_FRAME_BYTES: usize = 2 * BATCH_BYTES;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// Answers a want; ends with `End`.
    Want(Want),
    /// New events the peer subscribed to.
    Push,
}

#[derive(Debug)]
struct Job {
    source: Source,
    origin: Origin,
    /// What remains to consider sending.
    todo: RangeSet,
    /// A large event part sent: its seq and the offset of the next piece.
    piece: Option<(u64, u32)>,
}

/// What one turn of a lane produced.
pub(crate) struct Turn {
    /// Frames to write, already encoded.
    pub bytes: Vec<u8>,
    /// Events whose last byte is in `bytes`.
    pub events: u64,
    /// Of `bytes`, what log authentication added (credentials, heads,
    /// proofs).
    pub auth_bytes: u64,
}

pub(crate) struct Lane {
    class: Priority,
    enc: Option<StreamCompressor>,
    jobs: VecDeque<Job>,
    /// Heads and proofs that go with this stream's events, when logs are
    /// authenticated (`Store::logs`).
    auth: Outbound,
    /// A frame is with the driver; the next waits for `handle_sent`.
    pub busy: bool,
    /// Events this lane could not prove, not sent: the session's
    /// `not_proved` takes them after each turn.
    unproved: BTreeMap<Origin, RangeSet>,
    /// Since when the lane has had no work with its zstd frame open.
    idle_since: Option<Time>,
}

impl Lane {
    pub fn new(class: Priority) -> Self {
        Lane {
            class,
            enc: None,
            jobs: VecDeque::new(),
            auth: Outbound::default(),
            busy: false,
            unproved: BTreeMap::new(),
            idle_since: None,
        }
    }

    pub fn class(&self) -> Priority {
        self.class
    }

    pub fn has_work(&self) -> bool {
        !self.jobs.is_empty() || self.auth.owes_heads()
    }

    /// The peer is to get this node's head of own log `origin` over `len`
    /// events at least, at the lane's next turn (`Frame::HeadWanted`).
    pub fn owe_head(&mut self, origin: Origin, len: u64) {
        self.auth.owe_head(origin, len);
    }

    pub fn serve(&mut self, want: Want) {
        self.jobs.push_back(Job {
            source: Source::Want(want),
            origin: want.origin,
            todo: RangeSet::from_range(want.first, want.last),
            piece: None,
        });
    }

    /// Queues new events of `origin` for the peer; joins an unstarted push
    /// of the same origin.
    pub fn push(&mut self, origin: Origin, seqs: &RangeSet) {
        if let Some(job) = self
            .jobs
            .iter_mut()
            .rev()
            .find(|j| j.source == Source::Push && j.origin == origin)
        {
            job.todo = job.todo.union(seqs);
            return;
        }
        self.jobs.push_back(Job {
            source: Source::Push,
            origin,
            todo: seqs.clone(),
            piece: None,
        });
    }

    /// When this lane's open frame is to end (`Config::end_idle_frame_after`).
    pub fn frame_ends_at(&self, end_after: Option<Time>) -> Option<Time> {
        let after = end_after?;
        self.idle_since
            .filter(|_| !self.has_work())
            .map(|t| t.saturating_add(after))
    }

    /// The next frame(s) of this lane, or `None` when it has nothing to send.
    /// `peer_has`: what the peer holds or was sent; updated with what this
    /// turn sends. `peer_summary`: what the peer's last summary said it
    /// holds (for proofs). `level`: zstd level for a new context.
    /// `end_after`: how long an idle lane keeps its zstd frame open (see
    /// `Config::end_idle_frame_after`); past that, the turn ends the frame.
    pub fn turn<S: Store>(
        &mut self,
        store: &S,
        peer_has: &mut BTreeMap<Origin, RangeSet>,
        peer_summary: Option<&Summary>,
        level: i32,
        now: Time,
        end_after: Option<Time>,
    ) -> Result<Option<Turn>, StoreError> {
        let at_once = end_after == Some(Time::default());
        let turn = self.next_turn(store, peer_has, peer_summary, level, at_once)?;
        let in_frame = self.enc.as_ref().is_some_and(StreamCompressor::in_frame);
        if !in_frame || self.has_work() {
            self.idle_since = None;
        } else if turn.is_some() || self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
        if turn.is_some() {
            return Ok(turn);
        }
        match (self.frame_ends_at(end_after), self.enc.as_mut()) {
            (Some(at), Some(enc)) if at <= now => {
                self.idle_since = None;
                Ok(Some(Turn {
                    bytes: Frame::Events(enc.compress_last(&[])).encode(),
                    events: 0,
                    auth_bytes: 0,
                }))
            }
            _ => Ok(None),
        }
    }

    fn next_turn<S: Store>(
        &mut self,
        store: &S,
        peer_has: &mut BTreeMap<Origin, RangeSet>,
        peer_summary: Option<&Summary>,
        level: i32,
        release_idle: bool,
    ) -> Result<Option<Turn>, StoreError> {
        if self.auth.owes_heads() {
            if let Some(logs) = store.logs() {
                let bytes: Vec<u8> = self.auth.owed_heads(logs).iter().flat_map(Frame::encode).collect();
                if !bytes.is_empty() {
                    let auth_bytes = bytes.len() as u64;
                    return Ok(Some(Turn {
                        bytes,
                        events: 0,
                        auth_bytes,
                    }));
                }
            }
        }
        // Jobs whose next event is large while another large event is in
        // pieces on this stream: the receiver puts one together at a time.
        let mut parked = Vec::new();
        let turn = loop {
            let Some(mut job) = self.jobs.pop_front() else {
                break None;
            };
            let may_start_large = !self.jobs.iter().chain(parked.iter()).any(|j: &Job| j.piece.is_some());
            let has = peer_has.entry(job.origin).or_default();
            let (items, events) = match job.piece {
                Some((seq, offset)) => self.next_piece(store, &mut job, seq, offset)?,
                None => {
                    job.todo = job.todo.difference(has);
                    let Some(&(first, last)) = job.todo.ranges().first() else {
                        match finish(job) {
                            Some(bytes) => {
                                break Some(Turn {
                                    bytes,
                                    events: 0,
                                    auth_bytes: 0,
                                })
                            }
                            None => continue,
                        }
                    };
                    let contiguous = store.logs().is_some();
                    let cap = if contiguous { PROVED_FRAME_BYTES } else { BATCH_BYTES };
                    let read = store.read(&job.origin, first, last, CHUNK_EVENTS, cap)?;
                    let (items, events, blocked) =
                        next_events(&mut job, has, first, last, read, may_start_large, contiguous);
                    if blocked {
                        parked.push(job);
                        continue;
                    }
                    if contiguous {
                        end_aligned(&mut job, has, items, events)
                    } else {
                        (items, events)
                    }
                }
            };
            if items.is_empty() {
                // Nothing held in the range that was left: look again.
                self.jobs.push_front(job);
                continue;
            }
            let finished = job.todo.is_empty() && job.piece.is_none();
            let held = peer_summary.and_then(|s| s.get(&job.origin));
            let (lead, proof) = match self.prove(store, &job, &items, events, held) {
                Ok(frames) => frames,
                // The last piece of a large event goes anyway (its first
                // ones are out): the peer refuses the event for want of a
                // proof, and its stream stays whole.
                Err(()) if matches!(items.first(), Some(Item::Piece(_))) => (Vec::new(), None),
                Err(()) => {
                    // Not provable from here: not sent (the peer hears of
                    // it as a want answered without them).
                    let unsent = whole_seqs(&items);
                    *has = has.difference(&unsent);
                    let unproved = self.unproved.entry(job.origin).or_default();
                    *unproved = unproved.union(&unsent);
                    if finished {
                        if let Some(bytes) = finish(job) {
                            break Some(Turn {
                                bytes,
                                events: 0,
                                auth_bytes: 0,
                            });
                        }
                    } else {
                        self.jobs.push_front(job);
                    }
                    continue;
                }
            };
            let idle_after = finished && self.jobs.is_empty() && parked.is_empty();
            let enc = self.enc.get_or_insert_with(|| StreamCompressor::new(level));
            let chunk = if release_idle && idle_after {
                enc.compress_last(&items)
            } else {
                enc.compress(&items)
            };
            let events_frame = Frame::Events(chunk).encode();
            let events_frame_len = events_frame.len();
            // A chunk holds at most PROVED_FRAME_BYTES of events before
            // compression.
            assert!(
                events_frame.len() <= ferry_proto::frame::MAX_FRAME_LEN + ferry_proto::frame::MAX_PREFIX_LEN,
                "an events frame within its limit"
            );
            let mut bytes: Vec<u8> = lead.iter().flat_map(Frame::encode).collect();
            bytes.extend(events_frame);
            let lead_bytes = bytes.len() - events_frame_len;
            let proof = proof.map(|p| p.encode()).unwrap_or_default();
            let auth_bytes = (lead_bytes + proof.len()) as u64;
            bytes.extend(proof);
            if finished {
                if let Some(end) = finish(job) {
                    bytes.extend(end);
                }
            } else {
                // Takes its turn again after the other active jobs.
                let at = self.jobs.len().min(ACTIVE_JOBS - 1);
                self.jobs.insert(at, job);
            }
            break Some(Turn {
                bytes,
                events,
                auth_bytes,
            });
        };
        for job in parked.into_iter().rev() {
            self.jobs.push_front(job);
        }
        Ok(turn)
    }

    /// The `Head` to send before a frame's events and the `Proof` after
    /// them, when logs are authenticated and the frame completes events.
    /// Every frame is proved to its end: a proof that stopped at an
    /// aligned seq would leave the peer holding the rest for the job's
    /// next frame, which may never come (the peer got those events by
    /// another lane meanwhile). With a job's later frames extending its
    /// first proof that costs about 4.5 % of the bytes where aligned
    /// proofs cost 1.5 % (docs/architecture.md). `Err` when the tree here
    /// cannot prove them.
    fn prove<S: Store>(
        &mut self,
        store: &S,
        job: &Job,
        items: &[Item],
        events: u64,
        held: Option<&RangeSet>,
    ) -> Result<(Vec<Frame>, Option<Frame>), ()> {
        let Some(logs) = store.logs() else {
            return Ok((Vec::new(), None));
        };
        let seqs = whole_seqs(items);
        let Some(&(first, last)) = seqs.ranges().first() else {
            return Ok((Vec::new(), None));
        };
        assert!(
            seqs.ranges().len() == 1 && events == last - first + 1,
            "a proved frame holds one run of whole events"
        );
        let tree = logs.tree(&job.origin).ok_or(())?;
        // The job goes on where its next frame may start right after this
        // one: that frame then extends this proof.
        let continues = job.todo.ranges().first().is_some_and(|&(next, _)| next == last + 1);
        let own = job.origin.node == store.local_origin().node;
        // A compacted block's nodes are hashed again from its events.
        let block_leaves = |block| crate::store::block_leaves(store, &job.origin, block);
        let (lead, proof) = self
            .auth
            .frames(logs, tree, first, last, continues, own, held, &block_leaves)
            .map_err(|_| ())?;
        Ok((lead, Some(proof)))
    }

    /// Events not sent since the last call for want of a proof.
    pub fn take_unproved(&mut self) -> BTreeMap<Origin, RangeSet> {
        std::mem::take(&mut self.unproved)
    }

    /// The next piece of a large event in progress.
    fn next_piece<S: Store>(
        &mut self,
        store: &S,
        job: &mut Job,
        seq: u64,
        offset: u32,
    ) -> Result<(Vec<Item>, u64), StoreError> {
        let Some(e) = store.read(&job.origin, seq, seq, 1, usize::MAX)?.pop() else {
            // Gone from the store mid-way (it cannot be, for a durable
            // log; a peer asking again later gets it whole).
            job.piece = None;
            return Ok((Vec::new(), 0));
        };
        let Some(p) = piece(&e, offset as usize) else {
            job.piece = None;
            return Ok((Vec::new(), 0));
        };
        let next = offset + p.bytes.len() as u32;
        let whole = next as usize >= e.payload.len();
        job.piece = (!whole).then_some((seq, next));
        Ok((vec![Item::Piece(p)], u64::from(whole)))
    }

    /// Forgets every job: the connection is gone.
    pub fn clear(&mut self) {
        self.jobs.clear();
        self.auth.clear();
        self.enc = None;
        self.busy = false;
    }
}

/// The seqs of the whole events among a frame's items (a piece counts
/// when it completes its event).
fn whole_seqs(items: &[Item]) -> RangeSet {
    let mut seqs = RangeSet::default();
    for item in items {
        match item {
            Item::Event(e) => {
                seqs.insert(e.seq);
            }
            Item::Piece(p) if p.offset as usize + p.bytes.len() >= p.total as usize => {
                seqs.insert(p.seq);
            }
            Item::Piece(_) => {}
        }
    }
    seqs
}

/// With authenticated logs, a frame its job goes on from ends at an
/// aligned seq, a multiple of the largest power of two up to half the
/// frame: its proof then names no node below that level, so extending it
/// costs a hash or two instead of four or five. The events after that seq
/// go back to the job for its next frame, so no frame leaves a tail its
/// receiver would hold for a proof that may never come.
fn end_aligned(job: &mut Job, has: &mut RangeSet, mut items: Vec<Item>, events: u64) -> (Vec<Item>, u64) {
    let (Some(Item::Event(a)), Some(Item::Event(b))) = (items.first(), items.last()) else {
        return (items, events);
    };
    let (first, last) = (a.seq, b.seq);
    let goes_on = job
        .todo
        .ranges()
        .first()
        .is_some_and(|&(next, _)| Some(next) == last.checked_add(1));
    if !goes_on || job.piece.is_some() {
        return (items, events);
    }
    let half = (last - first).div_ceil(2).max(1);
    let unit = 1u64 << (63 - half.leading_zeros());
    let q = last / unit * unit;
    if q < first || q == last {
        return (items, events);
    }
    items.truncate((q - first + 1) as usize);
    let back = RangeSet::from_range(q + 1, last);
    *has = has.difference(&back);
    job.todo = job.todo.union(&back);
    (items, q - first + 1)
}

/// The frame that ends a finished job: `End` for a want.
fn finish(job: Job) -> Option<Vec<u8>> {
    match job.source {
        Source::Want(w) => Some(Frame::End(w).encode()),
        Source::Push => None,
    }
}

/// Whole events from the front of the job's range, or the first piece of a
/// large one if `may_start_large`; `blocked` when the job can send nothing
/// until another large event is through.
fn next_events(
    job: &mut Job,
    has: &mut RangeSet,
    first: u64,
    last: u64,
    read: Vec<Event>,
    may_start_large: bool,
    contiguous: bool,
) -> (Vec<Item>, u64, bool) {
    let mut items = Vec::new();
    let mut events = 0;
    let mut through = match read.last() {
        // Nothing held from `first` to `last`.
        None => last,
        Some(_) => first.saturating_sub(1),
    };
    let mut blocked = false;
    for e in read {
        if e.payload.len() > BATCH_BYTES {
            if items.is_empty() {
                if !may_start_large {
                    blocked = true;
                    break;
                }
                has.insert(e.seq);
                through = e.seq;
                if let Some(first_piece) = piece(&e, 0) {
                    job.piece = Some((e.seq, first_piece.bytes.len() as u32));
                    items.push(Item::Piece(first_piece));
                }
            }
            break;
        }
        // A proved frame is one run: it ends where the peer already has
        // an event or this node lacks one.
        let run_ends = contiguous && !items.is_empty() && (has.contains(e.seq) || e.seq != through + 1);
        if run_ends {
            break;
        }
        if has.contains(e.seq) {
            through = e.seq;
            continue;
        }
        has.insert(e.seq);
        through = e.seq;
        events += 1;
        items.push(Item::Event(e));
    }
    if through >= first {
        job.todo = job.todo.difference(&RangeSet::from_range(first, through));
    }
    (items, events, blocked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStore;
    use ferry_proto::batch::{StreamDecompressor, LEVEL_WAN, PREFIX_BYTES};
    use ferry_proto::{NodeId, Origin};

    fn test_origin() -> Origin {
        Origin {
            node: NodeId([7; 16]),
            epoch: 1,
        }
    }

    /// Serves a want of `store`'s events `1..=n` until the lane has nothing
    /// left; returns the lane and every frame it sent, in order.
    fn serve_want(store: &MemStore, origin: Origin, n: u64, end_after: Option<Time>) -> (Lane, Vec<Frame>) {
        let mut lane = Lane::new(Priority::Normal);
        lane.serve(Want {
            origin,
            first: 1,
            last: n,
            priority: Priority::Normal,
        });
        let mut peer_has = BTreeMap::new();
        let mut reader = crate::FrameReader::default();
        let mut frames = Vec::new();
        let now = Time::default();
        while let Some(turn) = lane
            .turn(store, &mut peer_has, None, LEVEL_WAN, now, end_after)
            .unwrap()
        {
            frames.extend(reader.push(&turn.bytes).unwrap());
        }
        (lane, frames)
    }

    /// The seqs of the events in one `Events` frame.
    fn seqs_in(dec: &mut StreamDecompressor, chunk: &[u8]) -> Vec<u64> {
        let items = dec.decompress(chunk).unwrap();
        items
            .iter()
            .map(|i| match i {
                Item::Event(e) => e.seq,
                Item::Piece(_) => panic!("no event here is large"),
            })
            .collect()
    }

    /// Serves one want of `n` events until the lane has nothing left;
    /// returns the compressor's and the receiver's context memory then,
    /// after checking every event arrived in order.
    fn serve_all(n: usize, end_after: Option<Time>) -> (usize, usize) {
        let origin = test_origin();
        let mut store = MemStore::new(origin);
        let payloads = (0..n).map(|i| {
            let body = format!(r#"{{"type":"visit","patient":"BT-{i:06}","pulse":{}}}"#, 50 + i % 40);
            ("clinic/visit".to_string(), Priority::Normal, body.into_bytes())
        });
        let (group, _) = store.write_local(payloads.collect(), 1_700_000_000_000);
        store.sync(group);
        let (lane, frames) = serve_want(&store, origin, n as u64, end_after);
        let mut dec = StreamDecompressor::new();
        let mut seqs = Vec::new();
        for frame in frames {
            if let Frame::Events(chunk) = frame {
                seqs.extend(seqs_in(&mut dec, &chunk));
            }
        }
        assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>());
        let enc = lane.enc.as_ref().map_or(0, StreamCompressor::memory);
        (enc, dec.memory())
    }

    #[test]
    fn a_lane_out_of_work_frees_both_ends_compression_contexts() {
        // Several chunks' worth, so the frame spans turns.
        let (enc, dec) = serve_all(3000, Some(Time::default()));
        assert!(
            enc <= PREFIX_BYTES && dec <= PREFIX_BYTES,
            "an idle lane holds {enc} and {dec} bytes"
        );
        // Configured to keep them, both ends hold megabytes.
        let (enc, dec) = serve_all(3000, None);
        assert!(enc > 1 << 20 && dec > PREFIX_BYTES, "kept: {enc} and {dec} bytes");
    }

    #[test]
    fn an_idle_lane_ends_its_frame_when_its_time_is_up() {
        let origin = test_origin();
        let mut store = MemStore::new(origin);
        let payloads = (0..50).map(|i| {
            (
                "clinic/visit".to_string(),
                Priority::Normal,
                format!("visit {i}").into_bytes(),
            )
        });
        let (group, _) = store.write_local(payloads.collect(), 1_700_000_000_000);
        store.sync(group);
        let five = Some(Time::from_secs(5));
        let (mut lane, frames) = serve_want(&store, origin, 50, five);
        let mut dec = StreamDecompressor::new();
        for frame in frames {
            if let Frame::Events(chunk) = frame {
                dec.decompress(&chunk).unwrap();
            }
        }
        assert!(lane.enc.as_ref().is_some_and(StreamCompressor::in_frame));
        assert_eq!(lane.frame_ends_at(five), Some(Time::from_secs(5)));
        let mut peer_has = BTreeMap::new();
        let mut turn = |lane: &mut Lane, at| lane.turn(&store, &mut peer_has, None, LEVEL_WAN, at, five).unwrap();
        assert!(turn(&mut lane, Time::from_millis(4_999)).is_none(), "too early");
        let end = turn(&mut lane, Time::from_secs(5)).expect("the frame's end");
        let frames = crate::FrameReader::default().push(&end.bytes).unwrap();
        let [Frame::Events(chunk)] = &frames[..] else {
            panic!("{frames:?}")
        };
        assert!(dec.decompress(chunk).unwrap().is_empty());
        assert!(lane
            .enc
            .as_ref()
            .is_some_and(|e| !e.in_frame() && e.memory() <= PREFIX_BYTES));
        assert!(dec.memory() <= PREFIX_BYTES);
        assert_eq!(lane.frame_ends_at(five), None);
        assert!(turn(&mut lane, Time::from_secs(60)).is_none(), "nothing more to send");
    }

    /// With authenticated logs every frame of a want but its last ends at
    /// an aligned seq and carries a proof; the events of all of them are
    /// the want, in order, each once.
    #[test]
    fn proved_frames_end_at_aligned_seqs_and_miss_nothing() {
        let origin = test_origin();
        let mut store = MemStore::new(origin);
        let key = crate::stand_in::StandInKey {
            node: origin.node,
            secret: crate::stand_in::HONEST,
        };
        let keys = crate::stand_in::StandInKeys::new(origin.node);
        store.set_logs(crate::auth::Logs::new(
            std::sync::Arc::new(keys),
            Some(std::sync::Arc::new(key)),
        ));
        let payloads = (0..3000).map(|i| {
            let body = format!(
                r#"{{"type":"visit","patient":"BT-{i:06}","note":"{}"}}"#,
                "x".repeat(i % 400)
            );
            ("clinic/visit".to_string(), Priority::Normal, body.into_bytes())
        });
        let (group, _) = store.write_local(payloads.collect(), 1_700_000_000_000);
        store.sync(group);
        // The writer's tree keeps whole blocks compacted (one node per 64
        // events, not two per event); the lane proves from them.
        let nodes = store.logs().and_then(|l| l.tree(&origin)).map(|t| t.nodes());
        assert!(nodes.is_some_and(|n| n < 3000 / 64 + 256), "{nodes:?} nodes");
        let (_, frames) = serve_want(&store, origin, 3000, Some(Time::default()));
        let mut dec = StreamDecompressor::new();
        let (mut seqs, mut ends, mut proofs) = (Vec::new(), Vec::new(), 0);
        for frame in frames {
            match frame {
                Frame::Events(chunk) => {
                    let frame_seqs = seqs_in(&mut dec, &chunk);
                    let (first, last) = (frame_seqs[0], *frame_seqs.last().unwrap());
                    ends.push((first, last));
                    seqs.extend(frame_seqs);
                }
                Frame::Proof(_) => proofs += 1,
                _ => {}
            }
        }
        assert_eq!(seqs, (1..=3000).collect::<Vec<_>>());
        assert_eq!(proofs, ends.len());
        for &(first, last) in &ends[..ends.len() - 1] {
            let half = (last - first).div_ceil(2);
            assert!(
                last.trailing_zeros() >= (63 - half.leading_zeros()),
                "frame {first}..={last} does not end at an aligned seq"
            );
        }
    }
}
