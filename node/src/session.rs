//! A sync session over one QUIC connection.
//!
//! Both sides run the same accept loop: a stream that starts with `Hello` is
//! a round opened by the peer, one that starts with `Want` asks for a range.
//! A round: `Hello` and `Summary` each way on the control stream, then each
//! side pulls what it lacks, one `Want` per gap on its own stream, appending
//! events durably as they arrive, and says `RoundDone`. Rounds can repeat on
//! a connection that stays open (the daemon).

pub use crate::ctx::{Counters, NodeCtx};
use crate::pki::CertInfo;
use crate::pull::Puller;
use crate::wire::{code, read_frame, write_frame, WireError};
use anyhow::{anyhow, Context, Result};
use ferry_proto::batch::StreamCompressor;
use ferry_proto::{Classes, ErrorCode, Frame, Hello, Priority, Summary, Want, PROTOCOL_VERSION};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Events per `Events` frame: big enough to compress well, small enough that
/// a cut link loses little in flight.
pub const BATCH_EVENTS: usize = 128;
/// Wants in flight at once per round.
pub const WANTS_IN_FLIGHT: usize = 16;
/// Streams a peer may open with garbage before the connection is closed.
const MAX_BAD_STREAMS: u64 = 8;

/// One connection to one verified peer.
pub struct Link {
    pub conn: quinn::Connection,
    pub peer: CertInfo,
    pub addr: SocketAddr,
    pub counters: Counters,
    /// The peer dialled this node.
    pub inbound: bool,
    /// A peer on this node's LAN: cheaper to pull from than one over the WAN.
    pub lan: bool,
    /// When this node started dialling or accepting this connection.
    pub started: Instant,
    /// When the first bytes of an event batch arrived on it: the reconnect
    /// cost in time.
    pub first_event: OnceLock<Instant>,
    /// The peer's summary from the last round, for the next reconnect's 0-RTT wants.
    pub last_summary: Mutex<Option<(Summary, Classes)>>,
    /// Rounds running on this connection, either way; a watch, so that
    /// `round_due` wakes as one starts or ends.
    pub running: tokio::sync::watch::Sender<u32>,
    /// The summary the peer sent at the start of the latest round: what it
    /// offers while that round runs.
    pub offered: Mutex<Option<Summary>>,
    /// What the latest round expects to move, for progress display.
    pub expected: Mutex<crate::progress::Expected>,
}

/// A round in progress on a link; its end wakes whoever waits in `round_due`.
struct Running<'a>(&'a Link);

impl<'a> Running<'a> {
    fn new(link: &'a Link, offered: &Summary) -> Self {
        *link.offered.lock().unwrap_or_else(|p| p.into_inner()) = Some(offered.clone());
        link.running.send_modify(|n| *n += 1);
        Running(link)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.send_modify(|n| *n -= 1);
    }
}

impl Link {
    pub fn new(
        conn: quinn::Connection,
        peer: CertInfo,
        addr: SocketAddr,
        started: Instant,
        inbound: bool,
        lan: bool,
    ) -> Arc<Link> {
        Arc::new(Link {
            conn,
            peer,
            addr,
            inbound,
            lan,
            counters: Counters::default(),
            started,
            first_event: OnceLock::new(),
            last_summary: Mutex::new(None),
            running: tokio::sync::watch::Sender::new(0),
            offered: Mutex::new(None),
            expected: Default::default(),
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

pub(crate) fn fault(code: ErrorCode, message: impl Into<String>) -> anyhow::Error {
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

pub(crate) fn kind(f: &Frame) -> &'static str {
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

/// Opens a round: the daemon does this on a timer and when it has news for
/// the peer, `ferry sync` once.
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
    /// The summary this node sent.
    sent: Summary,
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
    let (sent, classes) = ctx.summary_for(&link.peer);
    write_frame(&mut send, &Frame::Summary(sent.clone(), classes)).await?;
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
        sent,
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
        let round = Round {
            theirs,
            sent: self.sent,
            asked: self.asked,
        };
        let report = finish_round(ctx, link, &mut self.send, &mut self.recv, round, self.puller).await?;
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
    let (sent, classes) = ctx.summary_for(&link.peer);
    write_frame(send, &Frame::Summary(sent.clone(), classes)).await?;
    let round = Round {
        theirs,
        sent,
        asked: None,
    };
    finish_round(ctx, link, send, recv, round, Puller::default()).await
}

/// What a round knows once both summaries are out.
struct Round {
    theirs: (Summary, Classes),
    sent: Summary,
    /// What this node holds plus what it already asked for.
    asked: Option<Summary>,
}

async fn finish_round(
    ctx: &Arc<NodeCtx>,
    link: &Arc<Link>,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    round: Round,
    mut puller: Puller,
) -> Result<RoundReport> {
    let Round {
        theirs: (theirs, classes),
        sent,
        asked,
    } = round;
    let ours = ctx.wal.summary();
    ctx.check_restored(&ours, &theirs)?;
    let _running = Running::new(link, &theirs);
    let nearby = if link.lan {
        Summary::default()
    } else {
        // What a LAN peer offers comes from it, not over the WAN.
        ctx.lan_offers()
    };
    *link.expected.lock().unwrap_or_else(|p| p.into_inner()) = crate::progress::Expected {
        received_from: link.counters.events_received.load(Relaxed),
        receive: ours.union(&nearby).lacking(&theirs),
        sent_from: link.counters.events_sent.load(Relaxed),
        send: theirs.lacking(&sent),
    };
    let basis = match asked {
        Some(asked) => ours.union(&asked),
        None => ours,
    }
    .union(&nearby);
    // Urgent gaps come first and are started first.
    let gaps = basis.gaps(&theirs, &classes, |_| true);
    puller.add(ctx, link, gaps);
    let (received, duplicates, wants) = puller.finish(ctx, link).await?;
    let mut report = RoundReport {
        wants,
        events_received: received,
        duplicates_received: duplicates,
        ..Default::default()
    };
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
    // The peer sends RoundDone only after all its pulls succeeded: it now
    // holds everything this node offered too.
    *link.last_summary.lock().unwrap_or_else(|p| p.into_inner()) = Some((theirs.union(&sent), classes));
    send.finish()?;
    Ok(report)
}
