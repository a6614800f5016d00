//! The WAL as the sync core's `Store`, with the trees that authenticate
//! each origin's log (`ferry_sync::Logs`).
//!
//! The trees are rebuilt at start from the events the WAL holds and a small
//! saved file (`log-trees`: the signed heads and the hashes no held event
//! gives, `Known::save`), which the driver rewrites soon after events are
//! stored and once more at shutdown. A crash between a store and the next
//! save loses only the heads and proof hashes learned in between: the
//! events are in the WAL and their leaves are hashed again; what this node
//! cannot prove onward until a newer head reaches it, it does not send.
//! In memory a tree keeps about one node per 64 events: the core drops the
//! low nodes of each block of 128 events once the WAL holds it whole, and
//! reads the block back (`Store::read`) when a proof needs them.

use anyhow::{bail, Context, Result};
use ferry_proto::merkle::Known;
use ferry_proto::{Classes, Event, NodeId, Origin, RangeSet, Summary};
use ferry_sync::auth::Logs;
use ferry_sync::{Store, StoreError};
use ferry_wal::Wal;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const MAGIC: &[u8] = b"ferry log trees\x01";
/// Events read from the WAL at a time while rebuilding a tree.
const REBUILD_CHUNK: usize = 512;

pub struct WalStore {
    wal: Arc<Wal>,
    logs: Option<Logs>,
}

impl WalStore {
    /// Without log authentication (tests of the transport alone).
    pub fn new(wal: Arc<Wal>) -> Self {
        WalStore { wal, logs: None }
    }

    /// With authenticated logs: every origin's tree rebuilt from the events
    /// held and the saved file at `saved` (absent on a first start). `own`:
    /// this node, whose logs it appends to and signs; `signs_any`: the
    /// fault `Bugs::sign_any_log` (a rogue node signs every log it holds).
    pub fn with_logs(wal: Arc<Wal>, mut logs: Logs, saved: &Path, own: NodeId, signs_any: bool) -> Self {
        let mut blobs = match read_saved(saved) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("{e:#}; rebuilding the log trees from the events alone (relayed ranges cannot be proved onward until their writers' next heads arrive)");
                BTreeMap::new()
            }
        };
        let mut dropped = 0;
        for (origin, have) in wal.summary().0 {
            let blob = blobs.remove(&origin);
            let own = origin.node == own || signs_any;
            let restored = Known::restore(origin, blob.as_deref(), logs.keys(), held(&wal, origin, &have), own)
                .or_else(|e| {
                    tracing::warn!(%origin, "the saved tree does not fit the events held ({e}); rebuilding it from the events alone");
                    Known::restore(origin, None, logs.keys(), held(&wal, origin, &have), own)
                });
            match restored {
                Ok((tree, d)) => {
                    dropped += d;
                    logs.put(tree);
                }
                Err(e) => {
                    tracing::warn!(%origin, "could not rebuild the log tree: {e}; its events are not sent to peers")
                }
            }
        }
        if dropped > 0 {
            tracing::warn!(dropped, "saved log heads no longer verify and were dropped");
        }
        WalStore { wal, logs: Some(logs) }
    }

    /// The trees' saved form, for `write_saved`; `None` without logs.
    pub fn saved_logs(&self) -> Option<Vec<u8>> {
        let logs = self.logs.as_ref()?;
        let mut out = MAGIC.to_vec();
        for (origin, blob) in logs.save(|o, seq| self.wal.holds(o, seq)) {
            out.extend_from_slice(&origin.node.0);
            out.extend_from_slice(&origin.epoch.to_be_bytes());
            out.extend_from_slice(&(blob.len() as u32).to_be_bytes());
            out.extend_from_slice(&blob);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        Some(out)
    }

    /// This node's own events, durable: their trees grow and are signed.
    pub fn wrote(&mut self, events: &[Event]) {
        if let Some(logs) = &mut self.logs {
            logs.wrote(events);
        }
    }
}

/// The events of `origin` held, ascending, read a chunk at a time.
fn held<'a>(wal: &'a Wal, origin: Origin, have: &RangeSet) -> impl Iterator<Item = Event> + 'a {
    let mut ranges: Vec<(u64, u64)> = have.ranges().to_vec();
    ranges.reverse();
    let mut chunk: std::vec::IntoIter<Event> = Vec::new().into_iter();
    std::iter::from_fn(move || loop {
        if let Some(e) = chunk.next() {
            return Some(e);
        }
        let (first, last) = ranges.pop()?;
        match wal.read_range(&origin, first, last, REBUILD_CHUNK) {
            Ok(events) => {
                if let Some(after) = events.last().map(|e| e.seq).filter(|&s| s < last) {
                    ranges.push((after + 1, last));
                }
                chunk = events.into_iter();
            }
            Err(e) => {
                tracing::warn!(%origin, first, last, "could not read events to rebuild the log tree: {e}");
                return None;
            }
        }
    })
}

fn read_saved(path: &Path) -> Result<BTreeMap<Origin, Vec<u8>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("could not read {}", path.display())),
    };
    let damaged = || format!("{} is damaged", path.display());
    let (body, crc) = bytes
        .split_at_checked(bytes.len().wrapping_sub(4))
        .with_context(damaged)?;
    if !body.starts_with(MAGIC) || crc32fast::hash(body).to_be_bytes() != crc {
        bail!(damaged());
    }
    let mut rest = &body[MAGIC.len()..];
    let mut out = BTreeMap::new();
    while !rest.is_empty() {
        let Some((head, tail)) = rest.split_at_checked(24) else {
            bail!(damaged())
        };
        // The split above makes these slices exactly 16, 4 and 4 bytes.
        let node = NodeId(head[..16].try_into().expect("16 bytes"));
        let epoch = u32::from_be_bytes(head[16..20].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(head[20..24].try_into().expect("4 bytes")) as usize;
        let Some((blob, tail)) = tail.split_at_checked(len) else {
            bail!(damaged())
        };
        out.insert(Origin { node, epoch }, blob.to_vec());
        rest = tail;
    }
    Ok(out)
}

/// Replaces the saved file with `bytes` (`WalStore::saved_logs`).
pub fn write_saved(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::datadir::atomic_write(path, bytes).context("could not save the log trees")
}

impl Store for WalStore {
    fn local_origin(&self) -> Origin {
        self.wal.local_origin()
    }

    fn set_local_origin(&mut self, origin: Origin) {
        self.wal.set_local_origin(origin);
    }

    fn have(&self, origin: &Origin) -> RangeSet {
        self.wal.have(origin)
    }

    fn holds(&self, origin: &Origin, seq: u64) -> bool {
        self.wal.holds(origin, seq)
    }

    fn summary(&self) -> Summary {
        self.wal.summary()
    }

    fn classes(&self) -> Classes {
        self.wal.classes()
    }

    fn read(
        &self,
        origin: &Origin,
        first: u64,
        last: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.wal
            .read_range_capped(origin, first, last, max_events, max_bytes)
            .map_err(|e| StoreError(e.to_string()))
    }

    fn logs(&self) -> Option<&Logs> {
        self.logs.as_ref()
    }

    fn logs_mut(&mut self) -> Option<&mut Logs> {
        self.logs.as_mut()
    }
}
