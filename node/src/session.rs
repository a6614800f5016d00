//! A sync session over one QUIC connection.
//!
//! Both sides run the same accept loop: a stream that starts with `Hello` is
//! a round opened by the peer, one that starts with `Want` asks for a range.
//! A round: `Hello` and `Summary` each way on the control stream, then each
//! side pulls what it lacks, one `Want` per gap on its own stream, appending
//! events durably as they arrive, and says `RoundDone`. Rounds can repeat on
//! a connection that stays open (the daemon).

use crate::datadir::{DataDir, Policy};
use crate::pki::{CertInfo, Role};
use crate::wire::{code, read_frame, read_frame_noting, write_frame, WireError};
use anyhow::{anyhow, Context, Result};
use ferry_proto::batch::{StreamCompressor, StreamDecompressor};
use ferry_proto::summary::Gap;
use ferry_proto::{Classes, ErrorCode, Frame, Hello, NodeId, Origin, Priority, Summary, Want, PROTOCOL_VERSION};
use ferry_wal::Wal;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tokio::task::JoinSet;

/// Events per `Events` frame: big enough to compress well, small enough that
/// a cut link loses little in flight.
pub const BATCH_EVENTS: usize = 128;
/// Wants in flight at once per round.
pub const WANTS_IN_FLIGHT: usize = 16;
/// Streams a peer may open with garbage before the connection is closed.
const MAX_BAD_STREAMS: u64 = 8;

#[derive(Debug, Default)]
pub struct Counters {
    pub events_sent: AtomicU64,
    pub events_received: AtomicU64,
    pub duplicates_received: AtomicU64,
    pub bad_streams: AtomicU64,
    /// Handshakes completed with peers that dialed us.
    pub connections_accepted: AtomicU64,
    /// Reconnects whose opening the peer took as 0-RTT data, and those it did not.
    pub zero_rtt_accepted: AtomicU64,
    pub zero_rtt_rejected: AtomicU64,
    /// Times the dialling socket moved because local addresses changed.
    pub rebinds: AtomicU64,
}

impl Counters {
    fn add(&self, f: impl Fn(&Counters) -> &AtomicU64, n: u64, also: &Counters) {
        f(self).fetch_add(n, Relaxed);
        f(also).fetch_add(n, Relaxed);
    }
}

/// This node, as sessions see it.
pub struct NodeCtx {
    pub wal: Arc<Wal>,
    pub node_id: NodeId,
    pub name: String,
    pub role: Role,
    pub policy: Policy,
    /// Where to persist a new log epoch; `None` in tests without a data dir.
    pub data_dir: Option<DataDir>,
    pub totals: Counters,
    /// Every task serving this node, so shutdown can wait for all of them
    /// and the WAL is closed when it returns.
    pub tasks: tokio_util::task::TaskTracker,
    /// Cap on what this node sends, shared by all its peers.
    pub budget: Option<crate::budget::Budget>,
    /// Cancelled when the node shuts down, for tasks that do not end by
    /// themselves (the local API).
    pub stopping: tokio_util::sync::CancellationToken,
    /// This deployment's CA fingerprint, once mDNS advertises it.
    pub deployment: Mutex<Option<String>>,
}

/// One connection to one verified peer.
pub struct Link {
    pub conn: quinn::Connection,
    pub peer: CertInfo,
    pub addr: SocketAddr,
    pub counters: Counters,
    /// The peer dialled this node.
    pub inbound: bool,
    /// When this node started dialling or accepting this connection.
    pub started: Instant,
    /// When the first bytes of an event batch arrived on it: the reconnect
    /// cost in time.
    pub first_event: OnceLock<Instant>,
    /// The peer's summary from the last round, for the next reconnect's 0-RTT wants.
    pub last_summary: Mutex<Option<(Summary, Classes)>>,
}

impl Link {
    pub fn new(conn: quinn::Connection, peer: CertInfo, addr: SocketAddr, started: Instant) -> Arc<Link> {
        Self::with_direction(conn, peer, addr, started, false)
    }

    pub fn with_direction(
        conn: quinn::Connection,
        peer: CertInfo,
        addr: SocketAddr,
        started: Instant,
        inbound: bool,
    ) -> Arc<Link> {
        Arc::new(Link {
            conn,
            peer,
            addr,
            inbound,
            counters: Counters::default(),
            started,
            first_event: OnceLock::new(),
            last_summary: Mutex::new(None),
        })
    }

    pub fn first_event_after(&self) -> Option<std::time::Duration> {
        self.first_event.get().map(|t| t.duration_since(self.started))
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RoundReport {
    pub wants: usize,
    pub events_received: u64,
    pub duplicates_received: u64,
    /// What the peer said it received in this round.
    pub peer_received: u64,
}

/// A failure the peer caused, with the code to close or reset with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PeerFault {
    pub code: ErrorCode,
    pub message: String,
}

fn fault(code: ErrorCode, message: impl Into<String>) -> anyhow::Error {
    PeerFault {
        code,
        message: message.into(),
    }
    .into()
}

fn fault_code(e: &anyhow::Error) -> ErrorCode {
    if let Some(f) = e.downcast_ref::<PeerFault>() {
        return f.code;
    }
    if let Some(w) = e.downcast_ref::<WireError>() {
        return w.code();
    }
    ErrorCode::Internal
}

impl NodeCtx {
    /// Notes a node heard on the LAN, for `ferry peers`.
    pub fn seen(&self, id: NodeId, role: &str, addrs: &[SocketAddr], same_deployment: bool) {
        let Some(dir) = &self.data_dir else { return };
        let result = dir.record_peer(id, |p| {
            if p.found_by.is_empty() || p.found_by == "dialed-us" {
                p.found_by = "mdns".into();
            }
            p.foreign = !same_deployment;
            if p.role.is_none() {
                p.role = role.parse().ok();
            }
            if let Some(a) = addrs.first() {
                p.addr = a.to_string();
            }
        });
        if let Err(e) = result {
            tracing::warn!("could not record a LAN peer: {e:#}");
        }
    }

    pub fn allows(&self, peer: &CertInfo, origin: &Origin) -> bool {
        match self.policy {
            Policy::All => true,
            Policy::Own => origin.node == peer.node_id,
        }
    }

    fn hello(&self) -> Frame {
        Frame::Hello(Hello {
            node: self.node_id,
            role: self.role.to_string(),
            name: self.name.clone(),
            version: PROTOCOL_VERSION,
        })
    }

    /// What we hold, cut down to what policy lets this peer receive.
    fn summary_for(&self, peer: &CertInfo) -> Frame {
        let allow = |o: &Origin| self.allows(peer, o);
        Frame::Summary(self.wal.summary().filtered(allow), self.wal.classes().filtered(allow))
    }

    /// A peer holding more of our own current log than we do means our data
    /// directory was restored from an old backup: continuing would reuse
    /// sequence numbers. Start a new log; the old one comes back as any other.
    fn check_restored(&self, ours: &Summary, theirs: &Summary) -> Result<()> {
        let local = self.wal.local_origin();
        let their_last = theirs.get(&local).and_then(|r| r.last()).unwrap_or(0);
        let our_last = ours.get(&local).and_then(|r| r.last()).unwrap_or(0);
        if their_last > our_last {
            let epoch = rand::random::<u32>();
            tracing::warn!(%local, our_last, their_last, new_epoch = format!("{epoch:08x}"),
                "a peer holds more of this node's log than this node: the data directory was restored from a backup; starting a new log epoch");
            if let Some(dir) = &self.data_dir {
                dir.set_log_epoch(epoch)?;
            }
            self.wal.set_local_origin(Origin {
                node: self.node_id,
                epoch,
            });
        }
        Ok(())
    }
}

/// Serves every stream the peer opens until the connection ends; returns why
/// it ended.
pub async fn serve(ctx: Arc<NodeCtx>, link: Arc<Link>) -> quinn::ConnectionError {
    loop {
        match link.conn.accept_bi().await {
            Ok((send, recv)) => {
                ctx.tasks.spawn(handle_stream(ctx.clone(), link.clone(), send, recv));
            }
            Err(e) => return e,
        }
    }
}

async fn handle_stream(ctx: Arc<NodeCtx>, link: Arc<Link>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let peer = link.peer.node_id.short();
    let result = match read_frame(&mut recv).await {
        Ok(Some(Frame::Want(want))) => serve_want(&ctx, &link, want, &mut send).await,
        Ok(Some(Frame::Hello(hello))) => {
            match respond_round(&ctx, &link, hello, &mut send, &mut recv).await {
                Ok(report) => {
                    tracing::info!(%peer, ?report, "round opened by peer finished");
                    return;
                }
                Err(e) => {
                    // A broken round poisons the connection: the peer is confused.
                    let c = fault_code(&e);
                    tracing::warn!(%peer, code = ?c, "round failed: {e:#}");
                    link.conn.close(code(c), e.to_string().as_bytes());
                    return;
                }
            }
        }
        Ok(Some(other)) => Err(fault(
            ErrorCode::Protocol,
            format!("a stream must start with Want or Hello, not {:?}", kind(&other)),
        )),
        Ok(None) => Ok(()),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = result {
        let c = fault_code(&e);
        tracing::warn!(%peer, code = ?c, "closing stream: {e:#}");
        let _ = send.reset(code(c));
        let _ = recv.stop(code(c));
        if c != ErrorCode::Internal && link.counters.bad_streams.fetch_add(1, Relaxed) + 1 >= MAX_BAD_STREAMS {
            link.conn.close(code(c), b"too many malformed streams");
        }
    }
}

fn kind(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "Hello",
        Frame::Summary(..) => "Summary",
        Frame::Want(_) => "Want",
        Frame::EventChunk(_) => "EventChunk",
        Frame::RoundDone { .. } => "RoundDone",
        Frame::Error { .. } => "Error",
    }
}

async fn serve_want(ctx: &NodeCtx, link: &Link, want: Want, send: &mut quinn::SendStream) -> Result<()> {
    if !ctx.allows(&link.peer, &want.origin) {
        let message = format!(
            "policy does not let {} receive events of {}",
            link.peer.name, want.origin
        );
        write_frame(
            send,
            &Frame::Error {
                code: ErrorCode::Policy as u16,
                message,
            },
        )
        .await?;
        send.finish()?;
        return Ok(());
    }
    tracing::debug!(peer = %link.peer.node_id.short(), origin = %want.origin, first = want.first, last = want.last, "serving a want");
    // Urgent ranges cross a thin link before the backlog.
    let _ = send.set_priority(match want.priority {
        Priority::Urgent => 2,
        Priority::Normal => 1,
        Priority::Bulk => 0,
    });
    let mut deflate = StreamCompressor::new();
    let mut next = want.first;
    while next <= want.last {
        let batch = ctx.wal.read_range(&want.origin, next, want.last, BATCH_EVENTS)?;
        let Some(last) = batch.last() else { break };
        let Some(after) = last.seq.checked_add(1) else { break };
        next = after;
        let n = batch.len() as u64;
        let frame = Frame::EventChunk(deflate.compress(&batch)).encode();
        if let Some(budget) = &ctx.budget {
            budget.spend(frame.len()).await;
        }
        send.write_all(&frame).await?;
        link.counters.add(|c| &c.events_sent, n, &ctx.totals);
    }
    send.finish()?;
    Ok(())
}

fn check_hello(hello: &Hello, link: &Link) -> Result<()> {
    if hello.version != PROTOCOL_VERSION {
        return Err(fault(
            ErrorCode::Unsupported,
            format!(
                "peer speaks ferry/{}, this node ferry/{PROTOCOL_VERSION}",
                hello.version
            ),
        ));
    }
    if hello.node != link.peer.node_id {
        return Err(fault(
            ErrorCode::Protocol,
            format!(
                "peer claims node {} but its certificate is for {}",
                hello.node, link.peer.node_id
            ),
        ));
    }
    Ok(())
}

async fn expect(recv: &mut quinn::RecvStream, what: &str) -> Result<Frame> {
    match read_frame(recv).await? {
        Some(Frame::Error { code, message }) => Err(anyhow!("peer reported error {code}: {message}")),
        Some(f) => Ok(f),
        None => Err(fault(
            ErrorCode::Protocol,
            format!("control stream ended before {what}"),
        )),
    }
}

async fn expect_summary(recv: &mut quinn::RecvStream) -> Result<(Summary, Classes)> {
    match expect(recv, "Summary").await? {
        Frame::Summary(s, c) => Ok((s, c)),
        other => Err(fault(
            ErrorCode::Protocol,
            format!("expected Summary, got {}", kind(&other)),
        )),
    }
}

/// Opens a round: the daemon does this on a timer and on new local events,
/// `ferry sync` once.
pub async fn initiate_round(ctx: &Arc<NodeCtx>, link: &Arc<Link>) -> Result<RoundReport> {
    open_round(ctx, link, None).await?.finish(ctx, link).await
}

/// The opening of a round this node initiated: what it sent, and the wants
/// already on their way.
pub struct OpenRound {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    puller: Puller,
    /// What this node holds plus what it already asked for.
    asked: Option<Summary>,
}

/// Sends `Hello` and `Summary` and, when the peer's summary from an earlier
/// connection is known, the wants it implies, without waiting for an answer:
/// on a resumed connection all of this goes out as 0-RTT data. Every one of
/// these requests only reads, so a replay changes nothing.
pub async fn open_round(
    ctx: &Arc<NodeCtx>,
    link: &Arc<Link>,
    remembered: Option<&(Summary, Classes)>,
) -> Result<OpenRound> {
    let (mut send, recv) = link.conn.open_bi().await.context("could not open a control stream")?;
    write_frame(&mut send, &ctx.hello()).await?;
    write_frame(&mut send, &ctx.summary_for(&link.peer)).await?;
    let mut puller = Puller::default();
    let asked = remembered.map(|(theirs, classes)| {
        let ours = ctx.wal.summary();
        // Nobody holds more of this node's own log than this node.
        let local = ctx.wal.local_origin();
        let theirs = theirs.filtered(|o| *o != local);
        let early = ours.early_wants(&theirs, classes, WANTS_IN_FLIGHT);
        let asked = ours.with_gaps(&early);
        puller.add(ctx, link, early);
        asked
    });
    Ok(OpenRound {
        send,
        recv,
        puller,
        asked,
    })
}

impl OpenRound {
    /// Reads the peer's answer and completes the round.
    pub async fn finish(mut self, ctx: &Arc<NodeCtx>, link: &Arc<Link>) -> Result<RoundReport> {
        let hello = match expect(&mut self.recv, "Hello").await? {
            Frame::Hello(h) => h,
            other => {
                return Err(fault(
                    ErrorCode::Protocol,
                    format!("expected Hello, got {}", kind(&other)),
                ))
            }
        };
        check_hello(&hello, link)?;
        let theirs = expect_summary(&mut self.recv).await?;
        let report = finish_round(
            ctx,
            link,
            &mut self.send,
            &mut self.recv,
            theirs,
            self.puller,
            self.asked,
        )
        .await?;
        // Wait until the peer has our RoundDone, so closing now loses nothing.
        let _ = self.send.stopped().await;
        Ok(report)
    }
}

async fn respond_round(
    ctx: &Arc<NodeCtx>,
    link: &Arc<Link>,
    hello: Hello,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> Result<RoundReport> {
    check_hello(&hello, link)?;
    let theirs = expect_summary(recv).await?;
    write_frame(send, &ctx.hello()).await?;
    write_frame(send, &ctx.summary_for(&link.peer)).await?;
    finish_round(ctx, link, send, recv, theirs, Puller::default(), None).await
}

async fn finish_round(
    ctx: &Arc<NodeCtx>,
    link: &Arc<Link>,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    (theirs, classes): (Summary, Classes),
    mut puller: Puller,
    asked: Option<Summary>,
) -> Result<RoundReport> {
    let ours = ctx.wal.summary();
    ctx.check_restored(&ours, &theirs)?;
    // Urgent gaps come first and are started first.
    let basis = match asked {
        Some(asked) => ours.union(&asked),
        None => ours,
    };
    let gaps = basis.gaps(&theirs, &classes, |_| true);
    let mut report = RoundReport {
        wants: gaps.len() + puller.started,
        ..Default::default()
    };
    puller.add(ctx, link, gaps);
    let (received, duplicates) = puller.finish(ctx, link).await?;
    report.events_received = received;
    report.duplicates_received = duplicates;
    *link.last_summary.lock().unwrap_or_else(|p| p.into_inner()) = Some((theirs, classes));
    write_frame(send, &Frame::RoundDone { received }).await?;
    report.peer_received = match expect(recv, "RoundDone").await? {
        Frame::RoundDone { received } => received,
        other => {
            return Err(fault(
                ErrorCode::Protocol,
                format!("expected RoundDone, got {}", kind(&other)),
            ))
        }
    };
    send.finish()?;
    Ok(report)
}

/// Pulls gaps, at most `WANTS_IN_FLIGHT` at once, in the order given.
#[derive(Default)]
struct Puller {
    pending: std::collections::VecDeque<Gap>,
    running: JoinSet<Result<(u64, u64)>>,
    started: usize,
}

impl Puller {
    fn add(&mut self, ctx: &Arc<NodeCtx>, link: &Arc<Link>, gaps: Vec<Gap>) {
        self.pending.extend(gaps);
        self.fill(ctx, link);
    }

    fn fill(&mut self, ctx: &Arc<NodeCtx>, link: &Arc<Link>) {
        while self.running.len() < WANTS_IN_FLIGHT {
            let Some(gap) = self.pending.pop_front() else { break };
            self.started += 1;
            self.running.spawn(pull(ctx.clone(), link.clone(), gap));
        }
    }

    async fn finish(mut self, ctx: &Arc<NodeCtx>, link: &Arc<Link>) -> Result<(u64, u64)> {
        let (mut received, mut duplicates) = (0, 0);
        loop {
            self.fill(ctx, link);
            let Some(done) = self.running.join_next().await else {
                break;
            };
            let (r, d) = done.context("pull task failed")??;
            received += r;
            duplicates += d;
        }
        Ok((received, duplicates))
    }
}

/// Pulls one gap: one stream, one `Want`, events appended as they arrive.
async fn pull(ctx: Arc<NodeCtx>, link: Arc<Link>, gap: Gap) -> Result<(u64, u64)> {
    let (mut send, mut recv) = link.conn.open_bi().await.context("could not open a want stream")?;
    write_frame(
        &mut send,
        &Frame::Want(Want {
            origin: gap.origin,
            first: gap.first,
            last: gap.last,
            priority: gap.priority,
        }),
    )
    .await?;
    send.finish()?;
    let (mut received, mut duplicates) = (0, 0);
    let mut inflate = StreamDecompressor::new();
    let arrived = || {
        let _ = link.first_event.set(Instant::now());
    };
    while let Some(frame) = read_frame_noting(&mut recv, arrived).await? {
        match frame {
            Frame::EventChunk(chunk) => {
                let events = inflate
                    .decompress(&chunk)
                    .map_err(|e| fault(ErrorCode::Malformed, e.to_string()))?;
                if let Some(bad) = events
                    .iter()
                    .find(|e| e.origin != gap.origin || e.seq < gap.first || e.seq > gap.last)
                {
                    let _ = recv.stop(code(ErrorCode::Protocol));
                    return Err(fault(
                        ErrorCode::Protocol,
                        format!(
                            "asked for {}:{}..={}, got {}:{}",
                            gap.origin, gap.first, gap.last, bad.origin, bad.seq
                        ),
                    ));
                }
                let report = ctx.wal.append_replicated(events).await?;
                link.counters.add(|c| &c.events_received, report.stored, &ctx.totals);
                link.counters
                    .add(|c| &c.duplicates_received, report.duplicates, &ctx.totals);
                received += report.stored;
                duplicates += report.duplicates;
            }
            Frame::Error { code: c, message } => {
                return Err(anyhow!(
                    "peer refused {}:{}..={} (code {c}): {message}",
                    gap.origin,
                    gap.first,
                    gap.last
                ))
            }
            other => {
                return Err(fault(
                    ErrorCode::Protocol,
                    format!("expected Events on a want stream, got {}", kind(&other)),
                ))
            }
        }
    }
    Ok((received, duplicates))
}
