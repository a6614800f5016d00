//! Log authentication on a data stream: what a sender adds to each job's
//! `Events` frames, and what a receiver checks before any event of them may
//! be appended (the design is "Log authentication" in
//! docs/architecture.md; the tree and proofs are `ferry_proto::merkle`).
//!
//! A job is the run of frames that answers one want or push on one stream.
//! Jobs take turns on a stream, so both ends key a job by its origin and
//! the seq its next frame starts at. A job's first frame is proved with a
//! fresh proof, later ones that follow on by extension (a few hashes),
//! each to the frame's end. A receiver can hold a frame's tail for the
//! next frame's proof (proofs ending at aligned seqs, which cost a third as
//! much), but no sender does that yet: see docs/architecture.md.

use ferry_proto::merkle::Expanded;
use ferry_proto::merkle::{
    block_of, AuthError, Hash, HeadKeys, HeadSigner, Known, Mode, RangeProof, TreeHead, VerifiedHead, BLOCK_EVENTS,
};
use ferry_proto::{Event, Frame, Origin, RangeSet};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Jobs both ends follow on one stream. The lane runs four at a time; a
/// job whose next frame never comes (the peer got the rest elsewhere) is
/// forgotten oldest first, by both ends alike (see `Continuations`).
const MAX_JOBS: usize = 64;

/// A proof's first byte: the mode (0 fresh, 1 extend, 2 append), and this
/// bit when the job goes on in a later frame that will extend this proof.
const CONTINUES: u8 = 0x80;

/// A proof's first byte when the head it is under travels inside it as
/// its signature alone: the writer's push that ends its log, under the
/// head of exactly its events so far. The receiver computes the root from
/// the events and what it holds and checks the signature over it; origin
/// (the events'), length (the frame's last seq) and root need not travel,
/// which saves 64 of a `Head` frame's 129 bytes on every live push. Then
/// the signature's length (one byte), the signature, and the proof in its
/// stream form (`RangeProof::encode_in_stream`).
const SIGNED: u8 = 3;

/// Jobs that go on in a later frame, keyed by origin and the seq that frame
/// starts at. Both ends of a stream keep one and change it alike, frame by
/// frame and in stream order: an entry is added for a frame the sender
/// marks as continued, taken out by the next frame that starts at its
/// key (extending it or not), and at most `MAX_JOBS` are kept, the oldest
/// forgotten first. So the sender extends only a proof the receiver still
/// holds.
struct Continuations<T> {
    jobs: BTreeMap<(Origin, u64), (T, u64)>,
    added: u64,
}

impl<T> Default for Continuations<T> {
    fn default() -> Self {
        Continuations {
            jobs: BTreeMap::new(),
            added: 0,
        }
    }
}

impl<T> Continuations<T> {
    fn get(&self, key: &(Origin, u64)) -> Option<&T> {
        self.jobs.get(key).map(|(t, _)| t)
    }

    fn take(&mut self, key: &(Origin, u64)) -> Option<T> {
        self.jobs.remove(key).map(|(t, _)| t)
    }

    fn add(&mut self, key: (Origin, u64), t: T) {
        self.added += 1;
        self.jobs.insert(key, (t, self.added));
        if self.jobs.len() > MAX_JOBS {
            let oldest = self.jobs.iter().min_by_key(|(_, (_, n))| *n).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.jobs.remove(&k);
            }
        }
    }

    fn clear(&mut self) {
        self.jobs.clear();
    }

    fn values_mut(&mut self) -> impl Iterator<Item = (&(Origin, u64), &mut T)> {
        self.jobs.iter_mut().map(|(k, (t, _))| (k, t))
    }

    fn into_values(self) -> impl Iterator<Item = T> {
        self.jobs.into_values().map(|(t, _)| t)
    }
}

/// What one node knows of every origin's tree, whose keys it trusts, and
/// its own key. Kept with the events (`Store::logs`): every node and head
/// in it was verified or written here, so it stays true whatever a crash
/// takes from the log, and a relay can prove what it holds after a restart.
#[derive(Clone)]
pub struct Logs {
    keys: Arc<dyn HeadKeys + Send + Sync>,
    signer: Option<Arc<dyn HeadSigner + Send + Sync>>,
    trees: BTreeMap<Origin, Known>,
}

impl Logs {
    /// `signer`: this node's key, for heads of its own logs (`None`: a node
    /// that only relays, as in tests).
    pub fn new(keys: Arc<dyn HeadKeys + Send + Sync>, signer: Option<Arc<dyn HeadSigner + Send + Sync>>) -> Self {
        Logs {
            keys,
            signer,
            trees: BTreeMap::new(),
        }
    }

    /// The writers' keys this node holds.
    pub fn keys(&self) -> &(dyn HeadKeys + Send + Sync) {
        self.keys.as_ref()
    }

    /// A tree rebuilt at start (`Known::restore`). A log this node writes
    /// gets its head signed again over everything it appended, so it can
    /// prove its own events at once, whatever the saved heads were.
    pub fn put(&mut self, tree: Known) {
        let origin = tree.origin();
        let tree = self.trees.entry(origin).insert_entry(tree).into_mut();
        let signed = tree.head().map_or(0, |h| h.head().len);
        if let Some(signer) = &self.signer {
            if tree.appended() > signed {
                // The root of leaves appended is always known.
                let _ = tree.sign_head(tree.appended(), signer.as_ref());
            }
        }
    }

    /// Every tree's saved form (`Known::save`), by origin; `held(origin,
    /// seq)`: whether that event is durable here.
    pub fn save(&self, held: impl Fn(&Origin, u64) -> bool) -> Vec<(Origin, Vec<u8>)> {
        self.trees
            .iter()
            .map(|(origin, tree)| (*origin, tree.save(|seq| held(origin, seq))))
            .collect()
    }

    pub fn tree(&self, origin: &Origin) -> Option<&Known> {
        self.trees.get(origin)
    }

    pub fn tree_mut(&mut self, origin: Origin) -> &mut Known {
        self.trees.entry(origin).or_insert_with(|| Known::new(origin))
    }

    /// This node's own events, durable, in order: appended to their trees
    /// (those already there, or not next in their log, are skipped: a log
    /// rewritten after a lost tail is a fork, and receivers refuse it), and
    /// every grown log's head signed again.
    pub fn wrote(&mut self, events: &[Event]) {
        let mut grown: Vec<Origin> = Vec::new();
        for e in events {
            let tree = self.trees.entry(e.origin).or_insert_with(|| Known::new(e.origin));
            if tree.appended().checked_add(1) == Some(e.seq) && tree.append(e).is_ok() {
                if !grown.contains(&e.origin) {
                    grown.push(e.origin);
                }
                // Durable here: a whole block need not keep its low nodes.
                if e.seq % BLOCK_EVENTS == 0 {
                    tree.compact_block(block_of(e.seq));
                }
            }
        }
        let Some(signer) = &self.signer else { return };
        for origin in grown {
            if let Some(tree) = self.trees.get_mut(&origin) {
                // The root of leaves just appended is always known.
                let _ = tree.sign_head(tree.appended(), signer.as_ref());
            }
        }
    }

    /// Drops the low nodes of `origin`'s `block`, whose events are all
    /// durably held (`Known::compact_block`).
    pub fn compact(&mut self, origin: Origin, block: u64) {
        if let Some(tree) = self.trees.get_mut(&origin) {
            tree.compact_block(block);
        }
    }

    /// `Known::reopen_block`, for a store whose card lost some of the
    /// block's events (the simulator's crash).
    pub fn reopen(&mut self, origin: Origin, block: u64, held: &[Event]) {
        if let Some(tree) = self.trees.get_mut(&origin) {
            let appended = tree.appended();
            let _ = tree.reopen_block(block, held);
            // A writer's log cut short is signed again where it now ends.
            if let (Some(signer), true) = (&self.signer, tree.appended() < appended && tree.appended() > 0) {
                let _ = tree.sign_head(tree.appended(), signer.as_ref());
            }
        }
    }

    /// An event that needs no proof: written here, or pushed by its writer
    /// over mutual TLS. Refused only if it contradicts what was verified
    /// (its writer has two versions of its log).
    pub fn trusted(&mut self, e: &Event) -> Result<(), Refusal> {
        self.tree_mut(e.origin).insert_trusted(e).map_err(|error| Refusal {
            origin: e.origin,
            first: e.seq,
            last: e.seq,
            error,
        })
    }
}

/// Events a receiver refused, and why: for a `Notice`, a log line and a
/// counter. The rest of the sync goes on.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub origin: Origin,
    pub first: u64,
    pub last: u64,
    pub error: AuthError,
}

/// The sender's side of one data stream.
#[derive(Default)]
pub struct Outbound {
    /// The head last sent on this stream, by origin.
    heads: BTreeMap<Origin, u64>,
    /// Writers whose credential this stream carried (or had none to carry).
    credentials: std::collections::BTreeSet<ferry_proto::NodeId>,
    /// Jobs that go on: the head their proofs are under.
    jobs: Continuations<TreeHead>,
    /// Events this stream carried, by origin: with the peer's summary,
    /// what it holds for certain when a later frame comes (`Mode::Append`).
    /// Not the session's `peer_has`, which counts what other streams sent:
    /// the peer may check a frame here before those.
    sent: BTreeMap<Origin, RangeSet>,
    /// Own logs whose head the peer asked for (`Frame::HeadWanted`), and
    /// the length it must cover at least.
    owed: BTreeMap<Origin, u64>,
}

impl Outbound {
    /// The frames to send with a job's frame of events `first..=last`
    /// (contiguous), proved to its end: a `Head` first if this stream has
    /// not carried the head the proof is under (behind the writer's
    /// `Credential` the first time), then, after the `Events` frame, a
    /// `Proof`. A frame that goes on from the job's last one extends its
    /// proof under the same head (a few hashes) where that head still
    /// covers it; others carry a fresh proof. `continues`: the job has more
    /// frames to come. `own`: this node wrote the log, and the peer has its
    /// certificate from the handshake, so no credential goes. `held`: what
    /// the peer's last summary said it holds of the log; with what this
    /// stream carried, if that is every event before `first`, a frame that
    /// does not extend carries only the nodes right of it (`Mode::Append`,
    /// a live push's few bytes). Fails if the tree does not hold what the
    /// proof needs: the events cannot be proved from here and must not be
    /// sent. `block_leaves`: the leaf hashes of a compacted block's events,
    /// read from the store (`Known::prove_from`).
    #[allow(clippy::too_many_arguments)]
    pub fn frames(
        &mut self,
        logs: &Logs,
        tree: &Known,
        first: u64,
        last: u64,
        continues: bool,
        own: bool,
        held: Option<&RangeSet>,
        block_leaves: &dyn Fn(u64) -> Option<Vec<Hash>>,
    ) -> Result<(Vec<Frame>, Frame), AuthError> {
        let origin = tree.origin();
        let key = (origin, first);
        let extended = self.jobs.get(&key).filter(|head| head.len >= last).and_then(|head| {
            let proof = tree.prove_from(head, Mode::Extend, first, last, block_leaves).ok()?;
            Some((head.clone(), proof))
        });
        let (head, proof) = match extended {
            Some(found) => found,
            None => {
                let mode = if self.holds_before(origin, first, held) {
                    Mode::Append
                } else {
                    Mode::Fresh
                };
                // The longest head may need nodes this relay lacks for a
                // range it verified under a shorter one.
                let mut error = AuthError::Missing {
                    lo: first - 1,
                    hi: last,
                };
                let mut found = None;
                for head in tree.heads_for(last) {
                    match tree.prove_from(head.head(), mode, first, last, block_leaves) {
                        Ok(proof) => {
                            found = Some((head.head().clone(), proof));
                            break;
                        }
                        Err(e) => error = e,
                    }
                }
                found.ok_or(error)?
            }
        };
        // Only a frame that is sent moves the continuations (see there).
        self.jobs.take(&key);
        let sent = self.sent.entry(origin).or_default();
        *sent = sent.union(&RangeSet::from_range(first, last));
        let signed = own
            && !continues
            && proof.mode != Mode::Extend
            && head.len == last
            && self.heads.get(&origin) != Some(&head.len)
            && head.signature.len() <= usize::from(u8::MAX);
        if signed {
            // Not marked as carried: a receiver that cannot compute the
            // root (it lacks nodes the summary said it held) keeps no head,
            // so a later frame under it brings a `Head` frame.
            let mut encoded = vec![SIGNED, head.signature.len() as u8];
            encoded.extend_from_slice(&head.signature);
            encoded.extend(proof.encode_in_stream(last));
            return Ok((Vec::new(), Frame::Proof(encoded)));
        }
        let mut lead = Vec::new();
        if self.heads.get(&origin) != Some(&head.len) {
            if self.credentials.insert(origin.node) && !own {
                lead.extend(logs.keys.credential(&origin.node).map(Frame::Credential));
            }
            self.heads.insert(origin, head.len);
            lead.push(Frame::Head(head.clone()));
        }
        let mut encoded = proof.encode_in_stream(last);
        if continues {
            encoded[0] |= CONTINUES;
            self.jobs.add((origin, last + 1), head);
        }
        Ok((lead, Frame::Proof(encoded)))
    }

    /// Whether the peer holds every event of `origin` before `first`: what
    /// its summary said, or this stream carried (a frame on this stream is
    /// checked after those before it).
    fn holds_before(&self, origin: Origin, first: u64, held: Option<&RangeSet>) -> bool {
        let Some(before) = first.checked_sub(1).filter(|&b| b > 0) else {
            return false;
        };
        let mut missing = RangeSet::from_range(1, before);
        for known in [self.sent.get(&origin), held].into_iter().flatten() {
            missing = missing.difference(known);
        }
        missing.is_empty()
    }

    /// The peer is to get this node's head of its own log `origin` over
    /// `len` events at least, even if this stream carried it before.
    pub fn owe_head(&mut self, origin: Origin, len: u64) {
        let at_least = self.owed.entry(origin).or_default();
        *at_least = (*at_least).max(len);
        self.heads.remove(&origin);
    }

    /// Whether a head is owed (`owe_head`).
    pub fn owes_heads(&self) -> bool {
        !self.owed.is_empty()
    }

    /// The heads owed: for each log, the shortest head held that covers
    /// the length asked, which a peer holding just that much can adopt.
    pub fn owed_heads(&mut self, logs: &Logs) -> Vec<Frame> {
        let mut out = Vec::new();
        for (origin, len) in std::mem::take(&mut self.owed) {
            let Some(head) = logs.tree(&origin).and_then(|t| t.heads_for(len).next()) else {
                continue;
            };
            let head = head.head();
            if self.heads.get(&origin) != Some(&head.len) {
                self.heads.insert(origin, head.len);
                out.push(Frame::Head(head.clone()));
            }
        }
        out
    }

    /// The connection is gone.
    pub fn clear(&mut self) {
        self.heads.clear();
        self.credentials.clear();
        self.jobs.clear();
        self.sent.clear();
        self.owed.clear();
    }
}

struct Job {
    head: VerifiedHead,
    proved: u64,
    /// Events after `proved`, in order, received and not yet proved.
    held: Vec<Event>,
}

/// The receiver's side of one data stream.
#[derive(Default)]
pub struct Inbound {
    heads: BTreeMap<Origin, VerifiedHead>,
    jobs: Continuations<Job>,
    /// The last `Events` frame, until its `Proof` arrives.
    waiting: Option<Vec<Event>>,
}

/// The head a `SIGNED` proof is under, checked, and the proof within it:
/// `b` is what follows the `SIGNED` byte, `events` the frame's (one
/// origin, consecutive seqs, not empty).
fn signed_head(
    logs: &mut Logs,
    events: &[Event],
    b: &[u8],
    expanded: &Expanded,
) -> Result<(VerifiedHead, Vec<u8>), AuthError> {
    let bad = || AuthError::Malformed {
        what: "signed range proof",
    };
    let (first, last) = match (events.first(), events.last()) {
        (Some(a), Some(z)) => (a, z),
        _ => return Err(bad()),
    };
    let (&sig_len, rest) = b.split_first().ok_or_else(bad)?;
    let (signature, inner) = rest.split_at_checked(usize::from(sig_len)).ok_or_else(bad)?;
    let proof = RangeProof::decode_in_stream(inner, last.seq, first.seq, last.seq)?;
    if proof.mode == Mode::Extend || proof.last != last.seq || inner.first().is_some_and(|f| f & CONTINUES != 0) {
        return Err(bad());
    }
    let root = logs.tree_mut(first.origin).root_from(&proof, events, expanded)?;
    let head = TreeHead {
        origin: first.origin,
        len: last.seq,
        root,
        signature: signature.to_vec(),
    }
    .verify(logs.keys.as_ref())?;
    Ok((head, inner.to_vec()))
}

fn refusal(events: &[Event], error: AuthError) -> Option<Refusal> {
    Some(Refusal {
        origin: events.first()?.origin,
        first: events.first()?.seq,
        last: events.last()?.seq,
        error,
    })
}

impl Inbound {
    /// A `Credential` frame: the key of a writer whose head follows, kept
    /// if it is good (`HeadKeys::learn`). A bad one is refused and told;
    /// the heads it was for then fail their signature check.
    pub fn on_credential(&mut self, logs: &Logs, credential: &[u8]) -> Result<(), String> {
        logs.keys.learn(credential).map(|_| ())
    }

    /// A `Head` frame: kept for the jobs that start after it, if its
    /// writer's key signed it; and adopted as the origin's head if what is
    /// held of the log gives its root (events pushed by the writer, then
    /// its head). A head that contradicts what is held is refused.
    pub fn on_head(&mut self, logs: &mut Logs, head: TreeHead) -> Result<(), Refusal> {
        let origin = head.origin;
        let len = head.len;
        match head.verify(logs.keys.as_ref()) {
            Ok(h) => match logs.tree_mut(origin).adopt(h.clone()) {
                Ok(()) | Err(AuthError::Missing { .. }) => {
                    self.heads.insert(origin, h);
                    Ok(())
                }
                Err(error) => {
                    self.heads.remove(&origin);
                    Err(Refusal {
                        origin,
                        first: 1,
                        last: len,
                        error,
                    })
                }
            },
            Err(error) => {
                // Frames that rely on it fail for want of a head.
                self.heads.remove(&origin);
                Err(Refusal {
                    origin,
                    first: 1,
                    last: len,
                    error,
                })
            }
        }
    }

    /// The events a data frame carried (whole events, after assembly), to
    /// be proved by the `Proof` that follows. A frame still waiting for
    /// its proof is refused: the sender skipped it.
    pub fn on_events(&mut self, events: Vec<Event>) -> Option<Refusal> {
        let skipped = self.waiting.replace(events)?;
        refusal(
            &skipped,
            AuthError::Malformed {
                what: "events frame without its proof",
            },
        )
    }

    /// The events frame waiting for its proof: its origin and seqs, and
    /// the lengths of the heads its proof may be under (that of the job it
    /// goes on, and the stream's head of the origin).
    pub fn waiting_range(&self) -> Option<(Origin, u64, u64, Vec<u64>)> {
        let events = self.waiting.as_ref()?;
        let (origin, first, last) = (events.first()?.origin, events.first()?.seq, events.last()?.seq);
        let heads = [
            self.jobs.get(&(origin, first)).map(|job| &job.head),
            self.heads.get(&origin),
        ];
        let lens = heads.into_iter().flatten().map(|h| h.head().len).collect();
        Some((origin, first, last, lens))
    }

    /// A `Proof` frame: the events it proves, in order, which may now be
    /// appended; or why the frame's events (and any held before them) are
    /// refused. `expanded`: nodes of compacted blocks the check may need,
    /// hashed again from the events held (`Known::expand`).
    pub fn on_proof(&mut self, logs: &mut Logs, bytes: &[u8], expanded: &Expanded) -> Result<Vec<Event>, Refusal> {
        let Some(events) = self.waiting.take() else {
            // Refuses nothing (an empty range), but is still worth a notice.
            return Err(Refusal {
                origin: Origin {
                    node: ferry_proto::NodeId([0; 16]),
                    epoch: 0,
                },
                first: 1,
                last: 0,
                error: AuthError::Malformed {
                    what: "proof without an events frame",
                },
            });
        };
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(Vec::new());
        };
        // Called only from here on, where `events` is not empty.
        let fail = |e: AuthError| refusal(&events, e).expect("a frame has events");
        let (origin, first, last) = (first.origin, first.seq, last.seq);
        let consecutive = first >= 1
            && events
                .iter()
                .enumerate()
                .all(|(i, e)| e.origin == origin && first.checked_add(i as u64) == Some(e.seq));
        if !consecutive {
            return Err(fail(AuthError::Malformed {
                what: "events frame (one origin, consecutive seqs from 1 up)",
            }));
        }
        let continued = self.jobs.take(&(origin, first));
        let mut bytes = bytes.to_vec();
        if bytes.first() == Some(&SIGNED) {
            let (head, inner) = signed_head(logs, &events, &bytes[1..], expanded).map_err(fail)?;
            // The stream's head of the origin from now on, as a `Head`.
            self.heads.insert(origin, head);
            bytes = inner;
        }
        let Some(&flags) = bytes.first() else {
            return Err(fail(AuthError::Malformed { what: "range proof" }));
        };
        let continues = flags & CONTINUES != 0;
        let mode =
            Mode::from_code(flags & !CONTINUES).ok_or_else(|| fail(AuthError::Malformed { what: "range proof" }))?;
        let back = if mode == Mode::Extend { continued } else { None };
        bytes[0] &= !CONTINUES;
        let mut job = match back {
            Some(job) => job,
            None if mode != Mode::Extend => Job {
                head: self.heads.get(&origin).cloned().ok_or_else(|| {
                    fail(AuthError::Missing {
                        lo: first - 1,
                        hi: last,
                    })
                })?,
                proved: first - 1,
                held: Vec::new(),
            },
            None => {
                return Err(fail(AuthError::Missing {
                    lo: first - 1,
                    hi: last,
                }))
            }
        };
        let proof = RangeProof::decode_in_stream(&bytes, job.head.head().len, job.proved + 1, last)
            .map_err(|e| self.refuse(&job, &events, e))?;
        job.held.extend(events);
        let upto = proof.last.checked_sub(job.proved).map(|n| n as usize);
        let Some(n) = upto.filter(|&n| n >= 1 && n <= job.held.len()) else {
            let error = AuthError::OutOfRange {
                first: proof.first,
                last: proof.last,
                len: job.head.head().len,
            };
            return Err(self.refuse(&job, &[], error));
        };
        let tree = logs.tree_mut(origin);
        if let Err(e) = tree.verify_expanded(&job.head, &proof, &job.held[..n], expanded) {
            return Err(self.refuse(&job, &[], e));
        }
        let rest = job.held.split_off(n);
        let proved = std::mem::replace(&mut job.held, rest);
        job.proved = proof.last;
        if continues {
            self.jobs.add((origin, last + 1), job);
        } else if !job.held.is_empty() {
            // Its tail would wait for a frame the sender says is not coming.
            let error = AuthError::Malformed {
                what: "frame not proved to its end, and its job does not go on",
            };
            return Err(self.refuse(&job, &[], error));
        }
        Ok(proved)
    }

    /// A refusal of everything the job held and the frame carried.
    fn refuse(&self, job: &Job, events: &[Event], error: AuthError) -> Refusal {
        let all: Vec<&Event> = job.held.iter().chain(events).collect();
        match (all.first(), all.last()) {
            (Some(a), Some(b)) => Refusal {
                origin: a.origin,
                first: a.seq,
                last: b.seq,
                error,
            },
            _ => Refusal {
                origin: job.head.head().origin,
                first: job.proved + 1,
                last: job.proved,
                error,
            },
        }
    }

    /// A want of `origin` `first..=last` ended: events of it still held
    /// for a proof will not get one (the sender proves a job's last frame
    /// to its end, so this happens only when the job ended early).
    /// The job's entry stays: both ends forget entries alike.
    pub fn end_want(&mut self, origin: Origin, first: u64, last: u64) -> Vec<Refusal> {
        let mut out = Vec::new();
        for ((o, _), job) in self.jobs.values_mut() {
            if *o == origin && job.held.first().is_some_and(|e| first <= e.seq && e.seq <= last) {
                out.extend(refusal(
                    &std::mem::take(&mut job.held),
                    AuthError::Malformed {
                        what: "want ended with events not proved",
                    },
                ));
            }
        }
        out
    }

    /// The stream ended, or a want did: whatever is still held or waiting
    /// for a proof is refused, as its proof will not come.
    pub fn finish(&mut self) -> Vec<Refusal> {
        let mut out = Vec::new();
        if let Some(events) = self.waiting.take() {
            out.extend(refusal(
                &events,
                AuthError::Malformed {
                    what: "events frame without its proof",
                },
            ));
        }
        for job in std::mem::take(&mut self.jobs).into_values() {
            out.extend(refusal(
                &job.held,
                AuthError::Malformed {
                    what: "job ended with events not proved",
                },
            ));
        }
        out
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
