//! The driver: the sync core (`ferry_sync::Replica`) on real QUIC, a real
//! WAL and real time.
//!
//! Everything that happens (bytes on a stream, a connection up or down, an
//! append made durable, a timer, a local write) is handed to the core under
//! one lock; the actions it returns are carried out here: streams opened
//! and written (`link.rs`), appends queued on the WAL, epochs persisted.
//! The core decides everything about the protocol; this file only moves
//! bytes and events between it and the world.

use crate::ctx::NodeCtx;
use crate::link::{code, Link, LinkEvents};
use crate::peers;
use crate::store::WalStore;
use ferry_proto::{Classes, ErrorCode, NodeId, Origin, RangeSet, Summary};
use ferry_sync::auth::Logs;
use ferry_sync::{
    Action, AppendReport, Config, ConnId, Notice, PeerInfo, Replica, SessionView, StoreError, StreamId, StreamKind,
    Time,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub struct Driver {
    core: Mutex<Replica<WalStore>>,
    pub ctx: Arc<NodeCtx>,
    started: Instant,
    links: Mutex<BTreeMap<ConnId, Arc<Link>>>,
    next_conn: AtomicU64,
    /// Wakes the timer task when the core's next deadline may have moved.
    timer: Notify,
    /// What each peer held at the end of the last connection, for the next
    /// reconnect's 0-RTT wants.
    remembered: Mutex<BTreeMap<NodeId, (Summary, Classes)>>,
    /// The log trees may have changed since they were last saved.
    logs_dirty: AtomicBool,
    /// Wakes the task that saves them.
    logs_changed: Notify,
    /// Received events being appended, not yet reported to the core.
    appends_in_flight: AtomicU64,
}
const LOG_TREES_FILE: &str = "log-trees";

/// Settings for the core that come from how the node runs.
pub struct Mode {
    /// A daemon (`ferry run`): connections stay open and news is pushed.
    pub live: bool,
    /// A dialer asks for a fresh summary this often.
    pub interval: Option<std::time::Duration>,
}

impl Driver {
    pub fn new(ctx: Arc<NodeCtx>, mode: Mode) -> Arc<Driver> {
        let mut cfg = Config::new(ctx.node_id, ctx.role, ctx.name.clone());
        cfg.policy = ctx.policy.into();
        cfg.live = mode.live;
        cfg.round_interval = mode.interval.map(Time::from);
        cfg.bugs = ctx.faults;
        let hubs = ctx.hubs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let store = match &ctx.data_dir {
            Some(dir) => {
                let logs = Logs::new(ctx.writer_keys.clone(), Some(ctx.signer.clone()));
                let signs_any = ctx.faults.on(|b| b.sign_any_log);
                WalStore::with_logs(ctx.wal.clone(), logs, &dir.path(LOG_TREES_FILE), ctx.node_id, signs_any)
            }
            None => WalStore::new(ctx.wal.clone()),
        };
        let mut replica = Replica::new(cfg, store, rand::random(), hubs);
        for r in ctx.revocations.list() {
            replica.revoke(Time(0), r.node, r.cutoff());
        }
        let driver = Arc::new(Driver {
            core: Mutex::new(replica),
            ctx: ctx.clone(),
            started: Instant::now(),
            links: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(1),
            timer: Notify::new(),
            remembered: Mutex::new(BTreeMap::new()),
            logs_dirty: AtomicBool::new(false),
            logs_changed: Notify::new(),
            appends_in_flight: AtomicU64::new(0),
        });
        ctx.tasks.spawn(timer_task(driver.clone()));
        ctx.tasks.spawn(save_logs_task(driver.clone()));
        ctx.tasks.spawn(local_appends(driver.clone()));
        driver
    }

    /// Waits, up to `limit`, until every append started is reported to the
    /// core, so that what is recorded at shutdown counts events already
    /// durable.
    pub async fn settle_appends(&self, limit: std::time::Duration) {
        let deadline = Instant::now() + limit;
        while self.appends_in_flight.load(Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    pub fn now(&self) -> Time {
        Time::from(self.started.elapsed())
    }

    /// Runs `f` on the core, then carries out what it asked for.
    pub fn with_core<R>(self: &Arc<Self>, f: impl FnOnce(&mut Replica<WalStore>, Time) -> R) -> R {
        let (result, actions) = {
            let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
            if self.fold_own_writes(&mut core) {
                self.logs_changed();
            }
            let result = f(&mut core, self.now());
            let mut actions = Vec::new();
            while let Some(a) = core.poll_action() {
                actions.push(a);
            }
            let t = core.totals();
            let totals = &self.ctx.totals;
            let refused = core.trust().refused();
            let before = self.ctx.revocations.set_events_refused(refused);
            if refused > before {
                tracing::warn!(
                    refused = refused - before,
                    barred = ?core.trust().barred_origins(),
                    "refused events a revoked node wrote after its revocation"
                );
            }
            totals.events_sent.store(t.events_sent, Relaxed);
            totals.events_received.store(t.events_received, Relaxed);
            totals.duplicates_received.store(t.duplicates_received, Relaxed);
            (result, actions)
        };
        for a in actions {
            self.act(a);
        }
        self.timer.notify_one();
        result
    }

    fn logs_changed(&self) {
        self.logs_dirty.store(true, Relaxed);
        self.logs_changed.notify_one();
    }

    /// Saves the log trees (`store`), if this node keeps them.
    pub fn save_logs(&self) {
        let Some(dir) = &self.ctx.data_dir else { return };
        self.logs_dirty.store(false, Relaxed);
        let saved = self.core.lock().unwrap_or_else(|p| p.into_inner()).store().saved_logs();
        if let Some(bytes) = saved {
            if let Err(e) = crate::store::write_saved(&dir.path(LOG_TREES_FILE), &bytes) {
                tracing::warn!("{e:#}");
            }
        }
    }

    pub fn new_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Relaxed))
    }

    /// Folds this node's own events that are durable in the WAL and not
    /// yet in its log tree into the tree, before the core does anything.
    /// The `local_appends` task does it when it hears of the write; a
    /// connection or a want served before then (a sync right after a
    /// write) could not prove that write, and its peer would give up on it
    /// for the rest of the session. Returns whether the tree grew.
    fn fold_own_writes(&self, core: &mut Replica<WalStore>) -> bool {
        let wal = &self.ctx.wal;
        let local = wal.local_origin();
        let appended = ferry_sync::Store::logs(core.store())
            .and_then(|l| l.tree(&local))
            .map_or(0, |t| t.appended());
        if !wal.holds(&local, appended + 1) {
            return false;
        }
        let next = RangeSet::from_range(appended + 1, u64::MAX);
        let written = read_own(wal, local, &wal.have(&local).intersection(&next));
        core.store_mut().wrote(&written);
        true
    }

    /// A connection to a verified peer is up: the core takes it over.
    pub fn connect(self: &Arc<Self>, link: &Arc<Link>, remembered: bool) {
        let id = link.id();
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, link.clone());
        self.ctx.note_role(&link.peer);
        // A writer sends no credential for its own log: the handshake
        // showed its certificate (kept, to pass on to others).
        match crate::tls::peer_cert_der(&link.conn) {
            Some(der) => {
                if let Err(e) = ferry_proto::merkle::HeadKeys::learn(self.ctx.writer_keys.as_ref(), &der) {
                    tracing::warn!("could not keep the peer's certificate as a writer's key: {e}");
                }
            }
            // A resumed session shows no certificate; the key is kept
            // from the connection that first showed it.
            None if ferry_proto::merkle::HeadKeys::credential(self.ctx.writer_keys.as_ref(), &link.peer.node_id)
                .is_some() => {}
            None => tracing::warn!("the peer's certificate is not at hand; its own events will not prove"),
        }
        let info = PeerInfo {
            node: link.peer.node_id,
            role: link.peer.role.unwrap_or(ferry_proto::Role::Clinic),
            name: link.peer.name.clone(),
            lan: link.lan,
            dialer: !link.inbound,
        };
        let memory = remembered.then(|| self.remembered(&link.peer.node_id)).flatten();
        self.with_core(|core, now| core.connect(now, id, info, memory.as_ref()));
    }

    pub fn link(&self, id: ConnId) -> Option<Arc<Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Open connections.
    pub fn links(&self) -> Vec<Arc<Link>> {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// What the core knows of a connection now.
    pub fn view(self: &Arc<Self>, id: ConnId) -> Option<SessionView> {
        self.core.lock().unwrap_or_else(|p| p.into_inner()).session(id)
    }

    pub fn views(&self) -> Vec<SessionView> {
        self.core.lock().unwrap_or_else(|p| p.into_inner()).sessions()
    }

    /// Sequence numbers being fetched right now.
    pub fn claimed(&self) -> u64 {
        self.core.lock().unwrap_or_else(|p| p.into_inner()).claimed()
    }

    /// Whether a connection to `peer` is open, either way.
    pub fn connected_to(&self, peer: &NodeId) -> bool {
        self.links().iter().any(|l| l.peer.node_id == *peer)
    }

    /// Whether another open connection reaches the same peer on the LAN.
    pub fn lan_link_to(&self, link: &Arc<Link>) -> bool {
        self.links()
            .iter()
            .any(|l| l.lan && l.peer.node_id == link.peer.node_id && !Arc::ptr_eq(l, link))
    }

    pub fn remembered(&self, peer: &NodeId) -> Option<(Summary, Classes)> {
        self.remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .cloned()
    }

    fn act(self: &Arc<Self>, action: Action) {
        match action {
            Action::Open {
                conn,
                stream,
                kind,
                priority,
            } => {
                if let Some(link) = self.link(conn) {
                    link.open(self, stream, kind, priority);
                }
            }
            Action::Send { conn, stream, bytes } => {
                if let Some(link) = self.link(conn) {
                    link.send(stream, bytes);
                }
            }
            Action::Finish { conn, stream } => {
                if let Some(link) = self.link(conn) {
                    link.finish(stream);
                }
            }
            Action::Close { conn, code, reason } => {
                if let Some(link) = self.link(conn) {
                    tracing::info!(peer = %link.peer.node_id.short(), code, "closing connection: {reason}");
                    link.conn.close(quinn::VarInt::from_u32(code.into()), reason.as_bytes());
                }
            }
            Action::Append { conn, ticket, events } => {
                let link = self.link(conn);
                let driver = self.clone();
                // Revocations and renewed certificates act once held.
                let system: Vec<_> = events
                    .iter()
                    .filter(|e| e.topic == crate::revocation::TOPIC || e.topic == crate::renewal::TOPIC)
                    .cloned()
                    .collect();
                self.appends_in_flight.fetch_add(1, Relaxed);
                self.ctx.tasks.spawn(async move {
                    let _slot = match &link {
                        Some(l) => Some(l.append_slot().await),
                        None => None,
                    };
                    if let Some(l) = &link {
                        l.first_event();
                    }
                    let result = driver
                        .ctx
                        .wal
                        .append_replicated(events)
                        .await
                        .map(|r| AppendReport {
                            stored: r.stored,
                            duplicates: r.duplicates,
                        })
                        .map_err(|e| StoreError(e.to_string()));
                    if let Err(e) = &result {
                        tracing::warn!("could not store received events: {e}");
                    }
                    let stored = result.is_ok();
                    driver.with_core(|core, now| core.handle_appended(now, ticket, result));
                    driver.appends_in_flight.fetch_sub(1, Relaxed);
                    // The heads and hashes that proved them are kept next.
                    driver.logs_changed();
                    if stored {
                        for e in &system {
                            driver.observe(e, true).await;
                        }
                    }
                });
            }
            Action::NewEpoch(origin) => {
                tracing::warn!(%origin, "a peer holds more of this node's log than this node: the data directory was restored from a backup; starting a new log epoch");
                if let Some(dir) = &self.ctx.data_dir {
                    if let Err(e) = dir.set_log_epoch(origin.epoch) {
                        tracing::error!("could not record the new log epoch: {e:#}");
                    }
                }
            }
            Action::Notice(notice) => self.notice(notice),
        }
    }

    /// A renewed certificate that arrived by the log: installed if it is
    /// this node's (see `renewal`).
    fn observe_certificate(&self, e: &ferry_proto::Event) {
        let Some(dir) = &self.ctx.data_dir else { return };
        match crate::renewal::observe(dir, e) {
            Ok(crate::renewal::Outcome::Installed { not_after }) => tracing::warn!(
                not_after,
                "a renewed certificate for this node arrived by the log and is installed; \
                 restart the node (e.g. systemctl restart ferry) to present it"
            ),
            Ok(crate::renewal::Outcome::NotNewer) => {
                tracing::info!(
                    "a certificate for this node arrived by the log, no newer than its own: kept the one it has"
                )
            }
            Ok(crate::renewal::Outcome::NotForUs) => {}
            Err(err) => tracing::warn!(
                "a certificate for this node arrived by the log ({}:{}) but cannot be installed: {err:#}",
                e.origin,
                e.seq
            ),
        }
    }

    /// A held event (received, or written here) may be a revocation: if it
    /// is valid and news, the core learns of it, which closes connections
    /// to the revoked node. A hub re-appends one that reached it from a
    /// node other than a hub into its own log: under the policy `role`
    /// clinics receive hubs' events but not each other's or mules'.
    pub async fn observe(self: &Arc<Self>, e: &ferry_proto::Event, received: bool) {
        if e.topic == crate::renewal::TOPIC {
            self.observe_certificate(e);
            return;
        }
        let Some(r) = self.ctx.revocations.observe(e) else {
            return;
        };
        if r.node == self.ctx.node_id {
            tracing::error!(serial = r.serial, reason = %r.reason, "this node's own certificate is revoked: every node that holds the revocation refuses it and what it writes from now on");
        }
        self.with_core(|core, now| core.revoke(now, r.node, r.cutoff()));
        let from_hub = self
            .ctx
            .hubs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&e.origin.node);
        if received && self.ctx.role == ferry_proto::Role::Hub && !from_hub {
            let again = ferry_wal::NewEvent {
                topic: crate::revocation::TOPIC.into(),
                priority: ferry_proto::Priority::Urgent,
                payload: e.payload.clone(),
            };
            match self.ctx.wal.append_local(vec![again]).await {
                Ok(_) => tracing::info!(node = %r.node, "passed the revocation on in this hub's own log"),
                Err(err) => tracing::warn!("could not pass the revocation of {} on: {err}", r.node),
            }
        }
    }

    fn notice(self: &Arc<Self>, notice: Notice) {
        match notice {
            Notice::InStep { conn } => {
                if let Some(link) = self.link(conn) {
                    tracing::info!(peer = %link.peer.node_id.short(), name = %link.peer.name, "in step with peer");
                    if let Some(v) = self.core.lock().unwrap_or_else(|p| p.into_inner()).session(conn) {
                        link.keep_view(v);
                    }
                    link.in_step();
                    peers::record(&self.ctx, &link, true);
                }
            }
            Notice::PeerHolds { conn, summary, classes } => {
                if let Some(link) = self.link(conn) {
                    self.remembered
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(link.peer.node_id, (summary, classes));
                }
            }
            Notice::RoundDone { conn, received } => {
                tracing::debug!(conn = conn.0, received, "pulled what the peer's summary offered");
            }
            Notice::Refused { conn, code, message } => {
                tracing::warn!(conn = conn.0, code, "peer refused a want: {message}");
            }
            Notice::Unproved {
                conn,
                origin,
                first,
                last,
                reason,
            } => {
                self.ctx
                    .writer_keys
                    .count_unproved(last.checked_sub(first).map_or(0, |d| d.saturating_add(1)));
                tracing::warn!(conn = conn.0, %origin, first, last, "refused events that did not prove against their writer's signed log head (forged or altered by a relay?): {reason}");
            }
            Notice::KeyRefused { conn, reason } => {
                tracing::warn!(conn = conn.0, "refused a writer's certificate a peer sent: {reason}");
            }
        }
    }
}

/// Saves the log trees soon after events are stored: a relay that loses
/// power keeps the heads and hashes that prove what it carries (a mule
/// meets the writer once). Saves run one at a time, so a busy sync makes
/// one save per batch of appends, not one per append. Shutdown saves once
/// more.
async fn save_logs_task(driver: Arc<Driver>) {
    loop {
        tokio::select! {
            _ = driver.ctx.stopping.cancelled() => return,
            _ = driver.logs_changed.notified() => {}
        }
        if driver.logs_dirty.load(Relaxed) {
            let d = driver.clone();
            // File I/O off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || d.save_logs()).await;
        }
    }
}

/// Fires the core's timers.
async fn timer_task(driver: Arc<Driver>) {
    loop {
        let next = driver.core.lock().unwrap_or_else(|p| p.into_inner()).poll_timeout();
        let sleep = async {
            match next {
                Some(t) => {
                    let wait = t.saturating_sub(driver.now());
                    tokio::time::sleep(std::time::Duration::from_micros(wait.0)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = driver.ctx.stopping.cancelled() => return,
            _ = driver.timer.notified() => continue,
            _ = sleep => {}
        }
        driver.with_core(|core, now| core.handle_timeout(now));
    }
}

/// Tells the core of this node's own new events, however they were written
/// (the local API, the CLI through it, the demo), so they are pushed to
/// peers that subscribed.
async fn local_appends(driver: Arc<Driver>) {
    let wal = driver.ctx.wal.clone();
    let mut changes = wal.subscribe();
    let mut seen: BTreeMap<Origin, RangeSet> = BTreeMap::new();
    let local = wal.local_origin();
    seen.insert(local, wal.have(&local));
    loop {
        tokio::select! {
            _ = driver.ctx.stopping.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let local = wal.local_origin();
        let have = wal.have(&local);
        let known = seen.entry(local).or_default();
        let new = have.difference(known);
        *known = have;
        if new.is_empty() {
            continue;
        }
        let classes = wal.classes();
        let class_of = |seq: u64| {
            if classes.urgent.get(&local).is_some_and(|r| r.contains(seq)) {
                ferry_proto::Priority::Urgent
            } else if classes.bulk.get(&local).is_some_and(|r| r.contains(seq)) {
                ferry_proto::Priority::Bulk
            } else {
                ferry_proto::Priority::Normal
            }
        };
        let events: Vec<_> = new
            .ranges()
            .iter()
            .flat_map(|&(a, b)| a..=b)
            .map(|seq| (local, seq, class_of(seq)))
            .collect();
        // Read back to grow and sign this node's trees before the core
        // pushes them: a push is proved like any range.
        let written = read_own(&wal, local, &new);
        driver.logs_changed();
        driver.with_core(|core, now| {
            core.store_mut().wrote(&written);
            core.handle_local_appended(now, &events)
        });
        // Revocations and certificates are written urgent (`ferry revoke`,
        // `ferry cert publish`): read only those.
        let urgent = classes
            .urgent
            .get(&local)
            .map(|u| u.intersection(&new))
            .unwrap_or_default();
        for &(first, last) in urgent.ranges() {
            match wal.read_range(&local, first, last, usize::MAX) {
                Ok(written) => {
                    for e in &written {
                        driver.observe(e, false).await;
                    }
                }
                Err(e) => tracing::warn!("could not read this node's new urgent events: {e}"),
            }
        }
    }
}

/// This node's own events `seqs` of its log `local`, read back from the WAL.
fn read_own(wal: &ferry_wal::Wal, local: Origin, seqs: &RangeSet) -> Vec<ferry_proto::Event> {
    let mut written = Vec::new();
    for &(first, last) in seqs.ranges() {
        match wal.read_range(&local, first, last, usize::MAX) {
            Ok(e) => written.extend(e),
            Err(e) => tracing::warn!("could not read this node's new events: {e}"),
        }
    }
    written
}

/// Writes every connected peer's counts and lag to peers.json every few
/// seconds, for `ferry peers`, `ferry status`, `/metrics` and the dashboard.
pub async fn refresh_peers(driver: Arc<Driver>) {
    loop {
        tokio::select! {
            _ = driver.ctx.stopping.cancelled() => return,
            _ = tokio::time::sleep(peers::REFRESH) => {}
        }
        record_peers(&driver);
    }
}

/// Writes every connected peer's counts and lag as the core sees them now.
pub fn record_peers(driver: &Arc<Driver>) {
    let views = driver.views();
    for link in driver.links() {
        if let Some(v) = views.iter().find(|v| v.conn == link.id()) {
            link.keep_view(v.clone());
            peers::record(&driver.ctx, &link, false);
        }
    }
}

impl LinkEvents for Driver {
    fn stream_data(self: &Arc<Self>, conn: ConnId, stream: StreamId, kind: StreamKind, bytes: &[u8]) {
        self.with_core(|core, now| core.handle_stream_data(now, conn, stream, kind, bytes));
    }

    fn stream_end(self: &Arc<Self>, conn: ConnId, stream: StreamId) {
        self.with_core(|core, now| core.handle_stream_end(now, conn, stream));
    }

    fn sent(self: &Arc<Self>, conn: ConnId, stream: StreamId) {
        self.with_core(|core, now| core.handle_sent(now, conn, stream));
    }

    fn closed(self: &Arc<Self>, link: &Arc<Link>, why: &quinn::ConnectionError) {
        let id = link.id();
        let view = self.with_core(|core, now| {
            let view = core.session(id);
            core.handle_closed(now, id);
            view
        });
        if let Some(v) = view {
            link.keep_view(v);
        }
        link.forget_streams();
        self.links.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let error = match (why, link.gave_up_after()) {
            (quinn::ConnectionError::LocallyClosed, Some(silent)) => Some(silent_peer(silent)),
            (quinn::ConnectionError::ApplicationClosed(c), _) if c.error_code == code(ErrorCode::Done) => None,
            (quinn::ConnectionError::LocallyClosed, None) => None,
            (other, _) => Some(other.to_string()),
        };
        peers::record_end(&self.ctx, link, error);
    }

    fn silent(self: &Arc<Self>, link: &Arc<Link>, silent: Duration) {
        self.ctx.totals.silent_peers.fetch_add(1, Relaxed);
        tracing::warn!(peer = %link.peer.node_id.short(), addr = %link.addr, "{}; closing the connection", silent_peer(silent));
    }

    fn tasks(&self) -> &tokio_util::task::TaskTracker {
        &self.ctx.tasks
    }

    fn budget(&self) -> Option<&crate::budget::Budget> {
        self.ctx.budget.as_ref()
    }
}

/// Why a connection was given up (`silence`), for the log and `ferry peers`.
fn silent_peer(silent: Duration) -> String {
    format!(
        "no answer from the peer for {} s (the path carries nothing back)",
        silent.as_secs()
    )
}
