//! Log authentication on a data stream: what a sender adds to each job's
//! `Events` frames, and what a receiver checks before any event of them may
//! be appended (the design is "Log authentication" in
//! docs/architecture.md; the tree and proofs are `ferry_proto::merkle`).
//!
//! A job is the run of frames that answers one want or push on one stream.
//! Jobs take turns on a stream, so both ends key a job by its origin and
//! the seq its next frame starts at. A job's first frame is proved with a
//! fresh proof, later ones by extension, each up to the checkpoint the
//! sender picked; the receiver holds a frame's events after the checkpoint
//! until the next frame's proof. Events pushed by their own writer need no
//! proof: mutual TLS authenticated the channel.

use ferry_proto::merkle::{
    checkpoint, AuthError, HeadKeys, HeadSigner, Known, Mode, RangeProof, TreeHead, VerifiedHead,
};
use ferry_proto::{Event, Frame, Origin};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Jobs a receiver follows on one stream; the lane runs four at a time, so
/// more means a sender that never finishes its jobs.
const MAX_JOBS: usize = 64;

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
            if tree.appended().checked_add(1) == Some(e.seq) && tree.append(e).is_ok() && !grown.contains(&e.origin) {
                grown.push(e.origin);
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
    /// Jobs under way: (origin, first seq of the job's next frame) -> the
    /// head they prove against and the last seq proved.
    jobs: BTreeMap<(Origin, u64), (TreeHead, u64)>,
}

impl Outbound {
    /// The frames to send with a job's frame of events `first..=last`
    /// (contiguous): a `Head` first if this stream has not carried the
    /// head the job proves against (behind the writer's `Credential` the
    /// first time), then, after the `Events` frame, a `Proof`. `job_last` ends the job: its last frame is proved to it.
    /// Fails if the tree does not hold what the proof needs: the events
    /// cannot be proved from here and must not be sent.
    pub fn frames(
        &mut self,
        logs: &Logs,
        tree: &Known,
        first: u64,
        last: u64,
        job_last: u64,
    ) -> Result<(Vec<Frame>, Frame), AuthError> {
        let origin = tree.origin();
        let (head, proved, mode) = match self.jobs.remove(&(origin, first)) {
            Some((head, proved)) => (head, proved, Mode::Extend),
            None => {
                // The longest head may need nodes this relay lacks for a
                // range it verified under a shorter one.
                let q = checkpoint(first - 1, first, last, job_last);
                let mut error = AuthError::Missing {
                    lo: first - 1,
                    hi: last,
                };
                let mut found = None;
                for head in tree.heads_for(last) {
                    match tree.prove(head.head(), Mode::Fresh, first, q) {
                        Ok(proof) => {
                            found = Some((head.head().clone(), proof));
                            break;
                        }
                        Err(e) => error = e,
                    }
                }
                let (head, proof) = found.ok_or(error)?;
                return Ok(self.finish_frame(logs, head, proof, q, last, job_last));
            }
        };
        let q = checkpoint(proved, first, last, job_last);
        let proof = tree.prove(&head, mode, proved + 1, q)?;
        Ok(self.finish_frame(logs, head, proof, q, last, job_last))
    }

    /// Records what a proved frame leaves to do, and gives the frames to
    /// send: the head first if this stream has not carried it (only once
    /// the proof is made: a frame that cannot be proved is not sent, and
    /// neither is its head), the proof after the events.
    fn finish_frame(
        &mut self,
        logs: &Logs,
        head: TreeHead,
        proof: RangeProof,
        q: u64,
        last: u64,
        job_last: u64,
    ) -> (Vec<Frame>, Frame) {
        let origin = head.origin;
        let mut lead = Vec::new();
        if self.heads.get(&origin) != Some(&head.len) {
            if self.credentials.insert(origin.node) {
                lead.extend(logs.keys.credential(&origin.node).map(Frame::Credential));
            }
            self.heads.insert(origin, head.len);
            lead.push(Frame::Head(head.clone()));
        }
        let encoded = Frame::Proof(proof.encode_in_stream(last));
        if last < job_last {
            self.jobs.insert((origin, last + 1), (head, q));
        }
        (lead, encoded)
    }

    /// The connection is gone.
    pub fn clear(&mut self) {
        self.heads.clear();
        self.credentials.clear();
        self.jobs.clear();
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
    jobs: BTreeMap<(Origin, u64), Job>,
    /// The last `Events` frame, until its `Proof` arrives.
    waiting: Option<Vec<Event>>,
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

    /// A `Proof` frame: the events it proves, in order, which may now be
    /// appended; or why the frame's events (and any held before them) are
    /// refused.
    pub fn on_proof(&mut self, logs: &mut Logs, bytes: &[u8]) -> Result<Vec<Event>, Refusal> {
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
        let continued = self.jobs.remove(&(origin, first));
        let (mode, back) = match bytes.first() {
            Some(0) => (Mode::Fresh, None),
            Some(1) => (Mode::Extend, continued),
            _ => return Err(fail(AuthError::Malformed { what: "range proof" })),
        };
        let mut job = match back {
            Some(job) => job,
            None if mode == Mode::Fresh => Job {
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
        let proof = RangeProof::decode_in_stream(bytes, job.head.head().len, job.proved + 1, last)
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
        if let Err(e) = tree.verify(&job.head, &proof, &job.held[..n]) {
            return Err(self.refuse(&job, &[], e));
        }
        let rest = job.held.split_off(n);
        let proved = std::mem::replace(&mut job.held, rest);
        job.proved = proof.last;
        if self.jobs.len() < MAX_JOBS {
            self.jobs.insert((origin, last + 1), job);
        } else if !job.held.is_empty() {
            // Too many jobs at once: this one's tail will not be proved.
            let error = AuthError::Malformed {
                what: "stream with too many jobs",
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
    pub fn end_want(&mut self, origin: Origin, first: u64, last: u64) -> Vec<Refusal> {
        let ended: Vec<(Origin, u64)> = self
            .jobs
            .iter()
            .filter(|((o, _), job)| *o == origin && job.held.first().is_some_and(|e| first <= e.seq && e.seq <= last))
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for k in ended {
            if let Some(job) = self.jobs.remove(&k) {
                out.extend(refusal(
                    &job.held,
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
        for (_, job) in std::mem::take(&mut self.jobs) {
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
