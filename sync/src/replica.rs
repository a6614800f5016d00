//! A node's replication state: its store, its sessions and what they share
//! (claims, appends on their way to disk, the hubs it knows), driven from
//! outside in the manner of quinn-proto: `handle_*` for what happened,
//! `poll_action` and `poll_timeout` for what to do.

use crate::claims::Claims;
use crate::config::Config;
use crate::io::{Action, ConnId, PeerInfo, StreamId, StreamKind, Ticket, Time};
use crate::pending::Pending;
use crate::rng::Rng;
use crate::session::{Cx, Session, SessionStats};
use crate::store::{AppendReport, Store, StoreError};
use crate::trust::Trust;
use ferry_proto::merkle::{block_of, BLOCK_EVENTS};
use ferry_proto::{Classes, ErrorCode, Hlc, NodeId, Origin, Priority, RangeSet, Role, Subscription, Summary};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub struct Replica<S: Store> {
    cfg: Config,
    store: S,
    claims: Claims,
    sessions: BTreeMap<ConnId, Session>,
    pending: Pending,
    hubs: BTreeSet<NodeId>,
    out: VecDeque<Action>,
    rng: Rng,
    /// Subscriptions must be worked out again (a session came, went, or
    /// said what it offers).
    subs_dirty: bool,
    /// Counters of sessions that have ended.
    ended: SessionStats,
    trust: Trust,
    /// Set through `Cx::replan_all`.
    replan_all: bool,
}

/// What one open session looks like from outside.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub conn: ConnId,
    pub peer: PeerInfo,
    pub stats: SessionStats,
    /// Both sides have pulled what the other's latest summary offered.
    pub in_step: bool,
    /// Events the peer offers that this node lacks, and events this node
    /// may send that the peer lacks, as far as this node knows.
    pub we_lack: u64,
    pub they_lack: u64,
}

macro_rules! cx {
    ($self:ident, $now:expr) => {
        Cx {
            store: &mut $self.store,
            claims: &mut $self.claims,
            out: &mut $self.out,
            cfg: &$self.cfg,
            hubs: &$self.hubs,
            pending: &mut $self.pending,
            rng: &mut $self.rng,
            now: $now,
            trust: &mut $self.trust,
            replan_all: &mut $self.replan_all,
        }
    };
}

impl<S: Store> Replica<S> {
    /// `hubs`: nodes known, from verified certificates, to be hubs.
    pub fn new(cfg: Config, store: S, seed: u64, mut hubs: BTreeSet<NodeId>) -> Self {
        if cfg.role == Role::Hub {
            hubs.insert(cfg.node);
        }
        Replica {
            cfg,
            store,
            claims: Claims::default(),
            sessions: BTreeMap::new(),
            pending: Pending::default(),
            hubs,
            out: VecDeque::new(),
            rng: Rng::new(seed),
            subs_dirty: false,
            ended: SessionStats::default(),
            trust: Trust::default(),
            replan_all: false,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The store, for a node that stops (the simulator's crash).
    pub fn into_store(self) -> S {
        self.store
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Turns this node into a daemon (or back): peers hear it in a new
    /// `Hello`, and subscriptions are worked out again.
    pub fn set_live(&mut self, now: Time, live: bool, round_interval: Option<Time>) {
        self.cfg.live = live;
        self.cfg.round_interval = round_interval;
        let conns: Vec<ConnId> = self.sessions.keys().copied().collect();
        for conn in conns {
            if let Some(s) = self.sessions.get_mut(&conn) {
                s.say_hello_again(&mut cx!(self, now));
            }
        }
        self.subs_dirty = true;
        self.follow_up(now);
    }

    pub fn hubs(&self) -> &BTreeSet<NodeId> {
        &self.hubs
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Time> {
        let end_after = self.cfg.end_idle_frame_after;
        self.sessions
            .values()
            .flat_map(|s| [s.next_round_at, s.next_frame_end(end_after)])
            .flatten()
            .min()
    }

    /// A connection to a verified peer is up. A dialer opens the session at
    /// once; `remembered` is what the peer held at the end of the last
    /// connection to it, from which wants go out before its summary.
    pub fn connect(&mut self, now: Time, conn: ConnId, peer: PeerInfo, remembered: Option<&(Summary, Classes)>) {
        assert!(!self.sessions.contains_key(&conn), "connection {conn:?} is new");
        if self.trust.is_revoked(&peer.node) {
            // The handshake refuses a revoked certificate, but a resumed TLS
            // session is not verified again.
            self.out.push_back(Action::Close {
                conn,
                code: ErrorCode::Policy as u16,
                reason: "this node's certificate is revoked".into(),
            });
            return;
        }
        if peer.role == Role::Hub {
            self.hubs.insert(peer.node);
        }
        let dialer_of = |s: &Session, me: NodeId| if s.peer.dialer { me } else { s.peer.node };
        let mut session = Session::new(conn, peer, &self.cfg);
        let new_dialer = dialer_of(&session, self.cfg.node);
        // One connection per peer. A reconnect replaces the old one (its
        // claims go with it); of two dialled from both ends at once, both
        // sides keep the one the lower node id dialled. Which of two from the
        // same dialer is the reconnect goes by `ConnId`, which the driver
        // gives out as a connection begins: one whose handshake ended later
        // may have begun first (a 0-RTT opening the peer rejected, whose
        // redial overtook it at an acceptor under load, resume.rs).
        let same: Vec<(ConnId, NodeId)> = self
            .sessions
            .values()
            .filter(|s| s.peer.node == session.peer.node)
            .map(|s| (s.conn, dialer_of(s, self.cfg.node)))
            .collect();
        for (old, old_dialer) in same {
            if (old_dialer == new_dialer && old < conn) || new_dialer < old_dialer {
                self.close(
                    now,
                    old,
                    ErrorCode::Done,
                    "replaced by a newer connection from the same node",
                );
            } else {
                self.out.push_back(Action::Close {
                    conn,
                    code: ErrorCode::Done as u16,
                    reason: "already connected to this node".into(),
                });
                return;
            }
        }
        if session.peer.dialer {
            session.open_as_dialer(&mut cx!(self, now), remembered);
        }
        self.sessions.insert(conn, session);
        self.subs_dirty = true;
        self.follow_up(now);
    }

    /// `node` is revoked (the driver verified the CA's signature): its
    /// sessions close, and events of its origins stamped after `cutoff` are
    /// refused from now on (see `trust`).
    pub fn revoke(&mut self, now: Time, node: NodeId, cutoff: Hlc) {
        self.trust.revoke(node, cutoff);
        let conns: Vec<ConnId> = self
            .sessions
            .values()
            .filter(|s| s.peer.node == node)
            .map(|s| s.conn)
            .collect();
        for conn in conns {
            self.close(now, conn, ErrorCode::Policy, "this node's certificate is revoked");
        }
        self.follow_up(now);
    }

    /// What this node knows of revocations, and what it refused.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Bytes arrived on a stream. `kind` says how the stream was opened.
    pub fn handle_stream_data(&mut self, now: Time, conn: ConnId, stream: StreamId, kind: StreamKind, bytes: &[u8]) {
        let Some(s) = self.sessions.get_mut(&conn) else { return };
        let had_hello = s.hello.as_ref().map(|h| (h.live, h.gives_own));
        let result = s.on_data(&mut cx!(self, now), stream, kind, bytes);
        if s.hello.as_ref().map(|h| (h.live, h.gives_own)) != had_hello {
            self.subs_dirty = true;
        }
        if let Err(f) = result {
            self.close(now, conn, f.code, &f.message);
        }
        self.follow_up(now);
    }

    /// The peer finished or reset a stream.
    pub fn handle_stream_end(&mut self, now: Time, conn: ConnId, stream: StreamId) {
        let Some(s) = self.sessions.get_mut(&conn) else { return };
        if let Err(f) = s.on_stream_end(&mut cx!(self, now), stream) {
            self.close(now, conn, f.code, &f.message);
        }
        self.follow_up(now);
    }

    /// The driver wrote the last `Send` of a data stream; it may take more.
    pub fn handle_sent(&mut self, now: Time, conn: ConnId, stream: StreamId) {
        let Some(s) = self.sessions.get_mut(&conn) else { return };
        if let Err(f) = s.on_sent(&mut cx!(self, now), stream) {
            self.close(now, conn, f.code, &f.message);
        }
        self.follow_up(now);
    }

    /// The connection is gone (closed by either side, timed out, reset).
    pub fn handle_closed(&mut self, now: Time, conn: ConnId) {
        if let Some(mut s) = self.sessions.remove(&conn) {
            s.close(&mut self.claims, &self.pending);
            self.ended.add(&s.stats);
            self.replan_waiting();
            self.subs_dirty = true;
        }
        self.follow_up(now);
    }

    /// An `Action::Append` finished.
    pub fn handle_appended(&mut self, now: Time, ticket: Ticket, result: Result<AppendReport, StoreError>) {
        let Some(append) = self.pending.take(ticket) else {
            return;
        };
        if !self.cfg.bugs.on(|b| b.claims_never_released) {
            for (origin, set) in by_origin(&append.events) {
                self.claims.release(append.conn, &origin, &set);
            }
        }
        match result {
            Ok(report) => {
                if let Some(s) = self.sessions.get_mut(&append.conn) {
                    s.appended(report);
                }
                self.stored(now, &append.events);
            }
            Err(e) => self.close(
                now,
                append.conn,
                ErrorCode::Internal,
                &format!("could not store received events: {e}"),
            ),
        }
        self.replan_waiting();
        self.follow_up(now);
    }

    /// This node's own events were appended (by the application).
    pub fn handle_local_appended(&mut self, now: Time, events: &[(Origin, u64, Priority)]) {
        self.stored(now, events);
        self.follow_up(now);
    }

    pub fn handle_timeout(&mut self, now: Time) {
        let due: Vec<ConnId> = self
            .sessions
            .values()
            .filter(|s| s.next_round_at.is_some_and(|t| t <= now))
            .map(|s| s.conn)
            .collect();
        for conn in due {
            self.start_round(now, conn);
        }
        let end_after = self.cfg.end_idle_frame_after;
        let frames_due: Vec<ConnId> = self
            .sessions
            .values()
            .filter(|s| s.next_frame_end(end_after).is_some_and(|t| t <= now))
            .map(|s| s.conn)
            .collect();
        if frames_due.is_empty() {
            return;
        }
        for conn in frames_due {
            let Some(s) = self.sessions.get_mut(&conn) else {
                continue;
            };
            if let Err(f) = s.pump(&mut cx!(self, now)) {
                self.close(now, conn, f.code, &f.message);
            }
        }
        self.follow_up(now);
    }

    /// Asks the peer for a fresh summary (and sends this node's).
    pub fn start_round(&mut self, now: Time, conn: ConnId) {
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.start_round(&mut cx!(self, now));
        }
        self.follow_up(now);
    }

    /// Ends a one-shot sync politely: the peer closes the connection once it
    /// has read everything this node sent (so nothing in flight is lost).
    pub fn goodbye(&mut self, now: Time, conn: ConnId) {
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.goodbye(&mut cx!(self, now));
        }
    }

    /// Closes a connection from this side.
    pub fn close(&mut self, now: Time, conn: ConnId, code: ErrorCode, reason: &str) {
        if self.sessions.contains_key(&conn) {
            self.out.push_back(Action::Close {
                conn,
                code: code as u16,
                reason: reason.to_string(),
            });
            self.handle_closed(now, conn);
        }
    }

    /// New events are held: offer them to every subscribed peer.
    fn stored(&mut self, now: Time, events: &[(Origin, u64, Priority)]) {
        let mut groups: BTreeMap<(Origin, Priority), RangeSet> = BTreeMap::new();
        for (origin, seq, priority) in events {
            groups.entry((*origin, *priority)).or_default().insert(*seq);
        }
        self.compact_trees(events);
        let conns: Vec<ConnId> = self.sessions.keys().copied().collect();
        for conn in conns {
            for ((origin, priority), seqs) in &groups {
                let Some(s) = self.sessions.get_mut(&conn) else { break };
                if let Err(f) = s.on_stored(&mut cx!(self, now), *origin, seqs, *priority) {
                    self.close(now, conn, f.code, &f.message);
                }
            }
        }
    }

    /// Blocks of events now durably held whole need not keep their low
    /// tree nodes (`Known::compact_block`): a proof hashes them again from
    /// the events.
    fn compact_trees(&mut self, events: &[(Origin, u64, Priority)]) {
        if self.store.logs().is_none() {
            return;
        }
        let blocks: BTreeSet<(Origin, u64)> = events.iter().map(|(o, seq, _)| (*o, block_of(*seq))).collect();
        let mut have: BTreeMap<Origin, RangeSet> = BTreeMap::new();
        for (origin, block) in blocks {
            let held = have.entry(origin).or_insert_with(|| self.store.have(&origin));
            let first = block * BLOCK_EVENTS + 1;
            if !RangeSet::from_range(first, first + BLOCK_EVENTS - 1)
                .difference(held)
                .is_empty()
            {
                continue;
            }
            if let Some(logs) = self.store.logs_mut() {
                logs.compact(origin, block);
            }
        }
    }

    /// Sessions still owing a `Done` with nothing left queued look again:
    /// claims they waited on may have ended. One with gaps queued looks
    /// again once they are asked for (`Session::replan_when_drained`).
    fn replan_waiting(&mut self) {
        for s in self.sessions.values_mut() {
            if s.their_id.is_some() {
                s.replan_when_drained();
            }
        }
    }

    /// What open LAN sessions offer: over the WAN, that is not asked for.
    fn lan_offers(&self) -> Summary {
        self.sessions
            .values()
            .filter(|s| s.peer.lan)
            .filter_map(|s| s.offers())
            .fold(Summary::default(), |all, o| all.union(&o))
    }

    fn follow_up(&mut self, now: Time) {
        if self.subs_dirty {
            self.subs_dirty = false;
            self.resubscribe(now);
        }
        if std::mem::take(&mut self.replan_all) {
            for s in self.sessions.values_mut().filter(|s| s.theirs.is_some()) {
                s.needs_plan = true;
            }
        }
        if self.sessions.values().any(|s| s.needs_plan) {
            let lan = self.lan_offers();
            let conns: Vec<ConnId> = self.sessions.keys().copied().collect();
            for conn in conns {
                let Some(s) = self.sessions.get_mut(&conn) else {
                    continue;
                };
                if s.needs_plan {
                    s.plan(&mut cx!(self, now), &lan);
                }
            }
        }
        self.check_claims_owned();
    }

    /// Works out which connection pushes which nodes' new events to this
    /// node, so that each new event crosses to it once where that can be
    /// known: a node's own events come from it directly when it is connected
    /// and gives them; the rest from the hub's connection if there is one,
    /// else from every connection (a hub, or a site reached only by LAN or
    /// mule, hears relayed news from whoever has it first).
    fn resubscribe(&mut self, now: Time) {
        if !self.cfg.live {
            return;
        }
        let live: Vec<&Session> = self
            .sessions
            .values()
            .filter(|s| s.hello.as_ref().is_some_and(|h| h.live))
            .collect();
        let mut direct: BTreeMap<NodeId, ConnId> = BTreeMap::new();
        for s in &live {
            if s.hello.as_ref().is_some_and(|h| h.gives_own) {
                direct.entry(s.peer.node).or_insert(s.conn);
            }
        }
        let hub = live
            .iter()
            .filter(|s| s.peer.role == Role::Hub)
            .min_by_key(|s| (!s.peer.lan, s.conn))
            .map(|s| s.conn);
        let wanted: Vec<(ConnId, Subscription)> = live
            .iter()
            .map(|s| {
                let rest = hub.is_none_or(|h| h == s.conn);
                let sub = if rest {
                    Subscription {
                        all: true,
                        nodes: direct.iter().filter(|(_, c)| **c != s.conn).map(|(n, _)| *n).collect(),
                    }
                } else {
                    Subscription {
                        all: false,
                        nodes: direct.iter().filter(|(_, c)| **c == s.conn).map(|(n, _)| *n).collect(),
                    }
                };
                (s.conn, sub)
            })
            .collect();
        for (conn, sub) in wanted {
            let Some(s) = self.sessions.get_mut(&conn) else {
                continue;
            };
            // A subscription that now covers a node is not followed by a
            // round: the peer pushes what it stored since its last summary
            // (`Session::on_subscribe`), and what that summary offered is
            // wanted from it once the node's own connection no longer
            // claims it.
            s.subscribe(&mut cx!(self, now), sub);
        }
    }

    /// Every claim has an owner: an open session or an append on its way.
    fn check_claims_owned(&self) {
        if cfg!(debug_assertions) || cfg!(feature = "fault-injection") {
            for conn in self.claims.owners() {
                assert!(
                    self.sessions.contains_key(&conn) || self.pending.any_for(conn),
                    "a claim of {conn:?} outlived its connection and appends"
                );
            }
        }
    }

    /// Checks what must always hold; the simulator calls it after every step.
    pub fn check_invariants(&self) {
        self.check_claims_owned();
        for s in self.sessions.values() {
            assert!(
                s.wants.len() <= self.cfg.wants_in_flight,
                "{} wants outstanding, limit {}",
                s.wants.len(),
                self.cfg.wants_in_flight
            );
            for w in &s.wants {
                let owned = self.claims.owned(s.conn, &w.origin);
                let range = RangeSet::from_range(w.first, w.last);
                let held = self.store.have(&w.origin);
                assert!(
                    range.difference(&owned).difference(&held).is_empty()
                        || self.cfg.bugs.on(|b| b.duplicate_after_reconnect),
                    "want {}:{}..={} is not all claimed by its connection",
                    w.origin,
                    w.first,
                    w.last
                );
            }
        }
    }

    /// Open sessions.
    pub fn sessions(&self) -> Vec<SessionView> {
        self.sessions
            .values()
            .map(|s| {
                let (we_lack, they_lack) = self.lag(s);
                SessionView {
                    conn: s.conn,
                    peer: s.peer.clone(),
                    stats: s.stats,
                    in_step: s.in_step,
                    we_lack,
                    they_lack,
                }
            })
            .collect()
    }

    fn lag(&self, s: &Session) -> (u64, u64) {
        let ours = self.store.summary();
        // What this node refuses (a revoked node's later events) is not lacking.
        let mut wanted = ours.clone();
        for origin in self.trust.barred_origins().keys() {
            let set = wanted.0.entry(*origin).or_default();
            *set = set.union(&self.trust.barred(origin));
        }
        let we_lack = s.offers().map(|t| wanted.lacking(&t)).unwrap_or(0);
        let theirs = Summary(s.peer_has.clone());
        let mine = ours.filtered(|o| self.cfg.policy.allows(&s.peer.node, s.peer.role, o, &self.hubs));
        (we_lack, theirs.lacking(&mine))
    }

    pub fn session(&self, conn: ConnId) -> Option<SessionView> {
        self.sessions().into_iter().find(|v| v.conn == conn)
    }

    /// Counters over every session this replica has had.
    pub fn totals(&self) -> SessionStats {
        let mut t = self.ended;
        for s in self.sessions.values() {
            t.add(&s.stats);
        }
        t
    }

    /// Sequence numbers claimed right now.
    pub fn claimed(&self) -> u64 {
        self.claims.total()
    }

    /// Appends handed out and not reported yet.
    pub fn appends_pending(&self) -> usize {
        self.pending.len()
    }
}

fn by_origin(events: &[(Origin, u64, Priority)]) -> BTreeMap<Origin, RangeSet> {
    let mut out: BTreeMap<Origin, RangeSet> = BTreeMap::new();
    for (origin, seq, _) in events {
        out.entry(*origin).or_default().insert(*seq);
    }
    out
}
