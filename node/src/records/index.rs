//! The record index: for every record, the metadata of its versions (ids,
//! clocks, contexts, tombstone flags; never values), kept on disk in a redb
//! file beside the WAL together with the part of the log it covers.
//!
//! Memory: redb's page cache (`CACHE_BYTES`) plus the one record being
//! changed or read; values stay in the encrypted WAL and are read from there
//! when shown. Names: collection and key are stored only as keyed hashes
//! (HMAC-SHA-256 under a secret derived from the WAL key), so the index, an
//! unencrypted file, does not reveal patient ids; the names are read back
//! from the events themselves.

use anyhow::{Context as _, Result};
use ferry_proto::{Event, Summary};
use ferry_records::{Applied, Record};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;

/// redb's cache; the index's resident memory stays near this whatever the
/// number of records.
pub const CACHE_BYTES: usize = 8 << 20;
/// Bump when what the index stores changes: an old file is rebuilt.
const FORMAT: u64 = 1;

/// `meta`: format, secret fingerprint, covered summary.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// `records`: HASH(collection) ‖ HASH(collection, key), 32 bytes, to the
/// record's versions (CBOR). Sharing the first half keeps a collection's
/// records together for paging.
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// `conflicts`: since-HLC (8 bytes, big-endian) ‖ record id, so iteration is
/// oldest conflict first.
const CONFLICTS: TableDefinition<&[u8], ()> = TableDefinition::new("conflicts");

/// A record's place in the index.
pub type RecordId = [u8; 32];

pub struct Index {
    db: Database,
    secret: ring::hmac::Key,
}

/// A record whose versions changed in a batch.
pub struct Changed {
    pub id: RecordId,
    pub record: Record,
}

impl Index {
    /// Opens the index at `path` (in memory when `None`). A file that cannot
    /// be read, was written by another format, or under another WAL key is
    /// removed and the index starts empty: it is rebuilt from the log.
    pub fn open(path: Option<&Path>, secret: [u8; 32]) -> Result<Index> {
        let fingerprint = ring::digest::digest(&ring::digest::SHA256, &secret);
        let db = match path {
            None => redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create_with_backend(redb::backends::InMemoryBackend::new())?,
            Some(p) => match redb::Builder::new().set_cache_size(CACHE_BYTES).create(p) {
                Ok(db) => db,
                Err(e) => {
                    // It heals itself, so no warning: an operator has nothing to do.
                    tracing::info!(path = %p.display(), "record index unreadable ({e}); rebuilding it from the log");
                    std::fs::remove_file(p)
                        .with_context(|| format!("could not remove the damaged record index {}", p.display()))?;
                    redb::Builder::new()
                        .set_cache_size(CACHE_BYTES)
                        .create(p)
                        .with_context(|| format!("could not create the record index {}", p.display()))?
                }
            },
        };
        let index = Index {
            db,
            secret: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
        };
        let tx = index.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let format = meta.get("format")?.map(|v| v.value().to_vec());
            let fp = meta.get("secret")?.map(|v| v.value().to_vec());
            let fresh = format.is_none();
            let same =
                format.as_deref() == Some(&FORMAT.to_be_bytes()[..]) && fp.as_deref() == Some(fingerprint.as_ref());
            if !fresh && !same {
                tracing::info!("record index from another format or WAL key; rebuilding it from the log");
            }
            if !same {
                meta.insert("format", &FORMAT.to_be_bytes()[..])?;
                meta.insert("secret", fingerprint.as_ref())?;
                meta.remove("covered")?;
            }
            drop(meta);
            if !same {
                tx.delete_table(RECORDS)?;
                tx.delete_table(CONFLICTS)?;
            }
            tx.open_table(RECORDS)?;
            tx.open_table(CONFLICTS)?;
        }
        tx.commit()?;
        Ok(index)
    }

    fn hash(&self, parts: &[&str]) -> [u8; 16] {
        let mut ctx = ring::hmac::Context::with_key(&self.secret);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p.as_bytes());
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&ctx.sign().as_ref()[..16]);
        out
    }

    pub fn collection_id(&self, collection: &str) -> [u8; 16] {
        self.hash(&["collection", collection])
    }

    pub fn record_id(&self, collection: &str, key: &str) -> RecordId {
        let mut id = [0u8; 32];
        id[..16].copy_from_slice(&self.collection_id(collection));
        id[16..].copy_from_slice(&self.hash(&["key", collection, key]));
        id
    }

    /// The part of the log the index reflects.
    pub fn covered(&self) -> Result<Summary> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let Some(bytes) = meta.get("covered")? else {
            return Ok(Summary::default());
        };
        match ciborium::from_reader(bytes.value()) {
            Ok(s) => Ok(s),
            Err(e) => {
                tracing::warn!("record index position unreadable ({e}); rebuilding from the log");
                Ok(Summary::default())
            }
        }
    }

    /// Starts over: nothing indexed, nothing covered.
    pub fn clear(&self) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            tx.open_table(META)?.remove("covered")?;
            tx.delete_table(RECORDS)?;
            tx.delete_table(CONFLICTS)?;
            tx.open_table(RECORDS)?;
            tx.open_table(CONFLICTS)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Adds a batch of events and the new covered position in one
    /// transaction: a crash leaves either both or neither.
    pub fn apply(&self, events: &[Event], covered: &Summary) -> Result<Vec<Changed>> {
        let tx = self.db.begin_write()?;
        let mut changed: Vec<Changed> = Vec::new();
        {
            let mut records = tx.open_table(RECORDS)?;
            let mut conflicts = tx.open_table(CONFLICTS)?;
            for e in events {
                let (w, v) = match Applied::decode(e) {
                    Ok(Some(wv)) => wv,
                    Ok(None) => continue,
                    Err(err) => {
                        tracing::warn!(origin = %e.origin, seq = e.seq, "record event ignored: {err}");
                        continue;
                    }
                };
                let id = self.record_id(&w.collection, &w.key);
                let mut rec = match changed.iter().position(|c| c.id == id) {
                    Some(i) => changed.swap_remove(i).record,
                    None => match records.get(&id[..])? {
                        Some(bytes) => decode_record(bytes.value())?,
                        None => Record::default(),
                    },
                };
                let before = rec.conflict_since();
                rec.apply(v);
                let after = rec.conflict_since();
                if before != after {
                    if let Some(since) = before {
                        conflicts.remove(&conflict_key(since.0, &id)[..])?;
                    }
                    if let Some(since) = after {
                        conflicts.insert(&conflict_key(since.0, &id)[..], ())?;
                    }
                }
                changed.push(Changed { id, record: rec });
            }
            for c in &changed {
                let mut bytes = Vec::new();
                ciborium::into_writer(&c.record, &mut bytes).context("encoding a record for the index")?;
                records.insert(&c.id[..], &bytes[..])?;
            }
            let mut pos = Vec::new();
            ciborium::into_writer(covered, &mut pos).context("encoding the index position")?;
            tx.open_table(META)?.insert("covered", &pos[..])?;
        }
        tx.commit()?;
        Ok(changed)
    }

    pub fn record(&self, id: &RecordId) -> Result<Option<Record>> {
        let tx = self.db.begin_read()?;
        let records = tx.open_table(RECORDS)?;
        records.get(&id[..])?.map(|b| decode_record(b.value())).transpose()
    }

    /// Up to `limit` records of a collection after the cursor (the record
    /// id's key half), in index order.
    pub fn page(&self, collection: &str, after: Option<[u8; 16]>, limit: usize) -> Result<Vec<(RecordId, Record)>> {
        let cid = self.collection_id(collection);
        let mut start = [0u8; 32];
        start[..16].copy_from_slice(&cid);
        let tx = self.db.begin_read()?;
        let records = tx.open_table(RECORDS)?;
        let mut out = Vec::new();
        for item in records.range(&start[..]..)? {
            let (k, v) = item?;
            let k = k.value();
            if k.len() != 32 || k[..16] != cid {
                break;
            }
            if after.is_some_and(|a| k[16..] <= a[..]) {
                continue;
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(k);
            out.push((id, decode_record(v.value())?));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Records with concurrent versions, oldest conflict first.
    pub fn conflicts(&self, limit: usize) -> Result<Vec<(RecordId, Record)>> {
        let tx = self.db.begin_read()?;
        let conflicts = tx.open_table(CONFLICTS)?;
        let records = tx.open_table(RECORDS)?;
        let mut out = Vec::new();
        for item in conflicts.iter()?.take(limit) {
            let (k, _) = item?;
            let k = k.value();
            let Some(idb) = k.get(8..40).filter(|_| k.len() == 40) else {
                continue;
            };
            let mut id = [0u8; 32];
            id.copy_from_slice(idb);
            if let Some(r) = records.get(&id[..])? {
                out.push((id, decode_record(r.value())?));
            }
        }
        Ok(out)
    }

    pub fn conflict_count(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(CONFLICTS)?.len()?)
    }
}

fn conflict_key(since: u64, id: &RecordId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&since.to_be_bytes());
    k[8..].copy_from_slice(id);
    k
}

fn decode_record(bytes: &[u8]) -> Result<Record> {
    ciborium::from_reader(bytes)
        .context("a record in the index is unreadable; remove records.redb and it is rebuilt from the log")
}
