//! ferry's write-ahead log: durable, encrypted, segmented, append-only.
//!
//! One writer thread owns the files, the hybrid logical clock and the
//! idempotency keys; appends from any thread or task are queued to it and
//! committed in groups (many appends, one fsync). An append returns only
//! after its group's fsync. Readers use the in-memory index, which only ever
//! points at durable records. Time comes only from `WalOptions::clock`.

mod idem;
mod index;
pub mod key;
mod open;
mod perms;
mod record;
mod rekey;
mod scan;
mod seal;
mod writer;

pub use key::{Keyring, WalKey};
pub use rekey::rekey;

use ferry_proto::{Event, Origin, Priority, Summary};
use index::Index;
use record::{decode_record, parse_record, HeaderError, Record, SegmentHeader};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::oneshot;

pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// How long an idempotency key is remembered unless `WalOptions` says
/// otherwise: a day covers a client retrying across a night's power cut.
pub const DEFAULT_IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Unix time in milliseconds. The WAL reads the time only through this, so a
/// test or a simulator decides what time it is.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The machine's clock; before 1970 (a board without an RTC after a power
/// cut) it reads 0, and the hybrid logical clock still moves forward.
pub fn system_clock() -> WallClock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("could not {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk full while writing {path}: nothing from the failed append was kept and nothing acknowledged was lost; free space and retry")]
    DiskFull { path: PathBuf },
    #[error(
        "{path} is in use by another ferry process (a running `ferry run`?); stop it or send the command through it"
    )]
    Locked { path: PathBuf },
    #[error("{path} was written with the key {found}, which is not the key given ({given}); point ferry at the right key file. Nothing was changed")]
    WrongKey {
        path: PathBuf,
        found: String,
        given: String,
    },
    #[error("{path} is damaged at offset {offset}: {reason}. Nothing was changed; restore this file from a backup or a peer")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("key file {path} holds {len} bytes; a WAL key is exactly 32")]
    BadKeyFile { path: PathBuf, len: usize },
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    #[error("{path} was written by a newer ferry (WAL format version {version}; this build reads up to {supported}). Nothing was changed; run the newer ferry")]
    NewerFormat {
        path: PathBuf,
        version: u16,
        supported: u16,
    },
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(String),
    #[error("idempotency key {key:?} was already used for a different request (other events); a new request needs a new key")]
    IdempotencyKeyReused { key: String },
    #[error("the log {0} has used every sequence number (it holds an event at the largest one, from a peer or a damaged file); start a new log epoch")]
    SeqExhausted(String),
    #[error("the WAL was opened read-only")]
    ReadOnly,
    #[error("the WAL writer has stopped after an earlier failure ({0}); restart ferry")]
    WriterStopped(String),
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::StorageFull {
            return WalError::DiskFull {
                path: path.to_path_buf(),
            };
        }
        WalError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

pub struct WalOptions {
    pub dir: PathBuf,
    pub keys: Keyring,
    /// The log this node writes its own events to.
    pub local_origin: Origin,
    pub segment_bytes: u64,
    /// Read without taking the lock, truncating or writing: for looking at a
    /// WAL another process is writing.
    pub read_only: bool,
    /// Stamps local events (through the hybrid logical clock) and dates
    /// idempotency keys.
    pub clock: WallClock,
    /// How long, by `clock`, a key given to `append_local_once` is
    /// remembered. A retry after that writes the events again.
    pub idempotency_window: std::time::Duration,
}

impl WalOptions {
    pub fn new(dir: impl Into<PathBuf>, keys: Keyring, local_origin: Origin) -> Self {
        WalOptions {
            dir: dir.into(),
            keys,
            local_origin,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            read_only: false,
            clock: system_clock(),
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
        }
    }
}

/// A local event before the WAL gives it a sequence number and timestamp.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub topic: String,
    pub priority: Priority,
    pub payload: Vec<u8>,
}

/// The answer to `append_local_once`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOnce {
    /// `(origin, seq)` of each event of the request, in request order. The
    /// same on a replay as on the first call.
    pub events: Vec<(Origin, u64)>,
    /// True when an earlier call with the same key (perhaps before a restart
    /// or crash) stored these events, and this call stored nothing.
    pub replayed: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendReport {
    pub stored: u64,
    /// Events already held: idempotent no-ops.
    pub duplicates: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct WalStats {
    pub events: u64,
    pub bytes: u64,
    pub segments: usize,
    /// Group commits (fsyncs) since open.
    pub commits: u64,
    /// How long each group's fdatasync took.
    pub fsync: FsyncHistogram,
}

/// Upper bounds of the fsync latency buckets, in seconds: an SSD syncs in
/// well under a millisecond, an SD card in tens to hundreds.
pub const FSYNC_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Counts of fsyncs per latency bucket (not cumulative), their number and
/// their total seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsyncHistogram {
    pub buckets: [u64; FSYNC_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

/// The writer's side of `FsyncHistogram`: added to without a lock.
#[derive(Default)]
struct FsyncTimes {
    buckets: [AtomicU64; FSYNC_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl FsyncTimes {
    fn observe(&self, took: std::time::Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = FSYNC_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> FsyncHistogram {
        FsyncHistogram {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

struct SegmentFile {
    path: PathBuf,
    /// Format version from the header: the writer appends only to segments
    /// of the current version.
    version: u16,
    file: Arc<File>,
    key: Option<WalKey>,
}

struct Shared {
    dir: PathBuf,
    index: RwLock<Index>,
    segments: RwLock<BTreeMap<u32, SegmentFile>>,
    bytes: AtomicU64,
    commits: AtomicU64,
    fsync: FsyncTimes,
    appended: tokio::sync::watch::Sender<u64>,
}

/// The log this node writes its own events to, and the one its next local
/// write starts instead after a close the WAL could not vouch for (see
/// `seal`). One lock, so the switch and the write that causes it are one step.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OwnLog {
    pub current: Origin,
    pub next: Option<Origin>,
}

pub struct Wal {
    shared: Arc<Shared>,
    local_origin: Arc<RwLock<OwnLog>>,
    /// The last close left a seal matching what was recovered.
    closed_cleanly: bool,
    tx: Option<std::sync::mpsc::Sender<writer::Command>>,
    writer: Option<std::thread::JoinHandle<()>>,
    _lock: Option<File>,
}

fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.seg"))
}

pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| WalError::io("list WAL directory", dir, e))? {
        let entry = entry.map_err(|e| WalError::io("list WAL directory", dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(n) = stem.parse::<u32>() {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn header_error(path: &Path, e: HeaderError) -> WalError {
    match e {
        HeaderError::Bad(reason) => WalError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason,
        },
        HeaderError::Newer(version) => WalError::NewerFormat {
            path: path.to_path_buf(),
            version,
            supported: record::VERSION,
        },
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io("sync directory", dir, e))
}

pub(crate) fn key_for<'a>(keys: &'a Keyring, path: &Path, h: &SegmentHeader) -> Result<Option<&'a WalKey>, WalError> {
    if h.cipher == record::CIPHER_NONE {
        return Ok(None);
    }
    keys.find(&h.fingerprint).map(Some).ok_or_else(|| WalError::WrongKey {
        path: path.to_path_buf(),
        found: key::hex(&h.fingerprint),
        given: keys
            .current
            .as_ref()
            .map(|k| key::hex(&k.fingerprint()))
            .unwrap_or_else(|| "no key".into()),
    })
}

/// Takes the WAL directory's lock, so two writers never open one WAL.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join("LOCK");
    let f = perms::private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io("open lock file", &path, e))?;
    // A lock may be held for a moment by a process that is not a writer: a
    // child between fork and exec holds every descriptor its parent had
    // open (a test node failed to start right after `ferry init` had
    // closed its WAL, while other tests spawned processes); a CLI command
    // opening the WAL holds it while a daemon starts. A writer holds it
    // for longer than this.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(WalError::Locked {
                    path: dir.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(WalError::io("lock", &path, e)),
        }
    }
}

impl Wal {
    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // A poisoned lock means a panic while holding it; the index is only
        // mutated by infallible code, so its contents are still consistent.
        self.shared.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn local_origin(&self) -> Origin {
        self.local_origin.read().unwrap_or_else(|p| p.into_inner()).current
    }

    fn send(&self, cmd: writer::Command) -> Result<(), WalError> {
        let tx = self.tx.as_ref().ok_or(WalError::ReadOnly)?;
        tx.send(cmd)
            .map_err(|_| WalError::WriterStopped("writer thread exited".into()))
    }

    /// Appends this node's own events; returns them with seq and HLC set,
    /// after they are durable.
    pub async fn append_local(&self, items: Vec<NewEvent>) -> Result<Vec<Event>, WalError> {
        let (tx, rx) = oneshot::channel();
        self.send(writer::Command::Local(items, tx))?;
        rx.await
            .map_err(|_| WalError::WriterStopped("writer thread exited".into()))?
    }

    pub fn append_local_blocking(&self, items: Vec<NewEvent>) -> Result<Vec<Event>, WalError> {
        let (tx, rx) = oneshot::channel();
        self.send(writer::Command::Local(items, tx))?;
        rx.blocking_recv()
            .map_err(|_| WalError::WriterStopped("writer thread exited".into()))?
    }

    /// Appends this node's own events once per `key`: the first call stores
    /// them and returns their `(origin, seq)`; a later call with the same key
    /// and the same request stores nothing and returns the first answer. This
    /// holds across restarts and crashes, since the key is committed in the
    /// same group (one fsync, recovered whole or not at all) as its events.
    /// A key is remembered for `WalOptions::idempotency_window`, measured by
    /// `WalOptions::clock` from when it was stored. The same key with a
    /// different request (topic, priority or payload) is refused with
    /// `IdempotencyKeyReused`. Keys are 1 to `MAX_IDEMPOTENCY_KEY_LEN` bytes
    /// and encrypted on disk like payloads.
    pub async fn append_local_once(&self, key: &str, items: Vec<NewEvent>) -> Result<AppendOnce, WalError> {
        let (tx, rx) = oneshot::channel();
        self.send(writer::Command::LocalOnce(key.to_owned(), items, tx))?;
        rx.await
            .map_err(|_| WalError::WriterStopped("writer thread exited".into()))?
    }

    pub fn append_local_once_blocking(&self, key: &str, items: Vec<NewEvent>) -> Result<AppendOnce, WalError> {
        let (tx, rx) = oneshot::channel();
        self.send(writer::Command::LocalOnce(key.to_owned(), items, tx))?;
        rx.blocking_recv()
            .map_err(|_| WalError::WriterStopped("writer thread exited".into()))?
    }

    /// Appends events received from peers. Events already held are skipped.
    pub async fn append_replicated(&self, events: Vec<Event>) -> Result<AppendReport, WalError> {
        let (tx, rx) = oneshot::channel();
        self.send(writer::Command::Replicated(events, tx))?;
        rx.await
            .map_err(|_| WalError::WriterStopped("writer thread exited".into()))?
    }

    pub fn append_replicated_blocking(&self, events: Vec<Event>) -> Result<AppendReport, WalError> {
        let (tx, rx) = oneshot::channel();
        self.send(writer::Command::Replicated(events, tx))?;
        rx.blocking_recv()
            .map_err(|_| WalError::WriterStopped("writer thread exited".into()))?
    }

    /// Starts a new log for this node's own events (see `Origin`).
    pub fn set_local_origin(&self, origin: Origin) {
        *self.local_origin.write().unwrap_or_else(|p| p.into_inner()) = OwnLog {
            current: origin,
            next: None,
        };
    }

    /// Whether the last close sealed the WAL and what was recovered matches
    /// the seal. If not, the tail of the own log may be gone (a power cut on
    /// a card that lies about fsync, a disk image written back) while peers
    /// hold it.
    pub fn closed_cleanly(&self) -> bool {
        self.closed_cleanly
    }

    /// The own log's tail is not vouched for: the next local write starts
    /// the log `next` instead. The caller makes `next` durable before
    /// calling this (the WAL does not know where the node keeps its epoch).
    pub fn set_unconfirmed_tail(&self, next: Origin) {
        self.local_origin.write().unwrap_or_else(|p| p.into_inner()).next = Some(next);
    }

    /// Whether the next local write will start a new log.
    pub fn tail_unconfirmed(&self) -> bool {
        self.local_origin
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .next
            .is_some()
    }

    pub fn summary(&self) -> Summary {
        self.index().summary()
    }

    /// The sequence numbers held of one origin.
    pub fn have(&self, origin: &Origin) -> ferry_proto::RangeSet {
        self.index().have(origin)
    }

    /// Whether one event is held.
    pub fn holds(&self, origin: &Origin, seq: u64) -> bool {
        self.index().contains(origin, seq)
    }

    /// Which held events are urgent or bulk.
    pub fn classes(&self) -> ferry_proto::Classes {
        self.index().classes()
    }

    /// Stored events of `origin` in `first..=last`, ascending, at most `limit`.
    pub fn read_range(&self, origin: &Origin, first: u64, last: u64, limit: usize) -> Result<Vec<Event>, WalError> {
        self.read_range_capped(origin, first, last, limit, usize::MAX)
    }

    /// Like `read_range`, and also stops before the payloads' total length
    /// would pass `max_bytes`, so a sender can fill a frame of bounded size.
    /// The first event held in the range is returned whatever its size (when
    /// `max_events > 0`): a caller that loops from the last seq returned
    /// always makes progress, even past an event larger than its cap.
    pub fn read_range_capped(
        &self,
        origin: &Origin,
        first: u64,
        last: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, WalError> {
        let mut out = Vec::new();
        if max_events == 0 || first > last {
            return Ok(out);
        }
        let chunks = self.index().chunks_for(origin, first, last);
        let mut bytes = 0usize;
        let mut buf = Vec::new();
        for (_, chunk) in chunks {
            let (path, file, key) = {
                let segs = self.shared.segments.read().unwrap_or_else(|p| p.into_inner());
                let Some(s) = segs.get(&chunk.segment) else {
                    return Err(WalError::Corrupt {
                        path: segment_path(&self.shared.dir, chunk.segment),
                        offset: chunk.start,
                        reason: "segment named by the index is missing".into(),
                    });
                };
                (s.path.clone(), s.file.clone(), s.key.clone())
            };
            buf.resize((chunk.end - chunk.start) as usize, 0);
            file.read_exact_at(&mut buf, chunk.start)
                .map_err(|e| WalError::io("read segment", &path, e))?;
            let mut pos = 0usize;
            while pos < buf.len() {
                let corrupt = |reason: String| WalError::Corrupt {
                    path: path.clone(),
                    offset: chunk.start + pos as u64,
                    reason,
                };
                let rec = parse_record(&buf[pos..]).map_err(|e| corrupt(format!("{e:?}")))?;
                if let Record::Event(meta) = rec {
                    if meta.origin == *origin && (first..=last).contains(&meta.seq) {
                        let e = decode_record(&buf[pos..], &meta, key.as_ref()).map_err(corrupt)?;
                        bytes = bytes.saturating_add(e.payload.len());
                        if bytes > max_bytes && !out.is_empty() {
                            return Ok(out);
                        }
                        out.push(e);
                        if out.len() >= max_events {
                            return Ok(out);
                        }
                    }
                }
                pos += rec.len() as usize;
            }
        }
        // Chunks come in seq order and hold consecutive seqs: `out` is sorted.
        Ok(out)
    }

    pub fn stats(&self) -> WalStats {
        let index = self.index();
        WalStats {
            events: index.events,
            bytes: self.shared.bytes.load(Ordering::Relaxed),
            segments: self.shared.segments.read().unwrap_or_else(|p| p.into_inner()).len(),
            commits: self.shared.commits.load(Ordering::Relaxed),
            fsync: self.shared.fsync.snapshot(),
        }
    }

    /// Ticks with the total number of stored events after every commit.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.appended.subscribe()
    }

    /// Waits for queued appends to finish and stops the writer.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.tx.take();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}
