//! A running node: its context and its one QUIC endpoint, which both listens
//! and dials.

use crate::datadir::{unix_now, DataDir, Policy};
use crate::pki::{CertInfo, Role};
use crate::session::{self, Counters, Link, NodeCtx, RoundReport};
use crate::tls::{self, TlsIdentity};
use crate::transport::TransportProfile;
use anyhow::{Context, Result};
use ferry_proto::{Classes, ErrorCode, Summary};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

pub struct Node {
    pub ctx: Arc<NodeCtx>,
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
/// resumes the TLS session and opens its round in 0-RTT. Tickets live in
/// the client config's store; every peer presents the same server name, so
/// each address gets a config, and a store, of its own.
struct Dial {
    config: quinn::ClientConfig,
    last: Option<Remembered>,
}

#[derive(Clone)]
struct Remembered {
    peer: CertInfo,
    summary: (Summary, Classes),
}

/// How a connection's opening went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ZeroRtt {
    /// No ticket from an earlier connection to this address: a full handshake.
    NotTried,
    Accepted,
    /// The peer did not take the early data (it restarted, or the ticket
    /// expired); the round was sent again after the handshake.
    Rejected,
}

/// A connection and the round it opened with.
pub struct Opened {
    pub link: Arc<Link>,
    pub round: session::OpenRound,
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
    pub wants: usize,
    pub zero_rtt: ZeroRtt,
    /// From the start of dialling to the first event received.
    pub first_event_ms: Option<u64>,
    /// Times this node moved its outgoing connections to a new socket
    /// because its addresses changed (the connection migrated).
    pub rebinds: u64,
    pub udp_tx_bytes: u64,
    pub udp_rx_bytes: u64,
}

/// Opens the WAL and identity of an enrolled data directory.
/// Settings given on the command line, over the data directory's config.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overrides {
    pub policy: Option<Policy>,
    pub bandwidth_kbps: Option<u64>,
}

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
    let policy = overrides.policy;
    let cfg = dir.config()?;
    let id = dir.identity()?;
    let tls = TlsIdentity::from_identity(&id)?;
    // from_identity succeeded, so the certificate is present.
    let cert = id.cert.context("node certificate missing")?;
    let role = cert
        .role
        .context("node certificate carries no role; re-enrol it with `ferry ca sign --role`")?;
    let wal = dir.open_wal(false)?;
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
    let ctx = NodeCtx {
        wal: Arc::new(wal),
        node_id: id.node_id,
        name: cfg.name.clone(),
        role,
        policy: policy.unwrap_or(cfg.policy),
        data_dir: Some(dir.clone()),
        totals: Counters::default(),
        tasks: Default::default(),
        stopping: Default::default(),
        deployment: Default::default(),
        inflight: Default::default(),
        links: Default::default(),
        live: Default::default(),
        hubs: Mutex::new(hubs),
        addresses: tokio::sync::watch::Sender::new(0),
        progress: OnceLock::new(),
        budget: overrides
            .bandwidth_kbps
            .or(cfg.bandwidth_kbps)
            .map(crate::budget::Budget::new),
    };
    Ok((Arc::new(ctx), tls))
}

impl Node {
    /// Binds the endpoint and starts accepting peers. Needs a tokio runtime.
    pub fn start(ctx: Arc<NodeCtx>, tls: &TlsIdentity, listen: SocketAddr, profile: &TransportProfile) -> Result<Node> {
        let endpoint = quinn::Endpoint::server(tls.quinn_server(profile)?, listen)
            .with_context(|| format!("could not listen on {listen} (UDP); is another node using the port?"))?;
        let dial_from = SocketAddr::new(
            match listen {
                SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            },
            0,
        );
        ctx.tasks.spawn(accept_loop(ctx.clone(), endpoint.clone()));
        Ok(Node {
            ctx,
            endpoint,
            dialer: OnceLock::new(),
            dial_from,
            connect_timeout: profile.connect_timeout,
            tls: tls.clone(),
            profile: profile.clone(),
            dials: Mutex::new(HashMap::new()),
        })
    }

    fn dialer(&self) -> Result<&quinn::Endpoint> {
        if let Some(d) = self.dialer.get() {
            return Ok(d);
        }
        let dialer = quinn::Endpoint::client(self.dial_from)
            .with_context(|| format!("could not open a UDP socket on {}", self.dial_from))?;
        // Two first dials at once: the loser's endpoint is dropped unused.
        let dialer = self.dialer.get_or_init(|| {
            self.ctx
                .tasks
                .spawn(crate::netwatch::watch(self.ctx.clone(), dialer.clone(), self.dial_from));
            dialer
        });
        Ok(dialer)
    }

    fn dial(&self, addr: SocketAddr, lan: bool) -> Result<(quinn::ClientConfig, Option<Remembered>)> {
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

    /// Keeps the peer's identity and its summary from the last round, for
    /// the next connection to `addr`.
    pub fn remember(&self, link: &Link) {
        let Some(summary) = link.last_summary.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        let mut dials = self.dials.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dials.get_mut(&link.addr) {
            d.last = Some(Remembered {
                peer: link.peer.clone(),
                summary,
            });
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

    fn unreachable(&self, addr: SocketAddr, lan: bool) -> anyhow::Error {
        anyhow::anyhow!(
            "no answer from {addr} within {:?}; is the peer running and the UDP port open?",
            self.connect_timeout(lan)
        )
    }

    /// Connects to `addr` and opens a round. With a ticket from an earlier
    /// connection to the same address, the TLS session resumes and the
    /// round's opening (Hello, summary, and wants from the peer's last
    /// summary) goes out as 0-RTT data; if the peer rejects it, the round is
    /// sent again once the handshake completes.
    /// `lan`: the peer was found on the LAN, use the LAN transport profile.
    pub async fn open(&self, addr: SocketAddr, lan: bool) -> Result<Opened> {
        let started = Instant::now();
        let (config, remembered) = self.dial(addr, lan)?;
        let mut connecting = self.dialer()?.connect_with(config, addr, crate::pki::SERVER_NAME)?;
        if let Some(mem) = &remembered {
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => {
                    // Opening streams in 0-RTT can wait on the handshake
                    // too, so the whole opening is bounded, not only the
                    // wait for the server's answer.
                    let early = self.open_early(addr, lan, conn.clone(), accepted, mem, started);
                    return match tokio::time::timeout(self.connect_timeout(lan), early).await {
                        Ok(opened) => opened,
                        Err(_) => {
                            conn.close(crate::wire::code(ErrorCode::Done), b"no answer");
                            Err(self.unreachable(addr, lan))
                        }
                    };
                }
                Err(c) => connecting = c,
            }
        }
        let conn = tokio::time::timeout(self.connect_timeout(lan), connecting)
            .await
            .map_err(|_| self.unreachable(addr, lan))?
            .with_context(|| format!("could not connect to {addr}"))?;
        self.open_established(addr, lan, conn, remembered.as_ref(), started, ZeroRtt::NotTried)
            .await
    }

    async fn open_early(
        &self,
        addr: SocketAddr,
        lan: bool,
        conn: quinn::Connection,
        accepted: quinn::ZeroRttAccepted,
        mem: &Remembered,
        started: Instant,
    ) -> Result<Opened> {
        let link = Link::new(conn.clone(), mem.peer.clone(), addr, started, false, lan);
        self.ctx.adopt(&link);
        let early = session::open_round(&self.ctx, &link, Some(&mem.summary)).await;
        let accepted = tokio::time::timeout(self.connect_timeout(lan), accepted)
            .await
            .map_err(|_| self.unreachable(addr, lan))?;
        if let Some(why) = conn.close_reason() {
            return Err(anyhow::Error::new(why).context(format!("could not connect to {addr}")));
        }
        let actual = tls::peer_cert(&conn)?;
        if actual.node_id != mem.peer.node_id {
            conn.close(crate::wire::code(ErrorCode::Protocol), b"unexpected peer");
            anyhow::bail!(
                "{addr} resumed a session of node {} but presents {}",
                mem.peer.node_id,
                actual.node_id
            );
        }
        match early {
            Ok(round) if accepted => {
                self.ctx.totals.zero_rtt_accepted.fetch_add(1, Relaxed);
                tracing::info!(%addr, peer = %actual.node_id.short(), "0-RTT accepted");
                Ok(Opened {
                    link,
                    round,
                    zero_rtt: ZeroRtt::Accepted,
                })
            }
            _ => {
                // Streams opened in 0-RTT are void; the connection itself is fine.
                self.ctx.totals.zero_rtt_rejected.fetch_add(1, Relaxed);
                tracing::info!(%addr, peer = %actual.node_id.short(), "0-RTT rejected; opening the round again");
                drop(early);
                self.open_established(addr, lan, conn, Some(mem), started, ZeroRtt::Rejected)
                    .await
            }
        }
    }

    async fn open_established(
        &self,
        addr: SocketAddr,
        lan: bool,
        conn: quinn::Connection,
        remembered: Option<&Remembered>,
        started: Instant,
        zero_rtt: ZeroRtt,
    ) -> Result<Opened> {
        let peer = tls::peer_cert(&conn)?;
        // Wants from the peer's last summary save a round trip here too.
        let summary = remembered
            .filter(|m| m.peer.node_id == peer.node_id)
            .map(|m| &m.summary);
        let link = Link::new(conn, peer, addr, started, false, lan);
        self.ctx.adopt(&link);
        let round = session::open_round(&self.ctx, &link, summary).await?;
        Ok(Opened { link, round, zero_rtt })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// One round with the peer at `addr`, then close.
    pub async fn sync_once(&self, addr: SocketAddr) -> Result<SyncReport> {
        let Opened { link, round, zero_rtt } = self.open(addr, false).await?;
        let server = self.ctx.tasks.spawn(session::serve(self.ctx.clone(), link.clone()));
        let result = round.finish(&self.ctx, &link).await;
        if result.is_ok() {
            self.remember(&link);
        }
        let close_code = if result.is_ok() {
            ErrorCode::Done
        } else {
            ErrorCode::Internal
        };
        link.conn.close(crate::wire::code(close_code), b"sync finished");
        let _ = server.await;
        let mut report = report(&link, result.as_ref().ok().copied().unwrap_or_default(), zero_rtt);
        report.rebinds = self.ctx.totals.rebinds.load(Relaxed);
        record(&self.ctx, &link, result.as_ref().err().map(|e| format!("{e:#}")), true);
        result.with_context(|| format!("sync with {addr} did not complete"))?;
        Ok(report)
    }

    /// Closes every connection and waits until peers were told.
    pub async fn shutdown(&self) {
        let endpoints: Vec<&quinn::Endpoint> = std::iter::once(&self.endpoint).chain(self.dialer.get()).collect();
        for ep in &endpoints {
            ep.close(crate::wire::code(ErrorCode::ShuttingDown), b"node shutting down");
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
    }
}

pub fn report(link: &Link, round: RoundReport, zero_rtt: ZeroRtt) -> SyncReport {
    let stats = link.conn.stats();
    SyncReport {
        peer: link.peer.node_id.to_string(),
        peer_name: link.peer.name.clone(),
        peer_role: link.peer.role.map(|r| r.to_string()).unwrap_or_default(),
        addr: link.addr,
        events_received: link.counters.events_received.load(Relaxed),
        events_sent: link.counters.events_sent.load(Relaxed),
        duplicates_received: link.counters.duplicates_received.load(Relaxed),
        wants: round.wants,
        zero_rtt,
        first_event_ms: link.first_event_after().map(|d| d.as_millis() as u64),
        rebinds: 0,
        udp_tx_bytes: stats.udp_tx.bytes,
        udp_rx_bytes: stats.udp_rx.bytes,
    }
}

/// Remembers the peer and how the last session went, for `ferry status`.
/// `add_counts` once per connection, when it ends: the link's counters are
/// cumulative.
pub fn record(ctx: &NodeCtx, link: &Link, error: Option<String>, add_counts: bool) {
    let Some(dir) = &ctx.data_dir else { return };
    let result = dir.record_peer(link.peer.node_id, |p| {
        p.name = link.peer.name.clone();
        p.role = link.peer.role;
        p.verified = true;
        if p.found_by.is_empty() {
            p.found_by = if link.inbound { "dialed-us" } else { "static" }.into();
        }
        p.foreign = false;
        p.connected = !add_counts;
        if let Some((theirs, _)) = link.last_summary.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let ours = ctx.wal.summary();
            p.we_lack = Some(ours.lacking(theirs));
            p.they_lack = Some(theirs.lacking(&ours.filtered(|o| ctx.allows(&link.peer, o))));
        }
        // Where the peer is now: a migrated connection has moved on.
        p.addr = link.conn.remote_address().to_string();
        if error.is_none() {
            p.last_sync_unix = Some(unix_now());
        }
        p.last_error = error;
        if add_counts {
            p.events_received += link.counters.events_received.load(Relaxed);
            p.events_sent += link.counters.events_sent.load(Relaxed);
        }
    });
    if let Err(e) = result {
        tracing::warn!("could not record peer state: {e:#}");
    }
}

async fn accept_loop(ctx: Arc<NodeCtx>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let ctx = ctx.clone();
        ctx.tasks.clone().spawn(async move {
            let addr = incoming.remote_address();
            let started = Instant::now();
            let peer = match accept_peer(incoming).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(%addr, "refused a connection: {e:#}");
                    return;
                }
            };
            let (conn, peer) = peer;
            tracing::info!(%addr, peer = %peer.node_id.short(), name = %peer.name, "peer connected");
            ctx.totals.connections_accepted.fetch_add(1, Relaxed);
            let link = Link::new(conn, peer, addr, started, true, crate::netwatch::on_link(addr.ip()));
            ctx.adopt(&link);
            let news = ctx
                .live
                .load(Relaxed)
                .then(|| ctx.tasks.spawn(crate::live::push_news(ctx.clone(), link.clone())));
            let why = session::serve(ctx.clone(), link.clone()).await;
            if let Some(news) = news {
                news.abort();
            }
            let error = match &why {
                quinn::ConnectionError::ApplicationClosed(c) if c.error_code == crate::wire::code(ErrorCode::Done) => {
                    None
                }
                quinn::ConnectionError::LocallyClosed => None,
                other => Some(other.to_string()),
            };
            tracing::info!(%addr, "peer disconnected: {why}");
            record(&ctx, &link, error, true);
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
            conn.close(crate::wire::code(ErrorCode::Protocol), b"unreadable certificate");
            Err(e)
        }
    }
}
