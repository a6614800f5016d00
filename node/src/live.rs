//! Live replication: a daemon starts a round as soon as it holds events a
//! connected peer lacks, on connections it dialed and on those it accepted.

use crate::ctx::NodeCtx;
use crate::session::{initiate_round, Link};
use std::sync::Arc;

/// How long a round waits for appends arriving with the one that woke it.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(10);

/// Waits until the peer should get a round from this node: `every` has
/// passed, or this node holds events the peer lacks (written here, or
/// received from another peer). False once the connection is closed.
pub async fn round_due(
    ctx: &NodeCtx,
    link: &Link,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    every: Option<std::time::Duration>,
) -> bool {
    let timer = async {
        match every {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timer);
    let mut running = link.running.subscribe();
    loop {
        // Marked seen before looking, so a change after the look wakes us.
        changes.borrow_and_update();
        // A running round already carries what was there when it began;
        // look again when it ends.
        if *running.borrow_and_update() == 0 && ctx.news_for(link) > 0 {
            return true;
        }
        tokio::select! {
            _ = &mut timer => return true,
            changed = changes.changed() => {
                if changed.is_err() {
                    return false;
                }
                // Appends arriving together make one round; a longer burst
                // gathers while that round runs (see `running` above).
                tokio::time::sleep(SETTLE).await;
            }
            // A round ending may have left the peer short of what arrived meanwhile.
            _ = running.changed() => {}
            _ = link.conn.closed() => return false,
        }
    }
}

/// On a connection the peer opened: start a round whenever this node has
/// news for the peer, so an event written here reaches it at once rather
/// than at the peer's next timer round.
pub async fn push_news(ctx: Arc<NodeCtx>, link: Arc<Link>) {
    let mut changes = ctx.wal.subscribe();
    while round_due(&ctx, &link, &mut changes, None).await {
        match initiate_round(&ctx, &link).await {
            Ok(round) => tracing::debug!(peer = %link.peer.node_id.short(), ?round, "round for news finished"),
            Err(e) => {
                tracing::info!(peer = %link.peer.node_id.short(), "round for news failed: {e:#}");
                return;
            }
        }
    }
}
