//! One QUIC connection to a verified peer: the streams the core opens and
//! writes, the streams the peer opens and what arrives on them, and the
//! connection's end, all handed to whoever runs the core (`LinkEvents`,
//! implemented by the driver).

use crate::budget::Budget;
use crate::pki::CertInfo;
use ferry_sync::{ConnId, SessionView, StreamId, StreamKind};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Appends in flight per connection before its streams stop being read: a
/// slow disk slows the sender down instead of filling memory.
const APPENDS_IN_FLIGHT: usize = 4;
/// Bytes handed to the core per read.
const READ_CHUNK: usize = 64 * 1024;

enum Out {
    Bytes(Vec<u8>),
    Finish,
}

pub struct Link {
    pub conn: quinn::Connection,
    /// The core's name for the session on this connection.
    id: ConnId,
    pub peer: CertInfo,
    pub addr: SocketAddr,
    /// The peer dialled this node.
    pub inbound: bool,
    /// A peer on this node's LAN: cheaper to pull from than one over the WAN.
    pub lan: bool,
    /// When this node started dialling or accepting the connection.
    pub started: Instant,
    first_event: OnceLock<Instant>,
    /// How long the peer had left what this node sent unanswered when the
    /// link gave the connection up (`watch_silence`).
    silent: OnceLock<Duration>,
    streams: Mutex<BTreeMap<StreamId, mpsc::UnboundedSender<Out>>>,
    remote_next: AtomicU32,
    appends: Arc<Semaphore>,
    in_step: tokio::sync::watch::Sender<u64>,
    view: Mutex<Option<SessionView>>,
    /// peers.json's record of this peer when the connection began: this
    /// connection's counts are added to its totals.
    pub(crate) base: Mutex<crate::datadir::PeerRecord>,
}

/// What a link reports, and what it needs from the node that runs it.
pub trait LinkEvents: Send + Sync + 'static {
    fn stream_data(self: &Arc<Self>, conn: ConnId, stream: StreamId, kind: StreamKind, bytes: &[u8]);
    fn stream_end(self: &Arc<Self>, conn: ConnId, stream: StreamId);
    /// A data stream's last bytes were taken by QUIC: the core may send more.
    fn sent(self: &Arc<Self>, conn: ConnId, stream: StreamId);
    /// The connection ended, for the reason given.
    fn closed(self: &Arc<Self>, link: &Arc<Link>, why: &quinn::ConnectionError);
    /// The link is giving its connection up: the peer left what this node
    /// sent unanswered for `silent`.
    fn silent(self: &Arc<Self>, link: &Arc<Link>, silent: Duration);
    /// Where the link's tasks are tracked, so shutdown waits for them.
    fn tasks(&self) -> &tokio_util::task::TaskTracker;
    /// The bandwidth budget event data is charged to, if any.
    fn budget(&self) -> Option<&Budget>;
}

/// The reason a link gives when it gives a silent connection up.
pub const SILENT_CLOSE: &[u8] = b"no answer; dialling again";

/// Whether the connection ended for its path, not for anything either side
/// found wrong: this node or the peer gave it up as silent, or it timed out
/// or was reset. Such a sync is worth dialling again.
pub fn ended_by_the_path(link: &Link) -> bool {
    use quinn::ConnectionError as E;
    link.gave_up_after().is_some()
        || match link.conn.close_reason() {
            Some(E::ApplicationClosed(c)) => &c.reason[..] == SILENT_CLOSE,
            Some(E::TimedOut | E::Reset) => true,
            _ => false,
        }
}

pub fn code(c: ferry_proto::ErrorCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(c as u32)
}

impl Link {
    pub fn new(
        conn: quinn::Connection,
        id: ConnId,
        peer: CertInfo,
        addr: SocketAddr,
        started: Instant,
        inbound: bool,
        lan: bool,
    ) -> Arc<Link> {
        Arc::new(Link {
            conn,
            id,
            peer,
            addr,
            inbound,
            lan,
            started,
            first_event: OnceLock::new(),
            silent: OnceLock::new(),
            streams: Mutex::new(BTreeMap::new()),
            remote_next: AtomicU32::new(0),
            appends: Arc::new(Semaphore::new(APPENDS_IN_FLIGHT)),
            in_step: tokio::sync::watch::Sender::new(0),
            view: Mutex::new(None),
            base: Mutex::new(Default::default()),
        })
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Drops the senders of every stream: the connection is gone.
    pub fn forget_streams(&self) {
        self.streams.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Starts reading what the peer sends and watching for the end; a peer
    /// that leaves what this node sends unanswered for `silence_limit` has
    /// its connection given up (`watch_silence`).
    pub fn serve<E: LinkEvents>(self: &Arc<Self>, events: &Arc<E>, silence_limit: Duration) {
        let tasks = events.tasks();
        tasks.spawn(accept_bi(events.clone(), self.clone()));
        tasks.spawn(accept_uni(events.clone(), self.clone()));
        tasks.spawn(watch_silence(events.clone(), self.clone(), silence_limit));
        let (events, link) = (events.clone(), self.clone());
        tasks.spawn(async move {
            let why = link.conn.closed().await;
            tracing::info!(peer = %link.peer.node_id.short(), addr = %link.addr, "connection ended: {why}");
            events.closed(&link, &why);
        });
    }

    /// Opens a stream the core asked for; what it sends queues meanwhile.
    pub fn open<E: LinkEvents>(self: &Arc<Self>, events: &Arc<E>, stream: StreamId, kind: StreamKind, priority: i32) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream, tx);
        let (events, link) = (events.clone(), self.clone());
        let session = self.id();
        events.tasks().clone().spawn(async move {
            let send = match kind {
                StreamKind::Bidi => match link.conn.open_bi().await {
                    Ok((send, recv)) => {
                        events
                            .tasks()
                            .spawn(read(events.clone(), link.clone(), session, recv, stream, kind));
                        send
                    }
                    Err(e) => return tracing::debug!("could not open a stream: {e}"),
                },
                StreamKind::Uni => match link.conn.open_uni().await {
                    Ok(send) => send,
                    Err(e) => return tracing::debug!("could not open a stream: {e}"),
                },
            };
            let _ = send.set_priority(priority);
            write(events, link, session, send, rx, stream, kind).await;
        });
    }

    pub fn send(&self, stream: StreamId, bytes: Vec<u8>) {
        if let Some(tx) = self.streams.lock().unwrap_or_else(|p| p.into_inner()).get(&stream) {
            let _ = tx.send(Out::Bytes(bytes));
        }
    }

    pub fn finish(&self, stream: StreamId) {
        if let Some(tx) = self.streams.lock().unwrap_or_else(|p| p.into_inner()).get(&stream) {
            let _ = tx.send(Out::Finish);
        }
    }

    /// Waits until an append may start (see `APPENDS_IN_FLIGHT`).
    pub async fn append_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.appends.clone().acquire_owned().await.ok()
    }

    /// Notes that event data has arrived (the reconnect cost in time).
    pub fn first_event(&self) {
        let _ = self.first_event.set(Instant::now());
    }

    pub fn first_event_after(&self) -> Option<std::time::Duration> {
        self.first_event.get().map(|t| t.duration_since(self.started))
    }

    /// How long the peer was silent, if that is why the link gave its
    /// connection up.
    pub fn gave_up_after(&self) -> Option<Duration> {
        self.silent.get().copied()
    }

    pub fn in_step(&self) {
        self.in_step.send_modify(|n| *n += 1);
    }

    /// Waits until both sides have pulled what the other offered, or the
    /// connection ends (then false).
    pub async fn wait_in_step(&self) -> bool {
        let mut rx = self.in_step.subscribe();
        let reached = tokio::select! {
            r = rx.wait_for(|n| *n > 0) => r.is_ok(),
            _ = self.conn.closed() => false,
        };
        reached || *self.in_step.borrow() > 0
    }

    pub fn keep_view(&self, v: SessionView) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
    }

    /// The core's view of this connection when last looked at.
    pub fn last_view(&self) -> Option<SessionView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn write<E: LinkEvents>(
    events: Arc<E>,
    link: Arc<Link>,
    session: ConnId,
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Out>,
    stream: StreamId,
    kind: StreamKind,
) {
    loop {
        // A stream's sender lives in the link; the connection's end is what
        // lets this task (and what it holds) go.
        let out = tokio::select! {
            out = rx.recv() => out,
            _ = link.conn.closed() => None,
        };
        let Some(out) = out else { return };
        let (out, then_finish) = match (out, kind) {
            (Out::Bytes(bytes), StreamKind::Bidi) => gather(bytes, &mut rx),
            (out, _) => (out, false),
        };
        match out {
            Out::Bytes(bytes) => {
                if kind == StreamKind::Uni {
                    if let Some(budget) = events.budget() {
                        budget.spend(bytes.len()).await;
                    }
                }
                if let Err(e) = send.write_all(&bytes).await {
                    tracing::debug!(peer = %link.peer.node_id.short(), "stream write failed: {e}");
                    return;
                }
                if kind == StreamKind::Uni {
                    events.sent(session, stream);
                }
            }
            Out::Finish => {
                let _ = send.finish();
            }
        }
        if then_finish {
            let _ = send.finish();
        }
    }
}

/// The control frames the core queued together, as one write: written one
/// by one, each could leave in a datagram of its own (a reconnect's
/// `Hello`, `Summary` and `Want` went in three 0-RTT datagrams, 38 bytes
/// of QUIC each and the `Want` last). Data streams are not gathered: each
/// of their frames is reported sent on its own (`LinkEvents::sent`).
/// Returns the bytes and whether the stream is then to be finished.
fn gather(mut bytes: Vec<u8>, rx: &mut mpsc::UnboundedReceiver<Out>) -> (Out, bool) {
    while let Ok(next) = rx.try_recv() {
        match next {
            Out::Bytes(more) => bytes.extend_from_slice(&more),
            Out::Finish => return (Out::Bytes(bytes), true),
        }
    }
    (Out::Bytes(bytes), false)
}

async fn read<E: LinkEvents>(
    events: Arc<E>,
    link: Arc<Link>,
    session: ConnId,
    mut recv: quinn::RecvStream,
    stream: StreamId,
    kind: StreamKind,
) {
    loop {
        // Wait for room among the appends before taking more.
        drop(link.append_slot().await);
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => {
                events.stream_data(session, stream, kind, &chunk.bytes);
            }
            Ok(None) => {
                events.stream_end(session, stream);
                return;
            }
            Err(e) => {
                tracing::debug!(peer = %link.peer.node_id.short(), "stream read ended: {e}");
                // A stream of a 0-RTT opening the peer rejected is not the
                // peer's goodbye: `Node::open` closes that connection and
                // dials in full. Reported as an end, the core closed the
                // connection first and the dial failed (resume.rs, under
                // load).
                let gone = matches!(
                    e,
                    quinn::ReadError::ConnectionLost(_)
                        | quinn::ReadError::ClosedStream
                        | quinn::ReadError::ZeroRttRejected
                );
                if !gone {
                    events.stream_end(session, stream);
                }
                return;
            }
        }
    }
}

async fn accept_bi<E: LinkEvents>(events: Arc<E>, link: Arc<Link>) {
    while let Ok((send, recv)) = link.conn.accept_bi().await {
        let stream = StreamId::Remote(link.remote_next.fetch_add(1, Relaxed));
        let session = link.id();
        let (tx, rx) = mpsc::unbounded_channel();
        link.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream, tx);
        let tasks = events.tasks();
        tasks.spawn(read(
            events.clone(),
            link.clone(),
            session,
            recv,
            stream,
            StreamKind::Bidi,
        ));
        tasks.spawn(write(
            events.clone(),
            link.clone(),
            session,
            send,
            rx,
            stream,
            StreamKind::Bidi,
        ));
    }
}

async fn accept_uni<E: LinkEvents>(events: Arc<E>, link: Arc<Link>) {
    while let Ok(recv) = link.conn.accept_uni().await {
        let stream = StreamId::Remote(link.remote_next.fetch_add(1, Relaxed));
        let session = link.id();
        events.tasks().spawn(read(
            events.clone(),
            link.clone(),
            session,
            recv,
            stream,
            StreamKind::Uni,
        ));
    }
}

/// Looks at the connection's counters every few seconds and closes it once
/// the peer has left what this node sent unanswered for `limit`, or eight
/// of the path's round trips if that is longer (a satellite link with a
/// full queue). The dialer then dials again, instead of waiting out the
/// idle timeout on a path that carries nothing back (`silence`).
async fn watch_silence<E: LinkEvents>(events: Arc<E>, link: Arc<Link>, limit: Duration) {
    use crate::silence::{Counts, Silence};
    let every = (limit / 10).clamp(Duration::from_millis(250), Duration::from_secs(2));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silence = Silence::new(Counts::of(&link.conn.stats()));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = link.conn.closed() => return,
        }
        let stats = link.conn.stats();
        let limit = limit.max(stats.path.rtt.saturating_mul(8));
        if let Some(silent) = silence.observe(Instant::now(), Counts::of(&stats), limit) {
            let _ = link.silent.set(silent);
            events.silent(&link, silent);
            link.conn.close(code(ferry_proto::ErrorCode::Done), SILENT_CLOSE);
            return;
        }
    }
}
