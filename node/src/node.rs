//! A running node: its context, its driver, and its QUIC endpoints (one
//! listens, one dials), with dialling, 0-RTT resumption and accepting.

use crate::ctx::{Counters, NodeCtx};
use crate::datadir::{DataDir, Policy};
use crate::driver::{Driver, Mode};
use crate::link::{code, ended_by_the_path, Link};
use crate::pki::{CertInfo, Role};
use crate::sync_error::SyncError;
use crate::tls::{self, TlsIdentity};
use crate::transport::TransportProfile;
use anyhow::{Context, Result};
use ferry_proto::ErrorCode;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

pub struct Node {
    pub ctx: Arc<NodeCtx>,
    pub driver: Arc<Driver>,
    /// Accepts peers on the configured address.
    pub endpoint: quinn::Endpoint,
    /// Dials peers from an ephemeral port, so it can move to a new socket
    /// when the machine's address changes without touching the listener.
    /// Made on the first dial: a hub that only accepts never pays for its
    /// receive buffers.
    dialer: OnceLock<quinn::Endpoint>,
    dial_from: SocketAddr,
    connect_timeout: std::time::Duration,
    tls: TlsIdentity,
    profile: TransportProfile,
    dials: Mutex<HashMap<SocketAddr, Dial>>,
}

/// What this node keeps about an address it dials, so that a reconnect
/// resumes the TLS session and opens its session in 0-RTT. Tickets live in
/// the client config's store; every peer presents the same server name, so
/// each address gets a config, and a store, of its own.
struct Dial {
    config: quinn::ClientConfig,
    /// Who answered at this address last time.
    last: Option<CertInfo>,
}

/// How a connection's opening went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ZeroRtt {
    /// No ticket from an earlier connection to this address: a full handshake.
    NotTried,
    Accepted,
    /// The peer did not take the early data (it restarted, or the ticket
    /// expired); the session was opened again after the handshake.
    Rejected,
}

/// A connection this node dialled.
pub struct Opened {
    pub link: Arc<Link>,
    pub zero_rtt: ZeroRtt,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub peer: String,
    pub peer_name: String,
    pub peer_role: String,
    pub addr: SocketAddr,
    pub events_received: u64,
    pub events_sent: u64,
    pub duplicates_received: u64,
    pub wants: u64,
    pub zero_rtt: ZeroRtt,
    /// From the start of dialling to the first event received.
    pub first_event_ms: Option<u64>,
    /// Times this node moved its outgoing connections to a new socket
    /// because its addresses changed (the connection migrated).
    pub rebinds: u64,
    pub udp_tx_bytes: u64,
    pub udp_rx_bytes: u64,
    /// Of the bytes sent, the credentials, heads and proofs that
    /// authenticate the logs.
    pub auth_bytes_sent: u64,
}

impl SyncReport {
    /// This report followed by `next`, a later connection of the same sync.
    fn then(self, next: SyncReport) -> SyncReport {
        SyncReport {
            events_received: self.events_received + next.events_received,
            events_sent: self.events_sent + next.events_sent,
            duplicates_received: self.duplicates_received + next.duplicates_received,
            wants: self.wants + next.wants,
            first_event_ms: self.first_event_ms.or(next.first_event_ms),
            udp_tx_bytes: self.udp_tx_bytes + next.udp_tx_bytes,
            udp_rx_bytes: self.udp_rx_bytes + next.udp_rx_bytes,
            auth_bytes_sent: self.auth_bytes_sent + next.auth_bytes_sent,
            ..self
        }
    }
}

/// Settings given on the command line, over the data directory's config.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overrides {
    pub policy: Option<Policy>,
    pub bandwidth_kbps: Option<u64>,
    /// Deliberate faults, for tests of how peers withstand a rogue node;
    /// they act only in builds with ferry-sync's `fault-injection`.
    pub faults: ferry_sync::Bugs,
}

/// Certificates of other writers, learned from peers (`logauth`).
const WRITERS_DIR: &str = "writers";

/// Opens the WAL and identity of an enrolled data directory.
pub fn open_ctx(dir: &DataDir, policy: Option<Policy>) -> Result<(Arc<NodeCtx>, TlsIdentity)> {
    open_ctx_with(
        dir,
        Overrides {
            policy,
            ..Default::default()
        },
    )
}

pub fn open_ctx_with(dir: &DataDir, overrides: Overrides) -> Result<(Arc<NodeCtx>, TlsIdentity)> {
    let cfg = dir.config()?;
    let id = dir.identity()?;
    let tls = TlsIdentity::from_identity(&id)?;
    // from_identity succeeded, so the certificate is present.
    let cert = id.cert.context("node certificate missing")?;
    let role = cert
        .role
        .context("node certificate carries no role; re-enrol it with `ferry ca sign --role`")?;
    let wal = dir.open_wal(false)?;
    let revocations = tls.revocations();
    let n = revocations
        .rebuild(&wal)
        .context("could not read the revocations this node holds")?;
    if n > 0 {
        tracing::info!("{n} node(s) revoked by the deployment CA");
    }
    // Hubs this node has met: their events go to every clinic under `role`.
    let hubs = std::iter::once(id.node_id)
        .filter(|_| role == Role::Hub)
        .chain(
            dir.peers()
                .into_iter()
                .filter(|(_, p)| p.verified && p.role == Some(Role::Hub))
                .filter_map(|(id, _)| id.parse().ok()),
        )
        .collect();
    let ca_der = crate::pki::parse_pem_certs(id.ca_pem.as_deref().unwrap_or_default())?
        .into_iter()
        .next()
        .context("ca.crt holds no certificate")?;
    let writer_keys = crate::logauth::WriterKeys::open(&ca_der, Some(dir.path(WRITERS_DIR)));
    let own_cert = crate::pki::parse_pem_certs(id.cert_pem.as_deref().unwrap_or_default())?
        .into_iter()
        .next()
        .context("node.crt holds no certificate")?;
    writer_keys.add_verified_cert(&own_cert)?;
    let ctx = NodeCtx {
        writer_keys: Arc::new(writer_keys),
        signer: Arc::new(crate::logauth::NodeSigner::new(&id.key)?),
        faults: overrides.faults,
        wal: Arc::new(wal),
        node_id: id.node_id,
        name: cfg.name.clone(),
        role,
        policy: overrides.policy.unwrap_or(cfg.policy),
        data_dir: Some(dir.clone()),
        totals: Counters::default(),
        tasks: Default::default(),
        stopping: Default::default(),
        deployment: Default::default(),
        hubs: Mutex::new(hubs),
        addresses: tokio::sync::watch::Sender::new(0),
        progress: OnceLock::new(),
        revocations,
        budget: overrides
            .bandwidth_kbps
            .or(cfg.bandwidth_kbps)
            .map(crate::budget::Budget::new),
    };
    Ok((Arc::new(ctx), tls))
}

impl Node {
    /// Binds the endpoint and starts accepting peers, as a one-shot node
    /// (`Node::serve_live` makes it a daemon). Needs a tokio runtime.
    pub fn start(ctx: Arc<NodeCtx>, tls: &TlsIdentity, listen: SocketAddr, profile: &TransportProfile) -> Result<Node> {
        let socket = std::net::UdpSocket::bind(listen)
            .with_context(|| format!("could not listen on {listen} (UDP); is another node using the port?"))?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config(tls),
            Some(tls.quinn_server(profile)?),
            socket,
            quinn::default_runtime().context("no async runtime")?,
        )?;
        let dial_from = SocketAddr::new(
            match listen {
                SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            },
            0,
        );
        let driver = Driver::new(
            ctx.clone(),
            Mode {
                live: false,
                interval: None,
            },
        );
        ctx.tasks
            .spawn(accept_loop(driver.clone(), endpoint.clone(), profile.silence_limit));
        ctx.tasks.spawn(crate::driver::refresh_peers(driver.clone()));
        Ok(Node {
            ctx,
            driver,
            endpoint,
            dialer: OnceLock::new(),
            dial_from,
            connect_timeout: profile.connect_timeout,
            tls: tls.clone(),
            profile: profile.clone(),
            dials: Mutex::new(HashMap::new()),
        })
    }

    /// Makes this node a daemon: connections stay open, news is pushed, and
    /// a dialer asks for a fresh summary every `interval`.
    pub fn serve_live(&self, interval: std::time::Duration) {
        self.driver
            .with_core(|core, now| core.set_live(now, true, Some(ferry_sync::Time::from(interval))));
    }

    fn dialer(&self) -> Result<&quinn::Endpoint> {
        if let Some(d) = self.dialer.get() {
            return Ok(d);
        }
        let socket = std::net::UdpSocket::bind(self.dial_from)
            .with_context(|| format!("could not open a UDP socket on {}", self.dial_from))?;
        let dialer = quinn::Endpoint::new(
            endpoint_config(&self.tls),
            None,
            socket,
            quinn::default_runtime().context("no async runtime")?,
        )?;
        // Two first dials at once: the loser's endpoint is dropped unused.
        let dialer = self.dialer.get_or_init(|| {
            self.ctx
                .tasks
                .spawn(crate::netwatch::watch(self.ctx.clone(), dialer.clone(), self.dial_from));
            dialer
        });
        Ok(dialer)
    }

    fn dial(&self, addr: SocketAddr, lan: bool) -> Result<(quinn::ClientConfig, Option<CertInfo>)> {
        let mut dials = self.dials.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dials.get(&addr) {
            return Ok((d.config.clone(), d.last.clone()));
        }
        let profile = if lan {
            TransportProfile::lan()
        } else {
            self.profile.clone()
        };
        let config = self.tls.quinn_client(&profile)?;
        dials.insert(
            addr,
            Dial {
                config: config.clone(),
                last: None,
            },
        );
        Ok((config, None))
    }

    fn remember(&self, addr: SocketAddr, peer: &CertInfo) {
        let mut dials = self.dials.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dials.get_mut(&addr) {
            d.last = Some(peer.clone());
        }
    }

    /// How long a dial may take: a LAN peer answers quickly or not at all.
    fn connect_timeout(&self, lan: bool) -> std::time::Duration {
        if lan {
            TransportProfile::lan().connect_timeout
        } else {
            self.connect_timeout
        }
    }

    /// How long a peer may leave what this node sends unanswered
    /// (`silence`).
    fn silence_limit(&self, lan: bool) -> std::time::Duration {
        if lan {
            TransportProfile::lan().silence_limit
        } else {
            self.profile.silence_limit
        }
    }

    fn unreachable(&self, addr: SocketAddr, lan: bool) -> SyncError {
        SyncError::Unreachable {
            addr,
            after: self.connect_timeout(lan),
        }
    }

    /// Connects to `addr` and hands the connection to the core, which opens
    /// its session at once. With a ticket from an earlier connection to the
    /// same address, the TLS session resumes and the opening (Hello,
    /// summary, and wants from what the peer held last time) goes out as
    /// 0-RTT data; if the peer rejects it (it restarted, or the ticket
    /// expired), that connection is closed and a full handshake follows.
    /// `lan`: the peer was found on the LAN.
    pub async fn open(&self, addr: SocketAddr, lan: bool) -> Result<Opened, SyncError> {
        let started = Instant::now();
        let (config, last) = self.dial(addr, lan)?;
        let mut connecting = self
            .dialer()?
            .connect_with(config.clone(), addr, crate::pki::SERVER_NAME)
            .map_err(|source| SyncError::Dial { addr, source })?;
        if let Some(peer) = last {
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => {
                    let early = self.open_early(addr, lan, conn.clone(), accepted, peer, started);
                    match tokio::time::timeout(self.connect_timeout(lan), early).await {
                        Ok(Ok(Some(opened))) => return Ok(opened),
                        Ok(Ok(None)) => {
                            // Rejected. The session's streams cannot simply
                            // be opened again on this connection: quinn
                            // numbers streams from 0 again after a rejection,
                            // so a handle of the void session that is dropped
                            // late would finish the new session's control
                            // stream (seen: a hub read that as goodbye).
                            let mut opened = self.open_full(addr, lan, config, started).await?;
                            opened.zero_rtt = ZeroRtt::Rejected;
                            return Ok(opened);
                        }
                        Ok(Err(e)) => return Err(e),
                        Err(_) => {
                            conn.close(code(ErrorCode::Done), b"no answer");
                            return Err(self.unreachable(addr, lan));
                        }
                    }
                }
                Err(c) => connecting = c,
            }
        }
        self.finish_full(connecting, addr, lan, started).await
    }

    /// A full handshake, without trying 0-RTT.
    async fn open_full(
        &self,
        addr: SocketAddr,
        lan: bool,
        config: quinn::ClientConfig,
        started: Instant,
    ) -> Result<Opened, SyncError> {
        let connecting = self
            .dialer()?
            .connect_with(config, addr, crate::pki::SERVER_NAME)
            .map_err(|source| SyncError::Dial { addr, source })?;
        self.finish_full(connecting, addr, lan, started).await
    }

    async fn finish_full(
        &self,
        connecting: quinn::Connecting,
        addr: SocketAddr,
        lan: bool,
        started: Instant,
    ) -> Result<Opened, SyncError> {
        let conn = tokio::time::timeout(self.connect_timeout(lan), connecting)
            .await
            .map_err(|_| self.unreachable(addr, lan))?
            .map_err(|source| SyncError::connection(addr, source))?;
        let peer = tls::peer_cert(&conn)?;
        let link = self.adopt(conn, peer, addr, lan, started);
        Ok(Opened {
            link,
            zero_rtt: ZeroRtt::NotTried,
        })
    }

    async fn open_early(
        &self,
        addr: SocketAddr,
        lan: bool,
        conn: quinn::Connection,
        accepted: quinn::ZeroRttAccepted,
        peer: CertInfo,
        started: Instant,
    ) -> Result<Option<Opened>, SyncError> {
        let link = self.adopt(conn.clone(), peer.clone(), addr, lan, started);
        let accepted = accepted.await;
        if let Some(why) = conn.close_reason() {
            return Err(SyncError::connection(addr, why));
        }
        let actual = tls::peer_cert(&conn)?;
        if actual.node_id != peer.node_id {
            conn.close(code(ErrorCode::Protocol), b"unexpected peer");
            return Err(SyncError::WrongPeer {
                addr,
                expected: peer.node_id,
                found: actual.node_id,
            });
        }
        if accepted {
            self.ctx.totals.zero_rtt_accepted.fetch_add(1, Relaxed);
            tracing::info!(%addr, peer = %actual.node_id.short(), "0-RTT accepted");
            Ok(Some(Opened {
                link,
                zero_rtt: ZeroRtt::Accepted,
            }))
        } else {
            self.ctx.totals.zero_rtt_rejected.fetch_add(1, Relaxed);
            tracing::info!(%addr, peer = %actual.node_id.short(), "0-RTT rejected; connecting again");
            conn.close(code(ErrorCode::Done), b"0-RTT rejected; connecting again");
            Ok(None)
        }
    }

    /// Hands a dialled connection to the driver.
    fn adopt(
        &self,
        conn: quinn::Connection,
        peer: CertInfo,
        addr: SocketAddr,
        lan: bool,
        started: Instant,
    ) -> Arc<Link> {
        let link = Link::new(conn, self.driver.new_conn_id(), peer.clone(), addr, started, false, lan);
        self.remember(addr, &peer);
        crate::peers::record_start(&self.ctx, &link);
        // The core's session first: what the peer sends is read only then.
        self.driver.connect(&link, true);
        link.serve(&self.driver, self.silence_limit(lan));
        crate::progress::track(&self.driver, &link);
        link
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// One sync with the peer at `addr`: both sides pull what the other
    /// offers, then the connection closes. Fails unless every want was
    /// answered.
    pub async fn sync_once(&self, addr: SocketAddr) -> Result<SyncReport, SyncError> {
        // A path that went silent (a long burst of loss, a NAT that forgot
        // the binding) is given up by the link's watch, here or at the
        // peer; the sync dials again and goes on where it was, as the
        // daemon would.
        const REDIALS_AFTER_SILENCE: u32 = 3;
        let mut total: Option<SyncReport> = None;
        let mut redials = 0;
        loop {
            let Opened { link, zero_rtt } = self.open(addr, false).await?;
            let done = link.wait_in_step().await;
            if done {
                // Goodbye: the peer closes once it has read all this node sent.
                self.driver.with_core(|core, now| core.goodbye(now, link.id()));
                let closed = tokio::time::timeout(self.connect_timeout(false), link.conn.closed()).await;
                if closed.is_err() {
                    link.conn.close(code(ErrorCode::Done), b"sync finished");
                }
            } else if !ended_by_the_path(&link) {
                link.conn.close(code(ErrorCode::Internal), b"sync failed");
            }
            let this = report(&link, zero_rtt);
            let mut report = match total.take() {
                Some(before) => before.then(this),
                None => this,
            };
            report.rebinds = self.ctx.totals.rebinds.load(Relaxed);
            if done {
                return Ok(report);
            }
            let ended = match (link.gave_up_after(), link.conn.close_reason()) {
                (Some(silent), _) => format!("no answer from the peer for {} s", silent.as_secs()),
                (None, Some(reason)) => reason.to_string(),
                (None, None) => "the connection ended".into(),
            };
            if ended_by_the_path(&link) {
                if redials < REDIALS_AFTER_SILENCE {
                    redials += 1;
                    tracing::warn!(%addr, "the connection was lost ({ended}); dialling again");
                    total = Some(report);
                    continue;
                }
                let why = format!("{ended}, after {redials} redials; the link is down or dropping everything");
                return Err(SyncError::Incomplete { addr, reason: why });
            }
            return Err(SyncError::Incomplete { addr, reason: ended });
        }
    }

    /// Closes every connection and waits until peers were told.
    pub async fn shutdown(&self) {
        // What each connection knew last, taken while its session exists:
        // the periodic refresh may be seconds old (a pull that finished
        // since would be left recorded as lacking). Appends already durable
        // are counted first.
        self.driver.settle_appends(std::time::Duration::from_secs(2)).await;
        crate::driver::record_peers(&self.driver);
        let endpoints: Vec<&quinn::Endpoint> = std::iter::once(&self.endpoint).chain(self.dialer.get()).collect();
        for ep in &endpoints {
            ep.close(code(ErrorCode::ShuttingDown), b"node shutting down");
        }
        // Connections are closed, so every serving task ends soon; appends
        // they started finish first.
        self.ctx.stopping.cancel();
        self.ctx.tasks.close();
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.ctx.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sessions did not finish within 10 s of shutdown");
        }
        let idle = async {
            for ep in endpoints {
                ep.wait_idle().await;
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), idle).await;
        self.driver.save_logs();
    }
}

/// The stateless-reset key and the key that signs connection IDs come
/// from the node's own key, so a node that restarts can still tell peers
/// of connections it forgot that they are gone: they reconnect at once
/// instead of waiting out the idle timeout. Both are needed: quinn answers
/// a packet for an unknown connection with a reset only when its
/// connection ID validates under the generator's key, which by default is
/// new in every process.
fn endpoint_config(tls: &TlsIdentity) -> quinn::EndpointConfig {
    let secret = tls.reset_secret();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    let cid_key = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
        b"ferry connection ids",
    );
    let mut first = [0u8; 8];
    first.copy_from_slice(&cid_key.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(first);
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    config
}

pub fn report(link: &Link, zero_rtt: ZeroRtt) -> SyncReport {
    let stats = link.conn.stats();
    let view = link.last_view();
    let s = view.as_ref().map(|v| v.stats).unwrap_or_default();
    SyncReport {
        peer: link.peer.node_id.to_string(),
        peer_name: link.peer.name.clone(),
        peer_role: link.peer.role.map(|r| r.to_string()).unwrap_or_default(),
        addr: link.addr,
        events_received: s.events_received,
        events_sent: s.events_sent,
        duplicates_received: s.duplicates_received,
        wants: s.wants_sent,
        zero_rtt,
        first_event_ms: link.first_event_after().map(|d| d.as_millis() as u64),
        rebinds: 0,
        udp_tx_bytes: stats.udp_tx.bytes,
        udp_rx_bytes: stats.udp_rx.bytes,
        auth_bytes_sent: s.auth_bytes_sent,
    }
}

/// `silence_limit`: the profile's (`TransportProfile::silence_limit`); a
/// peer on this node's LAN gets the LAN profile's.
async fn accept_loop(driver: Arc<Driver>, endpoint: quinn::Endpoint, silence_limit: std::time::Duration) {
    while let Some(incoming) = endpoint.accept().await {
        let driver = driver.clone();
        // Numbered as it begins: of two connections from one peer, the core
        // keeps the one begun later (`Replica::connect`).
        let id = driver.new_conn_id();
        driver.ctx.tasks.clone().spawn(async move {
            let addr = incoming.remote_address();
            let started = Instant::now();
            let (conn, peer) = match accept_peer(incoming).await {
                Ok(p) => p,
                Err(e) => {
                    let version = e
                        .downcast_ref::<quinn::ConnectionError>()
                        .is_some_and(crate::sync_error::is_version_mismatch);
                    if version {
                        tracing::warn!("refused a connection: {}", SyncError::Version { addr });
                    } else {
                        tracing::warn!(%addr, "refused a connection: {e:#}");
                    }
                    return;
                }
            };
            tracing::info!(%addr, peer = %peer.node_id.short(), name = %peer.name, "peer connected");
            driver.ctx.totals.connections_accepted.fetch_add(1, Relaxed);
            let lan = crate::netwatch::on_link(addr.ip());
            let link = Link::new(conn, id, peer, addr, started, true, lan);
            crate::peers::record_start(&driver.ctx, &link);
            // The core's session first: what the peer sends is read only then.
            driver.connect(&link, false);
            let silence_limit = if lan {
                TransportProfile::lan().silence_limit
            } else {
                silence_limit
            };
            link.serve(&driver, silence_limit);
            crate::progress::track(&driver, &link);
        });
    }
}

/// Completes an incoming connection as far as needed to know who is on the
/// other end. A resumed session knows its client as soon as the
/// ClientHello's binder checks (the ticket was issued to a verified
/// certificate, and each ticket resumes once), so its 0-RTT requests are
/// answered at once, half a round trip before the handshake completes. A
/// full handshake waits until the client's certificate is verified. Either
/// way no event leaves before the client's identity is established.
async fn accept_peer(incoming: quinn::Incoming) -> Result<(quinn::Connection, CertInfo)> {
    let connecting = incoming.accept()?;
    let (conn, established) = match connecting.into_0rtt() {
        Ok(early) => early,
        // Servers can always go 0.5-RTT; should that change, wait.
        Err(connecting) => {
            let conn = connecting.await?;
            let peer = tls::peer_cert(&conn)?;
            return Ok((conn, peer));
        }
    };
    if let Ok(peer) = tls::peer_cert(&conn) {
        tracing::debug!(peer = %peer.node_id.short(), "resumed session: serving its early data");
        return Ok((conn, peer));
    }
    established.await;
    if let Some(why) = conn.close_reason() {
        return Err(why.into());
    }
    match tls::peer_cert(&conn) {
        Ok(peer) => Ok((conn, peer)),
        Err(e) => {
            conn.close(code(ErrorCode::Protocol), b"unreadable certificate");
            Err(e)
        }
    }
}
