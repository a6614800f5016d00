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
//! Recovery keeps exactly the groups whose commit verifies. Kind 3, an
//! idempotency key: `nonce (12) | sealed CBOR (key, origin, first seq, count,
//! wall ms, request digest)`, in the same group as the events it names.
//!
//! Version 1 segments hold kinds 1 and 2; version 2 adds kind 3. This build
//! reads both and appends only to version 2 segments, so a build that knows
//! only version 1 refuses a segment holding a key instead of misreading it.

use crate::idem::KeyEntry;
use crate::key::{random_nonce, WalKey, NONCE_LEN, TAG_LEN};
use ferry_proto::{Event, Hlc, Origin, Priority};
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"FERRYWAL";
/// The version this build writes; it reads every version from 1 up to it.
pub const VERSION: u16 = 2;
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
    pub version: u16,
    pub number: u32,
    pub cipher: u8,
    pub fingerprint: [u8; 16],
}

impl SegmentHeader {
    pub fn for_key(number: u32, key: Option<&WalKey>) -> Self {
        match key {
            Some(k) => SegmentHeader {
                version: VERSION,
                number,
                cipher: CIPHER_CHACHA,
                fingerprint: k.fingerprint(),
            },
            None => SegmentHeader {
                version: VERSION,
                number,
                cipher: CIPHER_NONE,
                fingerprint: [0; 16],
            },
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..10].copy_from_slice(&self.version.to_be_bytes());
        h[10] = self.cipher;
        h[12..16].copy_from_slice(&self.number.to_be_bytes());
        h[16..32].copy_from_slice(&self.fingerprint);
        h
    }

    pub fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < HEADER_LEN as usize {
            return Err(HeaderError::Bad("segment header is incomplete".into()));
        }
        if &b[..8] != MAGIC {
            return Err(HeaderError::Bad("not a ferry WAL segment (bad magic)".into()));
        }
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version > VERSION {
            return Err(HeaderError::Newer(version));
        }
        if version == 0 {
            return Err(HeaderError::Bad("segment format version 0 does not exist".into()));
        }
        let cipher = b[10];
        if cipher != CIPHER_NONE && cipher != CIPHER_CHACHA {
            return Err(HeaderError::Bad(format!("unknown cipher {cipher}")));
        }
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(&b[16..32]);
        Ok(SegmentHeader {
            version,
            number: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            cipher,
            fingerprint,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    Bad(String),
    /// Written by a newer build, in this format version.
    Newer(u16),
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
pub const KIND_KEY: u8 = 3;
const COMMIT_LEN: usize = 1 + 8 + 4;
/// Bound on a key record's body: nonce, tag and CBOR of a key of at most
/// `MAX_IDEMPOTENCY_KEY_LEN` bytes with its fixed fields.
const MAX_KEY_BODY: usize = NONCE_LEN + TAG_LEN + crate::MAX_IDEMPOTENCY_KEY_LEN + 128;

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
    Commit {
        group_start: u64,
        group_crc: u32,
        len: u64,
    },
    /// An idempotency key; `decode_key_record` reads it.
    Key {
        len: u64,
    },
}

impl Record {
    pub fn len(&self) -> u64 {
        match self {
            Record::Event(m) => m.len,
            Record::Commit { len, .. } | Record::Key { len } => *len,
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
    if !(COMMIT_LEN..=1 + MAX_BODY_LEN).contains(&len) {
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
            // (`len` counts the kind byte, so the body holds BODY_FIXED bytes
            // or more.)
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
        KIND_KEY if (1 + NONCE_LEN + 1..=1 + MAX_KEY_BODY).contains(&len) => Ok(Record::Key { len: total }),
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

#[derive(Serialize, Deserialize)]
struct SealedKey(
    String,
    #[serde(with = "serde_bytes")] Vec<u8>,
    u64,
    u64,
    u64,
    #[serde(with = "serde_bytes")] Vec<u8>,
);

/// Keys are sealed with the kind byte as associated data, so a key record
/// cannot be passed off as any other kind of sealed data.
const KEY_AAD: [u8; 1] = [KIND_KEY];

/// Appends the key record for `k` to `out`.
pub fn encode_key_record(k: &KeyEntry, key: Option<&WalKey>, out: &mut Vec<u8>) {
    let mut plain = Vec::with_capacity(64 + k.key.len());
    let sealed_key = SealedKey(
        k.key.clone(),
        k.origin.to_bytes().to_vec(),
        k.first_seq,
        k.count,
        k.wall_ms,
        k.digest.to_vec(),
    );
    // Serialising into a Vec cannot fail.
    ciborium::into_writer(&sealed_key, &mut plain).expect("CBOR into Vec");
    let (nonce, sealed) = match key {
        Some(wk) => {
            let n = random_nonce();
            let s = wk.seal(&n, &KEY_AAD, &plain);
            (n, s)
        }
        None => ([0u8; NONCE_LEN], plain),
    };
    let start = begin(out, KIND_KEY);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    finish(out, start);
}

/// Decrypts and decodes a key record that `parse_record` accepted as
/// `Record::Key { len }`.
pub fn decode_key_record(buf: &[u8], len: u64, key: Option<&WalKey>) -> Result<KeyEntry, String> {
    let body = buf
        .get(RECORD_PREFIX + 1..len as usize)
        .ok_or("key record shorter than its length")?;
    let (nonce, sealed) = body.split_at_checked(NONCE_LEN).ok_or("key record without a nonce")?;
    let plain = match key {
        Some(k) => k
            .open(nonce, &KEY_AAD, sealed)
            .ok_or("authentication failed: the key record was altered or the key is wrong")?,
        None => sealed.to_vec(),
    };
    let SealedKey(name, origin, first_seq, count, wall_ms, digest) =
        ciborium::from_reader(plain.as_slice()).map_err(|e| format!("undecodable idempotency key: {e}"))?;
    let origin = Origin::from_bytes(&origin).ok_or("idempotency key names an origin that is not 20 bytes")?;
    let digest: [u8; 16] = digest
        .as_slice()
        .try_into()
        .map_err(|_| "idempotency key digest is not 16 bytes")?;
    if name.is_empty() || name.len() > crate::MAX_IDEMPOTENCY_KEY_LEN {
        return Err(format!("idempotency key of {} bytes", name.len()));
    }
    if first_seq == 0 || count == 0 || first_seq.checked_add(count).is_none() {
        return Err(format!("idempotency key names events {first_seq}+{count}"));
    }
    Ok(KeyEntry {
        key: name,
        origin,
        first_seq,
        count,
        wall_ms,
        digest,
    })
}
