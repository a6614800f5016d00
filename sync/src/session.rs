//! One connection to one verified peer, as a state machine.
//!
//! The dialer opens the control stream with `Hello` and its `Summary`
//! (plus, on a reconnect, wants computed from what the peer held last time,
//! all of which can travel as 0-RTT data). The acceptor answers with its own
//! `Hello` and `Summary`. From then on both sides are alike: each pulls what
//! the other's summary offers (`pull.rs`), serves what the other wants and
//! pushes what it subscribed to (`serve.rs`), and says `Done` once it has
//! pulled everything a summary offered. A daemon keeps the connection open;
//! a dialer asks for a fresh summary every `round_interval`.

use crate::claims::Claims;
use crate::config::Config;
use crate::io::{Action, ConnId, Notice, PeerInfo, StreamId, StreamKind, Time};
use crate::lane::Lane;
use crate::pending::Pending;
use crate::reader::FrameReader;
use crate::rng::Rng;
use crate::store::Store;
use ferry_proto::batch::{Assembly, StreamDecompressor};
use ferry_proto::merkle::Mode;
use ferry_proto::{
    Classes, ErrorCode, Frame, Gap, Hello, NodeId, Origin, Priority, RangeSet, Subscription, Summary, Want,
    PROTOCOL_VERSION,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Priority of the control stream: above every data stream.
pub(crate) const CONTROL_PRIORITY: i32 = 10;

/// Everything outside the session that its handlers use.
pub(crate) struct Cx<'a, S> {
    pub store: &'a mut S,
    pub claims: &'a mut Claims,
    pub out: &'a mut VecDeque<Action>,
    pub cfg: &'a Config,
    pub hubs: &'a BTreeSet<NodeId>,
    pub pending: &'a mut Pending,
    pub rng: &'a mut Rng,
    pub now: Time,
    pub trust: &'a mut crate::trust::Trust,
    /// A LAN peer did not serve what it offered: every session plans
    /// again, as the WAN may now be asked for it.
    pub replan_all: &'a mut bool,
}

impl<S: Store> Cx<'_, S> {
    pub fn allows(&self, peer: &PeerInfo, origin: &Origin) -> bool {
        self.cfg.bugs.on(|b| b.skip_policy_check) || self.cfg.policy.allows(&peer.node, peer.role, origin, self.hubs)
    }

    /// What this node holds, cut down to what policy lets `peer` have.
    pub fn summary_for(&self, peer: &PeerInfo) -> (Summary, Classes) {
        let allow = |o: &Origin| self.allows(peer, o);
        (
            self.store.summary().filtered(allow),
            self.store.classes().filtered(allow),
        )
    }
}

/// A connection-level failure: the session closes with this code.
#[derive(Debug)]
pub(crate) struct Fault {
    pub code: ErrorCode,
    pub message: String,
}

pub(crate) fn fault(code: ErrorCode, message: impl Into<String>) -> Fault {
    Fault {
        code,
        message: message.into(),
    }
}

/// Counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub events_sent: u64,
    pub events_received: u64,
    /// Events that arrived already held here.
    pub duplicates_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub wants_sent: u64,
    pub rounds: u64,
    /// Events refused because they did not prove (`auth`).
    pub events_unproved: u64,
    /// Bytes of credentials, heads and proofs sent (`auth`).
    pub auth_bytes_sent: u64,
    /// Logs read by pull planning, one per log the peer offers at each
    /// plan: what deciding what to ask for costs.
    pub logs_planned: u64,
}

impl SessionStats {
    pub fn add(&mut self, o: &SessionStats) {
        self.events_sent += o.events_sent;
        self.events_received += o.events_received;
        self.duplicates_received += o.duplicates_received;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.wants_sent += o.wants_sent;
        self.rounds += o.rounds;
        self.events_unproved += o.events_unproved;
        self.auth_bytes_sent += o.auth_bytes_sent;
        self.logs_planned += o.logs_planned;
    }
}

/// A data stream the peer opened.
#[derive(Default)]
pub(crate) struct DataIn {
    pub class: Option<Priority>,
    pub reader: FrameReader,
    pub dec: StreamDecompressor,
    pub assembly: Assembly,
    /// Heads kept and events held until proved, when logs are authenticated.
    pub auth: crate::auth::Inbound,
}

pub(crate) struct Session {
    pub conn: ConnId,
    pub peer: PeerInfo,
    next_stream: u32,
    pub(crate) control: Option<StreamId>,
    control_in: FrameReader,
    pub hello: Option<Hello>,
    pub closed: bool,
    // Pulling (pull.rs).
    /// The peer's latest summary, and everything seen of it since.
    pub theirs: Option<(Summary, Classes)>,
    pub their_id: Option<u32>,
    pub done_sent: Option<u32>,
    pub received_in_round: u64,
    pub wants: BTreeSet<Want>,
    pub queued: VecDeque<Gap>,
    /// What the peer offered, was asked for, and did not send or sent
    /// forged (a relay that cannot prove what it holds, or forges): not
    /// asked of it again until its summary of that log changes.
    pub unserved: BTreeMap<Origin, RangeSet>,
    pub data_in: BTreeMap<StreamId, DataIn>,
    /// What this node asked the peer to push, and every node it ever asked
    /// for (pushes sent before a narrower subscription arrived are fine).
    pub subscribed: Option<Subscription>,
    pub ever_subscribed: Subscription,
    /// Gaps must be computed again (a summary came).
    pub needs_plan: bool,
    // Serving (serve.rs).
    /// What the peer holds, by its summaries and what was sent to it.
    pub peer_has: BTreeMap<Origin, RangeSet>,
    /// What it asked for and this node could not prove (a relay that lost
    /// the tail of a block, events held from before log authentication):
    /// its `Done` does not mean it holds them.
    pub not_proved: BTreeMap<Origin, RangeSet>,
    pub our_id: u32,
    pub our_summary: Summary,
    /// The classes sent with `our_summary`: the next summary may go as a
    /// change to both.
    pub our_classes: Classes,
    pub peer_done: Option<u32>,
    pub peer_sub: Option<Subscription>,
    pub lanes: [Lane; 3],
    pub lane_streams: [Option<StreamId>; 3],
    pub level: i32,
    /// When the dialer sent its `Hello`: the peer's answer times the link.
    hello_sent_at: Option<Time>,
    // Both.
    pub next_round_at: Option<Time>,
    pub in_step: bool,
    pub stats: SessionStats,
}

impl Session {
    pub fn new(conn: ConnId, peer: PeerInfo, cfg: &Config) -> Self {
        let level = if peer.lan { cfg.level_lan } else { cfg.level_wan };
        Session {
            conn,
            peer,
            next_stream: 0,
            control: None,
            control_in: FrameReader::default(),
            hello: None,
            closed: false,
            theirs: None,
            their_id: None,
            done_sent: None,
            received_in_round: 0,
            wants: BTreeSet::new(),
            queued: VecDeque::new(),
            unserved: BTreeMap::new(),
            data_in: BTreeMap::new(),
            subscribed: None,
            ever_subscribed: Subscription::default(),
            needs_plan: false,
            peer_has: BTreeMap::new(),
            not_proved: BTreeMap::new(),
            our_id: 0,
            our_summary: Summary::default(),
            our_classes: Classes::default(),
            peer_done: None,
            peer_sub: None,
            lanes: [
                Lane::new(Priority::Urgent),
                Lane::new(Priority::Normal),
                Lane::new(Priority::Bulk),
            ],
            lane_streams: [None; 3],
            level,
            hello_sent_at: None,
            next_round_at: None,
            in_step: false,
            stats: SessionStats::default(),
        }
    }

    pub fn open_stream<S>(&mut self, cx: &mut Cx<'_, S>, kind: StreamKind, priority: i32) -> StreamId {
        let stream = StreamId::Local(self.next_stream);
        self.next_stream += 1;
        cx.out.push_back(Action::Open {
            conn: self.conn,
            stream,
            kind,
            priority,
        });
        stream
    }

    pub fn send_control<S>(&mut self, cx: &mut Cx<'_, S>, frame: &Frame) {
        self.send_encoded(cx, frame.encode());
    }

    /// `send_control` for a frame already encoded (a summary, measured
    /// against its change before it is sent).
    fn send_encoded<S>(&mut self, cx: &mut Cx<'_, S>, bytes: Vec<u8>) {
        let Some(stream) = self.control else { return };
        assert!(
            bytes.len() <= ferry_proto::frame::MAX_FRAME_LEN + ferry_proto::frame::MAX_PREFIX_LEN,
            "a frame within its limit"
        );
        self.stats.bytes_sent += bytes.len() as u64;
        cx.out.push_back(Action::Send {
            conn: self.conn,
            stream,
            bytes,
        });
    }

    fn hello<S: Store>(&self, cx: &Cx<'_, S>) -> Frame {
        let own = Origin {
            node: cx.cfg.node,
            epoch: 0,
        };
        Frame::Hello(Hello {
            node: cx.cfg.node,
            role: cx.cfg.role,
            name: cx.cfg.name.clone(),
            version: PROTOCOL_VERSION,
            live: cx.cfg.live,
            gives_own: cx.allows(&self.peer, &own),
        })
    }

    /// Tells the peer again who this node is (its `live` changed).
    pub fn say_hello_again<S: Store>(&mut self, cx: &mut Cx<'_, S>) {
        if self.peer.dialer || self.hello.is_some() {
            let hello = self.hello(cx);
            self.send_control(cx, &hello);
        }
        if self.peer.dialer {
            self.next_round_at = self.next_round(cx);
        }
    }

    /// When a dialer next asks for a fresh summary. While news is pushed
    /// both ways, a round only heals what a push could have missed, so it
    /// comes every `live_round_interval`: periodic summaries were most of
    /// what an idle 2G connection cost.
    fn next_round<S>(&self, cx: &Cx<'_, S>) -> Option<Time> {
        let every = cx.cfg.round_interval?;
        let pushed_both_ways =
            self.subscribed.is_some() && self.peer_sub.is_some() && self.hello.as_ref().is_some_and(|h| h.live);
        let every = match cx.cfg.live_round_interval {
            Some(live) if pushed_both_ways => every.max(live),
            _ => every,
        };
        Some(cx.now.saturating_add(every))
    }

    /// Sends this node's summary; `ask`: the peer answers with its own.
    /// After the first on a connection, a summary goes as a change to the
    /// one before when that is shorter (`Frame::SummaryChange`), and one
    /// larger than a frame goes in parts (`summaries`).
    pub fn send_summary<S: Store>(&mut self, cx: &mut Cx<'_, S>, ask: bool) {
        // Nothing sent, nothing to count: the next summary's change must be
        // to one the peer has. (Every caller has the control stream: the
        // dialer opens it first, and the acceptor answers on it.)
        if self.control.is_none() {
            debug_assert!(false, "a summary before the control stream");
            return;
        }
        let now = cx.summary_for(&self.peer);
        self.in_step = false;
        let before = (self.our_id > 0).then(|| {
            (
                std::mem::take(&mut self.our_summary),
                std::mem::take(&mut self.our_classes),
            )
        });
        let (frames, held) = crate::summaries::summary_frames(before.as_ref(), &now, self.our_id, ask);
        // The peer's `Done` names the last part: what it pulled is `held`.
        self.our_id = self.our_id.wrapping_add(frames.len() as u32);
        (self.our_summary, self.our_classes) = held;
        for frame in frames {
            self.send_encoded(cx, frame);
        }
    }

    /// The opening of a connection this node dialled: control stream,
    /// `Hello`, `Summary`, and wants from what the peer held last time.
    pub fn open_as_dialer<S: Store>(&mut self, cx: &mut Cx<'_, S>, remembered: Option<&(Summary, Classes)>) {
        debug_assert!(self.peer.dialer);
        self.control = Some(self.open_stream(cx, StreamKind::Bidi, CONTROL_PRIORITY));
        let hello = self.hello(cx);
        self.send_control(cx, &hello);
        self.hello_sent_at = Some(cx.now);
        self.send_summary(cx, true);
        if let Some(mem) = remembered {
            self.early_wants(cx, mem);
        }
    }

    /// Bytes arrived on a stream.
    pub fn on_data<S: Store>(
        &mut self,
        cx: &mut Cx<'_, S>,
        stream: StreamId,
        kind: StreamKind,
        bytes: &[u8],
    ) -> Result<(), Fault> {
        self.stats.bytes_received += bytes.len() as u64;
        let is_control = match (self.control, kind) {
            (Some(c), _) if c == stream => true,
            // The dialer's one bidirectional stream is the control stream.
            (None, StreamKind::Bidi) if !self.peer.dialer => true,
            (_, StreamKind::Bidi) => return Err(fault(ErrorCode::Protocol, "a second bidirectional stream")),
            (_, StreamKind::Uni) => false,
        };
        if is_control {
            self.control = Some(stream);
            let frames = self
                .control_in
                .push(bytes)
                .map_err(|e| fault(e.code(), format!("control stream: {e}")))?;
            for f in frames {
                self.on_control(cx, f)?;
            }
            return Ok(());
        }
        let StreamId::Remote(_) = stream else {
            return Err(fault(ErrorCode::Protocol, "data on a stream this node sends"));
        };
        let frames = {
            let data = self.data_in.entry(stream).or_default();
            data.reader
                .push(bytes)
                .map_err(|e| fault(e.code(), format!("data stream: {e}")))?
        };
        for f in frames {
            self.on_data_frame(cx, stream, f)?;
        }
        Ok(())
    }

    /// The peer finished or reset a stream. Its control stream ending is
    /// its goodbye (a one-shot sync that is done): the caller closes.
    pub fn on_stream_end<S: Store>(&mut self, cx: &mut Cx<'_, S>, stream: StreamId) -> Result<(), Fault> {
        if Some(stream) == self.control {
            return Err(fault(ErrorCode::Done, "the peer said goodbye"));
        }
        if let Some(mut data) = self.data_in.remove(&stream) {
            for r in data.auth.finish() {
                self.unproved(cx, r);
            }
            if data.reader.partial() > 0 || data.assembly.in_progress().is_some() {
                return Err(fault(
                    ErrorCode::Malformed,
                    "a data stream ended in the middle of a frame",
                ));
            }
        }
        Ok(())
    }

    fn on_control<S: Store>(&mut self, cx: &mut Cx<'_, S>, frame: Frame) -> Result<(), Fault> {
        if self.hello.is_none() {
            let Frame::Hello(hello) = frame else {
                return Err(fault(
                    ErrorCode::Protocol,
                    format!("expected Hello, got {}", frame.kind()),
                ));
            };
            return self.on_hello(cx, hello);
        }
        match frame {
            // Said again: the peer became a daemon (or stopped being one).
            Frame::Hello(hello) => {
                let first = self.hello.as_ref().map(|h| (h.node, h.version));
                if first != Some((hello.node, hello.version)) {
                    return Err(fault(
                        ErrorCode::Protocol,
                        "a later Hello names another node or version",
                    ));
                }
                self.hello = Some(hello);
                Ok(())
            }
            Frame::Summary {
                id,
                ask,
                summary,
                classes,
            } => self.on_summary(cx, id, ask, summary, classes),
            Frame::SummaryChange {
                id,
                ask,
                changed,
                classes,
            } => {
                // A change is to the summary just before it on this
                // (ordered) control stream.
                let mut theirs = match (&self.theirs, self.their_id) {
                    (Some(theirs), Some(last)) if last.checked_add(1) == Some(id) => theirs.clone(),
                    _ => {
                        return Err(fault(
                            ErrorCode::Protocol,
                            format!("SummaryChange {id} without the summary before it"),
                        ))
                    }
                };
                ferry_proto::apply_change(&mut theirs, changed, classes);
                let (logs, ranges) = summary_size(&theirs);
                if logs > MAX_SUMMARY_ORIGINS || ranges > MAX_SUMMARY_RANGES {
                    return Err(fault(
                        ErrorCode::TooLarge,
                        format!(
                            "a summary of {logs} logs and {ranges} ranges exceeds the limit of \
                             {MAX_SUMMARY_ORIGINS} logs and {MAX_SUMMARY_RANGES} ranges"
                        ),
                    ));
                }
                self.on_summary(cx, id, ask, theirs.0, theirs.1)
            }
            Frame::Want(w) => self.on_want(cx, w),
            Frame::Subscribe(s) => self.on_subscribe(cx, s),
            Frame::SubscribeChange { add, remove } => {
                let Some(sub) = self.peer_sub.as_ref() else {
                    return Err(fault(ErrorCode::Protocol, "SubscribeChange before any Subscribe"));
                };
                let sub = changed(sub, &add, &remove);
                if sub.nodes.len() > MAX_SUBSCRIBED_NODES {
                    return Err(fault(
                        ErrorCode::TooLarge,
                        format!(
                            "a subscription of {} nodes exceeds the limit of {MAX_SUBSCRIBED_NODES}",
                            sub.nodes.len()
                        ),
                    ));
                }
                self.on_subscribe(cx, sub)
            }
            Frame::Done { summary, received: _ } => {
                self.peer_done = Some(summary);
                if summary == self.our_id {
                    // The peer pulled everything that summary offered.
                    for (origin, set) in &self.our_summary.0 {
                        let set = match self.not_proved.get(origin) {
                            Some(not) => set.difference(not),
                            None => set.clone(),
                        };
                        let has = self.peer_has.entry(*origin).or_default();
                        *has = has.union(&set);
                    }
                }
                self.check_in_step(cx);
                Ok(())
            }
            Frame::Refused { want, code, message } => {
                self.on_refused(cx, want, code, message);
                Ok(())
            }
            Frame::Error { code, message } => Err(fault(
                ErrorCode::from_u64(code as u64).unwrap_or(ErrorCode::Protocol),
                format!("peer reported error {code}: {message}"),
            )),
            Frame::HeadWanted(origin) => self.on_head_wanted(cx, origin),
            Frame::Open { .. }
            | Frame::Events(_)
            | Frame::End(_)
            | Frame::Head(_)
            | Frame::Proof(_)
            | Frame::Credential(_) => Err(fault(
                ErrorCode::Protocol,
                format!("{} does not belong on the control stream", frame.kind()),
            )),
        }
    }

    fn on_hello<S: Store>(&mut self, cx: &mut Cx<'_, S>, hello: Hello) -> Result<(), Fault> {
        if hello.version != PROTOCOL_VERSION {
            return Err(fault(
                ErrorCode::Unsupported,
                format!(
                    "peer speaks ferry/{}, this node ferry/{PROTOCOL_VERSION}",
                    hello.version
                ),
            ));
        }
        if hello.node != self.peer.node {
            return Err(fault(
                ErrorCode::Protocol,
                format!(
                    "peer claims node {} but its certificate is for {}",
                    hello.node, self.peer.node
                ),
            ));
        }
        self.hello = Some(hello);
        if !self.peer.dialer {
            let hello = self.hello(cx);
            self.send_control(cx, &hello);
        }
        // A peer that answers quickly is on a fast link (LAN, loopback,
        // 3G), where compressing hard costs more time than the bytes it
        // saves. Lanes take the level when they start.
        if let Some(sent) = self.hello_sent_at.take() {
            let rtt = cx.now.saturating_sub(sent);
            if rtt < cx.cfg.fast_link_rtt {
                self.level = self.level.min(cx.cfg.level_lan);
            } else if rtt < cx.cfg.mid_link_rtt {
                self.level = self.level.min(cx.cfg.level_mid);
            }
        }
        self.want_heads(cx);
        Ok(())
    }

    /// Asks the peer for its head of each of its logs whose last event
    /// held here this node cannot prove under any head it holds: events
    /// held from before log authentication, or a card that lost the tail
    /// of a log and the tree nodes its heads need (when the writer lost the
    /// same tail it signed its log again shorter, and sends that head only
    /// with events, of which this node needs none).
    fn want_heads<S: Store>(&mut self, cx: &mut Cx<'_, S>) {
        let Some(logs) = cx.store.logs() else { return };
        let peer = self.peer.node;
        let mut wanted = Vec::new();
        for (origin, held) in &cx.store.summary().0 {
            let Some(&(_, last)) = held.ranges().last() else {
                continue;
            };
            if origin.node != peer {
                continue;
            }
            let provable = logs.tree(origin).is_some_and(|tree| {
                let leaves = |b| crate::store::block_leaves(&*cx.store, origin, b);
                tree.heads_for(last)
                    .any(|h| tree.prove_from(h.head(), Mode::Fresh, last, last, &leaves).is_ok())
            });
            if !provable {
                wanted.push(*origin);
            }
        }
        for origin in wanted {
            self.send_control(cx, &Frame::HeadWanted(origin));
        }
    }

    fn on_summary<S: Store>(
        &mut self,
        cx: &mut Cx<'_, S>,
        id: u32,
        ask: bool,
        summary: Summary,
        classes: Classes,
    ) -> Result<(), Fault> {
        check_own_log(cx, &summary);
        if let Some((before, _)) = &self.theirs {
            // A peer whose holding of a log changed may now prove what it
            // could not (a relay that lost a block's tail and got it back):
            // what it left unserved of that log is asked of it again.
            self.unserved.retain(|o, _| before.get(o) == summary.get(o));
        }
        for (origin, set) in &summary.0 {
            let has = self.peer_has.entry(*origin).or_default();
            *has = has.union(set);
        }
        self.theirs = Some((summary, classes));
        self.their_id = Some(id);
        self.in_step = false;
        self.stats.rounds += 1;
        if ask {
            self.send_summary(cx, false);
        }
        self.needs_plan = true;
        Ok(())
    }

    /// Both sides have pulled what the other's latest summary offered.
    pub fn check_in_step<S>(&mut self, cx: &mut Cx<'_, S>) {
        let in_step = self.their_id.is_some()
            && self.done_sent == self.their_id
            && self.our_id > 0
            && self.peer_done == Some(self.our_id);
        if !in_step || self.in_step {
            return;
        }
        self.in_step = true;
        cx.out.push_back(Action::Notice(Notice::InStep { conn: self.conn }));
        let classes = self.theirs.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
        cx.out.push_back(Action::Notice(Notice::PeerHolds {
            conn: self.conn,
            summary: Summary(self.peer_has.clone()),
            classes,
        }));
        if self.peer.dialer {
            self.next_round_at = self.next_round(cx);
        }
    }

    /// Starts a round: a fresh summary, and the peer's in answer.
    pub fn start_round<S: Store>(&mut self, cx: &mut Cx<'_, S>) {
        if self.hello.is_none() && !self.peer.dialer {
            return;
        }
        self.next_round_at = None;
        self.send_summary(cx, true);
    }

    /// Sets what this node asks the peer to push: the whole subscription,
    /// or the change from the last one where that is shorter.
    pub fn subscribe<S>(&mut self, cx: &mut Cx<'_, S>, sub: Subscription) {
        if self.subscribed.as_ref() == Some(&sub) {
            return;
        }
        let ever = &mut self.ever_subscribed;
        if sub.all {
            if !ever.all {
                ever.all = true;
                ever.nodes.clear();
            } else {
                // Nodes excluded before and still excluded stay excluded.
                ever.nodes.retain(|n| sub.nodes.contains(n));
            }
        } else if ever.all {
            ever.nodes.retain(|n| !sub.nodes.contains(n));
        } else {
            for n in &sub.nodes {
                if !ever.nodes.contains(n) {
                    ever.nodes.push(*n);
                }
            }
        }
        let frame = match &self.subscribed {
            Some(old) if old.all == sub.all => {
                let (was, now): (BTreeSet<_>, BTreeSet<_>) = (old.nodes.iter().collect(), sub.nodes.iter().collect());
                let add: Vec<NodeId> = now.difference(&was).map(|n| **n).collect();
                let remove: Vec<NodeId> = was.difference(&now).map(|n| **n).collect();
                if add.len() + remove.len() < sub.nodes.len() {
                    Frame::SubscribeChange { add, remove }
                } else {
                    Frame::Subscribe(sub.clone())
                }
            }
            _ => Frame::Subscribe(sub.clone()),
        };
        self.send_control(cx, &frame);
        self.subscribed = Some(sub);
    }

    /// The connection is gone: release what it claimed (but appends still
    /// on their way to disk) and forget what it was sending.
    pub fn close(&mut self, claims: &mut Claims, pending: &Pending) {
        self.closed = true;
        claims.release_all_but(self.conn, &pending.held_by(self.conn));
        for lane in &mut self.lanes {
            lane.clear();
        }
        self.wants.clear();
        self.queued.clear();
        self.data_in.clear();
    }

    /// Says goodbye: ends the control stream. The peer closes the
    /// connection once it has read everything before it.
    pub fn goodbye<S>(&mut self, cx: &mut Cx<'_, S>) {
        if let Some(stream) = self.control {
            cx.out.push_back(Action::Finish {
                conn: self.conn,
                stream,
            });
        }
    }

    /// What the peer is known to offer, for LAN-first pulling elsewhere:
    /// its summary, less what it was asked for and did not serve (events
    /// that did not prove, from a relay that forges).
    pub fn offers(&self) -> Option<Summary> {
        let (theirs, _) = self.theirs.as_ref()?;
        Some(Summary(
            theirs
                .0
                .iter()
                .map(|(o, set)| match self.unserved.get(o) {
                    Some(u) => (*o, set.difference(u)),
                    None => (*o, set.clone()),
                })
                .collect(),
        ))
    }
}

/// A peer holding more of this node's own current log than this node means
/// the log lost its tail (a restored copy, a card that lost fsynced writes):
/// writing on would reuse sequence numbers, so start a new log; the old one
/// comes back as any other. A second line only: a peer holding as much
/// cannot vouch for the tail (a mule on the road may hold more), so the
/// driver already makes the first local write of every start begin a new
/// log (`Wal::set_unconfirmed_tail`).
fn check_own_log<S: Store>(cx: &mut Cx<'_, S>, theirs: &Summary) {
    let local = cx.store.local_origin();
    let their_last = theirs.get(&local).and_then(RangeSet::last).unwrap_or(0);
    let our_last = cx.store.have(&local).last().unwrap_or(0);
    if their_last > our_last {
        let epoch = (cx.rng.next_u64() >> 32) as u32;
        let origin = Origin {
            node: local.node,
            epoch,
        };
        cx.store.set_local_origin(origin);
        cx.out.push_back(Action::NewEpoch(origin));
    }
}

/// Most logs a summary built from `SummaryChange`s may name: a summary
/// larger than a frame comes in parts (`summaries`), so this is a bound of
/// its own, about twenty frames' worth of logs (a deployment of a hundred
/// clinics with a power cut a day gathers 36,500 a year).
const MAX_SUMMARY_ORIGINS: usize = 1 << 20;
/// Most ranges such a summary and its classes may hold together (16 bytes
/// each in memory, so at most 64 MiB). Each change may replace a log's
/// sets whole, so without this bound changes could pile up a frame's worth
/// of ranges per log.
const MAX_SUMMARY_RANGES: usize = 1 << 22;

/// Logs named, and ranges held over the sets and their classes.
fn summary_size((summary, classes): &(Summary, Classes)) -> (usize, usize) {
    let ranges = |m: &BTreeMap<Origin, RangeSet>| m.values().map(|s| s.ranges().len()).sum::<usize>();
    (
        summary.0.len(),
        ranges(&summary.0) + ranges(&classes.urgent) + ranges(&classes.bulk),
    )
}

/// Most nodes a subscription may name: as many as fit a whole `Subscribe`
/// frame, so that changes cannot grow it past what one frame could say.
const MAX_SUBSCRIBED_NODES: usize = ferry_proto::frame::MAX_FRAME_LEN / 17;

/// `sub` after a `SubscribeChange`. Sets, not lists, decide membership:
/// a peer may name tens of thousands of nodes in one change.
fn changed(sub: &Subscription, add: &[NodeId], remove: &[NodeId]) -> Subscription {
    let remove: BTreeSet<&NodeId> = remove.iter().collect();
    let mut seen: BTreeSet<NodeId> = BTreeSet::new();
    let nodes = sub
        .nodes
        .iter()
        .filter(|n| !remove.contains(n))
        .chain(add)
        .filter(|n| seen.insert(**n))
        .copied()
        .collect();
    Subscription { all: sub.all, nodes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u32) -> NodeId {
        let mut id = [0; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        NodeId(id)
    }

    #[test]
    fn a_change_adds_and_removes_each_node_once() {
        let sub = Subscription {
            all: true,
            nodes: vec![node(1), node(2), node(3)],
        };
        let out = changed(&sub, &[node(4), node(4), node(1)], &[node(2), node(9)]);
        assert!(out.all);
        assert_eq!(out.nodes, vec![node(1), node(3), node(4)]);
        let many: Vec<NodeId> = (0..MAX_SUBSCRIBED_NODES as u32).map(node).collect();
        let out = changed(&out, &many, &[node(1)]);
        assert_eq!(out.nodes.len(), MAX_SUBSCRIBED_NODES);
        assert_eq!(out.nodes[..2], [node(3), node(4)]);
    }
}
