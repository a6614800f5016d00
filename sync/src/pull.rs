//! The receiving half of a session: what to ask the peer for, and what to
//! do with the events that arrive.
//!
//! Gaps are what the peer's summary offers and this node neither holds nor
//! has claimed (nor, over the WAN, can get from a LAN peer). Each gap is
//! claimed, then asked for with a `Want`, at most `wants_in_flight` at a
//! time. Arriving events must answer a want or a subscription; they are
//! appended through the driver and stay claimed until durable. `Done` goes
//! out once nothing the peer's summary offered is still missing, asked for
//! or on its way to disk.

use crate::io::StreamId;
use crate::io::{Action, Notice};
use crate::pending::Append;
use crate::session::{fault, Cx, Fault, Session};
use crate::store::{AppendReport, Store};
use ferry_proto::batch::Item;
use ferry_proto::{Classes, ErrorCode, Event, Frame, Gap, Origin, RangeSet, Summary, Want};

impl Session {
    /// Wants sent before the peer's summary, from what it held last time:
    /// on a reconnect they travel as 0-RTT data.
    pub fn early_wants<S: Store>(&mut self, cx: &mut Cx<'_, S>, remembered: &(Summary, Classes)) {
        let local = cx.store.local_origin();
        let theirs = remembered.0.filtered(|o| *o != local);
        let ours = if cx.cfg.bugs.on(|b| b.duplicate_after_reconnect) {
            Summary::default()
        } else {
            self.basis(cx, &theirs, &Summary::default())
        };
        let gaps = ours.early_wants(&theirs, &remembered.1, cx.cfg.wants_in_flight);
        self.queue(cx, gaps);
        self.fill_wants(cx);
    }

    /// What this node holds or will get elsewhere, of the origins in `theirs`.
    fn basis<S: Store>(&self, cx: &Cx<'_, S>, theirs: &Summary, lan_offers: &Summary) -> Summary {
        Summary(
            theirs
                .0
                .keys()
                .map(|o| {
                    let mut set = cx.store.have(o).union(&cx.claims.claimed(o)).union(&cx.trust.barred(o));
                    if let Some(unserved) = self.unserved.get(o) {
                        set = set.union(unserved);
                    }
                    if !self.peer.lan {
                        if let Some(lan) = lan_offers.get(o) {
                            set = set.union(lan);
                        }
                    }
                    (*o, set)
                })
                .collect(),
        )
    }

    /// Computes what to pull after a summary (or when claims elsewhere
    /// ended), and starts asking.
    pub fn plan<S: Store>(&mut self, cx: &mut Cx<'_, S>, lan_offers: &Summary) {
        self.needs_plan = false;
        let Some((theirs, classes)) = &self.theirs else { return };
        self.stats.logs_planned += theirs.0.len() as u64;
        let local = cx.store.local_origin();
        let gaps = self
            .basis(cx, theirs, lan_offers)
            .gaps(theirs, classes, |o| *o != local);
        self.queued.clear();
        self.queue(cx, gaps);
        self.fill_wants(cx);
        self.maybe_done(cx, lan_offers);
    }

    fn queue<S>(&mut self, cx: &Cx<'_, S>, gaps: Vec<Gap>) {
        let max = cx.cfg.want_max_events.max(1);
        for g in gaps {
            if g.last == u64::MAX {
                // An open-ended tail: the peer sends what it has.
                self.queued.push_back(g);
                continue;
            }
            let mut first = g.first;
            loop {
                let last = g.last.min(first.saturating_add(max - 1));
                self.queued.push_back(Gap { first, last, ..g });
                if last >= g.last {
                    break;
                }
                first = last + 1;
            }
        }
    }

    /// Claims and asks for queued gaps while there is room.
    pub fn fill_wants<S: Store>(&mut self, cx: &mut Cx<'_, S>) {
        while self.wants.len() < cx.cfg.wants_in_flight {
            let Some(gap) = self.queued.pop_front() else { break };
            let mut range = RangeSet::from_range(gap.first, gap.last);
            if !cx.cfg.bugs.on(|b| b.duplicate_after_reconnect) {
                range = range.difference(&cx.store.have(&gap.origin));
            }
            // A gap queued a while ago may have come apart (events or
            // claims since in its middle): ask for as many pieces as there
            // is room for, and keep the rest first in the queue.
            let mut free = range.difference(&cx.claims.claimed(&gap.origin));
            let room = cx.cfg.wants_in_flight - self.wants.len();
            if let Some(&(rest, _)) = free.ranges().get(room) {
                self.queued.push_front(Gap { first: rest, ..gap });
                free = free.intersection(&RangeSet::from_range(gap.first, rest - 1));
            }
            let free = cx.claims.claim(self.conn, gap.origin, &free);
            for &(first, last) in free.ranges() {
                let want = Want {
                    origin: gap.origin,
                    first,
                    last,
                    priority: gap.priority,
                };
                self.wants.insert(want);
                self.stats.wants_sent += 1;
                self.send_control(cx, &Frame::Want(want));
            }
        }
    }

    /// Whether an arriving event answers a want or a subscription.
    fn accepts(&self, e: &Event) -> bool {
        self.ever_subscribed.covers(&e.origin.node)
            || self
                .wants
                .iter()
                .any(|w| w.origin == e.origin && w.first <= e.seq && e.seq <= w.last)
    }

    /// A frame on a data stream the peer opened.
    pub fn on_data_frame<S: Store>(&mut self, cx: &mut Cx<'_, S>, stream: StreamId, frame: Frame) -> Result<(), Fault> {
        let data = self.data_in.entry(stream).or_default();
        match (frame, data.class) {
            (Frame::Open { class }, None) => {
                data.class = Some(class);
                Ok(())
            }
            (Frame::Events(chunk), Some(_)) => {
                let items = data
                    .dec
                    .decompress(&chunk)
                    .map_err(|e| fault(e.code(), e.to_string()))?;
                let mut events = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Item::Event(e) => events.push(e),
                        Item::Piece(p) => {
                            if let Some(e) = data.assembly.add(p).map_err(|e| fault(ErrorCode::Malformed, e))? {
                                events.push(e);
                            }
                        }
                    }
                }
                if cx.store.logs().is_none() {
                    return self.receive(cx, events);
                }
                // Held until the `Proof` that follows proves them.
                let skipped = if events.is_empty() {
                    None
                } else {
                    data.auth.on_events(events)
                };
                if let Some(r) = skipped {
                    self.unproved(cx, r);
                }
                Ok(())
            }
            (Frame::Head(head), Some(_)) if cx.store.logs().is_some() => {
                let refused = match cx.store.logs_mut() {
                    Some(logs) => data.auth.on_head(logs, head).err(),
                    None => None,
                };
                if let Some(r) = refused {
                    self.unproved(cx, r);
                }
                Ok(())
            }
            (Frame::Credential(bytes), Some(_)) if cx.store.logs().is_some() => {
                let refused = match cx.store.logs() {
                    Some(logs) => data.auth.on_credential(logs, &bytes).err(),
                    None => None,
                };
                if let Some(reason) = refused {
                    cx.out.push_back(Action::Notice(Notice::KeyRefused {
                        conn: self.conn,
                        reason,
                    }));
                }
                Ok(())
            }
            (Frame::Proof(bytes), Some(_)) if cx.store.logs().is_some() => {
                // Events this node holds in compacted blocks may be sent
                // again by a peer that did not know: their nodes are
                // hashed again from the store for the check.
                let tree = data
                    .auth
                    .waiting_range()
                    .and_then(|(o, first, last, head)| Some((o, first, last, head, cx.store.logs()?.tree(&o)?)));
                let expanded = match tree {
                    Some((origin, first, last, head, tree)) => tree.expand(first, last, &head, &|b| {
                        crate::store::block_leaves(&*cx.store, &origin, b)
                    }),
                    None => ferry_proto::merkle::Expanded::default(),
                };
                let proved = match cx.store.logs_mut() {
                    Some(logs) => data.auth.on_proof(logs, &bytes, &expanded),
                    None => Ok(Vec::new()),
                };
                match proved {
                    Ok(events) => self.receive(cx, events),
                    Err(r) => {
                        self.unproved(cx, r);
                        Ok(())
                    }
                }
            }
            (Frame::End(want), Some(_)) => {
                for r in data.auth.end_want(want.origin, want.first, want.last) {
                    self.unproved(cx, r);
                }
                if !self.wants.remove(&want) {
                    return Err(fault(
                        ErrorCode::Protocol,
                        format!(
                            "End of {}:{}..={}, which was not asked for",
                            want.origin, want.first, want.last
                        ),
                    ));
                }
                self.want_ended(cx, &want);
                Ok(())
            }
            (frame, class) => Err(fault(
                ErrorCode::Protocol,
                match class {
                    None => format!("a data stream must start with Open, not {}", frame.kind()),
                    Some(_) => format!("{} does not belong on a data stream", frame.kind()),
                },
            )),
        }
    }

    /// Events that did not prove: counted and told; not appended. What a
    /// want asked for and did not get is handled when the want ends.
    pub fn unproved<S>(&mut self, cx: &mut Cx<'_, S>, r: crate::auth::Refusal) {
        // A peer's seqs may reach u64::MAX; an empty range counts nothing.
        self.stats.events_unproved += r.last.checked_sub(r.first).map_or(0, |d| d.saturating_add(1));
        cx.out.push_back(Action::Notice(Notice::Unproved {
            conn: self.conn,
            origin: r.origin,
            first: r.first,
            last: r.last,
            reason: r.error.to_string(),
        }));
    }

    /// A want is over: release what of it did not arrive, ask for more.
    fn want_ended<S: Store>(&mut self, cx: &mut Cx<'_, S>, want: &Want) {
        let range = RangeSet::from_range(want.first, want.last);
        let keep = cx.pending.held_by(self.conn).remove(&want.origin).unwrap_or_default();
        if !cx.cfg.bugs.on(|b| b.claims_never_released) {
            cx.claims.release(self.conn, &want.origin, &range.difference(&keep));
        }
        // What the peer offered and did not send is not asked of it again
        // (an open-ended want asks for more than anyone may hold).
        if want.last != u64::MAX {
            let offered = self
                .theirs
                .as_ref()
                .and_then(|(s, _)| s.get(&want.origin))
                .map(|s| s.intersection(&range))
                .unwrap_or_default();
            let missing = offered.difference(&cx.store.have(&want.origin)).difference(&keep);
            if !missing.is_empty() {
                let u = self.unserved.entry(want.origin).or_default();
                *u = u.union(&missing);
                *cx.replan_all |= self.peer.lan;
            }
        }
        self.fill_wants(cx);
        self.replan_when_drained();
    }

    /// Plans again once the queue of gaps ran dry and a `Done` is still
    /// owed: to send it, or to ask for what another connection held
    /// claimed at the last plan and has since let go. Not after every
    /// want or append: a plan reads every log the peer offers, and a peer
    /// offering thousands of logs of one gap each made the pull quadratic
    /// (the simulator's `many-logs`). What the queue still holds is checked
    /// against the store and the claims as each gap is asked for
    /// (`fill_wants`).
    pub fn replan_when_drained(&mut self) {
        if self.queued.is_empty() {
            self.needs_plan |= self.their_id != self.done_sent;
        }
    }

    pub fn on_refused<S: Store>(&mut self, cx: &mut Cx<'_, S>, want: Want, code: u16, message: String) {
        if self.wants.remove(&want) {
            self.want_ended(cx, &want);
        }
        cx.out.push_back(Action::Notice(Notice::Refused {
            conn: self.conn,
            code,
            message,
        }));
    }

    /// Events arrived: check each was asked for, count duplicates, append
    /// the rest through the driver.
    fn receive<S: Store>(&mut self, cx: &mut Cx<'_, S>, events: Vec<Event>) -> Result<(), Fault> {
        let mut fresh = Vec::with_capacity(events.len());
        let mut pushed: Vec<Origin> = Vec::new();
        for e in events {
            if !self.accepts(&e) {
                return Err(fault(
                    ErrorCode::Protocol,
                    format!("event {}:{} was neither asked for nor subscribed to", e.origin, e.seq),
                ));
            }
            self.peer_has.entry(e.origin).or_default().insert(e.seq);
            if !cx.trust.admits(&e) && !cx.cfg.bugs.on(|b| b.admit_revoked) {
                // Written by a revoked node after its revocation: dropped,
                // and its origin is not asked for from here on.
                continue;
            }
            if cx.store.holds(&e.origin, e.seq) || cx.pending.contains(&e.origin, e.seq) {
                self.stats.duplicates_received += 1;
                continue;
            }
            let wanted = self
                .wants
                .iter()
                .any(|w| w.origin == e.origin && w.first <= e.seq && e.seq <= w.last);
            if !wanted && !pushed.contains(&e.origin) {
                pushed.push(e.origin);
            }
            cx.claims
                .claim(self.conn, e.origin, &RangeSet::from_range(e.seq, e.seq));
            fresh.push(e);
        }
        if !fresh.is_empty() {
            let ticket = cx.pending.next_ticket();
            cx.pending.insert(
                ticket,
                Append {
                    conn: self.conn,
                    events: fresh.iter().map(|e| (e.origin, e.seq, e.priority)).collect(),
                },
            );
            cx.out.push_back(Action::Append {
                conn: self.conn,
                ticket,
                events: fresh,
            });
        }
        for origin in pushed {
            self.fill_holes(cx, origin);
        }
        Ok(())
    }

    /// A pushed event showed a hole before it that the peer can fill.
    fn fill_holes<S: Store>(&mut self, cx: &mut Cx<'_, S>, origin: Origin) {
        let Some(peer) = self.peer_has.get(&origin) else { return };
        let holes = peer
            .difference(&cx.store.have(&origin))
            .difference(&cx.claims.claimed(&origin))
            .difference(&cx.trust.barred(&origin));
        if holes.is_empty() {
            return;
        }
        let classes = self.theirs.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
        let basis = Summary([(origin, peer.difference(&holes))].into_iter().collect());
        let theirs = Summary([(origin, peer.clone())].into_iter().collect());
        let gaps = basis.gaps(&theirs, &classes, |_| true);
        self.queue(cx, gaps);
        self.fill_wants(cx);
    }

    /// An append this session asked for is durable.
    pub fn appended(&mut self, report: AppendReport) {
        self.stats.events_received += report.stored;
        self.stats.duplicates_received += report.duplicates;
        self.received_in_round += report.stored;
        self.replan_when_drained();
    }

    /// Says `Done` once nothing the peer's summary offered is missing here
    /// or on its way.
    pub fn maybe_done<S: Store>(&mut self, cx: &mut Cx<'_, S>, lan_offers: &Summary) {
        let (Some(id), Some((theirs, _))) = (self.their_id, &self.theirs) else {
            return;
        };
        if self.done_sent == Some(id)
            || !self.wants.is_empty()
            || !self.queued.is_empty()
            || cx.pending.any_for(self.conn)
        {
            return;
        }
        let local = cx.store.local_origin();
        let still_missing = theirs.0.iter().any(|(o, set)| {
            if *o == local {
                return false;
            }
            let mut got = cx.store.have(o).union(&cx.trust.barred(o));
            if let Some(unserved) = self.unserved.get(o) {
                got = got.union(unserved);
            }
            if !self.peer.lan {
                if let Some(lan) = lan_offers.get(o) {
                    got = got.union(lan);
                }
            }
            !set.difference(&got).is_empty()
        });
        if still_missing {
            // Claimed by another connection: wait for it, or for its end.
            return;
        }
        let received = self.received_in_round;
        self.received_in_round = 0;
        self.done_sent = Some(id);
        self.send_control(cx, &Frame::Done { summary: id, received });
        cx.out.push_back(Action::Notice(Notice::RoundDone {
            conn: self.conn,
            received,
        }));
        self.check_in_step(cx);
    }
}
