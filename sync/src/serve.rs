//! The sending half of a session: answering wants and pushing new events
//! the peer subscribed to, through the lanes.

use crate::io::{Action, StreamKind, Time};
use crate::lane::Lane;
use crate::session::{fault, Cx, Fault, Session};
use crate::store::Store;
use ferry_proto::{ErrorCode, Frame, Origin, Priority, RangeSet, Subscription, Want};

fn lane_index(p: Priority) -> usize {
    match p {
        Priority::Urgent => 0,
        Priority::Normal => 1,
        Priority::Bulk => 2,
    }
}

/// QUIC stream priority of a lane: urgent ranges cross a thin link first.
fn stream_priority(p: Priority) -> i32 {
    match p {
        Priority::Urgent => 3,
        Priority::Normal => 2,
        Priority::Bulk => 1,
    }
}

impl Session {
    pub fn on_want<S: Store>(&mut self, cx: &mut Cx<'_, S>, want: Want) -> Result<(), Fault> {
        if !cx.allows(&self.peer, &want.origin) {
            let message = format!(
                "policy does not let {} receive events of {}",
                self.peer.name, want.origin
            );
            self.send_control(
                cx,
                &Frame::Refused {
                    want,
                    code: ErrorCode::Policy as u16,
                    message,
                },
            );
            return Ok(());
        }
        self.lanes[lane_index(want.priority)].serve(want);
        self.pump(cx)
    }

    /// The peer cannot prove events of this node's own log `origin` that
    /// it holds: it gets the head over everything written there (a log
    /// signed again shorter after a card lost its tail is signed where it
    /// now ends).
    pub fn on_head_wanted<S: Store>(&mut self, cx: &mut Cx<'_, S>, origin: Origin) -> Result<(), Fault> {
        if origin.node != cx.cfg.node {
            return Ok(());
        }
        let len = cx
            .store
            .logs()
            .and_then(|l| l.tree(&origin))
            .map_or(0, |t| t.appended());
        if len > 0 {
            self.lanes[lane_index(Priority::Normal)].owe_head(origin, len);
        }
        self.pump(cx)
    }

    /// Events newly held here: queue those the peer subscribed to and may
    /// have, and does not hold.
    pub fn on_stored<S: Store>(
        &mut self,
        cx: &mut Cx<'_, S>,
        origin: Origin,
        seqs: &RangeSet,
        priority: Priority,
    ) -> Result<(), Fault> {
        let Some(sub) = &self.peer_sub else { return Ok(()) };
        if self.closed || !sub.covers(&origin.node) || !cx.allows(&self.peer, &origin) {
            return Ok(());
        }
        let todo = match self.peer_has.get(&origin) {
            Some(has) => seqs.difference(has),
            None => seqs.clone(),
        };
        if todo.is_empty() {
            return Ok(());
        }
        self.lanes[lane_index(priority)].push(origin, &todo);
        self.pump(cx)
    }

    /// The peer asks to be sent news of the nodes `sub` covers. What was
    /// stored here after this node's last summary and before the
    /// subscription arrived was neither offered nor pushed: push it now,
    /// or the peer would wait a whole round for it (a summary crosses a 2G
    /// link while other peers' events land).
    pub fn on_subscribe<S: Store>(&mut self, cx: &mut Cx<'_, S>, sub: Subscription) -> Result<(), Fault> {
        self.peer_sub = Some(sub);
        if self.our_id == 0 {
            // The summary still to come offers everything held.
            return Ok(());
        }
        let (now_held, classes) = cx.summary_for(&self.peer);
        for (origin, held) in &now_held.0 {
            let missed = match self.our_summary.get(origin) {
                Some(offered) => held.difference(offered),
                None => held.clone(),
            };
            for (priority, seqs) in classes.split(origin, &missed) {
                if !seqs.is_empty() {
                    self.on_stored(cx, *origin, &seqs, priority)?;
                }
            }
        }
        Ok(())
    }

    /// The driver took the last frame of a data stream: send the next.
    pub fn on_sent<S: Store>(&mut self, cx: &mut Cx<'_, S>, stream: crate::io::StreamId) -> Result<(), Fault> {
        if let Some(i) = self.lane_streams.iter().position(|s| *s == Some(stream)) {
            self.lanes[i].busy = false;
        }
        self.pump(cx)
    }

    /// When the first of this connection's idle lanes is to end its zstd
    /// frame (a lane with a frame on its way ends it after `handle_sent`).
    pub fn next_frame_end(&self, end_after: Option<Time>) -> Option<Time> {
        if self.closed {
            return None;
        }
        self.lanes
            .iter()
            .filter(|l| !l.busy)
            .filter_map(|l| l.frame_ends_at(end_after))
            .min()
    }

    /// Gives every idle lane with work its next turn.
    pub fn pump<S: Store>(&mut self, cx: &mut Cx<'_, S>) -> Result<(), Fault> {
        if self.closed {
            return Ok(());
        }
        for i in 0..self.lanes.len() {
            let lane: &mut Lane = &mut self.lanes[i];
            let end_after = cx.cfg.end_idle_frame_after;
            let frame_due = lane.frame_ends_at(end_after).is_some_and(|t| t <= cx.now);
            if lane.busy || !(lane.has_work() || frame_due) {
                continue;
            }
            let summary = self.theirs.as_ref().map(|(s, _)| s);
            let turn = if cx.cfg.bugs.on(|b| b.relay_forges) {
                lane.turn(
                    &crate::forge::Forging(&*cx.store),
                    &mut self.peer_has,
                    summary,
                    self.level,
                    cx.now,
                    end_after,
                )
            } else {
                lane.turn(&*cx.store, &mut self.peer_has, summary, self.level, cx.now, end_after)
            };
            for (origin, seqs) in lane.take_unproved() {
                let not = self.not_proved.entry(origin).or_default();
                *not = not.union(&seqs);
            }
            let turn = turn.map_err(|e| fault(ErrorCode::Internal, format!("could not read events to send: {e}")))?;
            let Some(turn) = turn else { continue };
            let class = lane.class();
            lane.busy = true;
            let (stream, mut bytes) = match self.lane_streams[i] {
                Some(s) => (s, Vec::new()),
                None => {
                    let s = self.open_stream(cx, StreamKind::Uni, stream_priority(class));
                    self.lane_streams[i] = Some(s);
                    (s, Frame::Open { class }.encode())
                }
            };
            bytes.extend(turn.bytes);
            self.stats.events_sent += turn.events;
            self.stats.auth_bytes_sent += turn.auth_bytes;
            self.stats.bytes_sent += bytes.len() as u64;
            cx.out.push_back(Action::Send {
                conn: self.conn,
                stream,
                bytes,
            });
        }
        Ok(())
    }
}
