//! Reading a segment at open: verify every group, find the durable end.

use crate::record::{parse_record, Parse, Record, RecordMeta, SegmentHeader, HEADER_LEN, KIND_COMMIT, RECORD_PREFIX};
use crate::WalError;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

pub struct ScannedSegment {
    pub header: SegmentHeader,
    /// Event records of verified groups, with their file offsets.
    pub events: Vec<(RecordMeta, u64)>,
    /// End of the last verified group: what recovery keeps.
    pub durable_len: u64,
    /// Bytes after `durable_len`: an unacknowledged write cut short.
    pub torn: Option<TornTail>,
}

#[derive(Debug)]
pub struct TornTail {
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
}

/// Called with each key record of a verified group: the header, the record's
/// file offset and its bytes.
pub type OnKey<'a> = dyn FnMut(&SegmentHeader, u64, &[u8]) -> Result<(), WalError> + 'a;

/// `None` when the segment's header was never completely written (a crash
/// while creating it): the file holds nothing acknowledged.
pub fn scan_segment(path: &Path, on_key: &mut OnKey<'_>) -> Result<Option<ScannedSegment>, WalError> {
    let file = std::fs::File::open(path).map_err(|e| WalError::io("open segment", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| WalError::io("stat segment", path, e))?
        .len();
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let mut head = [0u8; HEADER_LEN as usize];
    if file_len < HEADER_LEN {
        return Ok(None);
    }
    r.read_exact(&mut head)
        .map_err(|e| WalError::io("read segment header", path, e))?;
    let header = SegmentHeader::decode(&head).map_err(|e| crate::header_error(path, e))?;

    let mut events = Vec::new();
    let mut pending = Vec::new();
    // Key records of the group being read: (offset, bytes). A group is at
    // most a few MiB, and keys are a few hundred bytes each.
    let mut pending_keys: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut group_crc = crc32fast::Hasher::new();
    let (mut off, mut durable) = (HEADER_LEN, HEADER_LEN);
    let mut rec = Vec::with_capacity(1024);
    let bad: Option<String> = loop {
        if off == file_len {
            break None;
        }
        rec.resize(RECORD_PREFIX, 0);
        if off + RECORD_PREFIX as u64 > file_len {
            break Some("record header cut short".into());
        }
        r.read_exact(&mut rec)
            .map_err(|e| WalError::io("read segment", path, e))?;
        let len = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]) as u64;
        if len > (crate::record::MAX_BODY_LEN + 1) as u64 {
            break Some(format!("record length {len} is out of bounds"));
        }
        if off + RECORD_PREFIX as u64 + len > file_len {
            break Some("record cut short".into());
        }
        rec.resize(RECORD_PREFIX + len as usize, 0);
        r.read_exact(&mut rec[RECORD_PREFIX..])
            .map_err(|e| WalError::io("read segment", path, e))?;
        match parse_record(&rec) {
            Ok(Record::Event(meta)) => {
                group_crc.update(&rec);
                pending.push((meta, off));
                off += meta.len;
            }
            Ok(Record::Commit {
                group_start,
                group_crc: want,
                len,
            }) => {
                let got = std::mem::take(&mut group_crc).finalize();
                if group_start != durable || got != want {
                    break Some("commit record does not match its group".into());
                }
                events.append(&mut pending);
                for (at, bytes) in pending_keys.drain(..) {
                    on_key(&header, at, &bytes)?;
                }
                off += len;
                durable = off;
            }
            Ok(Record::Key { len }) => {
                group_crc.update(&rec);
                pending_keys.push((off, rec.clone()));
                off += len;
            }
            Err(Parse::Incomplete) => break Some("record cut short".into()),
            Err(Parse::Bad(reason)) => break Some(reason),
        }
    };

    let torn = match bad {
        None if durable == file_len => None,
        None => Some(TornTail {
            offset: durable,
            bytes: file_len - durable,
            reason: "records without a commit".into(),
        }),
        Some(reason) => {
            // A verified commit after the damage means the damaged bytes were
            // acknowledged once: that is corruption, not a cut-short write.
            if let Some(at) = find_commit_after(path, off + 1, file_len)? {
                return Err(WalError::Corrupt {
                    path: path.to_path_buf(),
                    offset: off,
                    reason: format!("{reason}; a later group (commit at offset {at}) is intact, so this is damage to acknowledged data"),
                });
            }
            Some(TornTail {
                offset: durable,
                bytes: file_len - durable,
                reason: format!("{reason} at offset {off}"),
            })
        }
    };
    Ok(Some(ScannedSegment {
        header,
        events,
        durable_len: durable,
        torn,
    }))
}

/// Looks for any intact commit record starting at or after `from`.
fn find_commit_after(path: &Path, from: u64, file_len: u64) -> Result<Option<u64>, WalError> {
    if from >= file_len {
        return Ok(None);
    }
    let mut f = std::fs::File::open(path).map_err(|e| WalError::io("open segment", path, e))?;
    f.seek(SeekFrom::Start(from))
        .map_err(|e| WalError::io("seek segment", path, e))?;
    let mut rest = Vec::with_capacity((file_len - from) as usize);
    f.read_to_end(&mut rest)
        .map_err(|e| WalError::io("read segment", path, e))?;
    const COMMIT_TOTAL: usize = RECORD_PREFIX + 13;
    for p in 0..rest.len().saturating_sub(COMMIT_TOTAL - 1) {
        // Cheap filter first: a commit record's length field is exactly 13.
        if rest[p..p + 4] == [0, 0, 0, 13] && rest[p + RECORD_PREFIX] == KIND_COMMIT {
            if let Ok(Record::Commit { .. }) = parse_record(&rest[p..p + COMMIT_TOTAL]) {
                return Ok(Some(from + p as u64));
            }
        }
    }
    Ok(None)
}
