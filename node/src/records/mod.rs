//! Keyed records on the log (`ferry-records` holds the model): the node's
//! index of them, kept up to date with the WAL, and the write path with its
//! optimistic-concurrency check. The HTTP side is `api/records.rs`; the
//! design is in docs/records.md.

pub mod cli;
mod index;

pub use index::RecordId;

use crate::ctx::NodeCtx;
use anyhow::{Context as _, Result};
use ferry_proto::{Event, Priority, Summary};
use ferry_records::{check_collection, check_key, topic, Record, VersionId, Write};
use ferry_wal::{NewEvent, Wal, WalError};
use index::Index;
use std::sync::{Arc, Mutex};

/// The index file in the data directory.
pub const INDEX_FILE: &str = "records.redb";
/// Events read from the WAL per indexing transaction, and their byte cap:
/// with the cache, this is what indexing holds in memory at once.
const PAGE_EVENTS: usize = 512;
const PAGE_BYTES: usize = 4 << 20;

pub struct Records {
    index: Index,
    wal: Arc<Wal>,
    /// One catch-up at a time: each reads the covered position, extends it
    /// and writes it back.
    catching_up: Mutex<()>,
    /// Local record writes one at a time, so that no other local write
    /// slips between an `If-Match` check and the write it guards.
    writing: tokio::sync::Mutex<()>,
}

/// What a conditional write expects the current version to be.
#[derive(Clone, Debug)]
pub enum IfMatch {
    /// `*`: any current, not deleted, version.
    Any,
    /// One of these versions is the current one.
    Versions(Vec<VersionId>),
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the record changed since the version given in If-Match; it is now at {}", current.map_or("nothing (no such record)".to_string(), |v| v.to_string()))]
    Stale { current: Option<VersionId> },
    #[error("there is no record {0}/{1}")]
    NotFound(String, String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("{0:#}")]
    Index(anyhow::Error),
}

impl Records {
    /// Opens (or rebuilds) the index and keeps it following the WAL until
    /// the node stops.
    pub fn start(ctx: &Arc<NodeCtx>) -> Result<Arc<Records>> {
        let (path, secret) = match &ctx.data_dir {
            Some(dir) => {
                let cfg = dir.config()?;
                let secret = if cfg.encrypt_wal {
                    let key_path = dir.wal_key_path(&cfg);
                    let key = std::fs::read(&key_path)
                        .with_context(|| format!("reading the WAL key {} for the record index", key_path.display()))?;
                    derive_secret(&key)
                } else {
                    derive_secret(b"plaintext WAL")
                };
                (Some(dir.path(INDEX_FILE)), secret)
            }
            None => (None, derive_secret(b"no data directory")),
        };
        let index = Index::open(path.as_deref(), secret)?;
        let records = Arc::new(Records {
            index,
            wal: ctx.wal.clone(),
            catching_up: Mutex::new(()),
            writing: tokio::sync::Mutex::new(()),
        });
        let follower = records.clone();
        let stopping = ctx.stopping.clone();
        ctx.tasks.spawn(async move {
            let mut changes = follower.wal.subscribe();
            loop {
                let r = follower.clone();
                match tokio::task::spawn_blocking(move || r.catch_up()).await {
                    Ok(Ok(n)) if n > 0 => tracing::debug!(events = n, "record index caught up"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("record index could not follow the log: {e:#}"),
                    Err(e) => tracing::warn!("record index task failed: {e}"),
                }
                tokio::select! {
                    _ = stopping.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(records)
    }

    /// Indexes every event the WAL holds that the index does not cover yet,
    /// a page at a time. Returns the number of events read.
    pub fn catch_up(&self) -> Result<usize> {
        let _one = self.catching_up.lock().unwrap_or_else(|p| p.into_inner());
        let have = self.wal.summary();
        let mut covered = self.index.covered()?;
        // The index says it holds events the log no longer has: the data
        // directory was restored from an older backup. Start over.
        let stale = covered
            .0
            .iter()
            .any(|(o, r)| !r.difference(have.get(o).unwrap_or(&Default::default())).is_empty());
        if stale {
            tracing::warn!("the record index covers events the log does not hold; rebuilding it from the log");
            self.index.clear()?;
            covered = Summary::default();
        }
        let mut read = 0;
        for (origin, held) in &have.0 {
            let todo = held.difference(covered.get(origin).unwrap_or(&Default::default()));
            for &(first, last) in todo.ranges() {
                let mut from = first;
                while from <= last {
                    let page = self
                        .wal
                        .read_range_capped(origin, from, last, PAGE_EVENTS, PAGE_BYTES)?;
                    let Some(end) = page.last().map(|e| e.seq) else { break };
                    covered.0.entry(*origin).or_default().insert_range(from, end);
                    self.index.apply(&page, &covered)?;
                    read += page.len();
                    from = end + 1;
                }
            }
        }
        Ok(read)
    }

    async fn catch_up_now(self: &Arc<Self>) -> Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.catch_up())
            .await
            .context("record index task failed")?
            .map(|_| ())
    }

    pub fn record(&self, collection: &str, key: &str) -> Result<Option<Record>> {
        self.index.record(&self.index.record_id(collection, key))
    }

    /// The event that wrote a version, and what it wrote.
    pub fn load(&self, v: &VersionId) -> Result<Option<(Event, Write)>> {
        let Some(e) = self.wal.read_range(&v.origin, v.seq, v.seq, 1)?.into_iter().next() else {
            return Ok(None);
        };
        let w = Write::decode(&e.topic, &e.payload).with_context(|| format!("event {v} in the log"))?;
        Ok(Some((e, w)))
    }

    /// A page of a collection's records; the cursor is the last record's
    /// `RecordId` key half, hex.
    pub fn page(&self, collection: &str, after: Option<[u8; 16]>, limit: usize) -> Result<Vec<(RecordId, Record)>> {
        self.index.page(collection, after, limit)
    }

    pub fn conflicts(&self, limit: usize) -> Result<Vec<(RecordId, Record)>> {
        self.index.conflicts(limit)
    }

    pub fn conflict_count(&self) -> Result<u64> {
        self.index.conflict_count()
    }

    /// Writes a new version (`None`: a tombstone) superseding every version
    /// of the record this node holds. With `if_match`, only if the current
    /// version is the one expected; nothing is written otherwise.
    pub async fn write(
        self: &Arc<Self>,
        collection: &str,
        key: &str,
        value: Option<Vec<u8>>,
        if_match: Option<IfMatch>,
    ) -> Result<(VersionId, Vec<VersionId>), WriteError> {
        check_collection(collection).map_err(WriteError::Invalid)?;
        check_key(key).map_err(WriteError::Invalid)?;
        let _one = self.writing.lock().await;
        self.catch_up_now().await.map_err(WriteError::Index)?;
        let rec = self
            .record(collection, key)
            .map_err(WriteError::Index)?
            .unwrap_or_default();
        let winner = rec.winner().cloned();
        let current = winner.as_ref().filter(|w| !w.deleted).map(|w| w.id);
        let ok = match &if_match {
            None => true,
            Some(IfMatch::Any) => current.is_some(),
            Some(IfMatch::Versions(vs)) => winner.as_ref().is_some_and(|w| vs.contains(&w.id)),
        };
        if !ok {
            return Err(WriteError::Stale {
                current: winner.map(|w| w.id),
            });
        }
        if value.is_none() && current.is_none() && rec.live().iter().all(|v| v.deleted) {
            return Err(WriteError::NotFound(collection.into(), key.into()));
        }
        let superseded: Vec<VersionId> = rec.live().iter().map(|v| v.id).collect();
        let write = Write {
            collection: collection.into(),
            key: key.into(),
            value,
            context: rec.context(),
        };
        let events = self
            .wal
            .append_local(vec![NewEvent {
                topic: topic(collection),
                priority: Priority::Normal,
                payload: write.encode(),
            }])
            .await?;
        let e = events
            .first()
            .ok_or_else(|| WriteError::Index(anyhow::anyhow!("the WAL stored no event for the record write")))?;
        // Indexed before the lock is let go, so the next write sees it.
        self.catch_up_now().await.map_err(WriteError::Index)?;
        Ok((
            VersionId {
                origin: e.origin,
                seq: e.seq,
            },
            superseded,
        ))
    }
}

/// The index's name-hashing secret, derived from the WAL key so that the
/// index reveals no more than the encrypted log does.
fn derive_secret(material: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, material);
    let tag = ring::hmac::sign(&key, b"ferry record index names v1");
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}
