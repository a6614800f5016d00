//! Segment and record layout.
//!
//! Segment header (32 bytes): magic `FERRYWAL`, u16 version, u8 cipher
//! (0 plaintext, 1 ChaCha20-Poly1305), u8 reserved, u32 segment number,
//! 16-byte key fingerprint.
//!
//! Record: `u32 length | u32 CRC32 | u8 kind | body`, where length and CRC
//! cover kind and body. Kind 1, an event: `origin (20) | u64 seq | nonce (12) |
//! sealed CBOR (hlc, topic, priority, payload)`; origin and seq are in clear
//! (authenticated as associated data) so the index is rebuilt at open without
//! decrypting every record. Kind 2, a commit: `u64 group start | u32 CRC32 of
//! the group's bytes`, written after every group of records before its fsync.
//! Recovery keeps exactly the groups whose commit verifies.

use crate::key::{random_nonce, WalKey, NONCE_LEN, TAG_LEN};
use ferry_proto::{Event, Hlc, Origin, Priority};
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"FERRYWAL";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: u64 = 32;
pub const CIPHER_NONE: u8 = 0;
pub const CIPHER_CHACHA: u8 = 1;
pub const RECORD_PREFIX: usize = 8;
/// origin, seq, priority, nonce: the clear part of an event record.
const CLEAR_LEN: usize = 20 + 8 + 1;
pub const BODY_FIXED: usize = CLEAR_LEN + NONCE_LEN;
/// Generous bound: the largest event plus topic and CBOR overhead.
pub const MAX_BODY_LEN: usize = BODY_FIXED + TAG_LEN + ferry_proto::event::MAX_PAYLOAD_LEN + 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub number: u32,
    pub cipher: u8,
    pub fingerprint: [u8; 16],
}

impl SegmentHeader {
    pub fn for_key(number: u32, key: Option<&WalKey>) -> Self {
        match key {
            Some(k) => SegmentHeader {
                number,
                cipher: CIPHER_CHACHA,
                fingerprint: k.fingerprint(),
            },
            None => SegmentHeader {
                number,
                cipher: CIPHER_NONE,
                fingerprint: [0; 16],
            },
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_be_bytes());
        h[10] = self.cipher;
        h[12..16].copy_from_slice(&self.number.to_be_bytes());
        h[16..32].copy_from_slice(&self.fingerprint);
        h
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < HEADER_LEN as usize {
            return Err("segment header is incomplete".into());
        }
        if &b[..8] != MAGIC {
            return Err("not a ferry WAL segment (bad magic)".into());
        }
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != VERSION {
            return Err(format!(
                "segment format version {version} is not supported (this build reads {VERSION})"
            ));
        }
        let cipher = b[10];
        if cipher != CIPHER_NONE && cipher != CIPHER_CHACHA {
            return Err(format!("unknown cipher {cipher}"));
        }
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&b[16..32]);
        Ok(SegmentHeader {
            number: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            cipher,
            fingerprint,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Sealed(Hlc, String, #[serde(with = "serde_bytes")] Vec<u8>);

fn aad(origin: &Origin, seq: u64, priority: Priority) -> [u8; CLEAR_LEN] {
    let mut a = [0u8; CLEAR_LEN];
    a[28] = priority as u8;
    a[..20].copy_from_slice(&origin.to_bytes());
    a[20..28].copy_from_slice(&seq.to_be_bytes());
    a
}

pub const KIND_EVENT: u8 = 1;
pub const KIND_COMMIT: u8 = 2;
const COMMIT_LEN: usize = 1 + 8 + 4;

/// Appends the full record for `e` to `out`.
pub fn encode_record(e: &Event, key: Option<&WalKey>, out: &mut Vec<u8>) {
    let mut plain = Vec::with_capacity(32 + e.payload.len());
    // Serialising into a Vec cannot fail.
    ciborium::into_writer(&Sealed(e.hlc, e.topic.clone(), e.payload.clone()), &mut plain).expect("CBOR into Vec");
    let aad = aad(&e.origin, e.seq, e.priority);
    let (nonce, sealed) = match key {
        Some(k) => {
            let n = random_nonce();
            let s = k.seal(&n, &aad, &plain);
            (n, s)
        }
        None => ([0u8; NONCE_LEN], plain),
    };
    let start = begin(out, KIND_EVENT);
    out.extend_from_slice(&aad);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    finish(out, start);
}

/// Appends a commit record for the group that began at file offset
/// `group_start` and whose bytes have CRC32 `group_crc`.
pub fn encode_commit(group_start: u64, group_crc: u32, out: &mut Vec<u8>) {
    let start = begin(out, KIND_COMMIT);
    out.extend_from_slice(&group_start.to_be_bytes());
    out.extend_from_slice(&group_crc.to_be_bytes());
    finish(out, start);
}

fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_PREFIX]);
    out.push(kind);
    start
}

fn finish(out: &mut [u8], start: usize) {
    let len = (out.len() - start - RECORD_PREFIX) as u32;
    let crc = crc32fast::hash(&out[start + RECORD_PREFIX..]);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// What a scan learns about one event record without decrypting it.
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta {
    pub origin: Origin,
    pub seq: u64,
    pub priority: Priority,
    /// Total bytes including the prefix.
    pub len: u64,
}

#[derive(Debug, Clone, Copy)]
pub enum Record {
    Event(RecordMeta),
    Commit { group_start: u64, group_crc: u32, len: u64 },
}

impl Record {
    pub fn len(&self) -> u64 {
        match self {
            Record::Event(m) => m.len,
            Record::Commit { len, .. } => *len,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// Fewer bytes than the record claims: the end of what was written.
    Incomplete,
    Bad(String),
}

/// Parses and CRC-checks the record at the start of `buf`.
pub fn parse_record(buf: &[u8]) -> Result<Record, Parse> {
    if buf.len() < RECORD_PREFIX {
        return Err(Parse::Incomplete);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len != COMMIT_LEN && !(1 + BODY_FIXED..=1 + MAX_BODY_LEN).contains(&len) {
        return Err(Parse::Bad(format!("record length {len} is out of bounds")));
    }
    let Some(content) = buf.get(RECORD_PREFIX..RECORD_PREFIX + len) else {
        return Err(Parse::Incomplete);
    };
    let crc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if crc32fast::hash(content) != crc {
        return Err(Parse::Bad("CRC mismatch".into()));
    }
    let total = (RECORD_PREFIX + len) as u64;
    let body = &content[1..];
    match content[0] {
        KIND_COMMIT if len == COMMIT_LEN => Ok(Record::Commit {
            // COMMIT_LEN guarantees 12 body bytes.
            group_start: u64::from_be_bytes(body[..8].try_into().expect("8 bytes")),
            group_crc: u32::from_be_bytes(body[8..12].try_into().expect("4 bytes")),
            len: total,
        }),
        KIND_EVENT if len > BODY_FIXED => {
            // len > BODY_FIXED guarantees the fixed fields are present.
            let origin = Origin::from_bytes(&body[..20]).expect("20-byte origin slice");
            let seq = u64::from_be_bytes(body[20..28].try_into().expect("8-byte seq slice"));
            let Ok(priority) = Priority::try_from(body[28]) else {
                return Err(Parse::Bad(format!("unknown priority class {}", body[28])));
            };
            if seq == 0 {
                return Err(Parse::Bad("sequence number 0".into()));
            }
            Ok(Record::Event(RecordMeta {
                origin,
                seq,
                priority,
                len: total,
            }))
        }
        kind => Err(Parse::Bad(format!("unknown record kind {kind} with length {len}"))),
    }
}

/// Decrypts and decodes an event record that `parse_record` accepted.
pub fn decode_record(buf: &[u8], meta: &RecordMeta, key: Option<&WalKey>) -> Result<Event, String> {
    let body = &buf[RECORD_PREFIX + 1..meta.len as usize];
    let nonce = &body[CLEAR_LEN..BODY_FIXED];
    let sealed = &body[BODY_FIXED..];
    let plain = match key {
        Some(k) => k
            .open(nonce, &body[..CLEAR_LEN], sealed)
            .ok_or("authentication failed: the record was altered or the key is wrong")?,
        None => sealed.to_vec(),
    };
    let Sealed(hlc, topic, payload) =
        ciborium::from_reader(plain.as_slice()).map_err(|e| format!("undecodable event: {e}"))?;
    Ok(Event {
        origin: meta.origin,
        seq: meta.seq,
        hlc,
        topic,
        priority: meta.priority,
        payload,
    })
}
