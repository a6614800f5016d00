//! Opening a WAL: check every segment, recover the torn tail, rebuild the
//! index and the idempotency keys, start the writer.

use crate::index::Index;
use crate::record::{decode_key_record, SegmentHeader};
use crate::{
    idem, key_for, list_segments, lock_dir, perms, scan, writer, SegmentFile, Shared, Wal, WalError, WalOptions,
};
use ferry_proto::Hlc;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

impl Wal {
    pub fn open(opts: WalOptions) -> Result<Wal, WalError> {
        if !opts.read_only {
            perms::create_dir(&opts.dir)?;
        }
        let lock = if opts.read_only {
            None
        } else {
            Some(lock_dir(&opts.dir)?)
        };
        let listed = list_segments(&opts.dir)?;
        if !opts.read_only {
            perms::tighten(&opts.dir, perms::DIR_MODE);
            perms::tighten(&opts.dir.join("LOCK"), perms::FILE_MODE);
            for (_, path) in &listed {
                perms::tighten(path, perms::FILE_MODE);
            }
        }

        // Keys still within their window, in log order; a read-only WAL
        // never answers an append, so it skips them.
        let now = (opts.clock)();
        let mut keys = idem::KeyTable::new(opts.idempotency_window.as_millis().try_into().unwrap_or(u64::MAX));
        let mut on_key = |h: &SegmentHeader, path: &Path, offset: u64, rec: &[u8]| -> Result<(), WalError> {
            if opts.read_only {
                return Ok(());
            }
            let k = key_for(&opts.keys, path, h)?;
            let entry = decode_key_record(rec, rec.len() as u64, k).map_err(|reason| WalError::Corrupt {
                path: path.to_path_buf(),
                offset,
                reason,
            })?;
            keys.insert(entry, now);
            Ok(())
        };

        // Check every header against the keys before touching anything.
        let mut scanned = Vec::new();
        for (i, (n, path)) in listed.iter().enumerate() {
            let is_last = i + 1 == listed.len();
            match scan::scan_segment(path, &mut |h, offset, rec| on_key(h, path, offset, rec))? {
                Some(seg) => {
                    key_for(&opts.keys, path, &seg.header)?;
                    if seg.header.number != *n {
                        return Err(WalError::Corrupt {
                            path: path.clone(),
                            offset: 12,
                            reason: format!("header says segment {} but the file name says {n}", seg.header.number),
                        });
                    }
                    if let Some(t) = &seg.torn {
                        if !is_last {
                            return Err(WalError::Corrupt {
                                path: path.clone(),
                                offset: t.offset,
                                reason: format!("{} in a segment that is not the last", t.reason),
                            });
                        }
                    }
                    scanned.push((path.clone(), seg));
                }
                None if is_last => {
                    tracing::warn!(path = %path.display(), "removing a segment whose creation was cut short (it held no data)");
                    if !opts.read_only {
                        std::fs::remove_file(path).map_err(|e| WalError::io("remove empty segment", path, e))?;
                    }
                }
                None => {
                    return Err(WalError::Corrupt {
                        path: path.clone(),
                        offset: 0,
                        reason: "segment header cut short".into(),
                    })
                }
            }
        }

        let mut index = Index::default();
        let mut segments = BTreeMap::new();
        let mut bytes = 0;
        for (path, seg) in &scanned {
            if let Some(t) = &seg.torn {
                tracing::warn!(path = %path.display(), offset = t.offset, bytes = t.bytes, reason = %t.reason,
                    "dropping the unacknowledged end of the WAL (a write cut short by a crash or power cut)");
                if !opts.read_only {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(|e| WalError::io("open segment", path, e))?;
                    f.set_len(seg.durable_len)
                        .map_err(|e| WalError::io("truncate torn tail", path, e))?;
                    f.sync_all().map_err(|e| WalError::io("sync segment", path, e))?;
                }
            }
            let n = seg.header.number;
            for (meta, off) in &seg.events {
                if index.contains(&meta.origin, meta.seq) {
                    return Err(WalError::Corrupt {
                        path: path.clone(),
                        offset: *off,
                        reason: format!("event {}:{} is stored twice", meta.origin, meta.seq),
                    });
                }
                index.add(meta.origin, meta.seq, meta.priority, n, *off, off + meta.len);
            }
            bytes += seg.durable_len;
            let file = File::open(path).map_err(|e| WalError::io("open segment", path, e))?;
            let key = key_for(&opts.keys, path, &seg.header)?.cloned();
            segments.insert(
                n,
                SegmentFile {
                    path: path.clone(),
                    version: seg.header.version,
                    file: Arc::new(file),
                    key,
                },
            );
        }
        // The seal says how the WAL was closed; it goes now, before anything
        // is written, so it never outlives the state it describes.
        let closed_cleanly = if opts.read_only {
            true
        } else {
            match crate::seal::take(&opts.dir)? {
                Some(seal) => {
                    let last = index.origins.get(&seal.origin).and_then(|o| o.have.last()).unwrap_or(0);
                    last == seal.last && bytes == seal.bytes
                }
                None => false,
            }
        };
        let events = index.events;
        let shared = Arc::new(Shared {
            dir: opts.dir.clone(),
            index: RwLock::new(index),
            segments: RwLock::new(segments),
            bytes: AtomicU64::new(bytes),
            commits: AtomicU64::new(0),
            fsync: Default::default(),
            appended: tokio::sync::watch::channel(events).0,
        });
        let local_origin = Arc::new(RwLock::new(crate::OwnLog {
            current: opts.local_origin,
            next: None,
        }));
        let mut wal = Wal {
            shared,
            local_origin,
            closed_cleanly,
            tx: None,
            writer: None,
            _lock: lock,
        };
        if !opts.read_only {
            let last_hlc = wal.last_hlc()?;
            let (tx, handle) = writer::start(
                wal.shared.clone(),
                wal.local_origin.clone(),
                opts.keys.current.clone(),
                opts.segment_bytes,
                last_hlc,
                opts.clock.clone(),
                keys,
            )?;
            wal.tx = Some(tx);
            wal.writer = Some(handle);
        }
        Ok(wal)
    }

    /// The latest timestamp this node issued or merged before: its own last
    /// event and the last record in the log.
    fn last_hlc(&self) -> Result<Hlc, WalError> {
        let local = self.local_origin();
        let mut hlc = Hlc::default();
        let last_local = self.summary().get(&local).and_then(|r| r.last());
        if let Some(seq) = last_local {
            for e in self.read_range(&local, seq, seq, 1)? {
                hlc = hlc.max(e.hlc);
            }
        }
        let last_record = {
            let index = self.index();
            index
                .origins
                .iter()
                .flat_map(|(o, oi)| {
                    oi.chunks
                        .iter()
                        .map(move |(s, c)| (c.segment, c.end, *o, *s + (c.count as u64 - 1)))
                })
                .max()
        };
        if let Some((_, _, origin, seq)) = last_record {
            for e in self.read_range(&origin, seq, seq, 1)? {
                hlc = hlc.max(e.hlc);
            }
        }
        Ok(hlc)
    }
}
