//! Messages of `ferry/1` and their framing.
//!
//! A frame is `u32 length (big endian) | u8 type | CBOR body`, where length
//! counts the type byte and the body. Event batches are a zstd-compressed CBOR
//! array. Every size is bounded before memory is committed to it.

use crate::{Classes, NodeId, Origin, Priority, Summary};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Largest frame accepted, compressed (a batch of events or a summary).
pub const MAX_FRAME_LEN: usize = 4 << 20;
/// Largest decompressed event batch accepted (guards against zip bombs).
pub const MAX_BATCH_DECOMPRESSED: usize = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node: NodeId,
    pub role: String,
    pub name: String,
    pub version: u32,
}

/// "Send me `origin` events `first..=last`", the first frame of a pull stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    pub origin: Origin,
    pub first: u64,
    pub last: u64,
    /// The class of every event in the range: the server sends urgent
    /// streams first.
    pub priority: Priority,
}

/// Stable error codes, used in `Error` frames, stream resets and connection
/// close codes alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Not an error: the session finished.
    Done = 0,
    Malformed = 1,
    TooLarge = 2,
    Policy = 3,
    Unsupported = 4,
    Internal = 5,
    Protocol = 6,
    ShuttingDown = 7,
}

impl ErrorCode {
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => ErrorCode::Done,
            1 => ErrorCode::Malformed,
            2 => ErrorCode::TooLarge,
            3 => ErrorCode::Policy,
            4 => ErrorCode::Unsupported,
            5 => ErrorCode::Internal,
            6 => ErrorCode::Protocol,
            7 => ErrorCode::ShuttingDown,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    /// What the sender holds, and which of it is urgent or bulk.
    Summary(Summary, Classes),
    Want(Want),
    /// The next piece of a want stream's compressed events; decoded with the
    /// stream's `batch::StreamDecompressor`.
    EventChunk(Vec<u8>),
    /// The sender has pulled everything it wanted in this round.
    RoundDone {
        received: u64,
    },
    Error {
        code: u16,
        message: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("malformed {kind} frame: {detail}")]
    Malformed { kind: &'static str, detail: String },
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge(_) => ErrorCode::TooLarge,
            _ => ErrorCode::Malformed,
        }
    }
}

const T_HELLO: u8 = 1;
const T_SUMMARY: u8 = 2;
const T_WANT: u8 = 3;
const T_ROUND_DONE: u8 = 5;
const T_ERROR: u8 = 6;
const T_EVENT_CHUNK: u8 = 7;

fn cbor<T: Serialize>(v: &T, out: &mut Vec<u8>) {
    // Serialising into a Vec cannot fail: the writer is infallible and our
    // types have no serialisation errors.
    ciborium::into_writer(v, out).expect("CBOR into Vec");
}

fn uncbor<T: DeserializeOwned>(kind: &'static str, body: &[u8]) -> Result<T, FrameError> {
    ciborium::from_reader(body).map_err(|e| FrameError::Malformed {
        kind,
        detail: e.to_string(),
    })
}

impl Frame {
    /// The whole frame including its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 4];
        match self {
            Frame::Hello(h) => {
                out.push(T_HELLO);
                cbor(h, &mut out);
            }
            Frame::Summary(s, c) => {
                out.push(T_SUMMARY);
                cbor(&(s, c), &mut out);
            }
            Frame::Want(w) => {
                out.push(T_WANT);
                cbor(w, &mut out);
            }
            Frame::EventChunk(bytes) => {
                out.push(T_EVENT_CHUNK);
                out.extend_from_slice(bytes);
            }
            Frame::RoundDone { received } => {
                out.push(T_ROUND_DONE);
                cbor(received, &mut out);
            }
            Frame::Error { code, message } => {
                out.push(T_ERROR);
                cbor(&(code, message), &mut out);
            }
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Reads the length prefix; the caller then reads that many bytes.
    pub fn body_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
        let len = u32::from_be_bytes(prefix) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge(len));
        }
        Ok(len)
    }

    /// Decodes a frame body (type byte and CBOR, without the length prefix).
    pub fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
        let (&ty, rest) = body.split_first().ok_or(FrameError::Empty)?;
        Ok(match ty {
            T_HELLO => Frame::Hello(uncbor("hello", rest)?),
            T_SUMMARY => {
                let (s, c) = uncbor("summary", rest)?;
                Frame::Summary(s, c)
            }
            T_WANT => {
                let w: Want = uncbor("want", rest)?;
                if w.first == 0 || w.first > w.last {
                    return Err(FrameError::Malformed {
                        kind: "want",
                        detail: format!("bad range {}..={}", w.first, w.last),
                    });
                }
                Frame::Want(w)
            }
            T_EVENT_CHUNK => Frame::EventChunk(rest.to_vec()),
            T_ROUND_DONE => Frame::RoundDone {
                received: uncbor("round-done", rest)?,
            },
            T_ERROR => {
                let (code, message): (u16, String) = uncbor("error", rest)?;
                Frame::Error { code, message }
            }
            other => return Err(FrameError::UnknownType(other)),
        })
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` if incomplete.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(prefix) = buf.get(..4) else {
            return Ok(None);
        };
        let len = Self::body_len([prefix[0], prefix[1], prefix[2], prefix[3]])?;
        let Some(body) = buf.get(4..4 + len) else {
            return Ok(None);
        };
        Ok(Some((Self::decode_body(body)?, 4 + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RangeSet;
    use proptest::prelude::*;

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<[u8; 16]>(), "[a-z]{0,8}", "[ -~]{0,20}", any::<u32>()).prop_map(|(n, role, name, version)| {
                Frame::Hello(Hello {
                    node: NodeId(n),
                    role,
                    name,
                    version,
                })
            }),
            proptest::collection::btree_map(
                (any::<[u8; 16]>(), any::<u32>()).prop_map(|(n, epoch)| Origin { node: NodeId(n), epoch }),
                proptest::collection::vec((1u64..1000, 0u64..50), 0..5)
                    .prop_map(|v| RangeSet::from_ranges(v.into_iter().map(|(a, l)| (a, a + l)))),
                0..4
            )
            .prop_map(|m| {
                let urgent = m.iter().take(1).map(|(o, r)| (*o, r.clone())).collect();
                Frame::Summary(
                    Summary(m),
                    Classes {
                        urgent,
                        bulk: Default::default(),
                    },
                )
            }),
            (any::<[u8; 16]>(), any::<u32>(), 1u64..1000, 0u64..1000).prop_map(|(n, epoch, first, len)| Frame::Want(
                Want {
                    origin: Origin { node: NodeId(n), epoch },
                    first,
                    last: first + len,
                    priority: Priority::Bulk,
                }
            )),
            any::<u64>().prop_map(|received| Frame::RoundDone { received }),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Frame::EventChunk),
            (any::<u16>(), "[ -~]{0,40}").prop_map(|(code, message)| Frame::Error { code, message }),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(f in arb_frame()) {
            let bytes = f.encode();
            let (back, used) = Frame::decode(&bytes).unwrap().unwrap(); // we just encoded it
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(back, f);
            // Every strict prefix is "incomplete", never an error or a panic.
            for cut in 0..bytes.len() {
                prop_assert_eq!(Frame::decode(&bytes[..cut]), Ok(None));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Frame::decode(&bytes);
            let _ = Frame::decode_body(&bytes);
        }

        #[test]
        fn corrupted_frames_never_panic(f in arb_frame(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = f.encode();
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            let _ = Frame::decode(&bytes);
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_reading() {
        let prefix = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert_eq!(Frame::body_len(prefix), Err(FrameError::TooLarge(MAX_FRAME_LEN + 1)));
    }

    #[test]
    fn bad_want_ranges_are_malformed() {
        let origin = Origin {
            node: NodeId([1; 16]),
            epoch: 0,
        };
        let bytes = Frame::Want(Want {
            origin,
            first: 5,
            last: 4,
            priority: Priority::Normal,
        })
        .encode();
        assert!(Frame::decode(&bytes).is_err());
    }
}
