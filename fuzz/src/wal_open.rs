//! WAL recovery on arbitrary segment files: opening must give a WAL or an
//! error, never panic or hang; a WAL that opens must read, take appends, and
//! open again with them.
//!
//! Input: a flags byte, then the segment bytes.
//! - bit 0: headers name the fuzzing key (cipher 1) and the WAL is opened
//!   with it; otherwise plaintext.
//! - bits 1-2: 0, the bytes are the whole file; 1, a valid header and then
//!   the bytes; 2 or 3, a valid header and then the bytes read as ops that
//!   frame records with correct lengths and CRCs, so mutations reach past
//!   the checksums (see `frame_ops`).
//! - bit 3: two segments; the next two bytes say where to split.
//! - bit 4: headers say format version 1 instead of 2.
//!
//! Included by `wal/tests/fuzz_regressions.rs` as well (by path), so this
//! file uses only ferry-wal's public API, tempfile and crc32fast.

use ferry_proto::{NodeId, Origin, Priority, Summary};
use ferry_wal::{Keyring, NewEvent, Wal, WalKey, WalOptions};
use std::path::Path;
use std::sync::Arc;

pub const KEY: [u8; 32] = [0x5a; 32];
pub const NOW_MS: u64 = 1_700_000_000_000;

pub fn local_origin() -> Origin {
    Origin {
        node: NodeId([1; 16]),
        epoch: 1,
    }
}

pub fn options(dir: &Path, encrypted: bool, read_only: bool) -> WalOptions {
    let keys = if encrypted {
        Keyring::single(WalKey::from_bytes(KEY))
    } else {
        Keyring::plaintext()
    };
    let mut o = WalOptions::new(dir, keys, local_origin());
    o.read_only = read_only;
    o.clock = Arc::new(|| NOW_MS);
    o
}

/// A valid 32-byte segment header.
pub fn header(number: u32, encrypted: bool, version: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(32);
    h.extend_from_slice(b"FERRYWAL");
    h.extend_from_slice(&version.to_be_bytes());
    h.push(encrypted as u8);
    h.push(0);
    h.extend_from_slice(&number.to_be_bytes());
    if encrypted {
        h.extend_from_slice(&WalKey::from_bytes(KEY).fingerprint());
    } else {
        h.extend_from_slice(&[0; 16]);
    }
    h
}

/// Appends `u32 len | u32 crc | content`: a record the CRC check accepts.
pub fn framed(content: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(content.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(content).to_be_bytes());
    out.extend_from_slice(content);
}

pub const OP_RECORD: u8 = 0x00;
pub const OP_COMMIT: u8 = 0x80;
pub const OP_BAD_COMMIT: u8 = 0xC0;
pub const OP_RAW: u8 = 0xE0;

/// Turns ops into segment bytes after a header of `header_len` bytes:
/// - `0x00..=0x7F`, u16 n, n bytes: a record with that content (kind and
///   body), framed;
/// - `0x80..=0xBF`: the commit record the group since the last one needs;
/// - `0xC0..=0xDF`, 12 bytes: a commit record with that body, framed;
/// - `0xE0..=0xFF`, u8 n, n bytes: raw bytes, unframed.
pub fn frame_ops(mut ops: &[u8], header_len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut group_start = 0usize;
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        match op {
            0x00..=0x7F => {
                let [a, b, rest @ ..] = ops else { break };
                let n = (u16::from_be_bytes([*a, *b]) as usize).min(rest.len());
                framed(&rest[..n], &mut out);
                ops = &rest[n..];
            }
            0x80..=0xBF => {
                let mut c = vec![2u8];
                c.extend_from_slice(&(header_len + group_start as u64).to_be_bytes());
                c.extend_from_slice(&crc32fast::hash(&out[group_start..]).to_be_bytes());
                framed(&c, &mut out);
                group_start = out.len();
            }
            0xC0..=0xDF => {
                let n = ops.len().min(12);
                let mut c = vec![2u8];
                c.extend_from_slice(&ops[..n]);
                framed(&c, &mut out);
                ops = &ops[n..];
            }
            0xE0..=0xFF => {
                let Some((&n, rest)) = ops.split_first() else { break };
                let n = (n as usize).min(rest.len());
                out.extend_from_slice(&rest[..n]);
                ops = &rest[n..];
            }
        }
    }
    out
}

/// A real segment as fuzz inputs: the whole file (layout 0) and framing ops
/// (layout 2), from which `segments` makes the same bytes again.
pub fn inputs_for(segment: &[u8], encrypted: bool) -> [Vec<u8>; 2] {
    let raw = [vec![encrypted as u8], segment.to_vec()].concat();
    let mut ops = vec![encrypted as u8 | 4];
    let mut pos = 32;
    while let Some(prefix) = segment.get(pos..pos + 8) {
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let content = &segment[pos + 8..pos + 8 + len];
        if content[0] == 2 {
            ops.push(OP_COMMIT);
        } else {
            ops.push(OP_RECORD);
            ops.extend_from_slice(&(len as u16).to_be_bytes());
            ops.extend_from_slice(content);
        }
        pos += 8 + len;
    }
    [raw, ops]
}

/// The segment files an input describes, and whether they are encrypted.
pub fn segments(data: &[u8]) -> Option<(Vec<Vec<u8>>, bool)> {
    let (&flags, mut rest) = data.split_first()?;
    let encrypted = flags & 1 != 0;
    let layout = (flags >> 1) & 3;
    let version = if flags & 16 != 0 { 1 } else { 2 };
    let parts: Vec<&[u8]> = if flags & 8 != 0 {
        let [a, b, tail @ ..] = rest else { return None };
        rest = tail;
        let at = u16::from_be_bytes([*a, *b]) as usize % (rest.len() + 1);
        vec![&rest[..at], &rest[at..]]
    } else {
        vec![rest]
    };
    let files = parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let number = i as u32 + 1;
            match layout {
                0 => part.to_vec(),
                1 => [header(number, encrypted, version), part.to_vec()].concat(),
                _ => [header(number, encrypted, version), frame_ops(part, 32)].concat(),
            }
        })
        .collect();
    Some((files, encrypted))
}

/// Reads everything a WAL says it holds; errors are fine (a record can pass
/// its CRC and still not decrypt), panics are not.
fn read_all(wal: &Wal) {
    for (origin, have) in wal.summary().0 {
        for &(a, b) in have.ranges() {
            let _ = wal.read_range(&origin, a, b, 1000);
            let _ = wal.read_range_capped(&origin, a, b, 1000, 300);
        }
    }
    let _ = wal.classes();
    let _ = wal.stats();
}

fn new_event(payload: &[u8]) -> NewEvent {
    NewEvent {
        topic: "fuzz".into(),
        priority: Priority::Normal,
        payload: payload.to_vec(),
    }
}

/// The whole check for one input.
pub fn run(data: &[u8]) {
    let Some((files, encrypted)) = segments(data) else {
        return;
    };
    // tmpfs when there is one: the fsyncs cost nothing there.
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory for the fuzzed WAL");
    let dir = tmp.path().join("wal");
    std::fs::create_dir(&dir).expect("create the WAL directory");
    for (i, bytes) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("{:08}.seg", i + 1)), bytes).expect("write a fuzzed segment");
    }

    let read_only: Option<Summary> = Wal::open(options(&dir, encrypted, true)).ok().map(|wal| {
        read_all(&wal);
        wal.summary()
    });
    let Ok(wal) = Wal::open(options(&dir, encrypted, false)) else {
        return;
    };
    read_all(&wal);
    let held = wal.summary();
    if let Some(ro) = read_only {
        assert_eq!(ro, held, "a reader and the writer recover different events");
    }
    let events = wal.stats().events;
    let appended = wal.append_local_blocking(vec![new_event(b"after recovery")]);
    let keyed = wal.append_local_once_blocking("fuzz-key", vec![new_event(b"keyed")]);
    drop(wal);
    if appended.is_err() {
        return;
    }
    let wal = Wal::open(options(&dir, encrypted, false)).expect("a recovered WAL that took an append must open again");
    let mut more = 1;
    if let Ok(k) = keyed {
        let again = wal
            .append_local_once_blocking("fuzz-key", vec![new_event(b"keyed")])
            .expect("a key the WAL answered for is answered again");
        assert!(
            again.replayed && again.events == k.events,
            "the key was not kept: {k:?} then {again:?}"
        );
        more += !k.replayed as u64;
    }
    assert_eq!(
        wal.stats().events,
        events + more,
        "events lost or gained across a reopen"
    );
    read_all(&wal);
}
