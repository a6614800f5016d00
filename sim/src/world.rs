//! The simulated deployment: nodes running the real core on `MemStore`s,
//! connections carried by the transport model over netsim pipes, a clock
//! that only moves from one scheduled event to the next, and the faults.

use crate::check::{Checker, Identity, Tap};
use crate::trace::Trace;
use crate::transport::{End, Payload};
use crate::workload::Mix;
use ferry_netsim::pipe::{Pipe, Verdict};
use ferry_netsim::profile::{Direction, Profile};
use ferry_proto::{Classes, Event, NodeId, Origin, Priority, Role, Summary};
use ferry_sync::auth::Logs;
use ferry_sync::stand_in::{StandInKey, StandInKeys, HONEST};
use ferry_sync::{
    Action, AppendReport, Bugs, ConnId, GroupId, MemStore, Notice, PeerInfo, Replica, Store, StreamId, StreamKind,
    Ticket, Time,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One node: its replica while it runs, its disk while it does not.
pub struct SimNode {
    pub name: String,
    pub ident: Identity,
    pub replica: Option<Replica<MemStore>>,
    pub disk: Option<MemStore>,
    /// Counts restarts: an end of a connection belongs to one boot.
    pub boot: u32,
    pub wall_offset_ms: i64,
    pub segment: Option<usize>,
    pub mix: Mix,
    /// Lost with the process: what peers held when last seen, and which
    /// peers this boot holds a resumable TLS session with (and their boot).
    pub remembered: BTreeMap<NodeId, (Summary, Classes)>,
    pub tickets: BTreeMap<NodeId, u32>,
    pub backoff: BTreeMap<NodeId, (u32, Time)>,
    pub snapshot: Option<(MemStore, Backup)>,
    /// Until then the node's address is changing: its WAN packets are lost.
    pub moving_until: Time,
    timer_at: Option<Time>,
    /// Keyed records as this node's index would show them: every event
    /// applied as it arrives, in arrival order, duplicates and all.
    pub records: ferry_records::State,
    /// Revocations this node holds, as its driver would know them: the
    /// revoked node and the cutoff (`revoke`).
    pub revoked: BTreeMap<NodeId, ferry_proto::Hlc>,
    /// The revocations the core had when it decided the actions now being
    /// carried out: those it queued before learning of one are the
    /// documented window (events in the batch that brought it).
    pub enforced: BTreeMap<NodeId, ferry_proto::Hlc>,
}

/// A WAN link from a clinic or mule to a hub.
pub struct Wan {
    pub a: usize,
    pub hub: usize,
    pub profile: Profile,
    pub up: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Lan(usize),
    Wan(usize),
}

pub struct Conn {
    /// [dialer, acceptor].
    pub nodes: [usize; 2],
    pub boots: [u32; 2],
    pub path: Path,
    pub ends: [End; 2],
    pipes: [Pipe; 2],
    pub connected: [bool; 2],
    pub closed: [bool; 2],
    early: [Vec<Payload>; 2],
    last_rx: [Time; 2],
    /// When each end saw the connection open.
    opened: [Time; 2],
    pub taps: [Tap; 2],
    idle_timeout: Time,
    keep_alive: Time,
    one_way: [Time; 2],
    cwnd: usize,
}

#[derive(Debug)]
pub enum Fault {
    Cut(usize, Time),
    Mend(usize),
    /// A node loses power for a while; its card loses that many synced
    /// groups (lying about fsync), or a random number when `None`.
    Crash(usize, Time, Option<usize>),
    Restart(usize),
    Snapshot(usize, Backup),
    Restore(usize, Time),
    ClockJump(usize, i64),
    Move(usize, Time),
    MuleTo(usize, Option<usize>),
    /// The hub revokes a node's certificate.
    Revoke(usize),
}

/// How a node's data directory was backed up, which decides what it sees
/// when the backup is put back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backup {
    /// A file-level copy of a running node (tar, rsync): it holds a prefix
    /// of the writes not yet fsynced, and its files have new identities,
    /// so the node starts a new log epoch at open.
    Files,
    /// A whole-disk image of a stopped node (dd of the SD card): everything
    /// written is in it, and file identities and the WAL's seal match, so
    /// nothing on the disk tells the node it went back in time.
    Image,
}

pub(crate) enum Ev {
    Connect {
        conn: u64,
        end: usize,
    },
    DialFailed {
        conn: u64,
    },
    Arrive {
        conn: u64,
        end: usize,
        payload: Payload,
    },
    Acked {
        conn: u64,
        end: usize,
        size: usize,
    },
    Resend {
        conn: u64,
        end: usize,
        payload: Payload,
    },
    KeepAlive {
        conn: u64,
        end: usize,
    },
    IdleCheck {
        conn: u64,
        end: usize,
    },
    SyncedLocal {
        node: usize,
        boot: u32,
        group: GroupId,
        events: Vec<(Origin, u64, Priority)>,
    },
    SyncedReplicated {
        node: usize,
        boot: u32,
        group: GroupId,
        ticket: Ticket,
        report: AppendReport,
        keys: Vec<(Origin, u64)>,
    },
    Timer {
        node: usize,
        boot: u32,
    },
    Manage {
        node: usize,
    },
    ManageTick {
        node: usize,
        boot: u32,
    },
    Write {
        node: usize,
    },
    WriteOnce {
        node: usize,
    },
    Fault(Fault),
    Heal,
    CheckConverged,
}

struct Scheduled {
    at: Time,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Settings of one run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub bugs: Bugs,
    pub keep_trace: bool,
    /// A node restarted after a crash answers packets of connections it
    /// forgot with a stateless reset (its reset key survives restarts).
    pub stateless_reset: bool,
    /// Convergence may not wait for a live round: an event a push should
    /// have carried and did not is a stall.
    pub strict_pushes: bool,
    /// Logs are authenticated: events travel with heads and proofs and are
    /// appended only once proved (`ferry_sync::auth`).
    pub authenticate_logs: bool,
}

pub struct World {
    pub now: Time,
    pub rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    pub nodes: Vec<SimNode>,
    pub conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    pub wans: Vec<Wan>,
    pub lan: Profile,
    pub trace: Trace,
    pub check: Checker,
    pub opts: Options,
    /// Faults and writes stop; from then on everything must converge.
    pub healed_at: Option<Time>,
    pub converged_at: Option<Time>,
    pub deadline: Time,
    pub failure: Option<String>,
    /// A named scenario's promise: converged by then.
    pub expect_within: Option<Time>,
    pub promise_from: Time,
    /// When replicated events were last made durable anywhere.
    pub last_arrival: Time,
    pub round_interval: Time,
    /// Rounds on connections pushed both ways (`Config::live_round_interval`).
    pub live_round_interval: Time,
    /// A named scenario's promise for writes: 95 % of the events written
    /// at a node are durable at the other nodes within this long, and
    /// every one within a lost packet's recovery (`PUSH_MAX`).
    pub push_within: Option<Time>,
    /// A named scenario's promise for pull planning: all nodes together
    /// read at most this many logs in planning per log in the deployment.
    pub planned_per_log: Option<u64>,
    /// How long each written event took to reach each other node.
    pub push_latencies: Vec<Time>,
    written_at: BTreeMap<(Origin, u64), Time>,
    base: Instant,
}

/// A connection that lasted this long is dialled again at once when it
/// ends (node/src/daemon.rs, `REDIAL_AT_ONCE_AFTER`).
const REDIAL_AT_ONCE_AFTER: Time = Time::from_secs(10);
const CONNECT_TIMEOUT_WAN: Time = Time::from_secs(30);
const CONNECT_TIMEOUT_LAN: Time = Time::from_secs(5);

impl World {
    pub fn new(seed: u64, opts: Options) -> World {
        World {
            now: Time(0),
            rng: rand::SeedableRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            nodes: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            wans: Vec::new(),
            lan: Profile {
                name: "lan".into(),
                up: lan_direction(),
                down: lan_direction(),
            },
            trace: Trace::new(opts.keep_trace),
            check: Checker::default(),
            opts,
            healed_at: None,
            converged_at: None,
            deadline: Time::from_secs(u64::MAX / 4_000_000),
            failure: None,
            expect_within: None,
            promise_from: Time(0),
            last_arrival: Time(0),
            round_interval: Time::from_secs(60),
            live_round_interval: Time::from_secs(300),
            push_within: None,
            planned_per_log: None,
            push_latencies: Vec::new(),
            written_at: BTreeMap::new(),
            base: Instant::now(),
        }
    }

    pub fn add_node(&mut self, name: &str, role: Role, policy: ferry_sync::Policy, mix: Mix, segment: Option<usize>) {
        let n = self.nodes.len();
        let id = NodeId([n as u8 + 1; 16]);
        let epoch = self.rng.gen();
        let mut disk = MemStore::new(Origin { node: id, epoch });
        if self.opts.authenticate_logs {
            let key = StandInKey {
                node: id,
                secret: HONEST,
            };
            disk.set_logs(Logs::new(Arc::new(StandInKeys::new(id)), Some(Arc::new(key))));
        }
        self.nodes.push(SimNode {
            name: name.into(),
            ident: Identity { id, role, policy },
            replica: None,
            disk: Some(disk),
            boot: 0,
            wall_offset_ms: 0,
            segment,
            mix,
            remembered: BTreeMap::new(),
            tickets: BTreeMap::new(),
            backoff: BTreeMap::new(),
            snapshot: None,
            moving_until: Time(0),
            timer_at: None,
            records: ferry_records::State::new(),
            revoked: BTreeMap::new(),
            enforced: BTreeMap::new(),
        });
    }

    pub(crate) fn schedule(&mut self, after: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now.saturating_add(after),
            seq: self.seq,
            ev,
        }));
    }

    pub fn fault_at(&mut self, at: Time, f: Fault) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev: Ev::Fault(f),
        }));
    }

    pub fn heal_at(&mut self, at: Time) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev: Ev::Heal,
        }));
    }

    pub(crate) fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            let line = format!("FAILED: {what}");
            self.trace.line(self.now, &line);
            self.failure = Some(what);
        }
    }

    /// Starts every node and its workload.
    pub fn start(&mut self) {
        if self.check.is_empty() {
            self.check = Checker::new(self.nodes.len());
        }
        for n in 0..self.nodes.len() {
            self.boot_node(n);
            let first = self.exp_secs(self.nodes[n].mix.every_secs);
            self.schedule(first, Ev::Write { node: n });
        }
    }

    /// Runs until converged after healing, a failure, or the deadline.
    pub fn run(&mut self) {
        while self.failure.is_none() && self.converged_at.is_none() {
            let Some(Reverse(next)) = self.queue.pop() else {
                self.fail("nothing left to do, yet not converged".into());
                break;
            };
            if next.at > self.deadline {
                let why = crate::converge::describe_lag(self);
                self.fail(format!(
                    "not converged {} after healing (a stall): {why}",
                    self.deadline.saturating_sub(self.healed_at.unwrap_or_default())
                ));
                break;
            }
            self.now = next.at;
            let ev = next.ev;
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.handle(ev)));
            if let Err(p) = result {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                self.fail(format!("panic in the core: {msg}"));
            }
        }
    }

    fn exp_secs(&mut self, mean: f64) -> Time {
        let u: f64 = self.rng.gen_range(1e-9..1.0);
        Time((-u.ln() * mean * 1e6) as u64)
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Connect { conn, end } => self.on_connect(conn, end),
            Ev::DialFailed { conn } => self.on_dial_failed(conn),
            Ev::Arrive { conn, end, payload } => self.on_arrive(conn, end, payload),
            Ev::Acked { conn, end, size } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.ends[end].in_flight = c.ends[end].in_flight.saturating_sub(size);
                    if !c.closed[end] {
                        c.last_rx[end] = self.now;
                    }
                    self.pump(conn, end);
                }
            }
            Ev::Resend { conn, end, payload } => {
                let Some(c) = self.conns.get_mut(&conn) else { return };
                c.ends[end].in_flight = c.ends[end].in_flight.saturating_sub(payload.wire_size());
                if c.closed[end] {
                    return;
                }
                self.offer(conn, end, payload);
            }
            Ev::KeepAlive { conn, end } => {
                let Some(c) = self.conns.get(&conn) else { return };
                if c.closed[end] {
                    return;
                }
                let every = c.keep_alive;
                self.offer(conn, end, Payload::Ping);
                self.schedule(every, Ev::KeepAlive { conn, end });
            }
            Ev::IdleCheck { conn, end } => self.on_idle_check(conn, end),
            Ev::SyncedLocal {
                node,
                boot,
                group,
                events,
            } => {
                if self.nodes[node].boot != boot || self.nodes[node].replica.is_none() {
                    return;
                }
                let now = self.now;
                let Some(r) = self.nodes[node].replica.as_mut() else {
                    return;
                };
                r.store_mut().sync(group);
                self.check.acked(node, events.iter().map(|(o, s, _)| (*o, *s)));
                r.handle_local_appended(now, &events);
                self.drain(node);
            }
            Ev::SyncedReplicated {
                node,
                boot,
                group,
                ticket,
                report,
                keys,
            } => {
                if self.nodes[node].boot != boot || self.nodes[node].replica.is_none() {
                    return;
                }
                let now = self.now;
                if self.push_within.is_some() {
                    for k in &keys {
                        if let Some(w) = self.written_at.get(k) {
                            self.push_latencies.push(self.now.saturating_sub(*w));
                        }
                    }
                }
                let Some(r) = self.nodes[node].replica.as_mut() else {
                    return;
                };
                r.store_mut().sync(group);
                self.last_arrival = self.now;
                self.check.acked(node, keys);
                r.handle_appended(now, ticket, Ok(report));
                self.drain(node);
            }
            Ev::Timer { node, boot } => {
                if self.nodes[node].boot != boot {
                    return;
                }
                self.nodes[node].timer_at = None;
                let now = self.now;
                if let Some(r) = self.nodes[node].replica.as_mut() {
                    r.handle_timeout(now);
                }
                self.drain(node);
            }
            Ev::Manage { node } => {
                crate::manage::manage(self, node);
            }
            Ev::ManageTick { node, boot } => {
                if self.nodes[node].boot == boot {
                    crate::manage::manage(self, node);
                    self.schedule(crate::manage::EVERY, Ev::ManageTick { node, boot });
                }
            }
            Ev::Write { node } => {
                if self.healed_at.is_none() {
                    let next = self.exp_secs(self.nodes[node].mix.every_secs);
                    self.schedule(next, Ev::Write { node });
                    self.write(node);
                }
            }
            Ev::WriteOnce { node } => self.write(node),
            Ev::Fault(f) => crate::faults::apply(self, f),
            Ev::Heal => crate::converge::heal(self),
            Ev::CheckConverged => crate::converge::check(self),
        }
    }

    pub fn node_up(&self, n: usize) -> bool {
        self.nodes[n].replica.is_some()
    }

    /// Starts a node on its disk: a new boot.
    pub fn boot_node(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let Some(mut disk) = node.disk.take() else { return };
        node.boot += 1;
        // Nothing on a disk can vouch that it did not go back in time (a
        // card that lost synced writes, a whole-disk image put back): the
        // first local write of every start begins a new log, as the node's
        // data directory arranges at every open.
        let epoch = self.rng.gen();
        if !self.opts.bugs.on(|b| b.keep_log_at_start) {
            let node = disk.local_origin().node;
            disk.set_unconfirmed_tail(ferry_proto::Origin { node, epoch });
        }
        let node = &mut self.nodes[n];
        // The index is rebuilt from what survived, as the node's is.
        node.records = crate::records::rebuild(&disk);
        let log = disk.local_origin();
        let mut cfg = ferry_sync::Config::new(node.ident.id, node.ident.role, node.name.clone());
        cfg.policy = node.ident.policy;
        cfg.live = true;
        cfg.round_interval = Some(self.round_interval);
        cfg.live_round_interval = Some(self.live_round_interval);
        cfg.level_wan = 3;
        cfg.bugs = self.opts.bugs;
        let seed: u64 = self.rng.gen();
        // Every way a lane may end its zstd frames, picked from the seed
        // already drawn so that the seeds' deployments stay as they were.
        cfg.end_idle_frame_after = match seed % 4 {
            0 => None,
            1 => Some(ferry_sync::Time::from_secs(seed / 4 % 20 + 1)),
            _ => Some(ferry_sync::Time::default()),
        };
        node.replica = Some(Replica::new(cfg, disk, seed, Default::default()));
        node.remembered.clear();
        node.tickets.clear();
        node.backoff.clear();
        node.timer_at = None;
        self.restore_revocations(n);
        let node = &mut self.nodes[n];
        let boot = node.boot;
        let line = format!(
            "{} starts (boot {}; {:?}, {:?} policy, log {})",
            node.name, node.boot, node.ident.role, node.ident.policy, log
        );
        self.trace.line(self.now, &line);
        self.schedule(Time(0), Ev::ManageTick { node: n, boot });
    }

    /// Stops a node at once: its connections vanish without a word.
    pub fn kill_node(&mut self, n: usize) -> Option<MemStore> {
        let replica = self.nodes[n].replica.take()?;
        for c in self.conns.values_mut() {
            for e in 0..2 {
                if c.nodes[e] == n && c.boots[e] == self.nodes[n].boot {
                    c.closed[e] = true;
                }
            }
        }
        Some(replica.into_store())
    }

    pub(crate) fn wall_ms(&self, n: usize) -> u64 {
        let base: i64 = 1_780_000_000_000;
        (base + (self.now.0 / 1000) as i64 + self.nodes[n].wall_offset_ms).max(0) as u64
    }

    /// Events written before the run starts, durable and acknowledged.
    /// `size` 0: small clinic events; otherwise payloads of that size,
    /// alternately random bytes and base64-like text.
    pub fn preload(&mut self, n: usize, count: usize, size: usize) {
        let name = self.nodes[n].name.clone();
        let mix = self.nodes[n].mix.clone();
        let items: Vec<_> = (0..count)
            .map(|i| {
                if size == 0 {
                    let mut one = mix.clone();
                    one.batch_max = 1;
                    one.large = 0.0;
                    one.batch(&mut self.rng, &name).remove(0)
                } else {
                    let mut bytes: Vec<u8> = (0..size).map(|_| self.rng.gen()).collect();
                    if i % 2 == 1 {
                        bytes.iter_mut().for_each(|b| *b = b'A' + (*b % 26));
                    }
                    ("clinic/attachment".to_string(), Priority::Bulk, bytes)
                }
            })
            .collect();
        let wall = self.wall_ms(n);
        let Some(disk) = self.nodes[n].disk.as_mut() else {
            return;
        };
        let (group, events) = disk.write_local(items, wall);
        disk.sync(group);
        if self.check.is_empty() {
            self.check = Checker::new(self.nodes.len());
        }
        let _ = self.check.local_written(n, &events);
        self.check.acked(n, events.iter().map(|e| (e.origin, e.seq)));
    }

    /// `logs` logs of one small event each, written before the run starts:
    /// a node that began a new log at each of that many starts.
    pub fn preload_logs(&mut self, n: usize, logs: usize) {
        for _ in 0..logs {
            let epoch = self.rng.gen();
            let Some(disk) = self.nodes[n].disk.as_mut() else {
                return;
            };
            let node = disk.local_origin().node;
            disk.set_unconfirmed_tail(ferry_proto::Origin { node, epoch });
            self.preload(n, 1, 0);
        }
    }

    /// One write at `at`, whatever the node's mix says.
    pub fn write_at(&mut self, n: usize, at: Time) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev: Ev::WriteOnce { node: n },
        }));
    }

    fn write(&mut self, n: usize) {
        if !self.node_up(n) {
            return;
        }
        let mix = self.nodes[n].mix.clone();
        let name = self.nodes[n].name.clone();
        let mut items = mix.batch(&mut self.rng, &name);
        if self.rng.gen_bool(0.2) {
            let write = crate::records::edit(&mut self.rng, &self.nodes[n].records);
            items.push(write);
        }
        self.write_items(n, items);
    }

    /// An application at `n` writes these events.
    pub fn write_items(&mut self, n: usize, items: Vec<(String, ferry_proto::Priority, Vec<u8>)>) {
        let wall = self.wall_ms(n);
        let boot = self.nodes[n].boot;
        let fsync = Time::from_millis(self.rng.gen_range(1..40));
        let Some(r) = self.nodes[n].replica.as_mut() else {
            return;
        };
        let (group, events) = r.store_mut().write_local(items, wall);
        for e in &events {
            self.nodes[n].records.apply(e);
        }
        if let Err(e) = self.check.local_written(n, &events) {
            self.fail(e);
        }
        if self.push_within.is_some() {
            for e in &events {
                self.written_at.insert((e.origin, e.seq), self.now);
            }
        }
        let keys = events.iter().map(|e| (e.origin, e.seq, e.priority)).collect();
        self.schedule(
            fsync,
            Ev::SyncedLocal {
                node: n,
                boot,
                group,
                events: keys,
            },
        );
        self.observe(n, &events);
        self.drain(n);
    }

    /// Carries out what a node's core asks for.
    pub fn drain(&mut self, n: usize) {
        while let Some(action) = self.nodes[n].replica.as_mut().and_then(|r| r.poll_action()) {
            self.act(n, action);
        }
        let want = self.nodes[n].replica.as_ref().and_then(|r| r.poll_timeout());
        if let Some(at) = want {
            if self.nodes[n].timer_at.is_none_or(|t| at < t) {
                self.nodes[n].timer_at = Some(at);
                let boot = self.nodes[n].boot;
                let after = at.saturating_sub(self.now);
                self.schedule(after, Ev::Timer { node: n, boot });
            }
        }
        if let Some(r) = self.nodes[n].replica.as_ref() {
            r.check_invariants();
        }
        if self.nodes[n].enforced != self.nodes[n].revoked {
            self.nodes[n].enforced = self.nodes[n].revoked.clone();
        }
    }

    fn end_of(&self, conn: u64, n: usize) -> Option<usize> {
        let c = self.conns.get(&conn)?;
        (0..2).find(|&e| c.nodes[e] == n && c.boots[e] == self.nodes[n].boot)
    }

    fn act(&mut self, n: usize, action: Action) {
        match action {
            Action::Open {
                conn,
                stream,
                kind,
                priority,
            } => {
                let Some(e) = self.end_of(conn.0, n) else { return };
                if let Some(c) = self.conns.get_mut(&conn.0) {
                    c.ends[e].open(stream, kind, priority);
                }
            }
            Action::Send { conn, stream, bytes } => {
                let Some(e) = self.end_of(conn.0, n) else { return };
                let peer = self.conns[&conn.0].nodes[1 - e];
                if let Err(why) = self.check_not_serving_revoked(n, peer) {
                    self.fail(why);
                }
                let is_control =
                    matches!(stream, StreamId::Local(0)) && e == 0 || matches!(stream, StreamId::Remote(_)) && e == 1;
                if is_control {
                    let r = self.nodes[n].replica.as_ref();
                    let result = match (self.conns.get_mut(&conn.0), r) {
                        (Some(c), Some(r)) => self.check.control_out(&mut c.taps[e], &bytes, |o| r.store().have(o)),
                        _ => Ok(()),
                    };
                    if let Err(why) = result {
                        let name = self.nodes[n].name.clone();
                        self.fail(format!("{name}: {why}"));
                    }
                }
                let Some(c) = self.conns.get_mut(&conn.0) else { return };
                let more = c.ends[e].write(stream, &bytes);
                self.pump(conn.0, e);
                if more {
                    let now = self.now;
                    if let Some(r) = self.nodes[n].replica.as_mut() {
                        r.handle_sent(now, conn, stream);
                    }
                }
            }
            // Only one-shot syncs say goodbye; every simulated node is a daemon.
            Action::Finish { .. } => {}
            Action::Close { conn, code, reason } => {
                let Some(e) = self.end_of(conn.0, n) else { return };
                let line = format!(
                    "{} closes connection {} (code {code}: {reason})",
                    self.nodes[n].name, conn.0
                );
                self.trace.line(self.now, &line);
                self.offer(conn.0, e, Payload::Close);
                if let Some(c) = self.conns.get_mut(&conn.0) {
                    c.closed[e] = true;
                }
                self.after_close(n, conn.0, e);
            }
            Action::Append {
                conn: _,
                ticket,
                events,
            } => {
                let wall = self.wall_ms(n);
                let boot = self.nodes[n].boot;
                let fsync = Time::from_millis(self.rng.gen_range(1..40));
                if self.nodes[n].replica.is_none() {
                    return;
                }
                if let Err(e) = self.check.accepting(n, &events) {
                    self.fail(e);
                    return;
                }
                if let Some(why) = events.iter().find_map(|e| self.check_not_revoked(n, e).err()) {
                    self.fail(why);
                    return;
                }
                let revocations: Vec<Event> = events
                    .iter()
                    .filter(|e| e.topic == crate::revoke::TOPIC)
                    .cloned()
                    .collect();
                for e in &events {
                    self.nodes[n].records.apply(e);
                }
                let Some(r) = self.nodes[n].replica.as_mut() else {
                    return;
                };
                let keys = events.iter().map(|e| (e.origin, e.seq)).collect();
                let (group, report) = r.store_mut().write_replicated(events, wall);
                self.check.duplicates += report.duplicates;
                self.check.events_received += report.stored;
                self.schedule(
                    fsync,
                    Ev::SyncedReplicated {
                        node: n,
                        boot,
                        group,
                        ticket,
                        report,
                        keys,
                    },
                );
                self.observe(n, &revocations);
            }
            Action::NewEpoch(origin) => {
                let line = format!("{} starts a new log epoch {origin}", self.nodes[n].name);
                self.trace.line(self.now, &line);
            }
            Action::Notice(notice) => self.on_notice(n, notice),
        }
    }

    fn on_notice(&mut self, n: usize, notice: Notice) {
        match notice {
            Notice::PeerHolds { conn, summary, classes } => {
                let Some(e) = self.end_of(conn.0, n) else { return };
                let peer = self.conns[&conn.0].nodes[1 - e];
                let id = self.nodes[peer].ident.id;
                self.nodes[n].remembered.insert(id, (summary, classes));
            }
            Notice::InStep { conn } => {
                let line = format!("{} in step on connection {}", self.nodes[n].name, conn.0);
                self.trace.line(self.now, &line);
            }
            Notice::RoundDone { .. } => {}
            Notice::Refused { conn, code, message } => {
                let line = format!("{} refused on {}: {code} {message}", self.nodes[n].name, conn.0);
                self.trace.line(self.now, &line);
            }
            Notice::Unproved {
                conn,
                origin,
                first,
                last,
                reason,
            } => {
                self.check.events_unproved += last.checked_sub(first).map_or(0, |d| d.saturating_add(1));
                let line = format!(
                    "{} refused {origin}:{first}..={last} on {}: {reason}",
                    self.nodes[n].name, conn.0
                );
                self.trace.line(self.now, &line);
            }
            Notice::KeyRefused { conn, reason } => {
                let line = format!("{} refused a writer's key on {}: {reason}", self.nodes[n].name, conn.0);
                self.trace.line(self.now, &line);
            }
        }
    }

    /// Node `n`'s end of `conn` is gone without a word from its own core:
    /// the peer closed it, or it timed out (`what`, for the trace).
    fn lose_connection(&mut self, n: usize, conn: u64, end: usize, what: &str) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.closed[end] = true;
        }
        let line = format!("{} {what}", self.nodes[n].name);
        self.trace.line(self.now, &line);
        let now = self.now;
        if let Some(r) = self.nodes[n].replica.as_mut() {
            r.handle_closed(now, ConnId(conn));
        }
        self.drain(n);
        self.after_close(n, conn, end);
    }

    /// A connection of node `n` ended: look for peers again, at once if it
    /// had lasted (the node's rule, `REDIAL_AT_ONCE_AFTER` in
    /// node/src/daemon.rs), else after a second.
    fn after_close(&mut self, n: usize, conn: u64, end: usize) {
        let lasted = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.connected[end] && self.now.0.saturating_sub(c.opened[end].0) >= REDIAL_AT_ONCE_AFTER.0);
        let after = if lasted { Time(0) } else { Time::from_secs(1) };
        self.schedule(after, Ev::Manage { node: n });
    }

    /// Whether packets can cross a connection's path now.
    fn path_up(&self, c: &Conn) -> bool {
        match c.path {
            Path::Lan(seg) => c.nodes.iter().all(|&n| self.nodes[n].segment == Some(seg)),
            Path::Wan(w) => self.wans[w].up && c.nodes.iter().all(|&n| self.nodes[n].moving_until <= self.now),
        }
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now.0)
    }

    /// Sends one packet from `end`: delivered, or lost and sent again later.
    fn offer(&mut self, conn: u64, end: usize, payload: Payload) {
        let at = self.instant();
        let Some(c) = self.conns.get(&conn) else { return };
        let up = self.path_up(c);
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let size = payload.wire_size();
        c.ends[end].in_flight += size;
        let verdict = if up {
            c.pipes[end].offer(at, size)
        } else {
            Verdict::Drop(ferry_netsim::pipe::DropCause::Cut)
        };
        match verdict {
            Verdict::Deliver(when) => {
                let delay = Time(when.saturating_duration_since(at).as_micros() as u64);
                self.trace.packet(conn, end, size);
                self.schedule(
                    delay,
                    Ev::Arrive {
                        conn,
                        end: 1 - end,
                        payload,
                    },
                );
            }
            Verdict::Drop(_) => self.unacked(conn, end, payload),
        }
    }

    /// A packet `end` sent was lost, or reached a node that no longer knows
    /// the connection (down, or restarted): no ACK comes, so it is sent
    /// again at the probe timeout, as QUIC would (a close is not).
    fn unacked(&mut self, conn: u64, end: usize, payload: Payload) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if matches!(payload, Payload::Close) {
            c.ends[end].in_flight = c.ends[end].in_flight.saturating_sub(payload.wire_size());
            return;
        }
        let rtt = c.one_way[0].saturating_add(c.one_way[1]);
        let pto = Time((rtt.0 * 2).max(50_000) + 200_000);
        self.schedule(pto, Ev::Resend { conn, end, payload });
    }

    /// Sends what the congestion window allows.
    fn pump(&mut self, conn: u64, end: usize) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else { return };
            if c.closed[end] || c.ends[end].in_flight >= c.cwnd {
                return;
            }
            let Some((payload, drained)) = c.ends[end].next_packet() else {
                return;
            };
            let n = c.nodes[end];
            self.offer(conn, end, payload);
            if let Some(stream) = drained {
                let now = self.now;
                if let Some(r) = self.nodes[n].replica.as_mut() {
                    r.handle_sent(now, ConnId(conn), stream);
                }
                self.drain(n);
            }
        }
    }

    fn on_arrive(&mut self, conn: u64, end: usize, payload: Payload) {
        let Some(c) = self.conns.get(&conn) else { return };
        let n = c.nodes[end];
        let stale = c.boots[end] != self.nodes[n].boot || c.closed[end];
        if !self.node_up(n) {
            self.unacked(conn, 1 - end, payload);
            return;
        }
        if stale {
            // This node no longer knows the connection: it says so (a
            // close, or a stateless reset after a restart).
            let restarted = c.boots[end] != self.nodes[n].boot;
            if !matches!(payload, Payload::Close) && (!restarted || self.opts.stateless_reset) {
                self.send_reset(conn, end);
            }
            self.unacked(conn, 1 - end, payload);
            return;
        }
        // Taken: the ACK travels back.
        let back = c.one_way[end];
        let size = payload.wire_size();
        self.schedule(
            back,
            Ev::Acked {
                conn,
                end: 1 - end,
                size,
            },
        );
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.last_rx[end] = self.now;
        if !c.connected[end] {
            c.early[end].push(payload);
            return;
        }
        match payload {
            Payload::Ping => {}
            Payload::Close => self.lose_connection(n, conn, end, &format!("sees connection {conn} closed by its peer")),
            Payload::Stream {
                stream,
                kind,
                offset,
                bytes,
            } => {
                let Some((name, data)) = c.ends[end].receive(stream, offset, bytes) else {
                    return;
                };
                let is_data = kind == StreamKind::Uni;
                if is_data {
                    let sender = c.nodes[1 - end];
                    let ident_s = self.nodes[sender].ident.clone();
                    let ident_r = self.nodes[n].ident.clone();
                    // Every hub: a sender that has not met one gives less,
                    // never more, so this is a sound check of its policy.
                    let hubs = self.hubs();
                    let Some(c) = self.conns.get_mut(&conn) else { return };
                    if let Err(why) = self
                        .check
                        .data_in(&mut c.taps[end], name, &data, &ident_s, &hubs, &ident_r)
                    {
                        let what = format!("{} -> {}: {why}", self.nodes[sender].name, self.nodes[n].name);
                        self.fail(what);
                        return;
                    }
                }
                let now = self.now;
                if let Some(r) = self.nodes[n].replica.as_mut() {
                    r.handle_stream_data(now, ConnId(conn), name, kind, &data);
                }
                self.drain(n);
            }
        }
    }

    fn send_reset(&mut self, conn: u64, end: usize) {
        let at = self.instant();
        let Some(c) = self.conns.get(&conn) else { return };
        if !self.path_up(c) {
            return;
        }
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if let Verdict::Deliver(when) = c.pipes[end].offer(at, 40) {
            let delay = Time(when.saturating_duration_since(at).as_micros() as u64);
            self.schedule(
                delay,
                Ev::Arrive {
                    conn,
                    end: 1 - end,
                    payload: Payload::Close,
                },
            );
        }
    }

    fn on_idle_check(&mut self, conn: u64, end: usize) {
        let Some(c) = self.conns.get(&conn) else { return };
        let n = c.nodes[end];
        if c.closed[end] || c.boots[end] != self.nodes[n].boot {
            return;
        }
        let quiet_since = c.last_rx[end];
        let limit = c.idle_timeout;
        if self.now.saturating_sub(quiet_since) >= limit {
            self.lose_connection(n, conn, end, &format!("times out connection {conn}"));
        } else {
            let next = quiet_since.saturating_add(limit).saturating_sub(self.now);
            self.schedule(next.saturating_add(Time::from_millis(1)), Ev::IdleCheck { conn, end });
        }
    }

    /// Node `from` dials `to` over `path`.
    pub fn dial(&mut self, from: usize, to: usize, path: Path) {
        let id = self.next_conn;
        self.next_conn += 1;
        let profile = match path {
            Path::Lan(_) => self.lan.clone(),
            Path::Wan(w) => self.wans[w].profile.clone(),
        };
        let (up, down) = if self.nodes[from].ident.role == Role::Hub {
            (profile.down.clone(), profile.up.clone())
        } else {
            (profile.up.clone(), profile.down.clone())
        };
        let at = self.instant();
        let one_way = [Time::from(up.delay), Time::from(down.delay)];
        let rtt = one_way[0].saturating_add(one_way[1]);
        let rate = up.rate_bps.max(1);
        let bdp = (rate as f64 / 8.0 * rtt.as_secs_f64()) as usize;
        let cwnd = (2 * bdp).max(4 * 1200);
        let lan = matches!(path, Path::Lan(_));
        let (idle, keep) = if lan {
            (Time::from_secs(30), Time::from_secs(5))
        } else {
            (Time::from_secs(120), Time::from_secs(25))
        };
        let c = Conn {
            nodes: [from, to],
            boots: [self.nodes[from].boot, self.nodes[to].boot],
            path,
            ends: [End::default(), End::default()],
            pipes: [Pipe::new(up, self.rng.gen(), at), Pipe::new(down, self.rng.gen(), at)],
            connected: [false, false],
            closed: [false, false],
            early: [Vec::new(), Vec::new()],
            last_rx: [self.now, self.now],
            opened: [self.now, self.now],
            taps: [Tap::default(), Tap::default()],
            idle_timeout: idle,
            keep_alive: keep,
            one_way,
            cwnd,
        };
        let reachable = self.node_up(to) && self.path_up(&c);
        self.conns.insert(id, c);
        let line = format!(
            "{} dials {} over {:?} (connection {id})",
            self.nodes[from].name, self.nodes[to].name, path
        );
        self.trace.line(self.now, &line);
        let timeout = if lan { CONNECT_TIMEOUT_LAN } else { CONNECT_TIMEOUT_WAN };
        if !reachable {
            self.schedule(timeout, Ev::DialFailed { conn: id });
            return;
        }
        if self.handshake_refused(from, to) {
            let line = format!("the handshake on connection {id} is refused: a certificate is revoked");
            self.trace.line(self.now, &line);
            self.schedule(rtt, Ev::DialFailed { conn: id });
            return;
        }
        let resumed = self.nodes[from].tickets.get(&self.nodes[to].ident.id) == Some(&self.nodes[to].boot);
        let (client, server) = if resumed {
            (Time(0), one_way[0])
        } else {
            (rtt, rtt.saturating_add(one_way[0]))
        };
        self.schedule(client, Ev::Connect { conn: id, end: 0 });
        self.schedule(server, Ev::Connect { conn: id, end: 1 });
    }

    fn on_dial_failed(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.connected.iter().any(|x| *x) {
            return;
        }
        c.closed = [true, true];
        let from = c.nodes[0];
        let to = c.nodes[1];
        let id = self.nodes[to].ident.id;
        let node = &mut self.nodes[from];
        let entry = node.backoff.entry(id).or_insert((0, Time(0)));
        entry.0 += 1;
        let cap = 60u64.min(1 << entry.0.min(6));
        let wait = Time::from_millis(cap * 500 + self.rng.gen_range(0..cap * 500));
        entry.1 = self.now.saturating_add(wait);
        self.schedule(wait, Ev::Manage { node: from });
    }

    fn on_connect(&mut self, conn: u64, end: usize) {
        let Some(c) = self.conns.get(&conn) else { return };
        let n = c.nodes[end];
        if c.closed[end] || c.boots[end] != self.nodes[n].boot || !self.node_up(n) {
            return;
        }
        let peer = c.nodes[1 - end];
        let lan = matches!(c.path, Path::Lan(_));
        let keep = c.keep_alive;
        let idle = c.idle_timeout;
        let info = PeerInfo {
            node: self.nodes[peer].ident.id,
            role: self.nodes[peer].ident.role,
            name: self.nodes[peer].name.clone(),
            lan,
            dialer: end == 0,
        };
        let remembered = if end == 0 {
            self.nodes[n].remembered.get(&info.node).cloned()
        } else {
            None
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.connected[end] = true;
            c.last_rx[end] = self.now;
            c.opened[end] = self.now;
        }
        if end == 0 {
            let peer_boot = self.nodes[peer].boot;
            let pid = self.nodes[peer].ident.id;
            self.nodes[n].tickets.insert(pid, peer_boot);
            self.nodes[n].backoff.remove(&pid);
        }
        let now = self.now;
        let peer_id = self.nodes[peer].ident.id;
        if let Some(r) = self.nodes[n].replica.as_mut() {
            // The handshake shows the peer's certificate: its key is known
            // from here on (a writer sends no credential for its own log).
            if let Some(logs) = r.store().logs() {
                let _ = logs.keys().learn(&ferry_sync::stand_in::credential(peer_id));
            }
            r.connect(now, ConnId(conn), info, remembered.as_ref());
        }
        self.drain(n);
        self.schedule(keep, Ev::KeepAlive { conn, end });
        self.schedule(idle, Ev::IdleCheck { conn, end });
        let early = self
            .conns
            .get_mut(&conn)
            .map(|c| std::mem::take(&mut c.early[end]))
            .unwrap_or_default();
        for payload in early {
            self.on_arrive(conn, end, payload);
        }
    }

    pub fn hubs(&self) -> std::collections::BTreeSet<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.ident.role == Role::Hub)
            .map(|n| n.ident.id)
            .collect()
    }

    /// Node ids, roles and policies, for the checks.
    pub fn identities(&self) -> Vec<Identity> {
        self.nodes.iter().map(|n| n.ident.clone()).collect()
    }
}

fn lan_direction() -> Direction {
    Direction {
        delay: Duration::from_micros(500),
        jitter: Duration::ZERO,
        rate_bps: 50_000_000,
        queue_bytes: 1 << 20,
        loss: 0.0,
        bursty: None,
        overhead_bytes: 28,
    }
}
