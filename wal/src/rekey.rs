//! Re-encrypting every segment under a new key.
//!
//! Each segment is rewritten to a temporary file, synced, and renamed over
//! the original (atomic on POSIX). Record sizes do not change, so offsets stay
//! valid. An interrupted rekey leaves every segment whole under either key;
//! opening with both keys reads it, and running rekey again finishes it.

use crate::record::{
    decode_key_record, decode_record, encode_commit, encode_key_record, encode_record, parse_record, Record,
    SegmentHeader, HEADER_LEN,
};
use crate::{header_error, key_for, list_segments, lock_dir, perms, sync_dir, Keyring, WalError, WalKey};
use std::io::Write;
use std::path::Path;

/// Rewrites every segment of the WAL in `dir` that is not yet under `new_key`.
/// `old` must hold the keys the segments are under. Returns the number of
/// segments rewritten.
pub fn rekey(dir: &Path, old: &Keyring, new_key: &WalKey) -> Result<usize, WalError> {
    let _lock = lock_dir(dir)?;
    let mut ring = old.clone();
    ring.previous.push(new_key.clone());
    let mut rewritten = 0;
    for (n, path) in list_segments(dir)? {
        let data = std::fs::read(&path).map_err(|e| WalError::io("read segment", &path, e))?;
        let header = SegmentHeader::decode(&data).map_err(|e| header_error(&path, e))?;
        if header.fingerprint == new_key.fingerprint() {
            continue;
        }
        let key = key_for(&ring, &path, &header)?;
        let mut out = Vec::with_capacity(data.len());
        // The version stays: it says which record kinds the segment holds.
        let new_header = SegmentHeader {
            version: header.version,
            ..SegmentHeader::for_key(n, Some(new_key))
        };
        out.extend_from_slice(&new_header.encode());
        let mut group_start = HEADER_LEN as usize;
        let mut pos = HEADER_LEN as usize;
        while pos < data.len() {
            let corrupt = |reason: String| WalError::Corrupt {
                path: path.clone(),
                offset: pos as u64,
                reason,
            };
            // Rekey runs on a WAL that opened cleanly, so its tail is whole.
            let rec = parse_record(&data[pos..])
                .map_err(|e| corrupt(format!("{e:?}; open the WAL once to recover it, then rekey")))?;
            match rec {
                Record::Event(meta) => {
                    let event = decode_record(&data[pos..], &meta, key).map_err(corrupt)?;
                    encode_record(&event, Some(new_key), &mut out);
                }
                Record::Key { len } => {
                    let entry = decode_key_record(&data[pos..], len, key).map_err(corrupt)?;
                    encode_key_record(&entry, Some(new_key), &mut out);
                }
                Record::Commit { .. } => {
                    let crc = crc32fast::hash(&out[group_start..]);
                    encode_commit(group_start as u64, crc, &mut out);
                    group_start = out.len();
                }
            }
            pos += rec.len() as usize;
        }
        let tmp = path.with_extension("seg.rekey");
        // A leftover from an interrupted rekey may have an older build's mode:
        // start afresh, so the file that replaces the segment is private.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(WalError::io("remove stale re-encrypted segment", &tmp, e))
            }
            _ => {}
        }
        perms::private_file()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&out)?;
                f.sync_all()
            })
            .map_err(|e| WalError::io("write re-encrypted segment", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| WalError::io("replace segment", &path, e))?;
        sync_dir(dir)?;
        rewritten += 1;
    }
    Ok(rewritten)
}
