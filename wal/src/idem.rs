//! Idempotency keys of local appends.
//!
//! A keyed append writes a key record in the same group as its events, so
//! recovery finds both or neither. The writer thread owns the table of keys
//! younger than the window, rebuilt at open from the key records; older keys
//! stay on disk and are ignored.

use crate::NewEvent;
use ferry_proto::Origin;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};

/// What a key record holds: the key, the events it named, when it was
/// written (by the WAL's clock) and a digest of the request, so a different
/// request reusing the key is refused rather than answered with the wrong
/// events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub key: String,
    pub origin: Origin,
    pub first_seq: u64,
    pub count: u64,
    pub wall_ms: u64,
    pub digest: [u8; 16],
}

impl KeyEntry {
    /// The events the key names: consecutive seqs, since one append's events
    /// take consecutive numbers.
    pub fn events(&self) -> Vec<(Origin, u64)> {
        (self.first_seq..self.first_seq + self.count)
            .map(|s| (self.origin, s))
            .collect()
    }
}

/// Names a request's content: topics, priorities and payloads, in order.
pub fn request_digest(items: &[NewEvent]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"ferry-idempotent-append");
    for i in items {
        h.update((i.topic.len() as u64).to_be_bytes());
        h.update(i.topic.as_bytes());
        h.update([u8::from(i.priority)]);
        h.update((i.payload.len() as u64).to_be_bytes());
        h.update(&i.payload);
    }
    let mut d = [0u8; 16];
    d.copy_from_slice(&h.finalize()[..16]);
    d
}

/// The keys younger than the window.
#[derive(Debug)]
pub struct KeyTable {
    window_ms: u64,
    by_key: HashMap<String, KeyEntry>,
    /// (wall ms, key): expiry order. The clock may have stepped back, so this
    /// is not the order keys were written in.
    by_time: BTreeSet<(u64, String)>,
}

impl KeyTable {
    pub fn new(window_ms: u64) -> Self {
        KeyTable {
            window_ms,
            by_key: HashMap::new(),
            by_time: BTreeSet::new(),
        }
    }

    fn live(&self, e: &KeyEntry, now_ms: u64) -> bool {
        now_ms < e.wall_ms.saturating_add(self.window_ms)
    }

    /// Records `e` if it is still within the window at `now_ms`. A later
    /// record of the same key (written after the first one expired) replaces
    /// the earlier one.
    pub fn insert(&mut self, e: KeyEntry, now_ms: u64) {
        if !self.live(&e, now_ms) {
            return;
        }
        if let Some(old) = self.by_key.remove(&e.key) {
            self.by_time.remove(&(old.wall_ms, old.key));
        }
        self.by_time.insert((e.wall_ms, e.key.clone()));
        self.by_key.insert(e.key.clone(), e);
    }

    /// Forgets keys whose window has passed at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some((wall, _)) = self.by_time.first() {
            if now_ms < wall.saturating_add(self.window_ms) {
                break;
            }
            // `first()` just returned an entry.
            let (_, key) = self.by_time.pop_first().expect("non-empty");
            self.by_key.remove(&key);
        }
    }

    pub fn get(&self, key: &str) -> Option<&KeyEntry> {
        self.by_key.get(key)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::NodeId;

    fn entry(key: &str, wall_ms: u64, first_seq: u64) -> KeyEntry {
        KeyEntry {
            key: key.into(),
            origin: Origin {
                node: NodeId([3; 16]),
                epoch: 1,
            },
            first_seq,
            count: 2,
            wall_ms,
            digest: [0; 16],
        }
    }

    #[test]
    fn keys_expire_in_wall_order_and_later_records_replace_earlier() {
        let mut t = KeyTable::new(1_000);
        t.insert(entry("a", 5_000, 1), 5_000);
        t.insert(entry("b", 4_500, 3), 5_000); // clock stepped back
        t.insert(entry("old", 3_000, 9), 5_000); // already past its window
        assert_eq!(t.len(), 2);
        t.expire(5_499);
        assert_eq!(t.len(), 2, "b (4500 + 1000) is due at 5500, not before");
        t.expire(5_500);
        assert!(t.get("b").is_none());
        assert!(t.get("a").is_some());
        t.insert(entry("a", 5_500, 20), 5_500);
        t.expire(6_000);
        assert_eq!(
            t.get("a").map(|e| e.first_seq),
            Some(20),
            "the replaced record's time counts"
        );
        t.expire(6_500);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn digest_tells_requests_apart() {
        let ev = |topic: &str, payload: &[u8]| NewEvent {
            topic: topic.into(),
            priority: ferry_proto::Priority::Normal,
            payload: payload.to_vec(),
        };
        let d = request_digest(&[ev("t", b"ab"), ev("t", b"c")]);
        assert_eq!(d, request_digest(&[ev("t", b"ab"), ev("t", b"c")]));
        assert_ne!(d, request_digest(&[ev("t", b"a"), ev("t", b"bc")]));
        assert_ne!(d, request_digest(&[ev("tt", b"ab"), ev("t", b"c")]));
        assert_ne!(d, request_digest(&[ev("t", b"ab")]));
    }
}
