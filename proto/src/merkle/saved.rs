//! What of a `Known` tree outlives a restart: the verified heads, and the
//! nodes that cannot be computed again from the events held (hashes that
//! came with proofs, leaves of events not kept). Everything else is
//! rebuilt from the events themselves, so the saved form stays small: a
//! few heads and a few dozen hashes per origin, not one per event.
//!
//! The bytes are checked again on the way in (every head's signature, every
//! head against the nodes), so a damaged or doctored file can only make a
//! node prove less, never accept more.

use super::{AuthError, HeadKeys, Known, Node, TreeHead, MAX_SIGNATURE_LEN};
use crate::{Event, Origin};

const FORMAT: u8 = 1;

fn malformed() -> AuthError {
    AuthError::Malformed { what: "saved tree" }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], AuthError> {
    if b.len() < n {
        return Err(malformed());
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn take_u32(b: &mut &[u8]) -> Result<u32, AuthError> {
    let bytes = take(b, 4)?;
    Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

impl Known {
    /// The saved form (see the module's doc). `held(seq)`: whether the
    /// event of `seq` is durable where this tree is kept, so its leaf can
    /// be hashed again at `restore`.
    pub fn save(&self, held: impl Fn(u64) -> bool) -> Vec<u8> {
        let heads: Vec<&TreeHead> = self.older.values().chain(self.head.iter()).map(|h| &h.0).collect();
        let derivable = |n: &Node| {
            if n.level == 0 {
                return held(n.index + 1);
            }
            if n.level == super::BLOCK_LEVEL && self.is_compacted(n.index) {
                // Its lower nodes come back from its events, if they are
                // all still held (a card may lose a synced tail).
                return (n.lo() + 1..=n.hi()).all(&held);
            }
            let child = |index| Node {
                level: n.level - 1,
                index,
            };
            self.nodes.contains_key(&child(n.index * 2)) && self.nodes.contains_key(&child(n.index * 2 + 1))
        };
        let kept: Vec<(&Node, &super::Hash)> = self.nodes.iter().filter(|(n, _)| !derivable(n)).collect();
        let mut out = Vec::with_capacity(9 + heads.len() * 200 + kept.len() * 41);
        out.push(FORMAT);
        out.extend_from_slice(&(heads.len() as u32).to_be_bytes());
        for h in heads {
            let e = h.encode();
            out.extend_from_slice(&(e.len() as u32).to_be_bytes());
            out.extend_from_slice(&e);
        }
        out.extend_from_slice(&(kept.len() as u32).to_be_bytes());
        for (n, h) in kept {
            out.push(n.level);
            out.extend_from_slice(&n.index.to_be_bytes());
            out.extend_from_slice(h);
        }
        out
    }

    /// A tree from its saved form (`save`; `None` if nothing was saved) and
    /// the events held, in ascending seq order. `own`: this node writes the
    /// log, so its events are appended (a gap ends that: a log with a hole
    /// is not this node's to extend). Heads whose signature or root no
    /// longer checks are dropped: the count comes back with the tree.
    pub fn restore(
        origin: Origin,
        saved: Option<&[u8]>,
        keys: &(impl HeadKeys + ?Sized),
        events: impl IntoIterator<Item = Event>,
        own: bool,
    ) -> Result<(Known, usize), AuthError> {
        let mut known = Known::new(origin);
        let mut heads = Vec::new();
        if let Some(mut b) = saved {
            if take(&mut b, 1)? != [FORMAT] {
                return Err(malformed());
            }
            for _ in 0..take_u32(&mut b)? {
                let len = take_u32(&mut b)? as usize;
                if len > 60 + MAX_SIGNATURE_LEN {
                    return Err(malformed());
                }
                heads.push(TreeHead::decode(take(&mut b, len)?)?);
            }
            for _ in 0..take_u32(&mut b)? {
                let level = take(&mut b, 1)?[0];
                let index = u64::from_be_bytes(take(&mut b, 8)?.try_into().map_err(|_| malformed())?);
                let hash: super::Hash = take(&mut b, 32)?.try_into().map_err(|_| malformed())?;
                if level > 63
                    || index
                        .checked_shl(u32::from(level))
                        .is_none_or(|lo| lo >> level != index)
                {
                    return Err(malformed());
                }
                known.nodes.insert(Node { level, index }, hash);
            }
            if !b.is_empty() {
                return Err(malformed());
            }
        }
        let mut appending = own;
        // Events passed in of the block being read: a block compacts only
        // when every one of its events is held, not when the saved form
        // gave leaves of events that are not.
        let (mut block, mut passed) = (0, 0);
        for e in events {
            let b = super::block_of(e.seq);
            if b != block {
                (block, passed) = (b, 0);
            }
            passed += 1;
            if appending && e.seq == known.appended + 1 {
                known.append(&e)?;
            } else {
                appending = false;
                known.insert_trusted(&e)?;
            }
            // Every event passed in is held: compact as blocks fill, so a
            // large log never stands whole in memory.
            if e.seq % super::BLOCK_EVENTS == 0 && passed == super::BLOCK_EVENTS {
                known.compact_block(block);
            }
        }
        known.advance_whole();
        let mut dropped = 0;
        for h in heads {
            match h.verify(keys).and_then(|v| known.adopt(v)) {
                Ok(()) => {}
                Err(_) => dropped += 1,
            }
        }
        Ok((known, dropped))
    }
}
