//! `ferry run`: listen, keep a connection to every configured peer, and
//! sync on connect, on new local events and on a timer, until stopped.

use crate::node::{record, Node};
use crate::session;
use anyhow::Result;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct DaemonOptions {
    pub peers: Vec<String>,
    pub interval: Duration,
}

/// Capped, jittered exponential backoff: 1 s, 2 s, 4 s ... up to 60 s, each
/// drawn from the upper half so a fleet of clinics does not retry in step.
pub fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_secs(60).min(Duration::from_secs(1) * 2u32.saturating_pow(attempt.min(6)));
    cap / 2 + cap.mul_f64(rand::random::<f64>() / 2.0)
}

pub async fn run(node: Arc<Node>, opts: DaemonOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for peer in opts.peers {
        tasks.spawn(peer_loop(node.clone(), peer, opts.interval));
    }
    shutdown.await;
    tracing::info!("shutting down");
    tasks.shutdown().await;
    node.shutdown().await;
    if let Some(dir) = &node.ctx.data_dir {
        let _ = std::fs::remove_file(dir.path(crate::api::ADDR_FILE));
    }
    Ok(())
}

async fn resolve(peer: &str) -> Result<SocketAddr> {
    let with_port = if peer.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        peer.to_string()
    } else {
        format!("{peer}:{}", crate::datadir::DEFAULT_PORT)
    };
    let mut addrs = tokio::net::lookup_host(with_port.as_str()).await?;
    addrs
        .next()
        .ok_or_else(|| anyhow::anyhow!("{peer} resolved to no address"))
}

async fn peer_loop(node: Arc<Node>, peer: String, interval: Duration) {
    let mut attempt = 0u32;
    loop {
        let opened = match resolve(&peer).await {
            Ok(addr) => node.open(addr).await,
            Err(e) => Err(e),
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                let wait = backoff(attempt);
                tracing::info!(%peer, "cannot reach peer ({e:#}); retrying in {wait:?}");
                attempt += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        attempt = 0;
        let link = opened.link;
        tracing::info!(%peer, name = %link.peer.name, zero_rtt = ?opened.zero_rtt, "connected");
        let server = node.ctx.tasks.spawn(session::serve(node.ctx.clone(), link.clone()));
        let mut changes = node.ctx.wal.subscribe();
        let mut last_error = None;
        let mut opening = Some(opened.round);
        loop {
            let round = match opening.take() {
                Some(open) => open.finish(&node.ctx, &link).await,
                None => session::initiate_round(&node.ctx, &link).await,
            };
            match round {
                Ok(round) => {
                    tracing::info!(%peer, ?round, "round finished");
                    node.remember(&link);
                    record(&node.ctx, &link, None, false);
                }
                Err(e) => {
                    tracing::warn!(%peer, "round failed: {e:#}");
                    last_error = Some(format!("{e:#}"));
                    break;
                }
            }
            changes.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = changes.changed() => {
                    // Let a burst of appends settle into one round.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ = link.conn.closed() => break,
            }
        }
        record(&node.ctx, &link, last_error, true);
        link.conn
            .close(crate::wire::code(ferry_proto::ErrorCode::Done), b"reconnecting");
        server.abort();
        tokio::time::sleep(backoff(0)).await;
    }
}
