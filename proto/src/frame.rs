//! Messages of `ferry/5` and their framing.
//!
//! A frame is `length | u8 type | body`, where length counts the type
//! byte and the body, in seven-bit groups, low first (LEB128: one byte up
//! to 127, three at most). Bodies are CBOR, except event chunks,
//! which are a piece of a zstd stream (see `batch`). Every size is bounded
//! before memory is committed to it.
//!
//! A connection has one control stream, opened by the dialer, carrying
//! `Hello`, `Summary`, `SummaryChange`, `Want`, `Subscribe`,
//! `SubscribeChange`, `Done`,
//! `Refused`, `HeadWanted` and `Error` both ways; and per direction up to three data streams, one
//! per priority class, opened by the sender with `Open` and carrying
//! `Events`, `Head`, `Proof`, `Credential` and `End`.

use crate::merkle::{TreeHead, MAX_CREDENTIAL_LEN, MAX_PROOF_LEN};
use crate::{Classes, NodeId, Origin, Priority, Role, Summary};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Largest frame accepted. An event chunk carries at most `BATCH_BYTES` of
/// events or one piece of a large event, so this only needs room for a
/// summary of a hub with many holey logs.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Bytes of the longest length prefix: seven bits each (LEB128), so three
/// hold `MAX_FRAME_LEN`.
pub const MAX_PREFIX_LEN: usize = 3;
/// Largest decompressed event chunk accepted (guards against zip bombs).
pub const MAX_BATCH_DECOMPRESSED: usize = 256 << 10;
/// A chunk stops taking events once their payloads reach this many bytes;
/// an event larger than this travels in pieces of this size, so a photo
/// shares its stream with small events instead of blocking them.
pub const BATCH_BYTES: usize = 32 << 10;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node: NodeId,
    pub role: Role,
    pub name: String,
    pub version: u32,
    /// The sender keeps the connection open and takes live pushes (a
    /// daemon); `false` for a one-shot `ferry sync`.
    pub live: bool,
    /// The sender's policy lets the receiver have the events the sender
    /// writes: the receiver then takes them from it directly.
    pub gives_own: bool,
}

/// "Send me `origin` events `first..=last`". The sender answers on the data
/// stream of `priority` and ends with `End` of the same range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Want {
    pub origin: Origin,
    pub first: u64,
    pub last: u64,
    /// The class of every event in the range, as the sender reported it.
    pub priority: Priority,
}

/// Which new events the receiver wants pushed to it on this connection as
/// they arrive at the sender: those of every node but `nodes` (`all`), or
/// of `nodes` only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub all: bool,
    pub nodes: Vec<NodeId>,
}

impl Subscription {
    pub fn covers(&self, node: &NodeId) -> bool {
        self.nodes.contains(node) != self.all
    }
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
    /// What the sender holds (cut down to what its policy lets the receiver
    /// have), and which of it is urgent or bulk. `id` counts the sender's
    /// summaries on this connection; `ask`: answer with yours.
    Summary {
        id: u32,
        ask: bool,
        summary: Summary,
        classes: Classes,
    },
    /// The sender's summary `id` as a change to its summary `id - 1` on
    /// this connection: every origin whose holding or classes differ, with
    /// its whole new set (empty: nothing of it now) in `changed` and its
    /// whole urgent and bulk sets in `classes` (absent: none). A node that
    /// started a log epoch after each power cut holds hundreds of logs of
    /// its own; sending them all in every round cost kilobytes both ways
    /// every few minutes on an idle 2G connection.
    SummaryChange {
        id: u32,
        ask: bool,
        changed: Summary,
        classes: Classes,
    },
    Want(Want),
    Subscribe(Subscription),
    /// A change to the sender's last `Subscribe` on this connection: its
    /// `nodes` gain `add` and lose `remove`; `all` stays. A hub's
    /// subscription with a clinic names every other clinic connected to it
    /// (their news comes from them), so sending it whole on every connect
    /// and disconnect cost each clinic bytes in proportion to the clinics.
    SubscribeChange {
        add: Vec<NodeId>,
        remove: Vec<NodeId>,
    },
    /// The sender has pulled everything the receiver's summary `summary`
    /// offered; `received` events arrived for it.
    Done {
        summary: u32,
        received: u64,
    },
    /// A want the sender of this frame will not serve.
    Refused {
        want: Want,
        code: u16,
        message: String,
    },
    Error {
        code: u16,
        message: String,
    },
    /// First frame of a data stream: the class of everything on it.
    Open {
        class: Priority,
    },
    /// The next piece of a data stream's compressed events; decoded with the
    /// stream's `batch::StreamDecompressor`.
    Events(Vec<u8>),
    /// Everything of this want the sender holds has been sent.
    End(Want),
    /// On a data stream, before the events of an origin it proves: the
    /// writer's signed head of that origin's log (see `merkle`).
    Head(TreeHead),
    /// On a data stream, after an `Events` frame: the range proof of that
    /// frame's job in its stream form (`RangeProof::encode_in_stream`),
    /// decoded with the job's head and progress, which only the receiver's
    /// stream state knows.
    Proof(Vec<u8>),
    /// On a data stream, before the first `Head` of a writer: what lets the
    /// receiver learn the writer's key (its certificate; `HeadKeys::learn`).
    Credential(Vec<u8>),
    /// On the control stream: the sender holds events of `origin`, a log
    /// the receiver writes, that it cannot prove under any head it holds
    /// (held from before log authentication, or its card lost nodes they
    /// need); the receiver answers with its head of that log on a data
    /// stream.
    HeadWanted(Origin),
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
const T_SUBSCRIBE: u8 = 4;
const T_DONE: u8 = 5;
const T_ERROR: u8 = 6;
const T_EVENTS: u8 = 7;
const T_REFUSED: u8 = 8;
const T_OPEN: u8 = 9;
const T_END: u8 = 10;
const T_HEAD: u8 = 11;
const T_PROOF: u8 = 12;
const T_CREDENTIAL: u8 = 13;
const T_HEAD_WANTED: u8 = 14;
const T_SUBSCRIBE_CHANGE: u8 = 15;
const T_SUMMARY_CHANGE: u8 = 16;

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

fn check_want(w: Want, kind: &'static str) -> Result<Want, FrameError> {
    if w.first == 0 || w.first > w.last {
        return Err(FrameError::Malformed {
            kind,
            detail: format!("bad range {}..={}", w.first, w.last),
        });
    }
    Ok(w)
}

impl Frame {
    /// The whole frame including its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Frame::Hello(h) => {
                out.push(T_HELLO);
                cbor(h, &mut out);
            }
            Frame::Summary {
                id,
                ask,
                summary,
                classes,
            } => {
                out.push(T_SUMMARY);
                cbor(&(id, ask, summary, classes), &mut out);
            }
            Frame::SummaryChange {
                id,
                ask,
                changed,
                classes,
            } => {
                out.push(T_SUMMARY_CHANGE);
                cbor(&(id, ask, changed, classes), &mut out);
            }
            Frame::Want(w) => {
                out.push(T_WANT);
                cbor(w, &mut out);
            }
            Frame::Subscribe(s) => {
                out.push(T_SUBSCRIBE);
                cbor(s, &mut out);
            }
            Frame::SubscribeChange { add, remove } => {
                out.push(T_SUBSCRIBE_CHANGE);
                cbor(&(add, remove), &mut out);
            }
            Frame::Done { summary, received } => {
                out.push(T_DONE);
                cbor(&(summary, received), &mut out);
            }
            Frame::Refused { want, code, message } => {
                out.push(T_REFUSED);
                cbor(&(want, code, message), &mut out);
            }
            Frame::Error { code, message } => {
                out.push(T_ERROR);
                cbor(&(code, message), &mut out);
            }
            Frame::Open { class } => {
                out.push(T_OPEN);
                cbor(class, &mut out);
            }
            Frame::Events(bytes) => {
                out.push(T_EVENTS);
                out.extend_from_slice(bytes);
            }
            Frame::End(w) => {
                out.push(T_END);
                cbor(w, &mut out);
            }
            Frame::Head(h) => {
                out.push(T_HEAD);
                out.extend_from_slice(&h.encode());
            }
            Frame::Proof(bytes) => {
                out.push(T_PROOF);
                out.extend_from_slice(bytes);
            }
            Frame::Credential(bytes) => {
                out.push(T_CREDENTIAL);
                out.extend_from_slice(bytes);
            }
            Frame::HeadWanted(origin) => {
                out.push(T_HEAD_WANTED);
                cbor(origin, &mut out);
            }
        }
        let mut framed = Vec::with_capacity(MAX_PREFIX_LEN + out.len());
        crate::varint::put(&mut framed, out.len() as u64);
        framed.extend_from_slice(&out);
        framed
    }

    /// Reads the length prefix from the front of `buf`: the body's length
    /// and the prefix's, or `Ok(None)` while the prefix is incomplete. The
    /// caller then reads that many bytes.
    pub fn body_len(buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
        let mut len = 0usize;
        for (i, &b) in buf.iter().take(MAX_PREFIX_LEN).enumerate() {
            len |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if len == 0 {
                    return Err(FrameError::Empty);
                }
                if len > MAX_FRAME_LEN {
                    return Err(FrameError::TooLarge(len));
                }
                return Ok(Some((len, i + 1)));
            }
        }
        if buf.len() >= MAX_PREFIX_LEN {
            // A fourth length byte: at least 2^21, over the limit.
            return Err(FrameError::TooLarge(len.max(1 << (7 * MAX_PREFIX_LEN))));
        }
        Ok(None)
    }

    /// Decodes a frame body (type byte and CBOR, without the length prefix).
    pub fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
        let (&ty, rest) = body.split_first().ok_or(FrameError::Empty)?;
        Ok(match ty {
            T_HELLO => Frame::Hello(uncbor("hello", rest)?),
            T_SUMMARY => {
                let (id, ask, summary, classes) = uncbor("summary", rest)?;
                Frame::Summary {
                    id,
                    ask,
                    summary,
                    classes,
                }
            }
            T_SUMMARY_CHANGE => {
                let (id, ask, changed, classes) = uncbor("summary change", rest)?;
                Frame::SummaryChange {
                    id,
                    ask,
                    changed,
                    classes,
                }
            }
            T_WANT => Frame::Want(check_want(uncbor("want", rest)?, "want")?),
            T_SUBSCRIBE => Frame::Subscribe(uncbor("subscribe", rest)?),
            T_SUBSCRIBE_CHANGE => {
                let (add, remove) = uncbor("subscribe change", rest)?;
                Frame::SubscribeChange { add, remove }
            }
            T_DONE => {
                let (summary, received) = uncbor("done", rest)?;
                Frame::Done { summary, received }
            }
            T_REFUSED => {
                let (want, code, message): (Want, u16, String) = uncbor("refused", rest)?;
                Frame::Refused {
                    want: check_want(want, "refused")?,
                    code,
                    message,
                }
            }
            T_ERROR => {
                let (code, message): (u16, String) = uncbor("error", rest)?;
                Frame::Error { code, message }
            }
            T_OPEN => Frame::Open {
                class: uncbor("open", rest)?,
            },
            T_EVENTS => Frame::Events(rest.to_vec()),
            T_END => Frame::End(check_want(uncbor("end", rest)?, "end")?),
            T_HEAD => Frame::Head(TreeHead::decode(rest).map_err(|e| FrameError::Malformed {
                kind: "head",
                detail: e.to_string(),
            })?),
            T_PROOF if rest.len() > MAX_PROOF_LEN => {
                return Err(FrameError::Malformed {
                    kind: "proof",
                    detail: format!("{} bytes; a proof has at most {MAX_PROOF_LEN}", rest.len()),
                })
            }
            T_PROOF => Frame::Proof(rest.to_vec()),
            T_CREDENTIAL if rest.len() > MAX_CREDENTIAL_LEN => {
                return Err(FrameError::Malformed {
                    kind: "credential",
                    detail: format!("{} bytes; a credential has at most {MAX_CREDENTIAL_LEN}", rest.len()),
                })
            }
            T_CREDENTIAL => Frame::Credential(rest.to_vec()),
            T_HEAD_WANTED => Frame::HeadWanted(uncbor("head wanted", rest)?),
            other => return Err(FrameError::UnknownType(other)),
        })
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` if incomplete.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some((len, at)) = Self::body_len(buf)? else {
            return Ok(None);
        };
        let Some(body) = buf.get(at..at + len) else {
            return Ok(None);
        };
        Ok(Some((Self::decode_body(body)?, at + len)))
    }

    /// The frame's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Summary { .. } => "Summary",
            Frame::SummaryChange { .. } => "SummaryChange",
            Frame::Want(_) => "Want",
            Frame::Subscribe(_) => "Subscribe",
            Frame::SubscribeChange { .. } => "SubscribeChange",
            Frame::Done { .. } => "Done",
            Frame::Refused { .. } => "Refused",
            Frame::Error { .. } => "Error",
            Frame::Open { .. } => "Open",
            Frame::Events(_) => "Events",
            Frame::End(_) => "End",
            Frame::Head(_) => "Head",
            Frame::Proof(_) => "Proof",
            Frame::Credential(_) => "Credential",
            Frame::HeadWanted(_) => "HeadWanted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RangeSet;
    use proptest::prelude::*;

    fn arb_origin() -> impl Strategy<Value = Origin> {
        (any::<[u8; 16]>(), any::<u32>()).prop_map(|(n, epoch)| Origin { node: NodeId(n), epoch })
    }

    fn arb_want() -> impl Strategy<Value = Want> {
        (arb_origin(), 1u64..1000, 0u64..1000, 0u8..3).prop_map(|(origin, first, len, p)| Want {
            origin,
            first,
            last: first + len,
            priority: Priority::try_from(p).unwrap(), // p < 3
        })
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                any::<[u8; 16]>(),
                0u8..3,
                "[ -~]{0,20}",
                any::<u32>(),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(n, role, name, version, live, gives_own)| {
                    Frame::Hello(Hello {
                        node: NodeId(n),
                        role: [Role::Hub, Role::Clinic, Role::Mule][role as usize],
                        name,
                        version,
                        live,
                        gives_own,
                    })
                }),
            (
                any::<u32>(),
                any::<bool>(),
                proptest::collection::btree_map(
                    arb_origin(),
                    proptest::collection::vec((1u64..1000, 0u64..50), 0..5)
                        .prop_map(|v| RangeSet::from_ranges(v.into_iter().map(|(a, l)| (a, a + l)))),
                    0..4
                )
            )
                .prop_map(|(id, ask, m)| {
                    let urgent = m.iter().take(1).map(|(o, r)| (*o, r.clone())).collect();
                    let classes = Classes {
                        urgent,
                        bulk: Default::default(),
                    };
                    if id % 2 == 0 {
                        Frame::Summary {
                            id,
                            ask,
                            summary: Summary(m),
                            classes,
                        }
                    } else {
                        Frame::SummaryChange {
                            id,
                            ask,
                            changed: Summary(m),
                            classes,
                        }
                    }
                }),
            arb_want().prop_map(Frame::Want),
            arb_want().prop_map(Frame::End),
            (any::<bool>(), proptest::collection::vec(any::<[u8; 16]>(), 0..4)).prop_map(|(all, nodes)| {
                Frame::Subscribe(Subscription {
                    all,
                    nodes: nodes.into_iter().map(NodeId).collect(),
                })
            }),
            (
                proptest::collection::vec(any::<[u8; 16]>(), 0..4),
                proptest::collection::vec(any::<[u8; 16]>(), 0..4)
            )
                .prop_map(|(add, remove)| Frame::SubscribeChange {
                    add: add.into_iter().map(NodeId).collect(),
                    remove: remove.into_iter().map(NodeId).collect(),
                }),
            (any::<u32>(), any::<u64>()).prop_map(|(summary, received)| Frame::Done { summary, received }),
            (arb_want(), any::<u16>(), "[ -~]{0,40}").prop_map(|(want, code, message)| Frame::Refused {
                want,
                code,
                message
            }),
            (0u8..3).prop_map(|p| Frame::Open {
                class: Priority::try_from(p).unwrap() // p < 3
            }),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Frame::Events),
            (any::<u16>(), "[ -~]{0,40}").prop_map(|(code, message)| Frame::Error { code, message }),
            (
                arb_origin(),
                any::<u64>(),
                any::<[u8; 32]>(),
                proptest::collection::vec(any::<u8>(), 0..80)
            )
                .prop_map(|(origin, len, root, signature)| Frame::Head(TreeHead {
                    origin,
                    len,
                    root,
                    signature
                })),
            proptest::collection::vec(any::<u8>(), 0..200).prop_map(Frame::Proof),
            proptest::collection::vec(any::<u8>(), 0..600).prop_map(Frame::Credential),
            arb_origin().prop_map(Frame::HeadWanted),
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
        let mut prefix = Vec::new();
        crate::varint::put(&mut prefix, MAX_FRAME_LEN as u64 + 1);
        assert_eq!(Frame::body_len(&prefix), Err(FrameError::TooLarge(MAX_FRAME_LEN + 1)));
        assert!(matches!(
            Frame::body_len(&[0xff, 0xff, 0xff, 0x01]),
            Err(FrameError::TooLarge(_))
        ));
        assert_eq!(Frame::body_len(&[0xff, 0xff]), Ok(None), "incomplete");
        assert_eq!(Frame::body_len(&[0x00]), Err(FrameError::Empty));
    }

    /// A frame's length costs one byte up to 127 bytes of body (a live
    /// event's frames, and most control frames), three at the limit.
    #[test]
    fn the_length_prefix_is_as_short_as_the_frame() {
        let done = Frame::Done {
            summary: 1,
            received: 2,
        }
        .encode();
        assert_eq!(usize::from(done[0]) + 1, done.len());
        let big = Frame::Events(vec![7; MAX_FRAME_LEN - 1]).encode();
        assert_eq!(big.len(), MAX_FRAME_LEN + MAX_PREFIX_LEN);
        assert!(
            matches!(Frame::decode(&big), Ok(Some((Frame::Events(b), n))) if b.len() == MAX_FRAME_LEN - 1 && n == big.len())
        );
    }

    #[test]
    fn bad_want_ranges_are_malformed() {
        let origin = Origin {
            node: NodeId([1; 16]),
            epoch: 0,
        };
        let want = Want {
            origin,
            first: 5,
            last: 4,
            priority: Priority::Normal,
        };
        assert!(Frame::decode(&Frame::Want(want).encode()).is_err());
        assert!(Frame::decode(&Frame::End(want).encode()).is_err());
    }

    #[test]
    fn subscriptions_cover_by_inclusion_or_exclusion() {
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        let only_a = Subscription {
            all: false,
            nodes: vec![a],
        };
        assert!(only_a.covers(&a) && !only_a.covers(&b));
        let all_but_a = Subscription {
            all: true,
            nodes: vec![a],
        };
        assert!(!all_but_a.covers(&a) && all_but_a.covers(&b));
    }
}
