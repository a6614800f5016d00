//! Compression of the events on one data stream.
//!
//! One zstd context per data stream, flushed after every chunk: each frame
//! is decodable the moment it arrives (so events are appended as they come
//! and a cut loses only what was in flight), yet each chunk is compressed
//! with everything earlier on the stream as context. Clinic events share
//! most of their structure, so this is far smaller than compressing each
//! chunk alone. A stream is ordered and reliable, which is all this needs.
//!
//! A chunk holds whole events, or one piece of an event larger than
//! `BATCH_BYTES`: a photo crosses a thin link as pieces that take turns with
//! small events instead of one frame that blocks its stream for minutes.

use crate::frame::{FrameError, MAX_BATCH_DECOMPRESSED};
use crate::{Event, Hlc, Origin, Priority};

/// zstd level for links where bytes are dear. Level 19 with its tables cut
/// to 2^18 (`WAN_TABLES_LOG`) compresses a clinic's stream as well as
/// level 19 with its default tables (81.6 MiB of them) in 3.6 MiB, about
/// what level 6 needs, and 17 % smaller than level 6: see docs/wire.md.
pub const LEVEL_WAN: i32 = 19;
/// zstd level for fast WAN links (a round trip under 200 ms, such as 3G),
/// where level 19 compresses more slowly than the link carries.
pub const LEVEL_MID: i32 = 6;
/// zstd level for a LAN or loopback: speed matters more than bytes.
pub const LEVEL_LAN: i32 = 1;
/// 2^17 = 128 KiB of history: plenty for events of a few hundred bytes, and
/// it bounds the decoder's memory on a small node.
pub const WINDOW_LOG: u32 = 17;
/// What a frame started after an idle spell refers to of the stream before
/// it (a zstd prefix both ends keep). Measured with
/// `examples/prefix-frames.rs` on the workload, a live event after 1,000
/// others at level 19: 42 B in a frame kept open, 207 B in a frame of its
/// own, 79 / 61 / 56 / 53 B with a prefix of 4 / 16 / 32 / 64 KiB, for
/// 0.1 / 0.5 / 1.3 / 3.1 ms of CPU to load it. Both ends of every idle
/// stream keep it, so a hub keeps two per connected clinic and loads one
/// for every event it relays to one: 16 KiB costs a live event 5 B more
/// than 32 KiB and a hub of 100 clinics 3.2 MB less (docs/memory.md).
pub const PREFIX_BYTES: usize = 16 << 10;
/// Chain and hash table logs for levels above 9, whose defaults assume
/// windows of megabytes.
pub const WAN_TABLES_LOG: u32 = 18;

/// One piece of an event larger than a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub origin: Origin,
    pub seq: u64,
    pub hlc: Hlc,
    pub topic: String,
    pub priority: Priority,
    /// The whole payload's length, and where this piece starts in it.
    pub total: u32,
    pub offset: u32,
    pub bytes: Vec<u8>,
}

/// What a chunk carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Event(Event),
    Piece(Piece),
}

impl Item {
    pub fn origin(&self) -> Origin {
        match self {
            Item::Event(e) => e.origin,
            Item::Piece(p) => p.origin,
        }
    }
    pub fn seq(&self) -> u64 {
        match self {
            Item::Event(e) => e.seq,
            Item::Piece(p) => p.seq,
        }
    }
}

/// Topics a stream remembers; later ones are spelt out every time. Both
/// ends apply the same rule, so they agree without saying so.
const TOPICS: usize = 64;

const KIND_PIECE: u8 = 1;
const NEW_ORIGIN: u8 = 1 << 1;
const SEQ_GIVEN: u8 = 1 << 2;
const TOPIC_SAME: u8 = 1 << 3;
const TOPIC_NEW: u8 = 1 << 4;
const PRIORITY_GIVEN: u8 = 1 << 5;
const FLAGS: u8 = KIND_PIECE | NEW_ORIGIN | SEQ_GIVEN | TOPIC_SAME | TOPIC_NEW | PRIORITY_GIVEN;

/// What both ends of a data stream remember of the items before: an item
/// spells out only what differs. Within a range the next item is the next
/// seq of the same origin and topic with a clock a little later, so its
/// header is a flag byte and a small clock delta; zstd does the rest.
///
/// An item: flags, [node(16) epoch(varint)], [seq(varint)],
/// [topic index(varint) | topic(len varint, bytes)], [priority(u8)],
/// hlc delta (zigzag varint), [total(varint) offset(varint)],
/// len(varint), bytes.
#[derive(Debug, Default, Clone)]
struct Codec {
    origin: Option<Origin>,
    seq: u64,
    hlc: u64,
    topic: usize,
    topics: Vec<String>,
    priority: Priority,
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, FrameError> {
        let (&b, rest) = self.0.split_first().ok_or_else(|| malformed("truncated item"))?;
        self.0 = rest;
        Ok(b)
    }
    fn varint(&mut self) -> Result<u64, FrameError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed("varint longer than 64 bits"))
    }
    fn bytes(&mut self, len: u64, limit: usize) -> Result<&'a [u8], FrameError> {
        if len > limit as u64 || len > self.0.len() as u64 {
            return Err(malformed(format!("field of {len} bytes")));
        }
        let (b, rest) = self.0.split_at(len as usize);
        self.0 = rest;
        Ok(b)
    }
}

impl Codec {
    fn encode(&mut self, item: &Item, out: &mut Vec<u8>) {
        let (origin, seq, hlc, topic, priority, bytes, piece) = match item {
            Item::Event(e) => (e.origin, e.seq, e.hlc, &e.topic, e.priority, &e.payload, None),
            Item::Piece(p) => (
                p.origin,
                p.seq,
                p.hlc,
                &p.topic,
                p.priority,
                &p.bytes,
                Some((p.total, p.offset)),
            ),
        };
        let mut flags = if piece.is_some() { KIND_PIECE } else { 0 };
        let new_origin = self.origin != Some(origin);
        if new_origin {
            flags |= NEW_ORIGIN;
        }
        if new_origin || seq != self.seq.wrapping_add(1) {
            flags |= SEQ_GIVEN;
        }
        let known = self.topics.iter().position(|t| t == topic);
        match known {
            Some(i) if i == self.topic => flags |= TOPIC_SAME,
            Some(_) => {}
            None => flags |= TOPIC_NEW,
        }
        if priority != self.priority {
            flags |= PRIORITY_GIVEN;
        }
        out.push(flags);
        if new_origin {
            out.extend_from_slice(&origin.node.0);
            crate::varint::put(out, origin.epoch.into());
        }
        if flags & SEQ_GIVEN != 0 {
            crate::varint::put(out, seq);
        }
        match known {
            Some(i) if i == self.topic => {}
            Some(i) => {
                crate::varint::put(out, i as u64);
                self.topic = i;
            }
            None => {
                crate::varint::put(out, topic.len() as u64);
                out.extend_from_slice(topic.as_bytes());
                if self.topics.len() < TOPICS {
                    self.topics.push(topic.clone());
                    self.topic = self.topics.len() - 1;
                }
            }
        }
        if priority != self.priority {
            out.push(priority.into());
        }
        let delta = hlc.0.wrapping_sub(self.hlc) as i64;
        crate::varint::put(out, ((delta << 1) ^ (delta >> 63)) as u64);
        if let Some((total, offset)) = piece {
            crate::varint::put(out, total.into());
            crate::varint::put(out, offset.into());
        }
        crate::varint::put(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
        self.origin = Some(origin);
        self.seq = seq;
        self.hlc = hlc.0;
        self.priority = priority;
    }

    fn decode(&mut self, c: &mut Cursor<'_>) -> Result<Item, FrameError> {
        let flags = c.byte()?;
        if flags & !FLAGS != 0 || flags & (TOPIC_SAME | TOPIC_NEW) == (TOPIC_SAME | TOPIC_NEW) {
            return Err(malformed(format!("item flags {flags:#04x}")));
        }
        let origin = if flags & NEW_ORIGIN != 0 {
            let node = c.bytes(16, 16)?;
            let epoch = u32::try_from(c.varint()?).map_err(|_| malformed("epoch beyond 32 bits"))?;
            let mut id = [0u8; 16];
            id.copy_from_slice(node);
            Origin {
                node: crate::NodeId(id),
                epoch,
            }
        } else {
            self.origin.ok_or_else(|| malformed("the first item names no origin"))?
        };
        let seq = if flags & SEQ_GIVEN != 0 {
            c.varint()?
        } else {
            self.seq.checked_add(1).ok_or_else(|| malformed("seq beyond 64 bits"))?
        };
        let topic = if flags & TOPIC_SAME != 0 {
            self.topics
                .get(self.topic)
                .ok_or_else(|| malformed("no topic yet"))?
                .clone()
        } else if flags & TOPIC_NEW != 0 {
            let len = c.varint()?;
            let t = c.bytes(len, crate::event::MAX_TOPIC_LEN)?;
            let t = String::from_utf8(t.to_vec()).map_err(|_| malformed("topic is not UTF-8"))?;
            if self.topics.len() < TOPICS {
                self.topics.push(t.clone());
                self.topic = self.topics.len() - 1;
            }
            t
        } else {
            let i = c.varint()?;
            let t = usize::try_from(i)
                .ok()
                .and_then(|i| self.topics.get(i).map(|t| (i, t.clone())))
                .ok_or_else(|| malformed(format!("topic {i} not known")))?;
            self.topic = t.0;
            t.1
        };
        let priority = if flags & PRIORITY_GIVEN != 0 {
            Priority::try_from(c.byte()?).map_err(malformed)?
        } else {
            self.priority
        };
        let z = c.varint()?;
        let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let hlc = Hlc(self.hlc.wrapping_add(delta as u64));
        let piece = if flags & KIND_PIECE != 0 {
            let total = u32::try_from(c.varint()?).map_err(|_| malformed("piece total beyond 32 bits"))?;
            let offset = u32::try_from(c.varint()?).map_err(|_| malformed("piece offset beyond 32 bits"))?;
            Some((total, offset))
        } else {
            None
        };
        let len = c.varint()?;
        let bytes = c.bytes(len, crate::event::MAX_PAYLOAD_LEN)?.to_vec();
        self.origin = Some(origin);
        self.seq = seq;
        self.hlc = hlc.0;
        self.priority = priority;
        Ok(match piece {
            None => Item::Event(Event {
                origin,
                seq,
                hlc,
                topic,
                priority,
                payload: bytes,
            }),
            Some((total, offset)) => Item::Piece(Piece {
                origin,
                seq,
                hlc,
                topic,
                priority,
                total,
                offset,
                bytes,
            }),
        })
    }
}

fn malformed(detail: impl ToString) -> FrameError {
    FrameError::Malformed {
        kind: "event chunk",
        detail: detail.to_string(),
    }
}

/// How hard a compressor works and how much it may remember.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// History the compressor matches against: 2^window_log bytes. The
    /// receiver refuses more than `WINDOW_LOG`.
    pub window_log: u32,
    /// zstd's chain and hash table logs (`None`: the level's default);
    /// smaller tables cost less memory and find fewer matches.
    pub chain_hash_log: Option<u32>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            window_log: WINDOW_LOG,
            chain_hash_log: None,
        }
    }
}

/// The last `PREFIX_BYTES` of a stream's encoded items, which both ends
/// keep so that a frame started after an idle spell compresses against what
/// came before it (see `StreamCompressor`).
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    /// Keeps the last `PREFIX_BYTES` of what it held and `raw`, in one
    /// allocation of that size (a hub keeps one per idle stream).
    fn extend(&mut self, raw: &[u8]) {
        let raw = &raw[raw.len().saturating_sub(PREFIX_BYTES)..];
        let over = (self.0.len() + raw.len()).saturating_sub(PREFIX_BYTES);
        self.0.drain(..over);
        let need = self.0.len() + raw.len();
        if self.0.capacity() < need {
            let grown = (2 * self.0.capacity()).clamp(need, PREFIX_BYTES);
            self.0.reserve_exact(grown - self.0.len());
        }
        self.0.extend_from_slice(raw);
    }

    fn prefix(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// What an end of a stream holds: its open frame's context and prefix, if
/// any, and the stream's tail.
fn held(frame: Option<(usize, &Vec<u8>)>, tail: &Tail) -> usize {
    frame.map_or(0, |(context, prefix)| context + prefix.capacity()) + tail.0.capacity()
}

type CompressContext<'a> = zstd::zstd_safe::CCtx<'a>;
type DecompressContext<'a> = zstd::zstd_safe::DCtx<'a>;

self_cell::self_cell!(
    /// A zstd frame being written: the context, and the prefix it refers
    /// to for the whole frame.
    struct CompressFrame {
        owner: Vec<u8>,
        #[covariant]
        dependent: CompressContext,
    }
);

self_cell::self_cell!(
    /// A zstd frame being read: the context, and the prefix it refers to.
    struct DecompressFrame {
        owner: Vec<u8>,
        #[covariant]
        dependent: DecompressContext,
    }
);

/// The sending end of a data stream. A burst of chunks is one zstd frame,
/// flushed per chunk. Its context (megabytes at the WAN level) may be
/// released when the stream falls idle (`compress_last`): the frame is
/// ended, and the next chunk starts a new one that refers to the stream's
/// last `PREFIX_BYTES` as a zstd prefix, which the receiver keeps too. A
/// live event after an idle spell so costs little more than one in a
/// frame kept open, and neither end holds a context meanwhile. The item
/// headers' state (`Codec`) lives on across frames, as the receiver's does.
pub struct StreamCompressor {
    /// `None` between frames.
    frame: Option<CompressFrame>,
    tail: Tail,
    level: i32,
    tuning: Tuning,
    codec: Codec,
}

impl StreamCompressor {
    /// A compressor at `level` with the window every receiver accepts and,
    /// above level 9, tables bounded to `WAN_TABLES_LOG`.
    pub fn new(level: i32) -> Self {
        Self::tuned(
            level,
            Tuning {
                window_log: WINDOW_LOG,
                chain_hash_log: (level > 9).then_some(WAN_TABLES_LOG),
            },
        )
    }

    pub fn tuned(level: i32, tuning: Tuning) -> Self {
        StreamCompressor {
            frame: None,
            tail: Tail::default(),
            level,
            tuning,
            codec: Codec::default(),
        }
    }

    fn context<'a>(level: i32, tuning: Tuning, prefix: &'a [u8]) -> CompressContext<'a> {
        use zstd::zstd_safe::CParameter as P;
        let mut cctx = CompressContext::create();
        // Setting documented parameters to values within their bounds
        // (levels are clamped by zstd, logs are constants of ours), and a
        // prefix on a fresh context, only fails when out of memory.
        let params = [Some(P::CompressionLevel(level)), Some(P::WindowLog(tuning.window_log))]
            .into_iter()
            .chain(
                tuning
                    .chain_hash_log
                    .map(|l| [Some(P::ChainLog(l)), Some(P::HashLog(l))])
                    .unwrap_or_default(),
            );
        for p in params.flatten() {
            cctx.set_parameter(p).expect("zstd parameter");
        }
        if !prefix.is_empty() {
            cctx.ref_prefix(prefix).expect("zstd prefix");
        }
        cctx
    }

    /// Memory the compressor holds, in bytes: its context and prefix while
    /// a frame is open, and the stream's tail.
    pub fn memory(&self) -> usize {
        let frame = self.frame.as_ref();
        held(
            frame.map(|f| (f.borrow_dependent().sizeof(), f.borrow_owner())),
            &self.tail,
        )
    }

    /// The next chunk of the stream, carrying `items`.
    pub fn compress(&mut self, items: &[Item]) -> Vec<u8> {
        let raw = self.encode(items);
        self.compress_raw(&raw, false)
    }

    /// As `compress`, and ends the zstd frame and frees the context: the
    /// stream falls idle. The next chunk starts a new frame from the
    /// stream's prefix.
    pub fn compress_last(&mut self, items: &[Item]) -> Vec<u8> {
        let raw = self.encode(items);
        self.compress_raw(&raw, true)
    }

    /// Whether a frame is open (the context held).
    pub fn in_frame(&self) -> bool {
        self.frame.is_some()
    }

    fn encode(&mut self, items: &[Item]) -> Vec<u8> {
        let mut raw = Vec::new();
        for item in items {
            self.codec.encode(item, &mut raw);
        }
        raw
    }

    /// `compress_raw`, for the measurements of `examples/zstd-table.rs`.
    #[doc(hidden)]
    pub fn compress_raw_for_table(&mut self, raw: &[u8]) -> Vec<u8> {
        self.compress_raw(raw, false)
    }

    /// Compresses `raw` and flushes, so the receiver can decode all of it;
    /// with `last`, ends the frame and drops the context.
    fn compress_raw(&mut self, raw: &[u8], last: bool) -> Vec<u8> {
        use zstd::zstd_safe::{zstd_sys::ZSTD_EndDirective, InBuffer, OutBuffer};
        let (level, tuning) = (self.level, self.tuning);
        let tail = &self.tail;
        let frame = self
            .frame
            .get_or_insert_with(|| CompressFrame::new(tail.prefix(), |p| Self::context(level, tuning, p)));
        let directive = if last {
            ZSTD_EndDirective::ZSTD_e_end
        } else {
            ZSTD_EndDirective::ZSTD_e_flush
        };
        let mut out: Vec<u8> = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()) + 64);
        let mut input = InBuffer::around(raw);
        frame.with_dependent_mut(|_, cctx| loop {
            let pos = out.len();
            let mut ob = OutBuffer::around_pos(&mut out, pos);
            // Fails only on a context in error, which ours cannot be: its
            // parameters were valid and the output always has room.
            let left = cctx
                .compress_stream2(&mut ob, &mut input, directive)
                .expect("zstd compress");
            if left == 0 && input.pos() == raw.len() {
                break;
            }
            out.reserve(left.max(4096));
        });
        self.tail.extend(raw);
        if last {
            self.frame = None;
        }
        // Sized for the worst case; the frame waits in queues until sent.
        out.shrink_to_fit();
        out
    }
}

/// The receiving end of a data stream. Its zstd context is freed when a
/// frame ends (the sender's stream fell idle, `compress_last`) and made
/// again, from the stream's prefix, for the next frame; the item headers'
/// state lives on.
pub struct StreamDecompressor {
    /// `None` between frames.
    frame: Option<DecompressFrame>,
    tail: Tail,
    codec: Codec,
}

impl StreamDecompressor {
    pub fn new() -> Self {
        StreamDecompressor {
            frame: None,
            tail: Tail::default(),
            codec: Codec::default(),
        }
    }

    /// Memory the decompressor holds, in bytes.
    pub fn memory(&self) -> usize {
        let frame = self.frame.as_ref();
        held(
            frame.map(|f| (f.borrow_dependent().sizeof(), f.borrow_owner())),
            &self.tail,
        )
    }

    fn context(prefix: &[u8]) -> DecompressContext<'_> {
        use zstd::zstd_safe::DParameter;
        let mut d = DecompressContext::create();
        // A documented parameter within its bounds, and a prefix on a fresh
        // context: fail only when out of memory.
        d.set_parameter(DParameter::WindowLogMax(WINDOW_LOG))
            .expect("zstd window");
        if !prefix.is_empty() {
            d.ref_prefix(prefix).expect("zstd prefix");
        }
        d
    }

    /// The bytes of a chunk, at most `MAX_BATCH_DECOMPRESSED` of them.
    fn inflate(&mut self, chunk: &[u8]) -> Result<Vec<u8>, FrameError> {
        use zstd::zstd_safe::{InBuffer, OutBuffer};
        let mut raw: Vec<u8> = Vec::with_capacity((4 * chunk.len()).clamp(4096, MAX_BATCH_DECOMPRESSED + 1));
        let mut input = InBuffer::around(chunk);
        // Of `raw`, what the tail already has.
        let mut kept = 0;
        loop {
            if self.frame.is_none() {
                self.tail.extend(&raw[kept..]);
                kept = raw.len();
                if input.pos() == chunk.len() {
                    return Ok(raw);
                }
                // A frame may start mid-chunk: its prefix ends with what
                // the frame before it gave.
                self.frame = Some(DecompressFrame::new(self.tail.prefix(), |p| Self::context(p)));
            }
            let frame = self.frame.as_mut().expect("made above when missing");
            let pos = raw.len();
            let mut out = OutBuffer::around_pos(&mut raw, pos);
            let hint = frame
                .with_dependent_mut(|_, dctx| dctx.decompress_stream(&mut out, &mut input))
                .map_err(|code| malformed(zstd::zstd_safe::get_error_name(code)))?;
            let full = out.pos() == out.capacity();
            if hint == 0 {
                // The frame is whole: free its context.
                self.frame = None;
            }
            if raw.len() > MAX_BATCH_DECOMPRESSED {
                return Err(malformed("chunk decompresses beyond the limit"));
            }
            if input.pos() == chunk.len() && !full && self.frame.is_some() {
                self.tail.extend(&raw[kept..]);
                return Ok(raw);
            }
            if full {
                // Doubling, up to one byte past the limit (which fails).
                let room = raw.capacity().min(MAX_BATCH_DECOMPRESSED + 1 - raw.len());
                raw.reserve_exact(room);
            }
        }
    }

    /// Decodes the next chunk of the stream. After an error the stream is
    /// unusable: the caller ends it.
    pub fn decompress(&mut self, chunk: &[u8]) -> Result<Vec<Item>, FrameError> {
        let raw = self.inflate(chunk)?;
        let mut cursor = Cursor(&raw);
        let mut items = Vec::new();
        while !cursor.0.is_empty() {
            items.push(self.codec.decode(&mut cursor)?);
        }
        for item in &items {
            match item {
                Item::Event(e) => e
                    .validate()
                    .map_err(|err| malformed(format!("event {}:{}: {err}", e.origin, e.seq)))?,
                Item::Piece(p) => {
                    let end = p.offset as u64 + p.bytes.len() as u64;
                    let shell = Event {
                        origin: p.origin,
                        seq: p.seq,
                        hlc: p.hlc,
                        topic: p.topic.clone(),
                        priority: p.priority,
                        payload: Vec::new(),
                    };
                    shell
                        .validate()
                        .map_err(|err| malformed(format!("piece {}:{}: {err}", p.origin, p.seq)))?;
                    if p.total as usize > crate::event::MAX_PAYLOAD_LEN || end > p.total as u64 || p.bytes.is_empty() {
                        return Err(malformed(format!(
                            "piece {}:{} covers {}..{end} of {} bytes",
                            p.origin, p.seq, p.offset, p.total
                        )));
                    }
                }
            }
        }
        Ok(items)
    }
}

impl Default for StreamDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

/// The piece of a large event starting at `offset`, at most `BATCH_BYTES`
/// long; `None` past its end.
pub fn piece(e: &Event, offset: usize) -> Option<Piece> {
    let end = offset.checked_add(crate::frame::BATCH_BYTES)?.min(e.payload.len());
    let bytes = e.payload.get(offset..end).filter(|b| !b.is_empty())?;
    Some(Piece {
        origin: e.origin,
        seq: e.seq,
        hlc: e.hlc,
        topic: e.topic.clone(),
        priority: e.priority,
        total: e.payload.len() as u32,
        offset: offset as u32,
        bytes: bytes.to_vec(),
    })
}

/// Every piece of an event, in order.
pub fn pieces(e: &Event) -> Vec<Piece> {
    (0..e.payload.len())
        .step_by(crate::frame::BATCH_BYTES)
        .filter_map(|offset| piece(e, offset))
        .collect()
}

/// Puts an event back together from its pieces as they arrive, in order.
#[derive(Debug, Default)]
pub struct Assembly {
    partial: Option<(Piece, Vec<u8>)>,
}

impl Assembly {
    /// Takes the next piece; the whole event once its last piece is in.
    pub fn add(&mut self, p: Piece) -> Result<Option<Event>, String> {
        let (head, buf) = match self.partial.take() {
            None if p.offset == 0 => {
                let mut buf = Vec::with_capacity(p.total as usize);
                buf.extend_from_slice(&p.bytes);
                (p, buf)
            }
            None => {
                return Err(format!(
                    "piece of {}:{} at offset {} without its start",
                    p.origin, p.seq, p.offset
                ))
            }
            Some((head, mut buf)) => {
                if (p.origin, p.seq, p.total) != (head.origin, head.seq, head.total) || p.offset as usize != buf.len() {
                    return Err(format!(
                        "piece of {}:{} at {} interrupts {}:{} at {}",
                        p.origin,
                        p.seq,
                        p.offset,
                        head.origin,
                        head.seq,
                        buf.len()
                    ));
                }
                buf.extend_from_slice(&p.bytes);
                (head, buf)
            }
        };
        if buf.len() < head.total as usize {
            self.partial = Some((head, buf));
            return Ok(None);
        }
        Ok(Some(Event {
            origin: head.origin,
            seq: head.seq,
            hlc: head.hlc,
            topic: head.topic,
            priority: head.priority,
            payload: buf,
        }))
    }

    /// Whether an event is half received.
    pub fn in_progress(&self) -> Option<(Origin, u64)> {
        self.partial.as_ref().map(|(p, _)| (p.origin, p.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::arb_event;
    use crate::{Hlc, NodeId, Origin, Priority};
    use proptest::prelude::*;
    use std::io::Write;

    fn clinic_event(i: u64) -> Event {
        let payload = format!(
            r#"{{"type":"vitals","clinic":"BHU-GASA","patient_id":"BT-TH-{:06}","systolic":{},"pulse":{},"recorded_by":"Sonam Lhamo"}}"#,
            (i * 7919) % 1_000_000,
            90 + i % 90,
            48 + (i * 31) % 80
        );
        Event {
            origin: Origin {
                node: NodeId([3; 16]),
                epoch: 1,
            },
            seq: i + 1,
            hlc: Hlc::new(1_700_000_000_000 + i * 1000, 0),
            topic: "clinic/visit".into(),
            priority: Priority::Normal,
            payload: payload.into_bytes(),
        }
    }

    proptest! {
        #[test]
        fn chunks_decode_in_order(batches in proptest::collection::vec(proptest::collection::vec(arb_event(), 0..6), 1..6)) {
            let mut c = StreamCompressor::new(LEVEL_WAN);
            let mut d = StreamDecompressor::new();
            for (i, batch) in batches.into_iter().enumerate() {
                let items: Vec<Item> = batch.into_iter().map(|mut e| { e.topic.truncate(100); Item::Event(e) }).collect();
                // Every third chunk ends its frame, as an idle lane does.
                let z = if i % 3 == 1 { c.compress_last(&items) } else { c.compress(&items) };
                prop_assert_eq!(d.decompress(&z).unwrap(), items);
            }
        }

        #[test]
        fn garbage_chunks_are_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = StreamDecompressor::new().decompress(&bytes);
        }

        #[test]
        fn pieces_reassemble(len in 1usize..200_000, seed in any::<u8>()) {
            let mut e = clinic_event(1);
            e.payload = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
            let mut a = Assembly::default();
            let ps = pieces(&e);
            let n = ps.len();
            for (i, p) in ps.into_iter().enumerate() {
                let out = a.add(p).unwrap();
                prop_assert_eq!(out.is_some(), i + 1 == n);
                if let Some(back) = out { prop_assert_eq!(&back, &e); }
            }
        }
    }

    #[test]
    fn shared_context_beats_separate_batches() {
        let events: Vec<Event> = (0..1024).map(clinic_event).collect();
        let mut c = StreamCompressor::new(LEVEL_WAN);
        let items: Vec<Item> = events.iter().cloned().map(Item::Event).collect();
        let streamed: usize = items.chunks(128).map(|b| c.compress(b).len()).sum();
        let separate: usize = events
            .chunks(128)
            .map(|b| {
                let items: Vec<Item> = b.iter().cloned().map(Item::Event).collect();
                StreamCompressor::new(LEVEL_WAN).compress(&items).len()
            })
            .sum();
        println!("1024 events in 8 batches: {streamed} bytes streamed, {separate} separately");
        assert!(
            streamed * 10 < separate * 9,
            "streamed {streamed} vs separate {separate}"
        );
    }

    #[test]
    fn headers_cost_a_few_bytes_and_survive_a_full_topic_dictionary() {
        // Consecutive events of one origin and topic: flags, clock delta,
        // length; nothing else.
        let mut codec = Codec::default();
        let mut raw = Vec::new();
        let events: Vec<Event> = (0..100).map(clinic_event).collect();
        for e in &events {
            codec.encode(&Item::Event(e.clone()), &mut raw);
        }
        let payloads: usize = events.iter().map(|e| e.payload.len()).sum();
        let headers = raw.len() - payloads;
        assert!(headers < 100 * 8 + 40, "{headers} bytes of headers for 100 events");
        // More topics than the dictionary holds, mixed priorities, pieces.
        let mut items = Vec::new();
        for i in 0..200u64 {
            let mut e = clinic_event(i);
            e.topic = format!("topic/{}", i % 90);
            e.priority = Priority::try_from((i % 3) as u8).unwrap(); // < 3
            if i % 50 == 7 {
                e.payload = vec![9; crate::frame::BATCH_BYTES + 5];
                items.extend(pieces(&e).into_iter().map(Item::Piece));
            } else {
                items.push(Item::Event(e));
            }
        }
        let mut c = StreamCompressor::new(LEVEL_WAN);
        let mut d = StreamDecompressor::new();
        for chunk in items.chunks(7) {
            assert_eq!(d.decompress(&c.compress(chunk)).unwrap(), chunk); // our own encoding
        }
    }

    #[test]
    fn an_idle_stream_frees_both_contexts_and_goes_on_with_a_new_frame() {
        let items: Vec<Item> = (0..40).map(clinic_event).map(Item::Event).collect();
        let mut c = StreamCompressor::new(LEVEL_WAN);
        let mut d = StreamDecompressor::new();
        // A burst, held in one frame.
        assert_eq!(d.decompress(&c.compress(&items[..10])).unwrap(), &items[..10]);
        assert!(c.memory() > 0 && d.memory() > 0);
        // Its last chunk ends the frame: neither end keeps a context, only
        // the stream's prefix.
        assert_eq!(d.decompress(&c.compress_last(&items[10..20])).unwrap(), &items[10..20]);
        assert!(c.memory() <= PREFIX_BYTES && d.memory() <= PREFIX_BYTES);
        // The next burst starts a new frame; the item headers carry on
        // from the same origin and topic.
        assert_eq!(d.decompress(&c.compress(&items[20..30])).unwrap(), &items[20..30]);
        assert_eq!(d.decompress(&c.compress_last(&items[30..])).unwrap(), &items[30..]);
        assert!(c.memory() <= PREFIX_BYTES && d.memory() <= PREFIX_BYTES);
    }

    #[test]
    fn a_frame_after_an_idle_spell_compresses_against_the_streams_prefix() {
        let items: Vec<Item> = (0..200).map(clinic_event).map(Item::Event).collect();
        let mut c = StreamCompressor::new(LEVEL_WAN);
        let mut d = StreamDecompressor::new();
        assert_eq!(d.decompress(&c.compress_last(&items[..199])).unwrap(), &items[..199]);
        assert!(!c.in_frame());
        let alone = StreamCompressor::new(LEVEL_WAN).compress_last(&items[199..]).len();
        let z = c.compress_last(&items[199..]);
        assert!(z.len() * 2 < alone, "{} B with the prefix, {alone} B without", z.len());
        assert_eq!(d.decompress(&z).unwrap(), &items[199..]);
        // Idle, each end keeps the prefix and no context.
        assert!(c.memory() <= PREFIX_BYTES && d.memory() <= PREFIX_BYTES);
        // A receiver without the stream's past cannot read it: an error,
        // never a panic or wrong events.
        let mut stranger = StreamDecompressor::new();
        stranger.codec = d.codec.clone();
        assert!(stranger.decompress(&z).is_err());
    }

    #[test]
    fn a_tail_keeps_the_last_prefix_bytes_in_one_allocation_of_that_size() {
        let stream: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut tail = Tail::default();
        tail.extend(&stream[..10]);
        assert_eq!(tail.prefix(), &stream[..10]);
        let mut at = 10;
        for len in [5_000, 70_000, 1, 30_000, 40_000, 3] {
            tail.extend(&stream[at..at + len]);
            at += len;
            assert_eq!(tail.prefix(), &stream[at.saturating_sub(PREFIX_BYTES)..at]);
            assert!(tail.0.capacity() <= PREFIX_BYTES, "{} bytes", tail.0.capacity());
        }
    }

    #[test]
    fn frames_ending_and_starting_inside_one_chunk_keep_the_prefix_right() {
        let items: Vec<Item> = (0..60).map(clinic_event).map(Item::Event).collect();
        let mut c = StreamCompressor::new(LEVEL_WAN);
        let mut d = StreamDecompressor::new();
        let mut joined = Vec::new();
        for chunk in items.chunks(6) {
            joined.extend(c.compress_last(chunk));
        }
        assert_eq!(d.decompress(&joined).unwrap(), items);
        let last = c.compress(&items[..3]);
        assert_eq!(d.decompress(&last).unwrap(), &items[..3]);
    }

    #[test]
    fn a_bomb_is_refused() {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        enc.write_all(&vec![0u8; MAX_BATCH_DECOMPRESSED + 1]).unwrap();
        let z = enc.finish().unwrap();
        assert!(StreamDecompressor::new().decompress(&z).is_err());
    }

    #[test]
    fn out_of_order_pieces_are_refused() {
        let mut e = clinic_event(1);
        e.payload = vec![7; 3 * crate::frame::BATCH_BYTES];
        let ps = pieces(&e);
        assert!(Assembly::default().add(ps[1].clone()).is_err());
        let mut a = Assembly::default();
        a.add(ps[0].clone()).unwrap();
        assert!(a.add(ps[2].clone()).is_err());
    }
}
