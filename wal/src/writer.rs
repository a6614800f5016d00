//! The single writer thread: group commit.
//!
//! It blocks for one command, drains whatever else is queued (up to a byte
//! budget), writes all records plus one commit record with one `write`, and
//! calls `fdatasync` once. Only then does it update the index and answer.

use crate::idem::{request_digest, KeyEntry, KeyTable};
use crate::index::Index;
use crate::record::{encode_commit, encode_key_record, encode_record, SegmentHeader, HEADER_LEN, VERSION};
use crate::{
    segment_path, sync_dir, AppendOnce, AppendReport, NewEvent, OwnLog, SegmentFile, Shared, WalError, WalKey,
    WallClock, MAX_IDEMPOTENCY_KEY_LEN,
};
use ferry_proto::event::check_limits;
use ferry_proto::{Clock, Event, Hlc, Origin};
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, RwLock};
use tokio::sync::oneshot;

/// A group stops taking more appends beyond this many bytes.
const GROUP_BYTES: usize = 4 << 20;

pub enum Command {
    Local(Vec<NewEvent>, oneshot::Sender<Result<Vec<Event>, WalError>>),
    LocalOnce(String, Vec<NewEvent>, oneshot::Sender<Result<AppendOnce, WalError>>),
    Replicated(Vec<Event>, oneshot::Sender<Result<AppendReport, WalError>>),
}

struct Writer {
    shared: Arc<Shared>,
    local_origin: Arc<RwLock<OwnLog>>,
    key: Option<WalKey>,
    segment_bytes: u64,
    wall: WallClock,
    clock: Clock,
    keys: KeyTable,
    file: File,
    segment: u32,
    len: u64,
    stopped: Option<String>,
}

pub(crate) fn start(
    shared: Arc<Shared>,
    local_origin: Arc<RwLock<OwnLog>>,
    key: Option<WalKey>,
    segment_bytes: u64,
    last_hlc: Hlc,
    wall: WallClock,
    keys: KeyTable,
) -> Result<(Sender<Command>, std::thread::JoinHandle<()>), WalError> {
    let last = shared
        .segments
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .next_back()
        .map(|(n, s)| {
            // Readers open a segment's records with the key its header names,
            // so the writer may only continue a segment under its own key
            // (encryption turned on or off, a rekey cut short) and of its
            // own version (an older build's segment is left as it is).
            let same_key = s.key.as_ref().map(|k| k.fingerprint()) == key.as_ref().map(|k| k.fingerprint());
            (*n, s.path.clone(), same_key && s.version == VERSION)
        });
    let (file, segment, len) = match last {
        Some((n, _, false)) => create_segment(&shared, n + 1, key.as_ref())?,
        Some((n, path, true)) => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| WalError::io("open segment", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| WalError::io("stat segment", &path, e))?
                .len();
            (file, n, len)
        }
        None => create_segment(&shared, 1, key.as_ref())?,
    };
    let mut w = Writer {
        shared,
        local_origin,
        key,
        segment_bytes,
        wall,
        clock: Clock::starting_after(last_hlc),
        keys,
        file,
        segment,
        len,
        stopped: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("ferry-wal-writer".into())
        .spawn(move || w.run(rx))
        .map_err(|e| WalError::WriterStopped(format!("cannot start writer thread: {e}")))?;
    Ok((tx, handle))
}

fn create_segment(shared: &Shared, n: u32, key: Option<&WalKey>) -> Result<(File, u32, u64), WalError> {
    let path = segment_path(&shared.dir, n);
    let file = crate::perms::private_file()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| WalError::io("create segment", &path, e))?;
    file.write_all_at(&SegmentHeader::for_key(n, key).encode(), 0)
        .map_err(|e| WalError::io("write segment header", &path, e))?;
    file.sync_all().map_err(|e| WalError::io("sync segment", &path, e))?;
    sync_dir(&shared.dir)?;
    shared.bytes.fetch_add(HEADER_LEN, Ordering::Relaxed);
    let reader = File::open(&path).map_err(|e| WalError::io("open segment", &path, e))?;
    shared.segments.write().unwrap_or_else(|p| p.into_inner()).insert(
        n,
        SegmentFile {
            path,
            version: VERSION,
            file: Arc::new(reader),
            key: key.cloned(),
        },
    );
    Ok((file, n, HEADER_LEN))
}

/// A record written in this group: origin, seq, priority, start, end.
type Entry = (Origin, u64, ferry_proto::Priority, u64, u64);

/// One command's share of a group.
enum Pending {
    Local {
        tx: oneshot::Sender<Result<Vec<Event>, WalError>>,
        result: Result<Vec<Event>, WalError>,
    },
    LocalOnce {
        tx: oneshot::Sender<Result<AppendOnce, WalError>>,
        result: Result<AppendOnce, WalError>,
    },
    Replicated {
        tx: oneshot::Sender<Result<AppendReport, WalError>>,
        result: Result<AppendReport, WalError>,
    },
}

impl Writer {
    fn run(&mut self, rx: Receiver<Command>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            let mut approx = 0usize;
            while approx < GROUP_BYTES {
                match rx.try_recv() {
                    Ok(cmd) => {
                        approx += match &cmd {
                            Command::Local(v, _) | Command::LocalOnce(_, v, _) => {
                                v.iter().map(|e| e.payload.len() + 64).sum::<usize>()
                            }
                            Command::Replicated(v, _) => v.iter().map(|e| e.payload.len() + 64).sum::<usize>(),
                        };
                        group.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            // A keyed append whose key an earlier append of the same group
            // holds waits for that group's outcome: it then replays it, or
            // (if the group failed) writes.
            while !group.is_empty() {
                group = self.commit(group);
            }
        }
        tracing::debug!("WAL writer stopped: all handles dropped");
        if self.stopped.is_none() {
            self.seal();
        }
    }

    /// Every group is durable and nothing more will be written: leave the
    /// seal that lets the next open vouch for the own log's tail.
    fn seal(&self) {
        let origin = self.local_origin.read().unwrap_or_else(|p| p.into_inner()).current;
        let last = {
            let index = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
            index.origins.get(&origin).and_then(|o| o.have.last()).unwrap_or(0)
        };
        let seal = crate::seal::Seal {
            origin,
            last,
            bytes: self.shared.bytes.load(Ordering::Relaxed),
        };
        if let Err(e) = crate::seal::write(&self.shared.dir, &seal) {
            tracing::warn!("could not seal the WAL on close ({e}); the next start will warn that its end may be lost");
        }
    }

    /// The origin local events of this group are written to: the first
    /// local write after `Wal::set_unconfirmed_tail` moves to the new log.
    fn origin_for(&self, group: &[Command]) -> Origin {
        let has_local = group
            .iter()
            .any(|c| matches!(c, Command::Local(..) | Command::LocalOnce(..)));
        if !has_local {
            // Replicated groups, the common case on a hub, only read.
            return self.local_origin.read().unwrap_or_else(|p| p.into_inner()).current;
        }
        let mut own = self.local_origin.write().unwrap_or_else(|p| p.into_inner());
        if let Some(next) = own.next.take() {
            tracing::info!(old = %own.current, new = %next,
                "local events now go to a new log epoch: this start cannot know whether peers hold numbers of the old log that its disk lacks");
            own.current = next;
        }
        own.current
    }

    /// Commits `group`; returns the commands deferred to the next group.
    fn commit(&mut self, group: Vec<Command>) -> Vec<Command> {
        if let Some(why) = &self.stopped {
            for cmd in group {
                let err = || WalError::WriterStopped(why.clone());
                match cmd {
                    Command::Local(_, tx) => drop(tx.send(Err(err()))),
                    Command::LocalOnce(_, _, tx) => drop(tx.send(Err(err()))),
                    Command::Replicated(_, tx) => drop(tx.send(Err(err()))),
                }
            }
            return Vec::new();
        }
        let wall = (self.wall)();
        self.keys.expire(wall);
        let mut new_keys: Vec<KeyEntry> = Vec::new();
        let mut deferred = Vec::new();
        let origin = self.origin_for(&group);
        let clock_before = self.clock.clone();
        let mut buf = Vec::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut seen: HashSet<(Origin, u64)> = HashSet::new();
        let mut pending = Vec::with_capacity(group.len());
        {
            let shared = self.shared.clone();
            let index = shared.index.read().unwrap_or_else(|p| p.into_inner());
            // `None`: the local log holds u64::MAX (written by a peer or a
            // damaged file) and can take no more events.
            let mut next_local = index
                .origins
                .get(&origin)
                .and_then(|o| o.have.last())
                .unwrap_or(0)
                .checked_add(1);
            for cmd in group {
                match cmd {
                    Command::Local(items, tx) => {
                        let result = self.encode_local(items, origin, &mut next_local, wall, &mut buf, &mut entries);
                        pending.push(Pending::Local { tx, result });
                    }
                    Command::LocalOnce(key, items, tx) if new_keys.iter().any(|k| k.key == key) => {
                        deferred.push(Command::LocalOnce(key, items, tx));
                    }
                    Command::LocalOnce(key, items, tx) => {
                        let digest = request_digest(&items);
                        let result = match self.check_key(&key, &items, digest) {
                            Err(e) => Err(e),
                            Ok(Some(replay)) => Ok(replay),
                            Ok(None) => self
                                .encode_local(items, origin, &mut next_local, wall, &mut buf, &mut entries)
                                .map(|events| {
                                    let entry = KeyEntry {
                                        key,
                                        origin,
                                        // check_key refused an empty request, and
                                        // encode_local returns one event per item.
                                        first_seq: events[0].seq,
                                        count: events.len() as u64,
                                        wall_ms: wall,
                                        digest,
                                    };
                                    encode_key_record(&entry, self.key.as_ref(), &mut buf);
                                    new_keys.push(entry);
                                    AppendOnce {
                                        events: events.iter().map(|e| (e.origin, e.seq)).collect(),
                                        replayed: false,
                                    }
                                }),
                        };
                        pending.push(Pending::LocalOnce { tx, result });
                    }
                    Command::Replicated(events, tx) => {
                        let result = self.encode_replicated(
                            events,
                            &index,
                            &mut seen,
                            origin,
                            &mut next_local,
                            wall,
                            &mut buf,
                            &mut entries,
                        );
                        pending.push(Pending::Replicated { tx, result });
                    }
                }
            }
        }
        if !entries.is_empty() {
            if let Err(e) = self.write_group(&mut buf, &mut entries) {
                self.clock = clock_before;
                let msg = e.to_string();
                let mut first = Some(e);
                for p in pending {
                    let err = first.take().unwrap_or_else(|| WalError::WriterStopped(msg.clone()));
                    match p {
                        Pending::Local { tx, .. } => drop(tx.send(Err(err))),
                        Pending::LocalOnce { tx, .. } => drop(tx.send(Err(err))),
                        Pending::Replicated { tx, .. } => drop(tx.send(Err(err))),
                    }
                }
                return deferred;
            }
        }
        for k in new_keys {
            self.keys.insert(k, wall);
        }
        for p in pending {
            // A dropped receiver means the caller gave up waiting; the data is
            // durable either way.
            match p {
                Pending::Local { tx, result } => drop(tx.send(result)),
                Pending::LocalOnce { tx, result } => drop(tx.send(result)),
                Pending::Replicated { tx, result } => drop(tx.send(result)),
            }
        }
        deferred
    }

    /// The earlier answer for `key` if it is held, `None` if the append is
    /// new, an error if the key is unusable or names a different request.
    fn check_key(&self, key: &str, items: &[NewEvent], digest: [u8; 16]) -> Result<Option<AppendOnce>, WalError> {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(WalError::InvalidIdempotencyKey(format!(
                "a key is 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes, this one {}",
                key.len()
            )));
        }
        if items.is_empty() {
            return Err(WalError::InvalidEvent(
                "an append with an idempotency key needs at least one event".into(),
            ));
        }
        match self.keys.get(key) {
            Some(k) if k.digest != digest => Err(WalError::IdempotencyKeyReused { key: key.into() }),
            Some(k) => Ok(Some(AppendOnce {
                events: k.events(),
                replayed: true,
            })),
            None => Ok(None),
        }
    }

    fn encode_local(
        &mut self,
        items: Vec<NewEvent>,
        origin: Origin,
        next_local: &mut Option<u64>,
        wall: u64,
        buf: &mut Vec<u8>,
        entries: &mut Vec<Entry>,
    ) -> Result<Vec<Event>, WalError> {
        for item in &items {
            check_limits(&item.topic, &item.payload).map_err(|e| WalError::InvalidEvent(e.to_string()))?;
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let first = next_local
            .filter(|n| n.checked_add(items.len() as u64 - 1).is_some())
            .ok_or_else(|| WalError::SeqExhausted(origin.to_string()))?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            // Fits: checked above for the last item.
            let seq = first + i as u64;
            let e = Event {
                origin,
                seq,
                hlc: self.clock.now(wall),
                topic: item.topic,
                priority: item.priority,
                payload: item.payload,
            };
            *next_local = seq.checked_add(1);
            let start = buf.len() as u64;
            encode_record(&e, self.key.as_ref(), buf);
            entries.push((e.origin, e.seq, e.priority, start, buf.len() as u64));
            out.push(e);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn encode_replicated(
        &mut self,
        events: Vec<Event>,
        index: &Index,
        seen: &mut HashSet<(Origin, u64)>,
        origin: Origin,
        next_local: &mut Option<u64>,
        wall: u64,
        buf: &mut Vec<u8>,
        entries: &mut Vec<Entry>,
    ) -> Result<AppendReport, WalError> {
        for e in &events {
            e.validate()
                .map_err(|err| WalError::InvalidEvent(format!("{}:{}: {err}", e.origin, e.seq)))?;
        }
        let mut report = AppendReport::default();
        for e in events {
            if index.contains(&e.origin, e.seq) || !seen.insert((e.origin, e.seq)) {
                report.duplicates += 1;
                continue;
            }
            if e.origin == origin && next_local.is_some_and(|n| e.seq >= n) {
                // Our own past events, coming back from a peer: never reuse
                // their numbers.
                *next_local = e.seq.checked_add(1);
            }
            self.clock.observe(e.hlc, wall);
            let start = buf.len() as u64;
            encode_record(&e, self.key.as_ref(), buf);
            entries.push((e.origin, e.seq, e.priority, start, buf.len() as u64));
            report.stored += 1;
        }
        Ok(report)
    }

    fn write_group(&mut self, buf: &mut Vec<u8>, entries: &mut [Entry]) -> Result<(), WalError> {
        if self.len > HEADER_LEN && self.len + buf.len() as u64 > self.segment_bytes {
            let (file, n, len) = create_segment(&self.shared, self.segment + 1, self.key.as_ref())?;
            (self.file, self.segment, self.len) = (file, n, len);
        }
        let group_crc = crc32fast::hash(buf);
        encode_commit(self.len, group_crc, buf);
        let path = segment_path(&self.shared.dir, self.segment);
        let written = self.file.write_all_at(buf, self.len).and_then(|_| {
            // A measurement for operators (`/metrics`), not an input to
            // anything the WAL decides: the clock stays out of its logic.
            let started = std::time::Instant::now();
            let synced = self.file.sync_data();
            self.shared.fsync.observe(started.elapsed());
            synced
        });
        if let Err(e) = written {
            let err = WalError::io("append to", &path, e);
            // Cut off whatever part of the group reached the file, so the next
            // group starts at the durable end.
            if let Err(cut) = self.file.set_len(self.len).and_then(|_| self.file.sync_data()) {
                self.stopped = Some(format!("could not undo a failed write to {}: {cut}", path.display()));
            }
            return Err(err);
        }
        let base = self.len;
        {
            let mut index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
            for (origin, seq, priority, start, end) in entries.iter() {
                index.add(*origin, *seq, *priority, self.segment, base + start, base + end);
            }
            self.shared.appended.send_replace(index.events);
        }
        self.len += buf.len() as u64;
        self.shared.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
