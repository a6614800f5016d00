//! Log authentication: a Merkle tree over one origin's log, heads signed by
//! the writer, and range proofs a receiver checks frame by frame.
//!
//! The tree is RFC 9162's (Certificate Transparency): leaf `i` is the event
//! of seq `i + 1`, a tree of `n` leaves splits at the largest power of two
//! below `n`. Leaves and inner nodes are hashed with distinct prefixes
//! (`0x00`, `0x01`), so no leaf can pose as a node.
//!
//! Every node the proofs name is a *full* node: `2^level` leaves starting
//! at a multiple of `2^level`, all below `n`. Its hash does not depend on
//! `n`, so a receiver keeps what it verified (`Known`) across heads and
//! ranges, and a relay proves onward any range it holds from the nodes it
//! computed and the hashes it was sent.
//!
//! A range `first..=last` under a head of `n` leaves is proved by the full
//! nodes covering `[0, first - 1)` and `[last, n)` (`Mode::Fresh`). A long
//! range travels in frames; each frame's proof names only what the frame
//! before did not (`Mode::Extend`): the covering nodes right of its last
//! leaf that the previous cover did not hold. The receiver checks and
//! keeps each frame as it comes, never holding more than one frame.
//!
//! Hashing is SHA-256 from `sha2`; signatures are behind `HeadSigner` and
//! `HeadKeys`, so this module holds no keys and does no I/O.

mod saved;

use crate::{Event, NodeId, Origin, RangeSet};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub type Hash = [u8; 32];

const LEAF_PREFIX: u8 = 0;
const NODE_PREFIX: u8 = 1;
/// Domain of a head's signature: no other message a node key signs (TLS
/// handshakes, CSRs) can be taken for a head.
const HEAD_CONTEXT: &[u8] = b"ferry log head v1\0";
/// A signature longer than this is refused before it is looked at
/// (ECDSA P-256 is 64 bytes fixed, at most 72 in DER).
pub const MAX_SIGNATURE_LEN: usize = 128;
/// Largest proof in its stream form: mode, a varint, and two covers of at
/// most 63 nodes each.
pub const MAX_PROOF_LEN: usize = 1 + 10 + 126 * 32;

/// Leaf hash of an event: every field, each length-prefixed where it has
/// no fixed size, so two events hash alike only if they are equal.
pub fn leaf_hash(e: &Event) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(e.origin.node.0);
    h.update(e.origin.epoch.to_be_bytes());
    h.update(e.seq.to_be_bytes());
    h.update(e.hlc.0.to_be_bytes());
    h.update([u8::from(e.priority)]);
    h.update((e.topic.len() as u64).to_be_bytes());
    h.update(e.topic.as_bytes());
    h.update((e.payload.len() as u64).to_be_bytes());
    h.update(&e.payload);
    h.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Level of the nodes a tree keeps over events it holds: below it, the
/// nodes of a block of `BLOCK_EVENTS` events are dropped once the block is
/// whole and held (`Known::compact_block`) and hashed again from the
/// events when a proof needs them (`Known::prove_from`). A block is one
/// WAL index chunk, so that costs one short read.
const BLOCK_LEVEL: u8 = 7;
/// Events in a block (`BLOCK_LEVEL`).
pub const BLOCK_EVENTS: u64 = 1 << BLOCK_LEVEL;

/// Nodes of compacted blocks hashed again from the events a store holds
/// (`Known::expand`), for one check (`Known::verify_expanded`).
#[derive(Debug, Default)]
pub struct Expanded(BTreeMap<Node, Hash>);

/// The block of the event of `seq` (seqs start at 1).
pub fn block_of(seq: u64) -> u64 {
    seq.saturating_sub(1) >> BLOCK_LEVEL
}

/// A full node: leaves `index << level .. (index + 1) << level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Node {
    level: u8,
    index: u64,
}

impl Node {
    fn lo(self) -> u64 {
        self.index << self.level
    }
    fn hi(self) -> u64 {
        (self.index + 1) << self.level
    }
}

/// The fewest full nodes covering leaves `[lo, hi)`, left to right.
fn cover(mut lo: u64, hi: u64) -> Vec<Node> {
    let mut out = Vec::new();
    while lo < hi {
        let mut level = lo.trailing_zeros().min(62) as u8;
        while (1u64 << level) > hi - lo {
            level -= 1;
        }
        out.push(Node {
            level,
            index: lo >> level,
        });
        lo += 1 << level;
    }
    out
}

/// How a proof is cut down (see the module's doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Nodes covering `[0, first - 1)` then `[last, n)`.
    Fresh,
    /// The frame before ended at `first - 1` under the same head and was
    /// verified: nodes covering `[last, n)` that did not cover
    /// `[first - 1, n)`. Also what a head alone means to a receiver that
    /// holds the events up to `n` (from their writer, over mutual TLS).
    Extend,
    /// The receiver holds every event before `first` (verified, or its
    /// own): nodes covering `[last, n)` only; it computes the rest. What a
    /// writer's live push needs: a few bytes instead of the whole left
    /// cover.
    Append,
}

impl Mode {
    /// The mode's byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Mode::Fresh => 0,
            Mode::Extend => 1,
            Mode::Append => 2,
        }
    }

    /// The mode of a byte on the wire (`code`), if it names one.
    pub fn from_code(code: u8) -> Option<Mode> {
        match code {
            0 => Some(Mode::Fresh),
            1 => Some(Mode::Extend),
            2 => Some(Mode::Append),
            _ => None,
        }
    }
}

/// The nodes a proof of `first..=last` under `n` carries, in order.
fn proof_nodes(mode: Mode, n: u64, first: u64, last: u64) -> Vec<Node> {
    let right = cover(last, n);
    match mode {
        Mode::Fresh => {
            let mut nodes = cover(0, first - 1);
            nodes.extend(right);
            nodes
        }
        Mode::Extend => {
            let before = cover(first - 1, n);
            right.into_iter().filter(|x| !before.contains(x)).collect()
        }
        Mode::Append => right,
    }
}

/// Where a sender ends the next proved prefix of a job, given that
/// `verified` is the last seq proved so far, the frame just sent ends at
/// `frame_last` and was preceded by seqs up to `frame_first - 1`, and the
/// job ends at `job_last`. A prefix that ends where many low bits are zero
/// needs few hashes (none below that level), so the sender proves up to the
/// best-aligned seq of the frame and the receiver holds the events after it
/// until the next frame's proof: never more than two frames' worth.
pub fn checkpoint(verified: u64, frame_first: u64, frame_last: u64, job_last: u64) -> u64 {
    if frame_last >= job_last {
        return job_last;
    }
    let lo = verified.max(frame_first.saturating_sub(1));
    (0..64)
        .rev()
        .map(|bit| frame_last >> bit << bit)
        .find(|&q| q > lo)
        .unwrap_or(frame_last)
}

/// The hashes proving events `first..=last` against the head of `len`
/// events of their origin (the origin is that of the events it comes with).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeProof {
    pub mode: Mode,
    pub len: u64,
    pub first: u64,
    pub last: u64,
    pub hashes: Vec<Hash>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the head of {origin} is not signed by its key")]
    BadSignature { origin: Origin },
    #[error("a head or event of {got} in the log of {want}")]
    WrongOrigin { want: Origin, got: Origin },
    #[error("range {first}..={last} does not fit a head of {len} events")]
    OutOfRange { first: u64, last: u64, len: u64 },
    #[error("proof is under a head of {proof} events, the head has {head}")]
    WrongHead { proof: u64, head: u64 },
    #[error("event {got} where {want} was due")]
    WrongSeq { want: u64, got: u64 },
    #[error("proof carries {got} hashes; the range needs {want}")]
    ProofLength { want: usize, got: usize },
    #[error("no hash known for leaves {lo}..{hi}: the range cannot be proved from here")]
    Missing { lo: u64, hi: u64 },
    #[error("events {first}..={last} do not match the signed head of {len} events: forged or altered")]
    Mismatch { first: u64, last: u64, len: u64 },
    /// A writer signs one tree; a node of it never changes once verified.
    /// Two different hashes for the same leaves mean altered events or
    /// proof, or a writer that signed two logs (a node restored from an
    /// old image that wrote before it synced).
    #[error("leaves {lo}..{hi} hash differently from what was verified before: altered, or the writer's log forked")]
    Forked { lo: u64, hi: u64 },
    #[error("malformed {what}")]
    Malformed { what: &'static str },
}

/// The writer's key, as the node holds it.
pub trait HeadSigner {
    fn sign(&self, message: &[u8]) -> Vec<u8>;
}

/// The public keys of the nodes whose logs are checked.
pub trait HeadKeys {
    /// Whether `signature` over `message` is by `node`'s key; `false` for a
    /// node whose key is not known.
    fn verify(&self, node: &NodeId, message: &[u8], signature: &[u8]) -> bool;

    /// What lets a receiver learn `node`'s key (in a node, its certificate),
    /// sent before the first head of `node` on a stream: a relay forwards
    /// the keys of the logs it proves. `None`: not held here.
    fn credential(&self, _node: &NodeId) -> Option<Vec<u8>> {
        None
    }

    /// Takes a writer's key from a credential a peer sent, if it is good
    /// (in a node: a certificate the deployment CA signed): the node it is
    /// for, or why it was refused.
    fn learn(&self, _credential: &[u8]) -> Result<NodeId, String> {
        Err("this node learns no writer keys".into())
    }
}

/// Largest credential a frame carries (a certificate is about 500 bytes).
pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// An origin's log of `len` events has root `root`, says its writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeHead {
    pub origin: Origin,
    pub len: u64,
    pub root: Hash,
    pub signature: Vec<u8>,
}

/// A head whose signature has been checked: only these prove anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedHead(TreeHead);

fn head_message(origin: &Origin, len: u64, root: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEAD_CONTEXT.len() + 60);
    m.extend_from_slice(HEAD_CONTEXT);
    m.extend_from_slice(&origin.node.0);
    m.extend_from_slice(&origin.epoch.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(root);
    m
}

impl TreeHead {
    pub fn sign(origin: Origin, len: u64, root: Hash, key: &(impl HeadSigner + ?Sized)) -> TreeHead {
        let signature = key.sign(&head_message(&origin, len, &root));
        TreeHead {
            origin,
            len,
            root,
            signature,
        }
    }

    pub fn verify(self, keys: &(impl HeadKeys + ?Sized)) -> Result<VerifiedHead, AuthError> {
        let message = head_message(&self.origin, self.len, &self.root);
        if self.signature.len() > MAX_SIGNATURE_LEN || !keys.verify(&self.origin.node, &message, &self.signature) {
            return Err(AuthError::BadSignature { origin: self.origin });
        }
        Ok(VerifiedHead(self))
    }

    /// Wire form: node(16) epoch(4) len(8) root(32) signature(rest), all
    /// fixed-size big-endian: 60 bytes and the signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(60 + self.signature.len());
        out.extend_from_slice(&self.origin.node.0);
        out.extend_from_slice(&self.origin.epoch.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.signature);
        out
    }

    pub fn decode(b: &[u8]) -> Result<TreeHead, AuthError> {
        let bad = AuthError::Malformed { what: "tree head" };
        if b.len() < 60 || b.len() > 60 + MAX_SIGNATURE_LEN {
            return Err(bad);
        }
        let (node, rest) = b.split_at(16);
        let (epoch, rest) = rest.split_at(4);
        let (len, rest) = rest.split_at(8);
        let (root, signature) = rest.split_at(32);
        // The split_at lengths above make these conversions exact.
        Ok(TreeHead {
            origin: Origin {
                node: NodeId(node.try_into().expect("16 bytes")),
                epoch: u32::from_be_bytes(epoch.try_into().expect("4 bytes")),
            },
            len: u64::from_be_bytes(len.try_into().expect("8 bytes")),
            root: root.try_into().expect("32 bytes"),
            signature: signature.to_vec(),
        })
    }
}

impl VerifiedHead {
    pub fn head(&self) -> &TreeHead {
        &self.0
    }
}

fn get_varint(b: &mut &[u8]) -> Result<u64, AuthError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or(AuthError::Malformed { what: "range proof" })?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(AuthError::Malformed { what: "range proof" })
}

impl RangeProof {
    /// Wire form: mode(1) len first last-first (varints), then the hashes:
    /// the receiver knows how many from the rest.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 32 * self.hashes.len());
        out.push(self.mode.code());
        crate::varint::put(&mut out, self.len);
        crate::varint::put(&mut out, self.first);
        crate::varint::put(&mut out, self.last.wrapping_sub(self.first));
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    pub fn decode(mut b: &[u8]) -> Result<RangeProof, AuthError> {
        let bad = || AuthError::Malformed { what: "range proof" };
        let (&mode, rest) = b.split_first().ok_or_else(bad)?;
        b = rest;
        let mode = Mode::from_code(mode).ok_or_else(bad)?;
        let len = get_varint(&mut b)?;
        let first = get_varint(&mut b)?;
        let last = first
            .checked_add(get_varint(&mut b)?)
            .ok_or(AuthError::Malformed { what: "range proof" })?;
        let hashes = hashes(b)?;
        Ok(RangeProof {
            mode,
            len,
            first,
            last,
            hashes,
        })
    }
}

impl RangeProof {
    /// Wire form inside a data stream, where the proof follows the events
    /// frame of its job: the receiver keeps the job's head (`len`) and the
    /// last seq proved (`first - 1`), so only the mode, how far before the
    /// frame's last seq the proof ends, and the hashes travel.
    pub fn encode_in_stream(&self, frame_last: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 32 * self.hashes.len());
        out.push(self.mode.code());
        crate::varint::put(&mut out, frame_last.saturating_sub(self.last));
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        out
    }

    pub fn decode_in_stream(mut b: &[u8], len: u64, first: u64, frame_last: u64) -> Result<RangeProof, AuthError> {
        let bad = || AuthError::Malformed { what: "range proof" };
        let (&mode, rest) = b.split_first().ok_or_else(bad)?;
        b = rest;
        let mode = Mode::from_code(mode).ok_or_else(bad)?;
        let back = get_varint(&mut b)?;
        let last = frame_last
            .checked_sub(back)
            .ok_or(AuthError::Malformed { what: "range proof" })?;
        let hashes = hashes(b)?;
        Ok(RangeProof {
            mode,
            len,
            first,
            last,
            hashes,
        })
    }
}

fn hashes(b: &[u8]) -> Result<Vec<Hash>, AuthError> {
    // Two covers of at most 63 nodes each.
    if !b.len().is_multiple_of(32) || b.len() / 32 > 126 {
        return Err(AuthError::Malformed { what: "range proof" });
    }
    Ok(b.chunks_exact(32)
        .map(|c| c.try_into().expect("32-byte chunk"))
        .collect())
}

/// What is known and verified of one origin's tree: full nodes by
/// position, and the longest head verified against them. A writer knows
/// every node of its own log; a relay knows the nodes of the ranges it
/// received and the hashes that came with them.
#[derive(Clone, Debug)]
pub struct Known {
    origin: Origin,
    nodes: BTreeMap<Node, Hash>,
    head: Option<VerifiedHead>,
    /// Shorter heads verified here, by length, kept while the tree is not
    /// whole up to `head`: a range verified under one of them may lack the
    /// nodes that would prove it under a longer head.
    older: BTreeMap<u64, VerifiedHead>,
    /// Every leaf of seqs `1..=whole` is known.
    whole: u64,
    /// Leaves appended by the writer: `append` takes seq `appended + 1`.
    appended: u64,
    /// Blocks (`block + 1`) whose nodes below `BLOCK_LEVEL` were dropped:
    /// every leaf of them was known, and their events are held.
    compacted: RangeSet,
}

/// Computes subtree hashes from known nodes, proof hashes and new leaves.
struct Walk<'a> {
    known: &'a BTreeMap<Node, Hash>,
    /// Nodes of compacted blocks hashed again from their events.
    expanded: &'a BTreeMap<Node, Hash>,
    given: BTreeMap<Node, Hash>,
    /// Leaf hashes of `fresh_lo..fresh_lo + fresh.len()`: never taken
    /// from a stored node, always hashed up.
    fresh_lo: u64,
    fresh: &'a [Hash],
    /// Every full node hashed or read on the way: verified once the root
    /// matches.
    seen: Vec<(Node, Hash)>,
}

impl Walk<'_> {
    fn hash(&mut self, lo: u64, hi: u64) -> Result<Hash, AuthError> {
        let size = hi - lo;
        let full = size.is_power_of_two() && lo.is_multiple_of(size);
        let fresh_hi = self.fresh_lo + self.fresh.len() as u64;
        let touches = lo < fresh_hi && self.fresh_lo < hi;
        let node = Node {
            level: size.trailing_zeros() as u8,
            index: lo.checked_shr(size.trailing_zeros()).unwrap_or(0),
        };
        // What was verified before stands: a proof may not replace it.
        let known = if full {
            self.known.get(&node).or_else(|| self.expanded.get(&node)).copied()
        } else {
            None
        };
        if full && !touches {
            let given = self.given.get(&node).copied();
            if let (Some(g), Some(k)) = (given, known) {
                if g != k {
                    return Err(AuthError::Forked { lo, hi });
                }
            }
            if let Some(h) = given.or(known) {
                self.seen.push((node, h));
                return Ok(h);
            }
        }
        let h = if size == 1 {
            if !touches {
                return Err(AuthError::Missing { lo, hi });
            }
            self.fresh[(lo - self.fresh_lo) as usize]
        } else {
            let split = 1u64 << (63 - (size - 1).leading_zeros());
            let left = self.hash(lo, lo + split)?;
            let right = self.hash(lo + split, hi)?;
            node_hash(&left, &right)
        };
        if full {
            if known.is_some_and(|k| k != h) {
                return Err(AuthError::Forked { lo, hi });
            }
            self.seen.push((node, h));
        }
        Ok(h)
    }
}

/// Every full node of `block`, from its `BLOCK_EVENTS` leaf hashes.
fn block_nodes(block: u64, leaves: &[Hash]) -> BTreeMap<Node, Hash> {
    let mut out = BTreeMap::new();
    let mut level_hashes = leaves.to_vec();
    for level in 0..=BLOCK_LEVEL {
        let base = block << (BLOCK_LEVEL - level);
        for (i, h) in level_hashes.iter().enumerate() {
            out.insert(
                Node {
                    level,
                    index: base + i as u64,
                },
                *h,
            );
        }
        level_hashes = level_hashes.chunks_exact(2).map(|p| node_hash(&p[0], &p[1])).collect();
    }
    out
}

impl Known {
    pub fn new(origin: Origin) -> Self {
        Known {
            origin,
            nodes: BTreeMap::new(),
            head: None,
            older: BTreeMap::new(),
            whole: 0,
            appended: 0,
            compacted: RangeSet::new(),
        }
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The longest head verified against this tree, if any.
    pub fn head(&self) -> Option<&VerifiedHead> {
        self.head.as_ref()
    }

    /// How many of the writer's own events were appended (`append`).
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// Nodes held: what this costs in memory is about 40 bytes each.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The writer appends its own event of seq `appended + 1`.
    pub fn append(&mut self, e: &Event) -> Result<(), AuthError> {
        if e.seq != self.appended + 1 {
            return Err(AuthError::WrongSeq {
                want: self.appended + 1,
                got: e.seq,
            });
        }
        self.insert_trusted(e)?;
        self.appended = e.seq;
        Ok(())
    }

    /// An event this node takes without a proof: its own, or one its
    /// writer pushed over mutual TLS. Its leaf is kept, and every parent
    /// whose children are then both known, so a later head of the writer
    /// is checked against them in a few steps (`adopt`). An event that
    /// contradicts a node already verified is refused and nothing is kept:
    /// the writer has two versions of its log.
    pub fn insert_trusted(&mut self, e: &Event) -> Result<(), AuthError> {
        self.check_origin(e.origin)?;
        if e.seq == 0 {
            return Err(AuthError::WrongSeq { want: 1, got: 0 });
        }
        if self.is_compacted(block_of(e.seq)) {
            // Held already, and its block's node stands for it.
            return Ok(());
        }
        let mut node = Node {
            level: 0,
            index: e.seq - 1,
        };
        let mut h = leaf_hash(e);
        let mut chain = vec![(node, h)];
        while node.level < 63 {
            let Some(sibling) = self.nodes.get(&Node {
                level: node.level,
                index: node.index ^ 1,
            }) else {
                break;
            };
            h = if node.index % 2 == 1 {
                node_hash(sibling, &h)
            } else {
                node_hash(&h, sibling)
            };
            node = Node {
                level: node.level + 1,
                index: node.index / 2,
            };
            chain.push((node, h));
        }
        if chain.iter().any(|(n, h)| self.nodes.get(n).is_some_and(|k| k != h)) {
            return Err(AuthError::Mismatch {
                first: e.seq,
                last: e.seq,
                len: self.head.as_ref().map_or(0, |h| h.0.len),
            });
        }
        self.nodes.extend(chain);
        self.advance_whole();
        Ok(())
    }

    /// The root of the first `len` leaves, from what is known.
    pub fn root(&self, len: u64) -> Result<Hash, AuthError> {
        if len == 0 {
            return Ok(Sha256::digest([]).into());
        }
        self.walk(&[], 0, BTreeMap::new()).hash(0, len)
    }

    fn walk<'a>(&'a self, fresh: &'a [Hash], fresh_lo: u64, given: BTreeMap<Node, Hash>) -> Walk<'a> {
        static NONE: BTreeMap<Node, Hash> = BTreeMap::new();
        Walk {
            known: &self.nodes,
            expanded: &NONE,
            given,
            fresh_lo,
            fresh,
            seen: Vec::new(),
        }
    }

    /// The writer signs the head of its first `len` events.
    pub fn sign_head(&mut self, len: u64, key: &(impl HeadSigner + ?Sized)) -> Result<TreeHead, AuthError> {
        let root = self.root(len)?;
        let head = TreeHead::sign(self.origin, len, root, key);
        self.keep_head(VerifiedHead(head.clone()));
        Ok(head)
    }

    /// Adopts a verified head if the known nodes give its root (the writer's
    /// own heads, or a head that only extends what was already proved).
    pub fn adopt(&mut self, head: VerifiedHead) -> Result<(), AuthError> {
        self.check_origin(head.0.origin)?;
        if self.root(head.0.len)? != head.0.root {
            return Err(AuthError::Mismatch {
                first: 1,
                last: head.0.len,
                len: head.0.len,
            });
        }
        self.keep_head(head);
        Ok(())
    }

    fn keep_head(&mut self, head: VerifiedHead) {
        // The longer of the two stays the head, the shorter is kept aside.
        let shorter = match self.head.take() {
            Some(h) if h.0.len >= head.0.len => {
                let shorter = (h.0.len > head.0.len).then_some(head);
                self.head = Some(h);
                shorter
            }
            previous => {
                self.head = Some(head);
                previous
            }
        };
        if let Some(s) = shorter {
            self.older.insert(s.0.len, s);
        }
        // Every leaf up to the longest head known: it proves any range.
        if self.head.as_ref().is_some_and(|h| self.whole >= h.0.len) {
            self.older.clear();
        }
    }

    fn advance_whole(&mut self) {
        loop {
            if self.compacted.contains((self.whole >> BLOCK_LEVEL) + 1) {
                self.whole = ((self.whole >> BLOCK_LEVEL) + 1) << BLOCK_LEVEL;
            } else if self.nodes.contains_key(&Node {
                level: 0,
                index: self.whole,
            }) {
                self.whole += 1;
            } else {
                break;
            }
        }
    }

    /// Drops the nodes below `BLOCK_LEVEL` of `block` (events
    /// `block * BLOCK_EVENTS + 1 ..= (block + 1) * BLOCK_EVENTS`), keeping
    /// the block's own node: a tree then costs about one node per 64
    /// events instead of two per event. Only a block whose every leaf is
    /// known is compacted, and the caller must hold all its events
    /// durably: `prove_from` hashes them again. Returns whether it was.
    pub fn compact_block(&mut self, block: u64) -> bool {
        if self.is_compacted(block) {
            return true;
        }
        let lo = block << BLOCK_LEVEL;
        let leaves: Vec<Hash> = self
            .nodes
            .range(
                Node { level: 0, index: lo }..Node {
                    level: 0,
                    index: lo + BLOCK_EVENTS,
                },
            )
            .map(|(_, h)| *h)
            .collect();
        if leaves.len() as u64 != BLOCK_EVENTS {
            return false;
        }
        let nodes = block_nodes(block, &leaves);
        let top = Node {
            level: BLOCK_LEVEL,
            index: block,
        };
        let root = nodes.get(&top).copied();
        // Inner nodes are computed from the leaves as they come, so they
        // agree; a disagreement is a defect and nothing is dropped.
        if nodes.iter().any(|(n, h)| self.nodes.get(n).is_some_and(|k| k != h)) || root.is_none() {
            debug_assert!(false, "a block's nodes disagree with its leaves");
            return false;
        }
        for level in 0..BLOCK_LEVEL {
            let shift = BLOCK_LEVEL - level;
            let first = Node {
                level,
                index: block << shift,
            };
            let end = Node {
                level,
                index: (block + 1) << shift,
            };
            let doomed: Vec<Node> = self.nodes.range(first..end).map(|(n, _)| *n).collect();
            for n in doomed {
                self.nodes.remove(&n);
            }
        }
        if let Some(h) = root {
            self.nodes.insert(top, h);
        }
        self.compacted.insert(block + 1);
        true
    }

    /// Adds a compacted block's nodes, hashed from `block_leaves(block)`, to
    /// `into`; nothing for a block that is not compacted.
    fn expand_block(
        &self,
        block: u64,
        block_leaves: &dyn Fn(u64) -> Option<Vec<Hash>>,
        into: &mut BTreeMap<Node, Hash>,
    ) -> Result<(), AuthError> {
        if !self.is_compacted(block) {
            return Ok(());
        }
        let top = Node {
            level: BLOCK_LEVEL,
            index: block,
        };
        let leaves = block_leaves(block).filter(|l| l.len() as u64 == BLOCK_EVENTS);
        let Some(leaves) = leaves else {
            return Err(AuthError::Missing {
                lo: top.lo(),
                hi: top.hi(),
            });
        };
        let nodes = block_nodes(block, &leaves);
        if nodes.get(&top) != self.nodes.get(&top) {
            return Err(AuthError::Forked {
                lo: top.lo(),
                hi: top.hi(),
            });
        }
        into.extend(nodes);
        Ok(())
    }

    /// What a check of events `first..=last` under a head of one of
    /// `head_lens` may need of compacted blocks, hashed again from the events
    /// held: those around and under the range (a frame of events this node
    /// already holds, sent again by a peer that did not know), and the one
    /// the head ends in. A proof names no node below a block anywhere else,
    /// and one that extends an earlier proof leaves out the nodes that
    /// proof gave, which this tree did not keep inside a compacted block.
    /// A block whose events cannot be read is left out (the check may then
    /// fail as `Missing`).
    pub fn expand(
        &self,
        first: u64,
        last: u64,
        head_lens: &[u64],
        block_leaves: &dyn Fn(u64) -> Option<Vec<Hash>>,
    ) -> Expanded {
        let mut out = BTreeMap::new();
        let around = block_of(first.saturating_sub(1).max(1))..=block_of(last);
        let head_ends = head_lens.iter().filter(|&&n| n > 0).map(|&n| block_of(n));
        let mut blocks: Vec<u64> = around.chain(head_ends).collect();
        blocks.sort_unstable();
        blocks.dedup();
        for block in blocks {
            let _ = self.expand_block(block, block_leaves, &mut out);
        }
        Expanded(out)
    }

    /// A compacted block some of whose events are no longer held (a card
    /// lost them): its leaves come back from `held`, the block's events
    /// still held, checked against what the tree keeps. The lost events'
    /// leaves are gone until those events are received again.
    pub fn reopen_block(&mut self, block: u64, held: &[Event]) -> Result<(), AuthError> {
        if !self.is_compacted(block) {
            return Ok(());
        }
        self.compacted = self.compacted.difference(&RangeSet::from_range(block + 1, block + 1));
        let first = (block << BLOCK_LEVEL) + 1;
        let mut next = first;
        for e in held.iter().filter(|e| block_of(e.seq) == block) {
            self.insert_trusted(e)?;
            if e.seq == next {
                next += 1;
            }
        }
        // The writer's own log now ends before the first lost event, as it
        // does for a node that rebuilds its tree from its events.
        if self.appended >= next {
            self.appended = next - 1;
        }
        // Leaves from the first lost one on are unknown again, so shorter
        // heads are kept for what is still provable (`keep_head`).
        self.whole = self.whole.min(next - 1);
        Ok(())
    }

    /// Whether `block`'s low nodes were dropped (`compact_block`).
    pub fn is_compacted(&self, block: u64) -> bool {
        self.compacted.contains(block + 1)
    }

    /// Heads a range ending at `last` might be proved under: the shorter
    /// ones still kept that cover it, shortest first, then the longest.
    pub fn heads_for(&self, last: u64) -> impl Iterator<Item = &VerifiedHead> {
        self.older.range(last..).map(|(_, h)| h).chain(self.head.iter())
    }

    fn check_origin(&self, got: Origin) -> Result<(), AuthError> {
        if got != self.origin {
            return Err(AuthError::WrongOrigin { want: self.origin, got });
        }
        Ok(())
    }

    /// Proof of events `first..=last` under `head`, from known nodes, for
    /// a tree that compacted no block the proof reaches into.
    pub fn prove(&self, head: &TreeHead, mode: Mode, first: u64, last: u64) -> Result<RangeProof, AuthError> {
        self.prove_from(head, mode, first, last, &|_| None)
    }

    /// `prove`, hashing the nodes of compacted blocks again from their
    /// events: `block_leaves(block)` gives the leaf hashes of the block's
    /// `BLOCK_EVENTS` events, or `None` if they cannot be read. Leaves that
    /// do not give the block's kept node (a damaged store) prove nothing.
    pub fn prove_from(
        &self,
        head: &TreeHead,
        mode: Mode,
        first: u64,
        last: u64,
        block_leaves: &dyn Fn(u64) -> Option<Vec<Hash>>,
    ) -> Result<RangeProof, AuthError> {
        let n = head.len;
        if first == 0 || first > last || last > n {
            return Err(AuthError::OutOfRange { first, last, len: n });
        }
        let wanted = proof_nodes(mode, n, first, last);
        let mut expanded = BTreeMap::new();
        for node in &wanted {
            let block = node.lo() >> BLOCK_LEVEL;
            if node.level >= BLOCK_LEVEL || self.nodes.contains_key(node) || expanded.contains_key(node) {
                continue;
            }
            self.expand_block(block, block_leaves, &mut expanded)?;
        }
        let mut hashes = Vec::new();
        for node in wanted {
            let h = match self.nodes.get(&node).or_else(|| expanded.get(&node)) {
                Some(h) => *h,
                None => {
                    let mut walk = self.walk(&[], 0, BTreeMap::new());
                    walk.expanded = &expanded;
                    walk.hash(node.lo(), node.hi())?
                }
            };
            hashes.push(h);
        }
        Ok(RangeProof {
            mode,
            len: n,
            first,
            last,
            hashes,
        })
    }

    /// Checks events `first..=last` against `head` with `proof`, and keeps
    /// what that verified. On error nothing is kept: the events must not be
    /// appended.
    pub fn verify(&mut self, head: &VerifiedHead, proof: &RangeProof, events: &[Event]) -> Result<(), AuthError> {
        self.verify_expanded(head, proof, events, &Expanded::default())
    }

    /// `verify`, with nodes of compacted blocks hashed again (`expand`).
    pub fn verify_expanded(
        &mut self,
        head: &VerifiedHead,
        proof: &RangeProof,
        events: &[Event],
        expanded: &Expanded,
    ) -> Result<(), AuthError> {
        let leaves = self.leaves(proof.first, events)?;
        self.check_leaves(head, proof, &leaves, &expanded.0)
    }

    /// The leaf hashes of `events`, which must be of this origin and seqs
    /// `first, first + 1, ...`.
    pub fn leaves(&self, first: u64, events: &[Event]) -> Result<Vec<Hash>, AuthError> {
        let mut leaves = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            self.check_origin(e.origin)?;
            let want = first.saturating_add(i as u64);
            if e.seq != want {
                return Err(AuthError::WrongSeq { want, got: e.seq });
            }
            leaves.push(leaf_hash(e));
        }
        Ok(leaves)
    }

    /// `verify`, given the events' leaf hashes (those of events already
    /// held, for a head that follows events pushed by their writer).
    pub fn verify_leaves(&mut self, head: &VerifiedHead, proof: &RangeProof, leaves: &[Hash]) -> Result<(), AuthError> {
        self.check_leaves(head, proof, leaves, &BTreeMap::new())
    }

    /// The root over `proof.len` leaves that `proof` and the events it
    /// proves give with what this tree knows: for a head that travels as
    /// its signature alone (the writer's push that ends its log), the root
    /// the writer must have signed. Keeps nothing.
    pub fn root_from(&self, proof: &RangeProof, events: &[Event], expanded: &Expanded) -> Result<Hash, AuthError> {
        let leaves = self.leaves(proof.first, events)?;
        self.walk_root(proof, &leaves, &expanded.0).map(|(root, _)| root)
    }

    /// The root `proof` and `leaves` give, and every node hashed or read on
    /// the way.
    fn walk_root(
        &self,
        proof: &RangeProof,
        leaves: &[Hash],
        expanded: &BTreeMap<Node, Hash>,
    ) -> Result<(Hash, Vec<(Node, Hash)>), AuthError> {
        let (first, last, n) = (proof.first, proof.last, proof.len);
        if first == 0 || first > last || last > n || (last - first).checked_add(1) != Some(leaves.len() as u64) {
            return Err(AuthError::OutOfRange { first, last, len: n });
        }
        let nodes = proof_nodes(proof.mode, n, first, last);
        if nodes.len() != proof.hashes.len() {
            return Err(AuthError::ProofLength {
                want: nodes.len(),
                got: proof.hashes.len(),
            });
        }
        let given = nodes.into_iter().zip(proof.hashes.iter().copied()).collect();
        let mut walk = self.walk(leaves, first - 1, given);
        walk.expanded = expanded;
        let root = walk.hash(0, n)?;
        Ok((root, walk.seen))
    }

    fn check_leaves(
        &mut self,
        head: &VerifiedHead,
        proof: &RangeProof,
        leaves: &[Hash],
        expanded: &BTreeMap<Node, Hash>,
    ) -> Result<(), AuthError> {
        let head_ = &head.0;
        self.check_origin(head_.origin)?;
        let n = head_.len;
        if proof.len != n {
            return Err(AuthError::WrongHead {
                proof: proof.len,
                head: n,
            });
        }
        let (root, seen) = self.walk_root(proof, leaves, expanded)?;
        if root != head_.root {
            return Err(AuthError::Mismatch {
                first: proof.first,
                last: proof.last,
                len: n,
            });
        }
        let compacted = &self.compacted;
        let dropped = |n: &Node| n.level < BLOCK_LEVEL && compacted.contains((n.lo() >> BLOCK_LEVEL) + 1);
        let seen: Vec<(Node, Hash)> = seen.into_iter().filter(|(n, _)| !dropped(n)).collect();
        self.nodes.extend(seen);
        self.advance_whole();
        self.keep_head(head.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_is_maximal_and_exact() {
        assert_eq!(cover(0, 0), vec![]);
        let c = cover(3, 13);
        let spans: Vec<(u64, u64)> = c.iter().map(|n| (n.lo(), n.hi())).collect();
        assert_eq!(spans, vec![(3, 4), (4, 8), (8, 12), (12, 13)]);
        for lo in 0..70 {
            for hi in lo..70 {
                let c = cover(lo, hi);
                let mut at = lo;
                for n in &c {
                    assert_eq!(n.lo(), at);
                    at = n.hi();
                }
                assert_eq!(at, hi);
            }
        }
    }

    #[test]
    fn extend_names_only_new_nodes() {
        // Frames 1..=3 then 4..=9 of a head of 16: the second frame's proof
        // holds what covers [9, 16) but did not cover [3, 16): the
        // receiver knows [8, 16) and now needs its parts right of leaf 8.
        let nodes = proof_nodes(Mode::Extend, 16, 4, 9);
        let spans: Vec<(u64, u64)> = nodes.iter().map(|n| (n.lo(), n.hi())).collect();
        assert_eq!(spans, vec![(9, 10), (10, 12), (12, 16)]);
        // Ending on an aligned boundary costs nothing.
        assert_eq!(proof_nodes(Mode::Extend, 16, 4, 8), vec![]);
    }

    #[test]
    fn checkpoints_are_aligned_within_the_frame() {
        // Frame 100..=213 after 99 proved: 128 is the best-aligned seq.
        assert_eq!(checkpoint(99, 100, 213, 5000), 128);
        // The tail 129..=213 is held; the next frame 214..=330 ends at 256.
        assert_eq!(checkpoint(128, 214, 330, 5000), 256);
        // The job's last frame is proved to its end.
        assert_eq!(checkpoint(256, 331, 400, 400), 400);
        // A one-event frame proves that event.
        assert_eq!(checkpoint(6, 7, 7, 100), 7);
    }
}
