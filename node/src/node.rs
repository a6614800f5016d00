//! A running node: its context and its one QUIC endpoint, which both listens
//! and dials.

use crate::datadir::{unix_now, DataDir, Policy};
use crate::session::{self, Counters, Link, NodeCtx, RoundReport};
use crate::tls::{self, TlsIdentity};
use crate::transport::TransportProfile;
use anyhow::{Context, Result};
use ferry_proto::ErrorCode;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

pub struct Node {
    pub ctx: Arc<NodeCtx>,
    pub endpoint: quinn::Endpoint,
    connect_timeout: std::time::Duration,
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
        let mut endpoint = quinn::Endpoint::server(tls.quinn_server(profile)?, listen)
            .with_context(|| format!("could not listen on {listen} (UDP); is another node using the port?"))?;
        endpoint.set_default_client_config(tls.quinn_client(profile)?);
        ctx.tasks.spawn(accept_loop(ctx.clone(), endpoint.clone()));
        Ok(Node {
            ctx,
            endpoint,
            connect_timeout: profile.connect_timeout,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    pub async fn connect(&self, addr: SocketAddr) -> Result<Arc<Link>> {
        let connecting = self.endpoint.connect(addr, crate::pki::SERVER_NAME)?;
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no answer from {addr} within {:?}; is the peer running and the UDP port open?",
                    self.connect_timeout
                )
            })?
            .with_context(|| format!("could not connect to {addr}"))?;
        let peer = tls::peer_cert(&conn)?;
        Ok(Arc::new(Link {
            conn,
            peer,
            addr,
            counters: Counters::default(),
        }))
    }

    /// One round with the peer at `addr`, then close.
    pub async fn sync_once(&self, addr: SocketAddr) -> Result<SyncReport> {
        let link = self.connect(addr).await?;
        let server = self.ctx.tasks.spawn(session::serve(self.ctx.clone(), link.clone()));
        let result = session::initiate_round(&self.ctx, &link).await;
        let close_code = if result.is_ok() {
            ErrorCode::Done
        } else {
            ErrorCode::Internal
        };
        link.conn.close(crate::wire::code(close_code), b"sync finished");
        let _ = server.await;
        let report = report(&link, result.as_ref().ok().copied().unwrap_or_default());
        record(&self.ctx, &link, result.as_ref().err().map(|e| format!("{e:#}")), true);
        result.with_context(|| format!("sync with {addr} did not complete"))?;
        Ok(report)
    }

    /// Closes every connection and waits until peers were told.
    pub async fn shutdown(&self) {
        self.endpoint
            .close(crate::wire::code(ErrorCode::ShuttingDown), b"node shutting down");
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
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), self.endpoint.wait_idle()).await;
    }
}

pub fn report(link: &Link, round: RoundReport) -> SyncReport {
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
        p.addr = link.addr.to_string();
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
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%addr, "refused a connection: {e}");
                    return;
                }
            };
            let peer = match tls::peer_cert(&conn) {
                Ok(p) => p,
                Err(e) => {
                    conn.close(crate::wire::code(ErrorCode::Protocol), b"unreadable certificate");
                    tracing::warn!(%addr, "refused a connection: {e:#}");
                    return;
                }
            };
            tracing::info!(%addr, peer = %peer.node_id.short(), name = %peer.name, "peer connected");
            ctx.totals.connections_accepted.fetch_add(1, Relaxed);
            let link = Arc::new(Link {
                conn,
                peer,
                addr,
                counters: Counters::default(),
            });
            let why = session::serve(ctx.clone(), link.clone()).await;
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
