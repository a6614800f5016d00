//! Pulling gaps from a peer: one `Want` per range, each on its own stream,
//! events appended durably as they arrive. Every range is claimed first
//! (see `inflight`), so concurrent rounds never ask for the same events.

use crate::inflight::Claim;
use crate::session::{fault, kind, Link, NodeCtx, WANTS_IN_FLIGHT};
use crate::wire::{code, read_frame_noting, write_frame};
use anyhow::{anyhow, Context, Result};
use ferry_proto::batch::StreamDecompressor;
use ferry_proto::summary::Gap;
use ferry_proto::{ErrorCode, Frame, Want};
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;

/// Pulls gaps, at most `WANTS_IN_FLIGHT` at once, in the order given,
/// skipping what another pull is fetching or has fetched meanwhile.
#[derive(Default)]
pub struct Puller {
    pending: std::collections::VecDeque<Gap>,
    running: JoinSet<Result<(u64, u64)>>,
    started: usize,
}

impl Puller {
    pub fn add(&mut self, ctx: &Arc<NodeCtx>, link: &Arc<Link>, gaps: Vec<Gap>) {
        self.pending.extend(gaps);
        self.fill(ctx, link);
    }

    fn fill(&mut self, ctx: &Arc<NodeCtx>, link: &Arc<Link>) {
        while self.running.len() < WANTS_IN_FLIGHT {
            let Some(gap) = self.pending.pop_front() else { break };
            // Usually one piece; a gap split by another pull's claim gives more.
            for claim in ctx.inflight.claim(&gap, |o| ctx.wal.have(o)) {
                self.started += 1;
                self.running.spawn(pull(ctx.clone(), link.clone(), claim));
            }
        }
    }

    /// Runs every pull to its end: events received, duplicates, wants sent.
    pub async fn finish(mut self, ctx: &Arc<NodeCtx>, link: &Arc<Link>) -> Result<(u64, u64, usize)> {
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
        Ok((received, duplicates, self.started))
    }
}

/// Pulls one claimed range: one stream, one `Want`, events appended as
/// they arrive. The claim is released when this returns.
async fn pull(ctx: Arc<NodeCtx>, link: Arc<Link>, claim: Claim) -> Result<(u64, u64)> {
    let gap = &claim.gap;
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
